#!/usr/bin/env bash
# Run a party script as N processes on this machine (loopback TCP).
#
#   launchers/local/run.sh                       # 2 parties, launchers/local/example.py
#   N=4 PROVIDER=dealer launchers/local/run.sh   # 4 parties and a dealer process
#   N=3 launchers/local/run.sh my_script.py --my-flag 1
#
# N (default 2) and PROVIDER (dealer | tfp, default dealer) choose the job; MPC_ML names
# the command (default: mpc-ml on PATH, else the checkout's .venv/bin/mpc-ml).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ -z "${MPC_ML:-}" ]; then
  if command -v mpc-ml >/dev/null 2>&1; then MPC_ML=mpc-ml
  else MPC_ML="$here/../../.venv/bin/mpc-ml"; fi
fi
[ $# -gt 0 ] || set -- "$here/example.py"
exec "$MPC_ML" launch -n "${N:-2}" --provider "${PROVIDER:-dealer}" "$@"
