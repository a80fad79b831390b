#!/usr/bin/env bash
# Run a party script as the ranks of one mpiexec job (the MPI backend).
#
#   launchers/mpi/run.sh                                    # 2 parties on this machine
#   N=3 PROVIDER=dealer launchers/mpi/run.sh                # 3 parties and a dealer rank
#   N=3 HOSTFILE=launchers/mpi/hostfile launchers/mpi/run.sh my_script.py --epochs 5
#
# N (default 2) parties; PROVIDER (dealer | tfp, default dealer): with dealer the job has
# N+1 ranks and the last one is the dealer. HOSTFILE spreads the ranks over hosts
# (MPICH/Hydra format, see hostfile.example). MPIEXEC names mpiexec (default: the one
# in the checkout's .venv, which `pip install mpich` puts there, else mpiexec on PATH);
# PYTHON the interpreter (default: the checkout's .venv/bin/python, else python3).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/../../.venv/bin"
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$venv/python" ]; then PYTHON="$venv/python"; else PYTHON=python3; fi
fi
if [ -z "${MPIEXEC:-}" ]; then
  if [ -x "$venv/mpiexec" ]; then MPIEXEC="$venv/mpiexec"; else MPIEXEC=mpiexec; fi
fi
n="${N:-2}"
provider="${PROVIDER:-dealer}"
case "$provider" in
  tfp) ranks="$n" ;;
  dealer) ranks=$((n + 1)) ;;
  *) echo "run.sh: PROVIDER must be tfp or dealer, not '$provider'" >&2; exit 2 ;;
esac
[ $# -gt 0 ] || set -- "$here/../local/example.py"
threads="${MPC_TORCH_THREADS:-$(( $(nproc 2>/dev/null || echo 1) / ranks ))}"
[ "$threads" -ge 1 ] || threads=1
hosts=()
[ -z "${HOSTFILE:-}" ] || hosts=(-f "$HOSTFILE")
exec "$MPIEXEC" ${hosts[@]+"${hosts[@]}"} -genv MPC_BACKEND mpi -genv MPC_PROVIDER "$provider" \
  -genv MPC_TORCH_THREADS "$threads" -n "$ranks" "$PYTHON" "$@"
