#!/usr/bin/env bash
# Builds the libFuzzer harnesses (tests/fuzz/, KVSIM_FUZZ=ON in build-fuzz/ with clang, every library
# under -fsanitize=fuzzer-no-link,address,undefined) and runs each for a set time on a copy of its seed
# corpus (tests/fuzz/corpus/NAME/), then prints per harness: executions, rate, crashes, leaks,
# timeouts (hangs, > 60 s of wall time on one input: generous, a niced fuzzer on a busy machine waits), out-of-memory inputs and the corpus size.
#   tools/scripts/fuzz.sh [SECONDS] [HARNESS ...]   SECONDS per harness (default 60), all harnesses by default
#   tools/scripts/fuzz.sh --smoke                   CI's pass (tools/scripts/test.sh): the regressions
#                                                   (tests/fuzz/regressions/NAME/) replayed, then a fixed
#                                                   seed and count of executions per harness (about 6 s
#                                                   each), about a minute in all
# Fuzzers run under `nice -n 19` (the machine is shared). Findings of this run are written to
# build-fuzz/fuzz-artifacts/NAME/ (crash-*, leak-*, timeout-*, oom-*); replay one with
# build-fuzz/tests/fuzz/fuzz_NAME FILE. The exit status is 1 when any harness found something,
# 0 otherwise, and 0 with a "skipped:" line when clang or libFuzzer is missing.
set -euo pipefail
cd "$(dirname "$0")/../.."

seconds=60
smoke=0
if [ "${1:-}" = "--smoke" ]; then
  smoke=1
  seconds=6
  shift
elif [[ "${1:-}" =~ ^[0-9]+$ ]]; then
  seconds=$1
  shift
fi
all=(trace trace_attr spec sweep safetensors hf_config llama2c tokenizer sidecar)
declare -A smoke_runs=([trace]=40 [trace_attr]=150 [spec]=30000 [sweep]=8000 [safetensors]=5000 [hf_config]=6000
  [llama2c]=12000 [tokenizer]=12000 [sidecar]=800)
harnesses=("${all[@]}")
if [ $# -gt 0 ]; then harnesses=("$@"); fi

if ! command -v clang++ >/dev/null || ! command -v clang >/dev/null; then
  echo "fuzz.sh: skipped: clang/clang++ not found (install the Debian package clang: tools/scripts/bootstrap.sh)"
  exit 0
fi
probe=$(mktemp -d)
trap 'rm -rf "$probe"' EXIT
echo 'extern "C" int LLVMFuzzerTestOneInput(const unsigned char*, unsigned long) { return 0; }' >"$probe/p.cpp"
if ! clang++ -fsanitize=fuzzer,address,undefined "$probe/p.cpp" -o "$probe/p" 2>"$probe/err"; then
  echo "fuzz.sh: skipped: clang++ cannot link -fsanitize=fuzzer (libFuzzer runtime missing: $(head -1 "$probe/err"))"
  exit 0
fi

build=build-fuzz
if [ ! -f "$build/CMakeCache.txt" ]; then
  CC=clang CXX=clang++ cmake -S . -B "$build" -DKVSIM_FUZZ=ON -DKVSIM_TESTS=OFF -DKVSIM_CUDA=OFF \
    -DKVSIM_OPENMP=OFF -DKVSIM_MPI=OFF -DKVSIM_BENCH=OFF -DCMAKE_BUILD_TYPE=Debug "-DCMAKE_CXX_FLAGS_DEBUG=-g -O1" \
    >"$build.configure.log" || { cat "$build.configure.log"; exit 1; }
fi
targets=()
for h in "${harnesses[@]}"; do targets+=("fuzz_$h"); done
nice -n 19 cmake --build "$build" -j"$(nproc)" --target "${targets[@]}"

export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:allocator_may_return_null=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export TMPDIR=$PWD/$build/fuzz-tmp
mkdir -p "$TMPDIR"
status=0

if [ $smoke = 1 ]; then
  for h in "${harnesses[@]}"; do
    reg=tests/fuzz/regressions/$h
    if compgen -G "$reg/*" >/dev/null; then
      files=()
      for f in "$reg"/*; do [ "$(basename "$f")" = README.md ] || files+=("$f"); done
      if [ ${#files[@]} -gt 0 ] && ! "$build/tests/fuzz/fuzz_$h" "${files[@]}" >"$build/fuzz-regress-$h.log" 2>&1; then
        echo "fuzz.sh: regression of $h fails again:"; tail -30 "$build/fuzz-regress-$h.log"; status=1
      fi
    fi
  done
fi

printf '%-12s %7s %12s %9s %7s %6s %8s %5s %7s\n' harness seconds executions exec/s crashes leaks timeouts ooms corpus
for h in "${harnesses[@]}"; do
  work=$build/fuzz-corpus/$h
  art=$build/fuzz-artifacts/$h
  rm -rf "$art"  # count this run's findings only
  mkdir -p "$work" "$art"
  log=$build/fuzz-$h.log
  rc=0
  budget=(-max_total_time="$seconds")
  # The smoke pass is a CI gate, so it is reproducible: a fixed seed and a fixed number of executions
  # (about 6 s each at the rates measured on 2 cores), the time only a cap for a slow machine.
  if [ $smoke = 1 ]; then budget=(-seed=1 -runs="${smoke_runs[$h]}" -max_total_time=60); fi
  nice -n 19 "$build/tests/fuzz/fuzz_$h" "${budget[@]}" -timeout=60 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="$art/" "$work" "tests/fuzz/corpus/$h" >"$log" 2>&1 || rc=$?
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  count() { find "$art" -name "$1-*" | wc -l; }
  crashes=$(count crash) leaks=$(count leak) timeouts=$(count timeout) ooms=$(count oom)
  printf '%-12s %7s %12s %9s %7s %6s %8s %5s %7s\n' "$h" "$seconds" "${execs:-?}" "${rate:-?}" "$crashes" "$leaks" \
    "$timeouts" "$ooms" "$(find "$work" -type f | wc -l)"
  if [ $rc -ne 0 ] || [ $((crashes + leaks + timeouts + ooms)) -gt 0 ]; then
    status=1
    echo "  $h: exit $rc; log $log, findings in $art/:"
    grep -E '^(==[0-9]+==ERROR|SUMMARY|fuzz:)|runtime error' "$log" | head -5 | sed 's/^/    /'
  fi
done
exit $status
