#!/usr/bin/env bash
# Valet under real PyTorch, in one device call (about 8 minutes at most; BUDGET_S changes it):
#
#   VALET_TORCH_LIBRARY=build/lib/libvalet_torch.so TRACE_DIR=traces tests/gpu/torch/run_all.sh OUT_DIR
#
# Builds nothing. Runs, one allocator per process, each printing one JSON line:
#   1. tensor_checks.py on valet (every byte after every compaction, 512-byte alignment), and
#      oom_check.py (out of memory is PyTorch's RuntimeError and loses no tensor);
#   2. llama_generate.py in float32 and bfloat16 for valet, native and expandable, then
#      compare_runs.py (float32 token ids identical; bfloat16 first-step logits within
#      expandable's differences);
#   3. capped bfloat16 runs: caps from native's own peak allocated bytes, rising until valet
#      finishes; native (and expandable) at that cap;
#   4. record_trace.py: a real trace of the generation loop (OUT_DIR/llama-small.trace.gz);
#   5. torch_trace_replay.py on every *.trace / *.trace.gz of TRACE_DIR and the recorded trace,
#      for the three modes.
# Everything lands in OUT_DIR: results.jsonl (one line per run: {"step", "rc", "result"}),
# summary.txt (summarize_results.py), log.txt (stderr), tokens-float32-*.json and the trace.
# Logits and other bulky outputs stay in a scratch folder. A step that would run past the budget
# is recorded as skipped; QUICK=1 makes every step short (CTest's torch-run-all-quick).
set -uo pipefail
out=${1:?usage: run_all.sh OUT_DIR}
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
bench=$repo/tests/bench/torch
mkdir -p "$out"
out=$(cd "$out" && pwd)
: >"$out/results.jsonl"
: >"$out/log.txt"
export PYTHONPATH=$repo/python${PYTHONPATH:+:$PYTHONPATH}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
deadline=$((SECONDS + ${BUDGET_S:-470}))
quick=${QUICK:-0}
rounds=12 trace_rounds=12
[ "$quick" = 1 ] && rounds=4 trace_rounds=3
trace_rounds=${TRACE_ROUNDS:-$trace_rounds}

python3 - <<'PY' || exit $?
import sys
try:
    import torch
except ImportError:
    print("skipped: PyTorch is not installed"); sys.exit(77)
if not torch.cuda.is_available():
    print("skipped: PyTorch sees no usable CUDA device"); sys.exit(77)
PY
if [ -z "${VALET_TORCH_LIBRARY:-}" ] || [ ! -f "$VALET_TORCH_LIBRARY" ]; then
  echo "skipped: VALET_TORCH_LIBRARY does not name libvalet_torch.so (${VALET_TORCH_LIBRARY:-unset})"
  exit 77
fi
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -2
  python3 -c 'import torch, transformers; print("torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__)' 2>&1
} | tee "$out/card.txt"

failures=0
# step NAME SECONDS COMMAND...: runs COMMAND with the time left (at most SECONDS), appends
# {"step": NAME, "rc": RC, "result": <its last JSON line or null>} to results.jsonl.
step() {
  local name=$1 secs=$2 left=$((deadline - SECONDS))
  shift 2
  if [ "$left" -lt 20 ]; then
    echo "{\"step\":\"$name\",\"rc\":null,\"result\":null,\"skipped\":\"over the time budget\"}" >>"$out/results.jsonl"
    echo "== $name: skipped (budget)"
    return 0
  fi
  [ "$secs" -gt "$left" ] && secs=$left
  echo "== $name ($secs s at most)"
  echo "== $name: $*" >>"$out/log.txt"
  timeout "$secs" "$@" >"$scratch/stdout" 2>>"$out/log.txt"
  local rc=$?
  local json
  json=$(grep '^{' "$scratch/stdout" | tail -1)
  python3 -c 'import json, sys; json.loads(sys.argv[1])' "$json" 2>/dev/null || json=null
  echo "{\"step\":\"$name\",\"rc\":$rc,\"result\":$json}" >>"$out/results.jsonl"
  tail -c 400 "$scratch/stdout"
  [ "$rc" -ne 0 ] && [ "$rc" -ne 77 ] && failures=$((failures + 1))
  return 0
}
# field STEP KEY: a figure from the result of STEP in results.jsonl (empty if none).
field() {
  python3 - "$out/results.jsonl" "$1" "$2" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    run = json.loads(line)
    if run.get("step") == sys.argv[2] and run.get("result"):
        value = run["result"].get(sys.argv[3])
        print("" if value is None else value)
PY
}

