#!/usr/bin/env bash
# Set up a fresh machine: Debian's Fashion-MNIST (offline data), a venv in .venv with
# the app installed. Safe to re-run. `--test` also installs the test tools.
set -euo pipefail
cd "$(dirname "$0")/.."

# The app and its tooling (scripts, studies); `--test` adds the test tools.
extra="[tools]"
[[ "${1:-}" == "--test" ]] && extra="[tools,test]"

if [[ ! -d /usr/share/datasets/fashion-mnist ]]; then
  if command -v apt-get >/dev/null; then
    sudo=""; [[ $(id -u) -ne 0 ]] && sudo="sudo"
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq dataset-fashion-mnist
  else
    echo "note: no apt-get; Fashion-MNIST from Debian is not installed" >&2
  fi
fi

python="${PYTHON:-python3}"
[[ -x .venv/bin/python ]] || "$python" -m venv .venv
.venv/bin/python -m pip install -q -e ".${extra}"
