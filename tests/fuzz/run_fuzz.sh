#!/usr/bin/env bash
# Builds the libFuzzer target with clang-16 (ASan + UBSan) in build-fuzz and fuzzes the heap for
# a bounded time.
#   tests/fuzz/run_fuzz.sh [SECONDS=60] [extra libFuzzer flags...]
# Needs the Debian packages clang-16 and libclang-rt-16-dev (clang-14 cannot compile libstdc++ 12's
# <ranges>). The corpus grows in build-fuzz/corpus; crashes land in build-fuzz/crashes and replay
# with: build-fuzz/bin/valet-heap-fuzz CRASH_FILE (or any build's valet-fuzz-replay CRASH_FILE).
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds="${1:-60}"
shift || true
jobs="${FUZZ_BUILD_JOBS:-2}"

for tool in clang-16 clang++-16; do
  command -v "$tool" >/dev/null || { echo "run_fuzz.sh: $tool not found (apt-get install -y clang-16 libclang-rt-16-dev)" >&2; exit 1; }
done

# -fsanitize=fuzzer-no-link instruments the heap and runtime libraries for coverage, so that
# libFuzzer is guided by the heap's own branches, not only by the harness's.
CC=clang-16 CXX=clang++-16 cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DVALET_FUZZ=ON -DVALET_SANITIZE=address,undefined -DVALET_BUILD_TESTS=ON -DVALET_WITH_CUDA=OFF \
  -DCMAKE_CXX_FLAGS=-fsanitize=fuzzer-no-link >/dev/null
cmake --build build-fuzz -j"$jobs" --target valet-heap-fuzz

mkdir -p build-fuzz/corpus build-fuzz/crashes
seeds=()
[[ -d tests/fuzz/corpus ]] && seeds+=(tests/fuzz/corpus)
# -len_control=0: long inputs from the start (an input is a program: with libFuzzer's default
# slow growth, a few minutes never get past programs of three or four operations).
# -rss_limit_mb: every input maps a 64 MiB heap; ASan's shadow and quarantine come on top.
exec build-fuzz/bin/valet-heap-fuzz build-fuzz/corpus "${seeds[@]}" \
  -max_total_time="$seconds" -max_len=2048 -len_control=0 -rss_limit_mb=4096 -timeout=30 \
  -artifact_prefix=build-fuzz/crashes/ -print_final_stats=1 "$@"
