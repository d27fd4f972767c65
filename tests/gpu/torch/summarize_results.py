#!/usr/bin/env python3
"""The short tables of run_all.sh's results.jsonl: trace replays, generation runs, checks.

usage: summarize_results.py results.jsonl
"""
import json
import sys

GIB = float(1 << 30)


def fmt(value, spec=""):
    return "-" if value is None else format(value, spec)


def _ratio(x):
    return "—" if x is None else f"{x:.3f}"


def main():
    runs = []
    for line in open(sys.argv[1]):
        line = line.strip()
        if line:
            runs.append(json.loads(line))
    print("| step | rc | result |")
    print("|---|---|---|")
    for run in runs:
        r = run.get("result") or {}
        what = run.get("skipped", "")
        if r.get("program") == "tensor_checks":
            what = f"ok={r['ok']} failures={r['failures']} tensors={r['tensors']} compactions={r['compactions']}"
        elif r.get("program") == "compare_runs":
            t = r.get("targets") or {}
            what = (f"ok={r['ok']} failed={r['failed']} memory_below_both={t.get('memory_below_native_and_expandable')} "
                    f"cap_shown={t.get('cap_where_native_fails_and_valet_finishes')}")
        elif r.get("program") == "record_trace":
            what = f"ops={r['ops']} steps={r['steps']} probes={r['probes']} peak_live={r['peak_live_bytes'] / GIB:.2f}GiB"
        elif r.get("program") == "llama_generate" or r.get("run", "").startswith("torch-"):
            continue  # in the tables below
        print(f"| {run['step']} | {run.get('rc')} | {what} |")

    print("\n| llama run | finished | rounds | peak in use (GiB) | peak reserved (GiB) | peak allocated (GiB) | wall (s) |")
    print("|---|---|---|---|---|---|---|")
    for run in runs:
        r = run.get("result") or {}
        if r.get("program") != "llama_generate":
            continue
        print(f"| {run['step']} | {r['finished']} | {r['rounds_done']}/{r['rounds']} "
              f"| {r['peak_device_used_bytes'] / GIB:.3f} | {r['peak_reserved_bytes'] / GIB:.3f} "
              f"| {r['peak_allocated_bytes'] / GIB:.3f} | {r['wall_s']:.1f} |")

    print("\n| trace | allocator | probes failed | ooms | peak reserved / live | with probes | mean frag. "
          "| alloc median (ns) | alloc p99 (ns) | free p99 (ns) | wall (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for run in runs:
        r = run.get("result") or {}
        if not r.get("run", "").startswith("torch-"):
            continue
        print(f"| {r['trace']} | {r['allocator']} | {r['probes_failed']}/{r['probes']} | {r['ooms']} "
              f"| {r['peak_mapped_over_live']:.3f} | {_ratio(r.get('peak_with_probes_over_live'))} "
              f"| {r['mean_fragmentation']:.3f} | {r['alloc_ns_median']:.0f} "
              f"| {r['alloc_ns_p99']:.0f} | {r['free_ns_p99']:.0f} | {r['wall_s']:.1f} |")
    failed = [run["step"] for run in runs if run.get("rc") not in (0, 77, None)]
    print(f"\nsteps with a non-zero exit status: {', '.join(failed) if failed else 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
