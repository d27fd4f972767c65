#!/usr/bin/env python3
"""CTest: valet-replay streams its trace. A gzip file of LINES step lines (a few hundred KB) is
replayed under an address-space limit (RLIMIT_AS) that leaves HEADROOM bytes above what replaying
a 1-line trace needs: holding the trace's ops in memory (32 bytes each) would need far more.

usage: test_replay_stream.py REPLAY WORKDIR
"""
import gzip, os, resource, subprocess, sys, time

LINES = 12_000_000
HEADROOM = 256 << 20
ARGS = ["--backend", "host", "--capacity", "32MiB", "--no-compact", "--pinners", "0", "--json"]


def write_trace(path, lines):
    with gzip.open(path, "wb", compresslevel=9) as f:
        f.write(b"# gpuheap-trace v1 capacity=33554432\na 0 4096\n")
        chunk = b"s\n" * 1_000_000
        for _ in range(lines // 1_000_000):
            f.write(chunk)
        f.write(b"s\n" * (lines % 1_000_000))
        f.write(b"f 0\n")


def smallest_limit(replay, path):
    """The smallest address-space limit (to 16 MiB) under which the 1-line trace replays."""
    def ok(limit):
        r = subprocess.run([replay, path] + ARGS, capture_output=True, timeout=60,
                           preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)))
        return r.returncode == 0
    low, high = 64 << 20, 8 << 30
    if not ok(high):
        sys.exit("FAIL: the short trace does not replay even with 8 GiB of address space")
    while high - low > (16 << 20):
        mid = (low + high) // 2
        if ok(mid):
            high = mid
        else:
            low = mid
    return high


def main():
    replay, workdir = sys.argv[1:3]
    os.makedirs(workdir, exist_ok=True)
    short = os.path.join(workdir, "short.trace.gz")
    long = os.path.join(workdir, "long.trace.gz")
    write_trace(short, 1)
    write_trace(long, LINES)
    print(f"{long}: {os.path.getsize(long)} bytes, {LINES} step lines")
    base = smallest_limit(replay, short)
    limit = base + HEADROOM
    print(f"a 1-line trace replays within {base >> 20} MiB of address space; limit {limit >> 20} MiB")
    start = time.monotonic()
    r = subprocess.run([replay, long] + ARGS, capture_output=True, text=True, timeout=240,
                       preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)))
    print(f"exit {r.returncode} after {time.monotonic() - start:.1f} s: {r.stderr.strip()[:400]}")
    if r.returncode != 0:
        sys.exit(f"FAIL: the {LINES}-line trace does not replay within {limit >> 20} MiB of address space")
    print("ok")


if __name__ == "__main__":
    main()
