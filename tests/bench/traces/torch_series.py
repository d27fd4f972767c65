#!/usr/bin/env python3
"""Replays a gpuheap-trace v1 through PyTorch's CUDA caching allocator under the trace's capacity
and writes, for every step line, the live bytes (the trace's own running sum) and PyTorch's
memory_reserved(): the series plotted against Valet's in docs/benchmarks.md.
Set PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True for that mode.

usage: torch_series.py TRACE OUT.csv
"""
import sys, torch

def main():
    path, out = sys.argv[1], sys.argv[2]
    lines = open(path).read().splitlines()
    cap = next(int(l.split("capacity=")[1].split()[0]) for l in lines[:3] if "capacity=" in l)
    torch.cuda.init()
    torch.cuda.set_per_process_memory_fraction(cap / torch.cuda.mem_get_info()[1])
    live, sizes, live_bytes, step = {}, {}, 0, 0
    with open(out, "w") as f:
        f.write("step,live_bytes,mapped_bytes\n")
        for line in lines:
            c = line[:1]
            if c == "a":
                _, i, n = line.split(); n = int(n)
                try:
                    live[i] = torch.empty(n, dtype=torch.uint8, device="cuda"); sizes[i] = n; live_bytes += n
                except torch.OutOfMemoryError:
                    pass
            elif c == "f":
                i = line.split()[1]
                if live.pop(i, None) is not None: live_bytes -= sizes.pop(i)
            elif c == "s":
                f.write(f"{step},{live_bytes},{torch.cuda.memory_reserved()}\n"); step += 1
            elif c == "p":
                try:
                    x = torch.empty(int(line.split()[1]), dtype=torch.uint8, device="cuda"); del x
                except torch.OutOfMemoryError:
                    pass

if __name__ == "__main__":
    main()
