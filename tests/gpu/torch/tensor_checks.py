#!/usr/bin/env python3
"""Every byte of every live tensor survives Valet as PyTorch's allocator.

Tensors of every size from 1 byte to 64 MiB (powers of two and odd sizes) in every element size,
views and slices written through, a tensor grown by torch.cat in a loop, work on several streams,
and torch.cuda.synchronize() + valet_torch.compact() while all of that is live. Each tensor holds
a pattern derived from its id; after every compaction every tensor (and every view) is compared on
the GPU with the pattern recomputed (torch.equal). Every data_ptr() must be 512-byte aligned.
In the native modes the same program runs with empty_cache() in place of compaction, which
checks the checks.

usage: tensor_checks.py [--allocator valet|native|expandable] [--rounds N]
Exit status 0: all bytes right; 1: a mismatch or a misaligned pointer (listed); 77: skipped.
"""
import argparse
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_modes  # noqa: E402

MiB = 1 << 20
# Sizes in bytes: powers of two up to 64 MiB, their neighbours, and sizes that straddle slab
# classes and the 2 MiB page.
SIZES = sorted({1 << k for k in range(27)} | {(1 << k) + d for k in range(2, 26) for d in (-1, 1)}
               | {3, 7, 100, 511, 513, 1000, 4095, 4097, 65537, 1000003, 2 * MiB + 512,
                  7 * MiB + 13, 32 * MiB + 1, 64 * MiB})
DTYPE_NAMES = ("uint8", "int16", "float16", "bfloat16", "int32", "float32", "int64", "float64",
               "complex64", "complex128", "bool")


def as_bytes(torch, t):
    """The bytes of contiguous tensor `t` as a uint8 view (complex through view_as_real, for
    builds whose view(dtype) refuses complex)."""
    flat = t.view(-1)
    try:
        return flat.view(torch.uint8)
    except RuntimeError:
        return torch.view_as_real(flat).view(-1).view(torch.uint8)


class Checker:
    """Live tensors and the pattern each must hold; check() compares them all."""

    def __init__(self, alloc):
        self.alloc = alloc
        self.torch = alloc.torch
        self.next_id = 0
        self.live = {}  # id -> (tensor, nbytes, what)
        self.views = []  # (base id, view function on a uint8 tensor, what)
        self.failures = []
        self.checked = 0
        self.checks = 0

    def pattern(self, ident, n, offset=0):
        """n bytes of tensor `ident`'s pattern, starting at byte `offset`, made on the GPU."""
        torch = self.torch
        i = torch.arange(offset, offset + n, dtype=torch.int64, device="cuda")
        return ((i * 131 + ident * 7919 + (i >> 8) * 17) % 251).to(torch.uint8)

    def fail(self, message):
        if len(self.failures) < 50:
            print(f"FAIL: {message}", file=sys.stderr, flush=True)
        self.failures.append(message)

    def note_pointer(self, t, what):
        p = t.data_ptr()
        if p == 0 or p % torch_modes.ALIGNMENT:
            self.fail(f"{what}: data_ptr 0x{p:x} is not {torch_modes.ALIGNMENT}-byte aligned")

    def add(self, t, what):
        """Registers `t` (contiguous, already allocated), fills it with its pattern."""
        ident = self.next_id
        self.next_id += 1
        raw = as_bytes(self.torch, t)
        self.note_pointer(t, what)
        raw.copy_(self.pattern(ident, raw.numel()))
        self.live[ident] = (t, raw.numel(), what)
        return ident

    def drop(self, ident):
        self.views = [v for v in self.views if v[0] != ident]
        del self.live[ident]

    def check(self, when):
        torch = self.torch
        self.checks += 1
        for ident, (t, n, what) in self.live.items():
            raw = as_bytes(torch, t)
            if raw.data_ptr() != t.data_ptr() or raw.numel() != n:
                self.fail(f"{when}: {what}: its byte view changed")
                continue
            if not torch.equal(raw, self.pattern(ident, n)):
                self.fail(f"{when}: {what} (id {ident}, {n} bytes): bytes differ from the pattern")
            self.checked += 1
        for ident, view_of, what in self.views:
            t, n, _ = self.live[ident]
            actual = view_of(as_bytes(torch, t))
            expected = view_of(self.pattern(ident, n))
            if not torch.equal(actual, expected):
                self.fail(f"{when}: view {what} of id {ident}: bytes differ")


