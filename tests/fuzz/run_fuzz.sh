#!/usr/bin/env bash
# Builds the libFuzzer target with clang-16 (-fsanitize=fuzzer,address,undefined) and fuzzes the
# heap for a bounded time. Exits non-zero on a crash, a leak, a timeout or an out-of-memory input.
#   tests/fuzz/run_fuzz.sh [SECONDS=60] [extra libFuzzer flags...]
# Environment: FUZZ_BUILD_DIR (default build-fuzz), FUZZ_BUILD_JOBS (default 2).
# Needs the Debian packages clang-16 and libclang-rt-16-dev (clang-14 cannot compile libstdc++ 12's
# <ranges>; `bash .ci/setup fuzz` installs them). The run starts from the committed seed corpus
# tests/fuzz/corpus (read only) and grows its own in $FUZZ_BUILD_DIR/corpus; crashes land in
# $FUZZ_BUILD_DIR/crashes and replay with: $FUZZ_BUILD_DIR/bin/valet-heap-fuzz CRASH_FILE (or any
# build's valet-fuzz-replay CRASH_FILE). To add what a long run found to the seed corpus:
#   $FUZZ_BUILD_DIR/bin/valet-heap-fuzz -merge=1 tests/fuzz/corpus $FUZZ_BUILD_DIR/corpus
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds="${1:-60}"
shift || true
jobs="${FUZZ_BUILD_JOBS:-2}"
dir="${FUZZ_BUILD_DIR:-build-fuzz}"

for tool in clang-16 clang++-16; do
  command -v "$tool" >/dev/null || { echo "run_fuzz.sh: $tool not found (bash .ci/setup fuzz, or apt-get install -y clang-16 libclang-rt-16-dev)" >&2; exit 1; }
done

# -fsanitize=fuzzer-no-link instruments the heap and runtime libraries for coverage, so that
# libFuzzer is guided by the heap's own branches, not only by the harness's; the target itself
# links with -fsanitize=fuzzer (tests/fuzz/CMakeLists.txt). VALET_TEST_DIRS=fuzz: only the fuzz
# folder is configured, and only valet-heap-fuzz (and the libraries under it) is built.
# coverage_ignorelist.txt keeps the checkers (validate, pattern fill and verify) out of the
# coverage instrumentation: they run after every operation and are not what is fuzzed.
CC=clang-16 CXX=clang++-16 cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DVALET_FUZZ=ON -DVALET_SANITIZE=address,undefined -DVALET_BUILD_TESTS=ON -DVALET_WITH_CUDA=OFF \
  -DVALET_TEST_DIRS=fuzz -DCMAKE_UNITY_BUILD=ON \
  "-DCMAKE_CXX_FLAGS=-fsanitize=fuzzer-no-link -fsanitize-coverage-ignorelist=$PWD/tests/fuzz/coverage_ignorelist.txt" \
  >/dev/null
cmake --build "$dir" -j"$jobs" --target valet-heap-fuzz

mkdir -p "$dir/corpus" "$dir/crashes"
seeds=()
[[ -d tests/fuzz/corpus ]] && seeds+=(tests/fuzz/corpus)
# -len_control=0: long inputs from the start (an input is a program: with libFuzzer's default
# slow growth, a few minutes never get past programs of three or four operations).
# -rss_limit_mb: every input maps a 64 MiB heap; ASan's shadow and quarantine come on top.
# The first corpus directory is the one written to: new inputs never land in the source tree.
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
rc=0
"$dir/bin/valet-heap-fuzz" "$dir/corpus" "${seeds[@]}" \
  -max_total_time="$seconds" -max_len=2048 -len_control=0 -rss_limit_mb=4096 -timeout=30 \
  -artifact_prefix="$dir/crashes/" -print_final_stats=1 "$@" || rc=$?
if ((rc != 0)); then
  # CI's build folder does not outlive the run: print every input that failed, so that it can be
  # rebuilt (base64 -d > crash) and replayed anywhere.
  for f in "$dir"/crashes/*; do
    [[ -f "$f" ]] || continue
    echo "run_fuzz.sh: failing input $f ($(stat -c %s "$f") bytes), base64:" >&2
    base64 -w 0 "$f" >&2
    echo >&2
  done
  echo "run_fuzz.sh: valet-heap-fuzz exited with $rc" >&2
fi
exit "$rc"
