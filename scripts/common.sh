# Shared by the project's scripts: where builds go, and installers that only install what is
# missing. Source it; do not run it.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Build outputs live outside the clone so fresh clones (CI) reuse them.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/disa/target}"
export PATH="$HOME/.cargo/bin:$PATH"

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

APT_UPDATED=0
# apt_ensure PKG...: installs the Debian packages not installed yet.
apt_ensure() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  if [ "$APT_UPDATED" -eq 0 ]; then
    say "apt-get update"
    $sudo apt-get update -qq
    APT_UPDATED=1
  fi
  say "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

# rust_target_ensure TARGET: adds a rustup target if missing.
rust_target_ensure() {
  rustup target list --installed | grep -qx "$1" || { say "rustup target add $1"; rustup target add "$1"; }
}

# mar_checkout DIR: DIR's absolute path if it is a checkout of LTH14/mar (the official code,
# never committed here); else a clear error.
mar_checkout() {
  [ -f "$1/models/mar.py" ] || { echo "no models/mar.py in $1: not a LTH14/mar checkout" >&2; return 2; }
  (cd "$1" && pwd)
}
