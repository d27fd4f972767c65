#!/usr/bin/env bash
# Replays the six public traces (t1 t2 h11 h12 p23 p24; parameters in docs/benchmarks.md) through
# Valet and, where PyTorch with CUDA is available, through PyTorch's caching allocator (native and
# expandable_segments) with the anchor replayer, in the same session. One JSON line per run.
#
#   tests/bench/traces/run_traces.sh BIN_DIR OUT_DIR [valet-replay options...]
#   ANCHOR=path/to/torch_replay.py  TRACES="t1 p23"  to narrow it down.
set -euo pipefail
bin=$1; out=$2; shift 2
here=$(cd "$(dirname "$0")" && pwd)
gen=${GEN_TRACE:-$here/../../../runtime/tools/replay/gen_trace.py}
mkdir -p "$out"
declare -A params=(
  [t1]="--seed 1" [t2]="--seed 2"
  [h11]="--seed 11 --probe-fraction 0.85 --arrivals 1.2 --small-objects 12 --probe-every 100"
  [h12]="--seed 12 --probe-fraction 0.85 --arrivals 1.2 --small-objects 12 --probe-every 100"
  [p23]="--seed 23 --phase-every 350 --linger 2500 --probe-fraction 0.8 --arrivals 1.2 --small-objects 12 --probe-every 100"
  [p24]="--seed 24 --phase-every 350 --linger 2500 --probe-fraction 0.8 --arrivals 1.2 --small-objects 12 --probe-every 100"
)
for t in ${TRACES:-t1 t2 h11 h12 p23 p24}; do
  trace="$out/$t.trace"
  [ -s "$trace" ] || python3 "$gen" ${params[$t]} -o "$trace"
  echo "{\"trace\":\"$t\",\"run\":\"valet\",\"result\":$("$bin/valet-replay" "$trace" --json "$@")}" | tee -a "$out/results.jsonl"
  if [ -n "${ANCHOR:-}" ] && python3 -c 'import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "{\"trace\":\"$t\",\"run\":\"torch-native\",\"result\":$(python3 "$ANCHOR" "$trace" --json)}" | tee -a "$out/results.jsonl"
    echo "{\"trace\":\"$t\",\"run\":\"torch-expandable\",\"result\":$(PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True python3 "$ANCHOR" "$trace" --json)}" | tee -a "$out/results.jsonl"
  fi
done
