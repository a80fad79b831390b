#!/usr/bin/env bash
# Build and sign the mpc_ml dealer as a Gramine SGX enclave; print the measurement parties pin.
#
#   launchers/sgx/build.sh                          # into launchers/sgx/build/
#   LISTEN=0.0.0.0:7000 NPARTIES=3 launchers/sgx/build.sh
#   REQUIREMENTS=dealer.lock launchers/sgx/build.sh # pinned dependencies (reproducible build)
#
# Needs Gramine >= 1.8 (gramine-manifest, gramine-sgx-sign, gramine-sgx-sigstruct-view) and an
# enclave signing key (gramine-sgx-gen-private-key). Building needs no SGX hardware; running does:
#   cd launchers/sgx/build && gramine-sgx dealer
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=${OUT_DIR:-$here/build}
python=${PYTHON:-python3}
listen=${LISTEN:-0.0.0.0:7000}
nparties=${NPARTIES:-2}
enclave_size=${ENCLAVE_SIZE:-16G}
max_threads=${MAX_THREADS:-64}
isv_prod_id=${ISV_PROD_ID:-1}
isv_svn=${ISV_SVN:-1}
key=${SGX_SIGNING_KEY:-$HOME/.config/gramine/enclave-key.pem}
requirements=${REQUIREMENTS:-}
torch_index=${TORCH_INDEX:-https://download.pytorch.org/whl/cpu}
sign_date=${SIGN_DATE:-0000-00-00}   # a fixed SIGSTRUCT date: the same .sig from the same inputs

die() { echo "build.sh: $*" >&2; exit 2; }
for tool in gramine-manifest gramine-sgx-sign gramine-sgx-sigstruct-view; do
    command -v "$tool" >/dev/null || die "$tool not found: install Gramine >= 1.8 (see launchers/sgx/README.md)"
done
[ -f "$key" ] || die "no enclave signing key at $key: run gramine-sgx-gen-private-key or set SGX_SIGNING_KEY"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "$python is older than Python 3.11"

rm -rf "$out"
mkdir -p "$out/wheel"
export PIP_NO_COMPILE=1 PIP_DISABLE_PIP_VERSION_CHECK=1 SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-315532800}

# 1. mpc_ml as a wheel: the enclave measures installed files, never an editable checkout.
"$python" -m pip wheel --no-deps --wheel-dir "$out/wheel" "$repo" >/dev/null
wheel=$(ls "$out"/wheel/mpc_ml-*.whl)

# 2. a venv of its own with mpc_ml and its dependencies (CPU torch: the dealer needs no GPU).
"$python" -m venv "$out/venv"
vpip=("$out/venv/bin/python" -m pip)
if [ -n "$requirements" ]; then
    "${vpip[@]}" install --no-deps -r "$requirements"          # hashes in the file are enforced
    "${vpip[@]}" install --no-deps "$wheel"
else
    "${vpip[@]}" install --extra-index-url "$torch_index" "$wheel"
fi
"${vpip[@]}" freeze --all | grep -v '^mpc_ml' > "$out/requirements.lock"
site=$("$out/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
find "$site" -name __pycache__ -prune -exec rm -rf {} +        # bytecode would differ build to build

# 3. the manifest, then the signature (expands trusted files into hashes; writes dealer.sig).
entrypoint=$(realpath "$out/venv/bin/python")
multiarch=$("$python" -c 'import sysconfig; print(sysconfig.get_config_var("MULTIARCH") or "x86_64-linux-gnu")')
gramine-manifest \
    -Dentrypoint="$entrypoint" -Dsite_packages="$site" -Darch_libdir="/lib/$multiarch" \
    -Dlisten="$listen" -Dnparties="$nparties" -Denclave_size="$enclave_size" \
    -Dmax_threads="$max_threads" -Disv_prod_id="$isv_prod_id" -Disv_svn="$isv_svn" \
    "$here/dealer.manifest.template" > "$out/dealer.manifest"
gramine-sgx-sign --manifest "$out/dealer.manifest" --output "$out/dealer.manifest.sgx" \
    --key "$key" --sigfile "$out/dealer.sig" --date "$sign_date"

# 4. the measurement: what every party pins (Config(dealer_measurement=...), MPC_DEALER_MEASUREMENT
#    or the deployment file's list).
gramine-sgx-sigstruct-view --output-format=toml "$out/dealer.sig" > "$out/sigstruct.toml"
mrenclave=$(sed -n 's/^mr_enclave = "\([0-9a-f]*\)"/\1/p' "$out/sigstruct.toml")
mrsigner=$(sed -n 's/^mr_signer = "\([0-9a-f]*\)"/\1/p' "$out/sigstruct.toml")
grep -q '^debug_enclave = false' "$out/sigstruct.toml" || die "the signed enclave is a debug enclave"
[ -n "$mrenclave" ] || die "no mr_enclave in $out/sigstruct.toml"
echo "$mrenclave" > "$out/MRENCLAVE"
cat <<MSG
dealer measurement: $mrenclave
  MRSIGNER $mrsigner (the signing key's hash; not what parties pin by default)
  pin it:  export MPC_DEALER_MEASUREMENT=$mrenclave
  run it:  cd $out && gramine-sgx dealer        # on an SGX host with DCAP set up
  built from: $wheel, dependencies in $out/requirements.lock
MSG
