#!/usr/bin/env python3
"""Replays a gpuheap-trace v1 through torch.empty(n, dtype=uint8), under one allocator per process.

  torch_trace_replay.py TRACE [--allocator valet|native|expandable] [--compact-every K]
                        [--compact-every-step] [--json]

The trace format is runtime/tools/replay/trace.h's: `a ID BYTES`, `f ID`, `s` (a step ended),
`p BYTES` (a probe: allocate one object of BYTES and free it at once; the request a fragmented
heap fails although the memory is free in total), '#' comments, and a header comment
`# gpuheap-trace v1 ... capacity=BYTES`. The capacity caps the allocator: valet through
valet_torch.install(capacity=...), native and expandable through set_per_process_memory_fraction.
A .gz trace is read through gzip.

Figures (one JSON line with --json; the names follow valet-replay's report where they mean the
same): alloc median/p99/max ns and free median/p99 ns (time.perf_counter_ns around torch.empty and
around dropping the last reference), probes ok/failed, ooms (trace allocations that failed), peak
live bytes (the trace's own running sum), peak reserved (native: memory_reserved(); valet:
memory_stats()["reserved_bytes.all.current"]) sampled where valet-replay samples mapped bytes (at
step lines, at each new peak of live bytes, and before each probe, so that the memory an allocator
maps to serve a probe is not counted: one that fails the probe maps nothing), their ratio, the
allocator's own peak with probes (native: max_memory_reserved(); valet: reserved_bytes.all.peak), the mean fragmentation over the step
lines ((reserved - allocated) / reserved, and valet-replay's 1 - sum live / sum reserved), wall s.
Valet: valet_torch.compact() every K step lines (0: never; the background compactor runs anyway).
Without --allocator the mode follows PYTORCH_CUDA_ALLOC_CONF, so tests/bench/gpu_session.sh and
tests/bench/traces/run_traces.sh can call this script as their PyTorch replayer.
"""
import argparse
import gzip
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "gpu", "torch"))
import torch_modes  # noqa: E402


def open_trace(path):
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rt") if gz else open(path, "r")


def read_trace(path):
    """(header capacity or None, list of ops as tuples). Ops are parsed before the replay so
    that parsing stays out of the timings; an unknown line is an error naming its number."""
    capacity, ops, seen_op = None, [], False
    with open_trace(path) as f:
        for number, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if fields[0].startswith("#"):
                if not seen_op and "gpuheap-trace" in line and "capacity=" in line:
                    capacity = int(line.split("capacity=")[1].split()[0])
                continue
            seen_op = True
            op = fields[0]
            if op == "a" and len(fields) == 3:
                ops.append(("a", fields[1], int(fields[2])))
            elif op == "f" and len(fields) == 2:
                ops.append(("f", fields[1], 0))
            elif op == "s" and len(fields) == 1:
                ops.append(("s", None, 0))
            elif op == "p" and len(fields) == 2:
                ops.append(("p", None, int(fields[1])))
            else:
                raise SystemExit(f"{path}:{number}: not a gpuheap-trace v1 op: {line.strip()!r}")
    return capacity, ops