# STEPS narrows the run to some of: tensor llama cap record replay (default: all of them).
want() { [[ " ${STEPS:-tensor llama cap record replay} " == *" $1 "* ]]; }
tc_rounds=${TC_ROUNDS:-3}
[ "$quick" = 1 ] && tc_rounds=1
want tensor && step tensor-checks-valet 120 python3 "$here/tensor_checks.py" --allocator valet --rounds "$tc_rounds"
want tensor && step oom-valet 60 python3 "$here/oom_check.py"

want llama && for dtype in float32 bfloat16; do
  for mode in valet native expandable; do
    tokens=$scratch/tokens-$dtype-$mode.json
    [ "$dtype" = float32 ] && tokens=$out/tokens-float32-$mode.json
    step "llama-$dtype-$mode" 120 python3 "$here/llama_generate.py" --allocator "$mode" --dtype "$dtype" \
      --rounds "$rounds" --tokens-out "$tokens" --logits-out "$scratch/logits-$dtype-$mode.pt" --json
  done
done
# Under a cap: the lowest of a few caps (native's peak allocated bytes x 1.05, 1.10, 1.20) at
# which valet finishes; then native and expandable at that cap.
peak=$(field llama-bfloat16-native peak_allocated_bytes)
if want cap && [ -n "$peak" ]; then
  for factor in 1.05 1.10 1.20; do
    cap=$(python3 -c "import sys; p=2<<20; print(-(-int($peak * $factor) // p) * p)")
    step "llama-capped-$factor-valet" 120 python3 "$here/llama_generate.py" --allocator valet --dtype bfloat16 \
      --rounds "$rounds" --cap-bytes "$cap" --json
    [ "$(field "llama-capped-$factor-valet" finished)" = True ] || continue
    for mode in native expandable; do
      step "llama-capped-$factor-$mode" 120 python3 "$here/llama_generate.py" --allocator "$mode" \
        --dtype bfloat16 --rounds "$rounds" --cap-bytes "$cap" --json
    done
    break
  done
fi
want llama && step compare 60 python3 "$here/compare_runs.py" \
  --tokens-valet "$out/tokens-float32-valet.json" --tokens-native "$out/tokens-float32-native.json" \
  --tokens-expandable "$out/tokens-float32-expandable.json" \
  --logits-valet "$scratch/logits-bfloat16-valet.pt" --logits-native "$scratch/logits-bfloat16-native.pt" \
  --logits-expandable "$scratch/logits-bfloat16-expandable.pt" --results "$out/results.jsonl"


recorded=$out/llama-small.trace.gz
want record && step record-trace 120 python3 "$bench/record_trace.py" --out "$recorded" --rounds "$trace_rounds"
traces=()
if [ -n "${TRACE_DIR:-}" ] && [ -d "$TRACE_DIR" ]; then
  for t in "$TRACE_DIR"/*.trace "$TRACE_DIR"/*.trace.gz; do [ -f "$t" ] && traces+=("$t"); done
fi
[ -s "$recorded" ] && traces=("$recorded" ${traces[@]+"${traces[@]}"})
want replay || traces=()
for t in ${traces[@]+"${traces[@]}"}; do
  name=$(basename "$t")
  for mode in valet native expandable; do
    step "replay-${name%%.trace*}-$mode" 90 python3 "$bench/torch_trace_replay.py" "$t" --allocator "$mode" --json
  done
done

python3 "$here/summarize_results.py" "$out/results.jsonl" | tee "$out/summary.txt"
echo "failed steps: $failures" | tee -a "$out/summary.txt"
[ "$failures" -eq 0 ]
