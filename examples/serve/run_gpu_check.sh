#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: runs valet-serve on the CUDA backend and checks that its handle
# sweeps ran as a GPU kernel, read objects through their handles (device-side resolution), and
# found every byte as written. Two runs:
#   1. the whole device, as the demo runs (little fragmentation: few or no objects move);
#   2. a 2 GiB heap, where the compactor moves objects between sweeps, so the kernel resolves
#      handles whose objects have moved.
# Prints each run's summary; exit status 0 only when both pass.
#
#   bash examples/serve/run_gpu_check.sh [build-dir (default: build)] [seconds per run (default: 20)]
#
# Builds valet-serve first when the build folder has none (CMake configure + that one target).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
build=${1:-$root/build}
seconds=${2:-20}
serve=$build/bin/valet-serve

if [[ ! -x $serve ]]; then
  echo "== building valet-serve in $build"
  cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DVALET_WITH_CUDA=ON >/dev/null
  cmake --build "$build" -j"$(nproc)" --target valet-serve
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
failed=0

# check_run NAME ARGS...: runs valet-serve with ARGS, prints its summary and the verdict.
check_run() {
  local name=$1
  shift
  echo "== $name: $serve $*"
  local rc=0
  "$serve" "$@" >"$log" 2>&1 || rc=$?
  grep -E "objects touched by|reads every live object|handle sweeps by|stopped after|error|MISMATCH" "$log" || true
  local why=""
  local sweeps
  sweeps=$(grep -E "^valet-serve: handle sweeps by" "$log" || true)
  local objects moved
  objects=$(sed -nE 's/.* ([0-9]+) objects read through their handles.*/\1/p' <<<"$sweeps")
  moved=$(sed -nE 's/.* ([0-9]+) objects moved by .*/\1/p' <<<"$sweeps")
  if [[ $rc -ne 0 ]]; then
    why="valet-serve exited with status $rc"
  elif [[ -z $sweeps ]]; then
    why="no handle sweep summary"
  elif [[ $sweeps != *"by a GPU kernel:"* ]]; then
    why="the sweeps did not run as a GPU kernel"
  elif [[ -z $objects || $objects -eq 0 ]]; then
    why="the kernel read no object through its handle"
  elif [[ $sweeps != *" 0 bytes mismatched, 0 handles unresolved"* ]]; then
    why="the kernel found mismatched bytes or unresolved handles"
  elif ! grep -q " 0 bytes corrupt" "$log"; then
    why="the per-object checks found corrupt bytes"
  fi
  if [[ -n $why ]]; then
    echo "-- $name: FAILED: $why (last lines of its output below)"
    tail -20 "$log"
    failed=1
  else
    echo "-- $name: passed: $objects objects read through their handles by the kernel, 0 mismatches," \
         "${moved:-0} objects moved by compaction meanwhile"
  fi
  echo
}

check_run "whole device" --backend cuda --seconds "$seconds"
check_run "2 GiB heap, objects moving" --backend cuda --seconds "$seconds" --capacity 2GiB

if [[ $failed -ne 0 ]]; then
  echo "GPU CHECK FAILED"
  exit 1
fi
echo "GPU CHECK PASSED"