class Replay:
    def __init__(self, alloc, compact_every):
        self.alloc = alloc
        self.torch = alloc.torch
        self.compact_every = compact_every
        self.live = {}
        self.sizes = {}
        self.live_bytes = 0
        self.peak_live = 0
        self.alloc_ns, self.free_ns = [], []
        self.probes = self.probes_failed = self.ooms = self.steps = 0
        self.frag, self.sum_reserved, self.sum_allocated = [], 0, 0
        self.compactions, self.compact_ns = 0, []
        self.peak_held = 0  # reserved bytes sampled as valet-replay samples mapped bytes

    def held_now(self):
        """Physical memory the allocator holds now: valet's mapped bytes, native's reserved."""
        if self.alloc.valet is not None:
            return self.alloc.figures()["reserved"]
        return self.torch.cuda.memory_reserved()

    def sample_held(self, held=None):
        self.peak_held = max(self.peak_held, self.held_now() if held is None else held)

    def allocate(self, ident, n):
        torch = self.torch
        t0 = time.perf_counter_ns()
        try:
            x = torch.empty(n, dtype=torch.uint8, device="cuda")
        except Exception as e:  # noqa: BLE001 -- only allocation failures are counted
            if not torch_modes.is_oom(torch, e):
                raise
            x = None
        t1 = time.perf_counter_ns()
        if x is None or x.data_ptr() == 0:
            self.ooms += 1  # its free is skipped: the object never lived
            return
        self.alloc_ns.append(t1 - t0)
        self.live[ident] = x
        self.sizes[ident] = n
        self.live_bytes += n
        if self.live_bytes > self.peak_live:
            self.peak_live = self.live_bytes
            # Live bytes peak inside a step: sample what is held at that moment too (untimed).
            self.sample_held()

    def free(self, ident):
        x = self.live.pop(ident, None)
        if x is None:
            return
        t0 = time.perf_counter_ns()
        del x  # the last reference: the allocator's free runs here
        self.free_ns.append(time.perf_counter_ns() - t0)
        self.live_bytes -= self.sizes.pop(ident)

    def probe(self, n):
        # Sampled before the probe: the probe is the benchmark's instrument, and the memory an
        # allocator maps to serve it (one that fails it maps nothing) is not the workload's.
        self.sample_held()
        self.probes += 1
        x = torch_modes.empty_bytes(self.torch, n)
        if x is None:
            self.probes_failed += 1
        del x

    def step(self):
        self.steps += 1
        if self.alloc.valet is not None and self.compact_every and self.steps % self.compact_every == 0:
            t0 = time.perf_counter_ns()
            self.alloc.valet.compact()
            self.compact_ns.append(time.perf_counter_ns() - t0)
            self.compactions += 1
        f = self.alloc.figures()
        reserved, allocated = f["reserved"], f["allocated"]
        self.sample_held(reserved)
        self.frag.append((reserved - allocated) / reserved if reserved else 0.0)
        self.sum_reserved += reserved
        self.sum_allocated += self.live_bytes

    def run(self, ops):
        start = time.perf_counter()
        for op, ident, n in ops:
            if op == "a":
                self.allocate(ident, n)
            elif op == "f":
                self.free(ident)
            elif op == "s":
                self.step()
            else:
                self.probe(n)
        self.torch.cuda.synchronize()
        return time.perf_counter() - start

    def peak_reserved(self):
        if self.alloc.valet is not None:
            return self.alloc.figures()["reserved_peak"]
        return self.torch.cuda.max_memory_reserved()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("trace")
    torch_modes.add_mode_argument(parser)
    parser.add_argument("--compact-every", type=int, default=0, metavar="K",
                        help="valet: valet_torch.compact() every K step lines (0: never)")
    parser.add_argument("--compact-every-step", action="store_true", help="--compact-every 1")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    args = parser.parse_args()
    if args.compact_every_step:
        args.compact_every = 1
    capacity, ops = read_trace(args.trace)
    alloc = torch_modes.Allocator(args.allocator, capacity=capacity)
    replay = Replay(alloc, args.compact_every)
    wall = replay.run(ops)
    peak_reserved = replay.peak_reserved()
    a, fr = sorted(replay.alloc_ns), sorted(replay.free_ns)
    record = {"trace": os.path.basename(args.trace), "run": f"torch-{args.allocator}"}
    record.update(alloc.describe())
    record.update({
        "ops": len(ops), "steps": replay.steps, "ooms": replay.ooms,
        "probes": replay.probes, "probes_ok": replay.probes - replay.probes_failed,
        "probes_failed": replay.probes_failed,
        "alloc_ns_median": torch_modes.median(a), "alloc_ns_p99": torch_modes.percentile(a, 0.99),
        "alloc_ns_max": float(a[-1]) if a else 0.0,
        "free_ns_median": torch_modes.median(fr), "free_ns_p99": torch_modes.percentile(fr, 0.99),
        "peak_live_bytes": replay.peak_live, "peak_reserved_bytes": replay.peak_held,
        "peak_mapped_bytes": replay.peak_held,
        "peak_mapped_over_live": replay.peak_held / replay.peak_live if replay.peak_live else 0.0,
        # The allocator's own peak, which counts the memory it mapped for probes it served.
        "peak_reserved_with_probes_bytes": peak_reserved,
        "peak_with_probes_over_live": peak_reserved / replay.peak_live if replay.peak_live else 0.0,
        "mean_fragmentation": sum(replay.frag) / len(replay.frag) if replay.frag else 0.0,
        "mean_fragmentation_weighted":
            1.0 - replay.sum_allocated / replay.sum_reserved if replay.sum_reserved else 0.0,
        "compact_every": args.compact_every, "compactions": replay.compactions,
        "compact_ns_max": max(replay.compact_ns, default=0),
        "wall_s": round(wall, 3),
    })
    if not args.json:
        print(f"{record['trace']} {record['run']}: probes failed {replay.probes_failed}/{replay.probes}, "
              f"ooms {replay.ooms}, peak reserved/live {record['peak_mapped_over_live']:.3f}, "
              f"alloc p99 {record['alloc_ns_p99']:.0f} ns, wall {wall:.1f} s", file=sys.stderr)
    torch_modes.emit(record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
