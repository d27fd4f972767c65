#!/usr/bin/env bash
# One device call that measures what docs/benchmarks.md quotes, all on the same card in the same
# session: the GPU tests, the serving example with valetctl, the benchmarks (fast path against
# cuMemAllocAsync and with the compactor on/off, batched copy against device-to-device copy,
# relocation by remapping against a copy, the driver's page calls on N threads and in chunks), the
# six traces (Valet, PyTorch native and expandable, and on p23 and p24 a heap that never moves
# objects and meshing alone), and the p23 series.
#
#   tests/bench/gpu_session.sh BIN_DIR OUT_DIR TRACE_DIR [REPLAYER]
#     BIN_DIR    a CUDA build's bin/ (valet-conformance, valet-gpu-tests, valet-serve, valetctl,
#                valet-replay, valet-bench-*); a libtbb.so.12 beside them is used where missing
#     TRACE_DIR  t1 t2 h11 h12 p23 p24 .trace files (tests/bench/traces/run_traces.sh makes them)
#     REPLAYER   optional: a script that replays a trace through PyTorch's caching allocator (not
#                part of Valet), called as `python3 REPLAYER TRACE --json`; also taken from the
#                environment variable VALET_BASELINE_REPLAYER. There is no default: without one, the
#                PyTorch runs are left out.
#
# The Valet trace replays run one at a time (their pin waits are measured); the --no-compact
# replays of p23 and p24 and the PyTorch replays run beside them, since they report memory
# figures only. Each step's output is OUT_DIR/<step>.txt; a step that fails is reported and the
# session goes on.
set -uo pipefail
bin=$(cd "$1" && pwd); out=$2; traces=$3; replayer=${4:-${VALET_BASELINE_REPLAYER:-}}
if [ -n "$replayer" ] && [ ! -f "$replayer" ]; then
  echo "gpu_session.sh: REPLAYER $replayer: no such file" >&2
  exit 2
fi
mkdir -p "$out"
export LD_LIBRARY_PATH=$bin${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
here=$(cd "$(dirname "$0")" && pwd)

step() {  # step NAME SECONDS COMMAND...
  local name=$1 secs=$2
  shift 2
  echo "== $name: $*"
  timeout "$secs" "$@" >"$out/$name.txt" 2>&1
  local rc=$?
  echo "exit status $rc" >>"$out/$name.txt"
  tail -4 "$out/$name.txt"
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >"$out/card.txt" 2>&1
cat "$out/card.txt"
step conformance 120 env VALET_REQUIRES_GPU=1 "$bin/valet-conformance" --gtest_filter='*/Cuda.*'
step gpu-tests 240 env VALET_REQUIRES_GPU=1 "$bin/valet-gpu-tests"

# The serving example on the GPU, driven by valetctl from outside.
"$bin/valet-serve" --backend cuda --seconds 25 >"$out/serve.out" 2>"$out/serve.err" &
serve=$!
sleep 8
step ctl-stats 20 "$bin/valetctl" stats
step ctl-compact 30 "$bin/valetctl" compact --wait
step ctl-pages 20 "$bin/valetctl" pages --svg "$out/pages.svg"
wait "$serve"
echo "valet-serve exit status $?" >>"$out/serve.err"
tail -3 "$out/serve.err"
step serve-kernel-check 90 bash "$here/../../examples/serve/run_gpu_check.sh" "$(dirname "$bin")" 15

step bench-alloc 60 "$bin/valet-bench-alloc" --backend cuda
step bench-alloc-compactor 90 "$bin/valet-bench-alloc" --backend cuda --compactor-ab
step bench-batched-copy 60 "$bin/valet-bench-batched-copy"
step bench-relocate 60 "$bin/valet-bench-relocate"
step bench-vmm-threads 60 "$bin/valet-bench-vmm-threads" --backend cuda --pages 512 --threads 1,2,4,8,16
step bench-vmm-chunks 60 "$bin/valet-bench-vmm-threads" --backend cuda --pages 512 --chunk-pages 64 --threads 1

# Traces: memory-only runs in the background, Valet's own runs one at a time.
(
  for t in p23 p24; do
    echo "{\"trace\":\"$t\",\"run\":\"valet-no-compact\",\"result\":$("$bin/valet-replay" "$traces/$t.trace" \
      --backend cuda --pinners 1 --no-compact --json)}"
    echo "{\"trace\":\"$t\",\"run\":\"valet-mesh-only\",\"result\":$("$bin/valet-replay" "$traces/$t.trace" \
      --backend cuda --pinners 1 --policy evacuate=false --json)}"
  done
  if [ -n "$replayer" ]; then
    # Mapped and live bytes over the steps of p23 (docs/benchmarks.md's plot).
    python3 "$here/traces/torch_series.py" "$traces/p23.trace" "$out/p23-torch-native-steps.csv"
    PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True python3 "$here/traces/torch_series.py" "$traces/p23.trace" \
      "$out/p23-torch-expandable-steps.csv"

    for t in t1 t2 h11 h12 p23 p24; do
      echo "{\"trace\":\"$t\",\"run\":\"torch-native\",\"result\":$(python3 "$replayer" "$traces/$t.trace" --json)}"
      echo "{\"trace\":\"$t\",\"run\":\"torch-expandable\",\"result\":$(PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True \
        python3 "$replayer" "$traces/$t.trace" --json)}"
    done
  fi
) >"$out/traces-side.jsonl" 2>"$out/traces-side.err" &
side=$!
for t in t1 t2 h11 h12 p23 p24; do
  steps=()
  [ "$t" = p23 ] && steps=(--step-log "$out/p23-valet-steps.csv")
  echo "{\"trace\":\"$t\",\"run\":\"valet\",\"result\":$("$bin/valet-replay" "$traces/$t.trace" --backend cuda \
    --pinners 1 "${steps[@]}" --json 2>>"$out/traces.err")}" >>"$out/traces.jsonl"
  tail -c 300 "$out/traces.jsonl"
  echo
done
wait "$side"
echo "== done"
