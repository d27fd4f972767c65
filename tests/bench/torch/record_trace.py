#!/usr/bin/env python3
"""Records a real PyTorch workload as a gpuheap-trace v1 (runtime/tools/replay/trace.h).

  record_trace.py --out FILE.trace[.gz] [--model-size small] [--rounds N] [--dtype bfloat16]
                  [--new-tokens N] [--probe-every K] [--probe-fraction F]

Runs llama_workload.py's generation loop (a randomly initialised Llama-style model, greedy, batch
sizes and prompt lengths changing every round) on PyTorch's native allocator under
torch.cuda.memory._record_memory_history, takes torch.cuda.memory._snapshot(), and converts its
device trace: `alloc` -> `a ID SIZE` (IDs numbered in order, the address naming the object until
its free), `free_completed` -> `f ID`. Recording starts before the model is made, so the weights
are in the trace; they are freed at its end.
Rounds: after each round the program synchronizes and allocates and frees one marker tensor; the
marker's alloc in the trace (its address, taken from data_ptr(), and its size) becomes the round's
step line `s`, and the marker itself is left out.
Header: capacity = 1.25 x the trace's peak live bytes, rounded up to 2 MiB. Probes as in the
synthetic traces (runtime/tools/replay/workload.cpp): after every --probe-every-th step line, one
`p` of --probe-fraction of the memory free at that point (capacity - live).
One JSON line on stdout: ops, steps, probes, peak live, capacity, and what the conversion skipped
(frees of addresses it never saw allocated, allocations over a live address).
"""
import argparse
import gzip
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "gpu", "torch"))
import llama_workload  # noqa: E402
import torch_modes  # noqa: E402

MARKER_BYTES = 3 * (1 << 20) + 12345  # an odd size no tensor of the workload has


def start_recording(torch, max_entries):
    try:
        torch.cuda.memory._record_memory_history(enabled="all", context=None, stacks="python",
                                                 max_entries=max_entries)
    except TypeError:  # builds without the keyword form
        torch.cuda.memory._record_memory_history(True, trace_alloc_max_entries=max_entries,
                                                 trace_alloc_record_context=False)


def run_workload(torch, args):
    """Runs the rounds; returns the markers' addresses, in order."""
    dtype = getattr(torch, args.dtype)
    model = llama_workload.build_model(torch, args.model_size, dtype, seed=args.seed)
    markers = []
    for r, (batch, length) in enumerate(llama_workload.rounds(args.rounds)):
        ids = llama_workload.prompt(torch, r, batch, length, model.config.vocab_size, seed=args.seed)
        out = llama_workload.generate(torch, model, ids, args.new_tokens)
        del out
        torch.cuda.synchronize()
        marker = torch.empty(MARKER_BYTES, dtype=torch.uint8, device="cuda")
        markers.append(marker.data_ptr())
        del marker
    del model
    torch.cuda.synchronize()
    return markers


def convert(entries, markers):
    """(ops, peak live bytes, counts of what was skipped). ops: ("a", id, size) / ("f", id) / ("s",)."""
    ops, live, next_id, live_bytes, peak = [], {}, 0, 0, 0
    skipped = {"unknown_frees": 0, "allocs_over_live": 0, "zero_sizes": 0, "markers_missing": 0}
    m, marker_addr = 0, None
    for e in entries:
        action, addr, size = e.get("action"), e.get("addr"), int(e.get("size", 0))
        if action == "alloc":
            if m < len(markers) and addr == markers[m] and MARKER_BYTES <= size < MARKER_BYTES + (2 << 20):
                ops.append(("s",))
                marker_addr, m = addr, m + 1
                continue
            if size == 0:
                skipped["zero_sizes"] += 1
                continue
            if addr in live:  # its free was not recorded: free it first
                skipped["allocs_over_live"] += 1
                ident, old = live.pop(addr)
                ops.append(("f", ident))
                live_bytes -= old
            live[addr] = (next_id, size)
            ops.append(("a", next_id, size))
            next_id += 1
            live_bytes += size
            peak = max(peak, live_bytes)
        elif action == "free_completed":
            if addr == marker_addr:
                marker_addr = None
                continue
            if addr not in live:
                skipped["unknown_frees"] += 1  # allocated before recording, or lost to the ring
                continue
            ident, size = live.pop(addr)
            ops.append(("f", ident))
            live_bytes -= size
    for ident, _ in live.values():  # what the program still held (nothing, normally): freed at the end
        ops.append(("f", ident))
    skipped["markers_missing"] = len(markers) - m
    return ops, peak, skipped


def write_trace(path, ops, capacity, every, fraction, header):
    """Writes the trace with its probes; returns (steps, probes)."""
    opener = gzip.open if path.endswith(".gz") else open
    sizes, live_bytes, steps, probes = {}, 0, 0, 0
    with opener(path, "wt") as f:
        f.write(f"# gpuheap-trace v1 {header} capacity={capacity}\n")
        f.write("# recorded by tests/bench/torch/record_trace.py: " + " ".join(sys.argv[1:]) + "\n")
        lines = []
        for op in ops:
            if op[0] == "a":
                sizes[op[1]] = op[2]
                live_bytes += op[2]
                lines.append(f"a {op[1]} {op[2]}")
            elif op[0] == "f":
                live_bytes -= sizes.pop(op[1])
                lines.append(f"f {op[1]}")
            else:
                steps += 1
                lines.append("s")
                want = int((capacity - min(capacity, live_bytes)) * fraction)
                if every and steps % every == 0 and want > 0:
                    lines.append(f"p {want}")
                    probes += 1
            if len(lines) >= 4096:
                f.write("\n".join(lines) + "\n")
                lines = []
        if lines:
            f.write("\n".join(lines) + "\n")
    return steps, probes


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--model-size", choices=sorted(llama_workload.MODEL_SIZES), default="small")
    p.add_argument("--rounds", type=int, default=len(llama_workload.SCHEDULE))
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="bfloat16")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--probe-every", type=int, default=1, help="steps between probes (0: none)")
    p.add_argument("--probe-fraction", type=float, default=0.5)
    p.add_argument("--max-entries", type=int, default=4_000_000)
    args = p.parse_args()
    torch = torch_modes.import_torch("native")
    start = time.perf_counter()
    torch.cuda.init()
    start_recording(torch, args.max_entries)
    markers = run_workload(torch, args)
    snapshot = torch.cuda.memory._snapshot()
    torch.cuda.memory._record_memory_history(enabled=None)
    entries = snapshot["device_traces"][torch.cuda.current_device()]
    ops, peak, skipped = convert(entries, markers)
    capacity = torch_modes.round_up(int(peak * 1.25), torch_modes.PAGE_BYTES)
    header = (f"source=torch-record model=llama-{args.model_size} dtype={args.dtype} rounds={args.rounds} "
              f"torch={torch.__version__}")
    steps, probes = write_trace(args.out, ops, capacity, args.probe_every, args.probe_fraction, header)
    torch_modes.emit({"program": "record_trace", "out": args.out, "trace_entries": len(entries),
                      "ops": len(ops) + probes, "steps": steps, "probes": probes, "peak_live_bytes": peak,
                      "capacity_bytes": capacity, "skipped": skipped, "max_entries": args.max_entries,
                      "ring_full": len(entries) >= args.max_entries, "torch": torch.__version__,
                      "wall_s": round(time.perf_counter() - start, 3)})
    bad = skipped["markers_missing"] or len(entries) >= args.max_entries or not ops
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
