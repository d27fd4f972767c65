#!/usr/bin/env python3
"""Out of memory under Valet reaches the PyTorch program as PyTorch's does, and loses nothing.

Valet is installed with a small capacity (--capacity-mib, 1024 by default). The program fills it
with tensors of a few MiB holding known bytes until an allocation fails, then checks:
  - the failure is an exception (not a tensor at address 0), a RuntimeError whose message begins
    "CUDA out of memory." (what programs that retry with a smaller batch look for);
  - a request larger than the whole capacity fails the same way;
  - every tensor allocated before the failure still holds its bytes;
  - after freeing half of them and a safe-point compaction, allocations succeed again and
    valet_torch's figures count exactly the live tensors.

usage: oom_check.py [--capacity-mib N]
Exit status 0: all held; 1: a check failed (listed); 77: skipped (no torch, no GPU, no library).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_modes  # noqa: E402

MiB = 1 << 20


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--capacity-mib", type=int, default=1024)
    args = parser.parse_args()
    capacity = args.capacity_mib * MiB
    alloc = torch_modes.Allocator("valet", capacity=capacity)
    torch, valet = alloc.torch, alloc.valet
    failures = []

    def check(ok, message):
        if not ok:
            print(f"FAIL: {message}", file=sys.stderr, flush=True)
            failures.append(message)

    def expect_oom(nbytes, what):
        try:
            t = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
        except RuntimeError as e:
            check(str(e).startswith("CUDA out of memory."), f"{what}: the message is {str(e)[:200]!r}")
            return str(e)
        check(False, f"{what}: {nbytes} bytes were allocated (data_ptr 0x{t.data_ptr():x}) beyond the capacity")
        return None

    held = []
    sizes = [3 * MiB + 512 * k for k in range(1, 8)]
    first_failure = None
    for i in range(4 * args.capacity_mib):
        n = sizes[i % len(sizes)]
        try:
            t = torch.empty(n, dtype=torch.uint8, device="cuda")
        except RuntimeError as e:
            first_failure = str(e)
            break
        check(t.data_ptr() != 0, f"tensor {i}: data_ptr 0 returned instead of an error")
        t.fill_(i % 251)
        held.append((i % 251, t))
    t = None  # the loop variable kept the last tensor alive
    check(first_failure is not None, "the capacity was never reached")
    if first_failure is not None:
        check(first_failure.startswith("CUDA out of memory."), f"the first failure says {first_failure[:200]!r}")
    whole = expect_oom(2 * capacity, "a request twice the capacity")
    # The comparisons below need temporaries: give back the last few tensors first (their bytes
    # were checked by nothing, which is fine: the rest are).
    del held[-4:]
    torch.cuda.synchronize()
    bad = [v for v, t in held if not bool((t == v).all())]
    check(not bad, f"{len(bad)} of {len(held)} tensors lost their bytes across the failures")
    held_bytes = sum(t.numel() for _, t in held)
    check(held_bytes > capacity // 2, f"only {held_bytes} bytes were held before the failure (capacity {capacity})")

    del held[::2]
    torch.cuda.synchronize()
    record = valet.compact()
    again = []
    for k in range(8):
        try:
            again.append(torch.full((2 * MiB,), k, dtype=torch.uint8, device="cuda"))
        except RuntimeError as e:
            check(False, f"allocation {k} after freeing half failed: {str(e)[:200]}")
            break
    torch.cuda.synchronize()
    check(all(bool((t == k).all()) for k, t in enumerate(again)), "tensors allocated after the failure hold wrong bytes")
    check(all(bool((t == v).all()) for v, t in held), "tensors kept across the compaction lost their bytes")
    stats = valet.memory_stats()
    live = sum(t.numel() for _, t in held) + sum(t.numel() for t in again)
    allocated = int(stats.get("allocated_bytes.all.current", -1))
    check(allocated == live, f"valet_torch counts {allocated} allocated bytes; {live} are live")

    torch_modes.emit({"check": "oom", "ok": not failures, "failures": failures[:20],
                      "capacity_bytes": capacity, "held_before_failure_bytes": held_bytes,
                      "first_failure": (first_failure or "")[:300], "whole_failure": (whole or "")[:300],
                      "compaction": record, "allocated_after_bytes": allocated, **alloc.describe()})
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
