#!/usr/bin/env bash
# Generates the six traces (t1 t2 h11 h12 p23 p24, with `valet-replay generate`; parameters below and
# in docs/benchmarks.md) into OUT_DIR where they are not there yet, and replays them through
# Valet twice in the same session: with compaction (the background compactor with its policy
# defaults, safepoint() at every step line; run "valet") and with --no-compact (a heap that never
# moves an object; run "valet-no-compact"); and, where PyTorch with CUDA is available, through
# PyTorch's caching allocator (native and expandable_segments) with the script ANCHOR names. One JSON
# line per run in OUT_DIR/results.jsonl, then a table of the memory and speed figures (free p99 and
# the driver calls per allocation made on the alloc path are Valet's alone: '-' for PyTorch).
#
#   tests/bench/traces/run_traces.sh BIN_DIR OUT_DIR [valet-replay options...]
#   e.g. tests/bench/traces/run_traces.sh build/bin out --backend host --pinners 1
#   TRACES="t1 p23"  to narrow it down;  NO_COMPACT=0  to skip the --no-compact runs;
#   ANCHOR=SCRIPT  a script that replays a trace through PyTorch's caching allocator (not part of
#   Valet; `python3 SCRIPT TRACE --json`), no default: without it the PyTorch runs are left out.
#   --policy KEY=VALUE options apply to the compacting runs only.
set -euo pipefail
bin=$1; out=$2; shift 2
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
declare -A params=(
  [t1]="--seed 1" [t2]="--seed 2"
  [h11]="--seed 11 --probe-fraction 0.85 --arrivals 1.2 --small-objects 12 --probe-every 100"
  [h12]="--seed 12 --probe-fraction 0.85 --arrivals 1.2 --small-objects 12 --probe-every 100"
  [p23]="--seed 23 --phase-every 350 --linger 2500 --probe-fraction 0.8 --arrivals 1.2 --small-objects 12 --probe-every 100"
  [p24]="--seed 24 --phase-every 350 --linger 2500 --probe-fraction 0.8 --arrivals 1.2 --small-objects 12 --probe-every 100"
)
# The options without --policy KEY=VALUE (valet-replay refuses --policy with --no-compact).
plain=()
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[i]}" in
    --policy) i=$((i + 1)) ;;
    --policy=*) ;;
    *) plain+=("${args[i]}") ;;
  esac
done
# valet-replay exits 1 when a heap call failed otherwise than the trace allows; its JSON is still
# the record of the run, so keep going (the problems are on stderr).
replay() { "$bin/valet-replay" "$@" --json || true; }
for t in ${TRACES:-t1 t2 h11 h12 p23 p24}; do
  trace="$out/$t.trace"
  [ -s "$trace" ] || "$bin/valet-replay" generate ${params[$t]} -o "$trace" >/dev/null
  echo "{\"trace\":\"$t\",\"run\":\"valet\",\"result\":$(replay "$trace" "$@")}" | tee -a "$out/results.jsonl"
  if [ "${NO_COMPACT:-1}" != 0 ]; then
    echo "{\"trace\":\"$t\",\"run\":\"valet-no-compact\",\"result\":$(replay "$trace" ${plain[@]+"${plain[@]}"} --no-compact)}" |
      tee -a "$out/results.jsonl"
  fi
  if [ -n "${ANCHOR:-}" ] && python3 -c 'import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "{\"trace\":\"$t\",\"run\":\"torch-native\",\"result\":$(python3 "$ANCHOR" "$trace" --json)}" | tee -a "$out/results.jsonl"
    echo "{\"trace\":\"$t\",\"run\":\"torch-expandable\",\"result\":$(PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True python3 "$ANCHOR" "$trace" --json)}" | tee -a "$out/results.jsonl"
  fi
done
python3 - "$out/results.jsonl" <<'PY'
import json, sys
runs = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]


def figure(r, key, spec):
    """A figure that only some runs report (not PyTorch's, nor older results.jsonl lines): '-' there."""
    return format(r[key], spec) if isinstance(r.get(key), (int, float)) else "-"


print("\n| trace | run | probes failed | OOMs | peak mapped / live | mean fragmentation | (without reserve) "
      "| moved fraction | longest pin wait (ns) | cycles (background / safepoint) | alloc median (ns) | alloc p99 (ns) "
      "| free p99 (ns) | driver calls per op (alloc path) |")
print("|" + "---|" * 14)
for run in runs:
    r, c = run["result"], run["result"].get("compactor") or {}
    ratio = r["peak_mapped_bytes"] / r["peak_live_bytes"] if r.get("peak_live_bytes") else 0
    cycles = f'{r.get("compactions", "-")} ({c.get("background_cycles", "-")} / {c.get("safepoint_cycles", "-")})' \
        if "compactions" in r else "-"
    print(f'| {run["trace"]} | {run["run"]} | {r["probes_failed"]}/{r["probes"]} | {r.get("ooms", "-")} | {ratio:.3f} '
          f'| {r["mean_fragmentation"]:.3f} | {r.get("mean_fragmentation_without_reserve", float("nan")):.3f} '
          f'| {r.get("moved_fraction", 0):.5f} | {r.get("pin_wait_ns_max", "-")} | {cycles} '
          f'| {r.get("alloc_ns_median", 0):.0f} | {r.get("alloc_ns_p99", 0):.0f} '
          f'| {figure(r, "free_ns_p99", ".0f")} | {figure(r, "alloc_path_driver_calls_per_op", ".4f")} |')
PY