def allocate_sizes(c, rng):
    """One tensor per (size, dtype) pair, in a shuffled order so that sizes interleave."""
    torch = c.torch
    pairs = [(s, d) for s in SIZES for d in DTYPE_NAMES]
    rng.shuffle(pairs)
    for size, name in pairs:
        dtype = getattr(torch, name)
        elem = torch.empty((), dtype=dtype).element_size()
        numel = max(1, size // elem)
        c.add(torch.empty(numel, dtype=dtype, device="cuda"), f"{name}[{numel}] ({numel * elem} bytes)")


def add_views(c):
    """Views and slices of some live tensors, written through: each view's write puts back the
    base's own pattern, so the base still checks, and the view is checked against the same view
    of the recomputed pattern."""
    torch = c.torch
    views = [
        ("[1:]", lambda b: b[1:]),
        ("[::2]", lambda b: b[::2]),
        ("[3::7]", lambda b: b[3::7]),
        ("2-D transposed", lambda b: b[: (b.numel() // 64) * 64].view(-1, 64).t()),
        ("middle half", lambda b: b[b.numel() // 4: 3 * b.numel() // 4]),
    ]
    for ident in [i for i, (_, n, _) in c.live.items() if n >= 4096][::7]:
        t, n, what = c.live[ident]
        raw = as_bytes(torch, t)
        expected = c.pattern(ident, n)
        for name, view_of in views:
            view_of(raw).copy_(view_of(expected))  # a strided write through the view
            c.views.append((ident, view_of, f"{name} of {what}"))
        # A typed view of the same bytes: float32 elements read back as bytes.
        if n % 4 == 0:
            as_f32 = raw.view(torch.float32)
            as_f32.copy_(expected.view(torch.float32).clone())


def grow_by_cat(c, alloc, steps, compact_every):
    """A tensor grown by torch.cat in a loop, as a KV cache grows; checked at every step and
    compacted every `compact_every` steps while everything else is live."""
    torch = c.torch
    ident = c.next_id
    c.next_id += 1
    grown = c.pattern(ident, 777)
    for step in range(steps):
        n = grown.numel()
        piece = c.pattern(ident, 1000 + 997 * step * step, offset=n)  # to ~36 MiB: crosses pages
        grown = torch.cat([grown, piece])
        c.note_pointer(grown, f"grown tensor at step {step}")
        if not torch.equal(grown, c.pattern(ident, grown.numel())):
            c.fail(f"grown tensor at step {step} ({grown.numel()} bytes): bytes differ")
        if compact_every and step % compact_every == compact_every - 1:
            alloc.safe_point()
            c.check(f"cat step {step}")
    c.live[ident] = (grown, grown.numel(), f"grown tensor ({grown.numel()} bytes)")


def streams(c, alloc):
    """Work on several streams.

    1. Stream-ordered reuse: `a` is allocated and freed on a side stream while a kernel queued
       there (behind a sleep) still reads it; the default stream then allocates and overwrites
       memory at once. An allocator that gave `a`'s memory to the default stream before the side
       stream's work completed would corrupt the copy made from `a`.
    2. record_stream: `x` lives on the default stream and is read on a side stream. PyTorch does
       not forward record_stream to pluggable allocators (CUDAPluggableAllocator::recordStream
       calls a record-stream function only where one was set, and
       torch.cuda.memory.CUDAPluggableAllocator sets none), so the program synchronizes the side
       stream before freeing `x`, as a program on Valet must.
    """
    torch = c.torch
    side = [torch.cuda.Stream() for _ in range(3)]
    copies = []
    for k, s in enumerate(side):
        n = (3 + k) * 1000003
        with torch.cuda.stream(s):
            ident = c.next_id
            c.next_id += 1
            a = torch.empty(n, dtype=torch.uint8, device="cuda")
            c.note_pointer(a, f"stream {k} tensor")
            a.copy_(c.pattern(ident, n))
            torch.cuda._sleep(20_000_000)  # ~10 ms of queued work ahead of the copy
            b = a.clone()
            del a  # freed on `s` while the clone is still queued there
        scribble = torch.empty(n, dtype=torch.uint8, device="cuda")  # default stream, no wait
        scribble.fill_(0xA5)
        copies.append((s, ident, n, b, scribble))
    for s, ident, n, b, scribble in copies:
        s.synchronize()
        if not torch.equal(b, c.pattern(ident, n)):
            c.fail(f"stream-ordered free: a copy made on a side stream from a freed tensor differs "
                   f"({n} bytes): its memory was reused before the stream's work completed")
        c.live[ident] = (b, n, f"copy made on a side stream ({n} bytes)")
    # record_stream, with the synchronize a pluggable allocator needs.
    for k, s in enumerate(side):
        x = torch.empty(5 * MiB + 3, dtype=torch.uint8, device="cuda")
        ident = c.add(x, f"record_stream source {k}")
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            y = x.view(-1) * 1  # read on the side stream; y is allocated on it
        x.record_stream(s)
        s.synchronize()  # required on Valet: record_stream does not reach a pluggable allocator
        c.drop(ident)
        del x
        # y now lives on `s`; it holds x's pattern.
        c.live[ident] = (y, y.numel(), f"record_stream result {k}")


def free_some(c, rng, fraction):
    victims = [i for i in c.live if rng.random() < fraction]
    for i in victims:
        c.drop(i)
    return len(victims)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    torch_modes.add_mode_argument(parser, default="valet")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=16)
    args = parser.parse_args()
    alloc = torch_modes.Allocator(args.allocator)
    torch = alloc.torch
    rng = random.Random(args.seed)
    c = Checker(alloc)
    start = time.perf_counter()
    compactions = []

    def safe_point(when):
        t0 = time.perf_counter()
        rec = alloc.safe_point()
        if rec is not None:
            compactions.append(rec)
        t1 = time.perf_counter()
        c.check(when)
        torch.cuda.synchronize()
        # progress on stderr: where the time goes (safe point vs. checks), for a run cut short
        print(f"[{t1 - start:7.1f} s] {when}: {len(c.live)} live, safe point {t1 - t0:.2f} s, "
              f"check {time.perf_counter() - t1:.2f} s", file=sys.stderr, flush=True)

    for r in range(args.rounds):
        t0 = time.perf_counter()
        allocate_sizes(c, rng)
        torch.cuda.synchronize()
        print(f"[{time.perf_counter() - start:7.1f} s] round {r}: {len(c.live)} live after allocation "
              f"({time.perf_counter() - t0:.2f} s)", file=sys.stderr, flush=True)
        add_views(c)
        c.check(f"round {r}: after allocation")
        safe_point(f"round {r}: compaction with all live")
        grow_by_cat(c, alloc, steps=48, compact_every=12)
        streams(c, alloc)
        safe_point(f"round {r}: after cat and streams")
        freed = free_some(c, rng, 0.6)
        safe_point(f"round {r}: after freeing {freed} tensors")
    while c.live:  # free the rest in steps, compacting at each
        free_some(c, rng, 0.5)
        safe_point("draining")
    torch.cuda.synchronize()
    record = alloc.describe()
    record.update({"program": "tensor_checks", "ok": not c.failures, "failures": len(c.failures),
                   "first_failures": c.failures[:5], "tensors": c.next_id, "tensor_checks": c.checked,
                   "check_passes": c.checks, "compactions": len(compactions),
                   "wall_s": round(time.perf_counter() - start, 3)})
    if alloc.valet is not None:
        record["memory_stats"] = dict(alloc.valet.memory_stats())
        last = compactions[-1] if compactions else None
        record["last_compaction"] = last if isinstance(last, dict) else repr(last)
    torch_modes.emit(record)
    return 0 if not c.failures else 1


if __name__ == "__main__":
    sys.exit(main())
