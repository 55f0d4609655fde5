#!/usr/bin/env bash
# Runs a command on a GPU machine from the bundle of tools/scripts/gpu_bundle.sh (carried as .gpu):
# unpacks it, puts wrappers where the build's programs were (the tests exec build/kvsim by its
# absolute path), links the source and ../shared paths baked into the tests, and finds the GPU
# machine's CUDA libraries. Then runs "$@" in the repository root.
#   tools/scripts/gpu_run.sh build/tests/kvsim_tests -tc='cuda*'
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
[ -d "$root/.gpu/bin" ] || tar -C "$root/.gpu" -xJf "$root/.gpu/bundle.tar.xz"
# The source folder the build baked into the tests, and ../shared beside it (resolved physically
# when the source folder is a link, so beside the real root too).
src=$(grep -a -m1 -o '/[[:alnum:]/_.-]*/traces/samples/stories260K.h5' "$root/.gpu/bin/kvsim_tests" |
      sed 's|/traces/samples/stories260K.h5$||')
if [ -n "$src" ] && [ "$src" != "$root" ] && [ ! -e "$src" ]; then
  mkdir -p "$(dirname "$src")"
  ln -sfn "$root" "$src"
fi
for shared in "$(dirname "$root")/shared" ${src:+"$(dirname "$src")/shared"}; do
  [ -e "$shared" ] || ln -sfn "$root/.gpu/shared" "$shared"
done
libpath="$root/.gpu/lib"
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/nvidia/lib64 /usr/lib64 \
         /usr/lib/x86_64-linux-gnu $(find / -xdev \( -name 'libcublas.so.*' -o -name 'libcudart.so.*' \) \
                                     -printf '%h\n' 2>/dev/null | sort -u); do
  if [ -n "$(ls "$d"/libcudart.so* "$d"/libcublas.so* "$d"/libcuda.so* 2>/dev/null | head -1)" ]; then
    case ":$libpath:" in *":$d:"*) ;; *) libpath="$libpath:$d" ;; esac
  fi
done
echo "gpu_run: libraries from $libpath" >&2
# Wrappers at the build paths: the carried loader runs each program with the carried libraries.
for p in "$root"/.gpu/bin/*; do
  n=$(basename "$p")
  case "$n" in
    kvsim) dest="$root/build/kvsim" ;;
    kvsim_mpi) dest="$root/build/tools/mpi/kvsim_mpi" ;;
    *) dest="$root/build/tests/$n" ;;
  esac
  mkdir -p "$(dirname "$dest")"
  printf '#!/bin/sh\nexec "%s" --library-path "%s" "%s" "$@"\n' "$root/.gpu/lib/ld-linux-x86-64.so.2" "$libpath" "$p" >"$dest"
  chmod +x "$dest"
done
cd "$root"
exec "$@"
