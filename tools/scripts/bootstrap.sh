#!/usr/bin/env bash
# Installs the Debian packages that kvsim's build, tests and plots need.
# Idempotent: packages already installed are skipped; runs apt-get only when something is missing.
set -euo pipefail

packages=(
  build-essential cmake pkg-config git
  clang
  libhdf5-dev hdf5-tools
  xtensor-dev xtl-dev
  doctest-dev libbenchmark-dev
  libopenblas-dev
  libcli11-dev libsqlite3-dev sqlite3 libyaml-cpp-dev nlohmann-json3-dev
  libsentencepiece-dev
  libopenmpi-dev openmpi-bin
  python3 python3-dev pybind11-dev python3-matplotlib python3-h5py python3-numpy python3-pandas python3-yaml python3-scipy
  python3-torch
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "bootstrap: all ${#packages[@]} packages present"
  exit 0
fi

echo "bootstrap: installing ${missing[*]}"
sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then sudo_cmd=(sudo); fi
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -qq
"${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "bootstrap: done"
