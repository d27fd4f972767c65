#!/usr/bin/env python3
"""CTest: traces and capacities that once crashed or misled valet-replay, through the real binary.

- a header capacity no heap can back (2^62, 2^49, 2^45 bytes) is refused at once, in bounded time
  and memory, with exit status 2, never an uncaught exception;
- damaged gzip data (truncated, damaged inside, damaged header) is reported as corrupt, naming
  the file, not as a syntax error;
- a NUL byte inside a line is a syntax error naming the line;
- a trace with no operations is refused;
- bytes that are not printable text are escaped (\\xHH) in messages, and long ones cut short;
- argument errors exit 2.

usage: test_replay_bad_input.py REPLAY WORKDIR
"""
import gzip, os, random, resource, subprocess, sys, time, zlib

HEADER = b"# gpuheap-trace v1 seed=0 steps=1 capacity=67108864\n"
# Address space the replayer may take in the capacity cases: far below what a table per 2 MiB page
# of 2^49 bytes (3 GB) needs, and above what a refused heap costs.
CAPACITY_CASES_AS_LIMIT = 2 << 30
failures = []


def run(replay, path, *extra, as_limit=None, timeout=60):
    def limit():
        if as_limit:
            resource.setrlimit(resource.RLIMIT_AS, (as_limit, as_limit))
    start = time.monotonic()
    try:
        r = subprocess.run([replay, path, "--backend", "host"] + list(extra), capture_output=True,
                           timeout=timeout, preexec_fn=limit)
    except subprocess.TimeoutExpired:
        failures.append(f"{os.path.basename(path)}: still running after {timeout} s")
        return None, timeout
    return r, time.monotonic() - start


def expect(name, r, code, words, stdout_empty=True):
    if r is None:
        return
    err = r.stderr.decode("ascii", "replace")
    print(f"{name}: exit {r.returncode}: {err.strip()[:300]}")
    if r.returncode != code:
        failures.append(f"{name}: exit status {r.returncode}, expected {code}")
    for w in words:
        if w not in err:
            failures.append(f"{name}: stderr does not say '{w}'")
    if stdout_empty and r.stdout.strip():
        failures.append(f"{name}: printed figures")


def write(workdir, name, data):
    path = os.path.join(workdir, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


def capacities(replay, workdir):
    for exp in (62, 49, 45):
        path = write(workdir, f"capacity-2^{exp}.trace",
                     f"# gpuheap-trace v1 capacity={1 << exp}\na 0 4096\nf 0\ns\n".encode())
        r, took = run(replay, path, as_limit=CAPACITY_CASES_AS_LIMIT)
        expect(f"capacity 2^{exp}", r, 2, ["capacity" if exp != 45 else "64 TiB"])
        if took > 5:
            failures.append(f"capacity 2^{exp}: refused after {took:.1f} s, expected under 5 s")
    r, _ = run(replay, path, "--capacity", "100000TiB", as_limit=CAPACITY_CASES_AS_LIMIT)
    expect("--capacity 100000TiB", r, 2, ["more than a heap can address"])


def stored_with_damage(text):
    z = zlib.compressobj(level=0, wbits=31)
    packed = bytearray(z.compress(text) + z.flush())
    at = packed.index(b"\na 10 ") + 1
    packed[at] = ord("x")
    return bytes(packed)


def corrupt_gzip(replay, workdir):
    rng = random.Random(7)
    lines = [HEADER.decode()]
    for i in range(4000):
        lines.append(f"a {i} {rng.randint(1, 1 << 16)}\n")
        if i % 3 == 0:
            lines.append(f"f {i}\n")
        if i % 50 == 0:
            lines.append("s\n")
    packed = gzip.compress("".join(lines).encode(), mtime=0)
    good = write(workdir, "good.trace.gz", packed)
    r, _ = run(replay, good, "--no-compact", "--pinners", "0")
    expect("intact gzip", r, 0, [], stdout_empty=False)
    cases = {
        "truncated.trace.gz": packed[: len(packed) // 2],
        "damaged-inside.trace.gz": packed[:len(packed) // 2] + bytes(b ^ 0x5a for b in packed[len(packed) // 2:
                                                                                              len(packed) // 2 + 64])
        + packed[len(packed) // 2 + 64:],
        "damaged-header.trace.gz": b"\x1e" + packed[1:],
        "damaged-checksum.trace.gz": packed[:-8] + bytes(b ^ 0xff for b in packed[-8:-4]) + packed[-4:],
        # Stored (uncompressed) deflate blocks decode damage as it is: a line turns to garbage long
        # before zlib reaches the checksum that exposes it.
        "damaged-stored.trace.gz": stored_with_damage("".join(lines * 40).encode()),
    }
    for name, data in cases.items():
        path = write(workdir, name, data)
        r, _ = run(replay, path)
        expect(name, r, 2, ["corrupt", name])
        if r is not None and (b"line " in r.stderr or b"unknown op" in r.stderr):
            failures.append(f"{name}: reported as a syntax error")


def nul_and_empty(replay, workdir):
    path = write(workdir, "nul.trace", HEADER + b"a 1 1\0\n0\nf 1\n")
    r, _ = run(replay, path)
    expect("NUL inside a line", r, 2, ["line 2:", "NUL", "\\x00"])
    for name, data in {"empty.trace": b"", "comments-only.trace": HEADER + b"# nothing else\n\n",
                       "empty.trace.gz": gzip.compress(b"", mtime=0)}.items():
        r, _ = run(replay, write(workdir, name, data))
        expect(name, r, 2, ["holds no operations"])


def binary_bytes(replay, workdir):
    path = write(workdir, "binary.trace", HEADER + b"\x01\xff\x1b[31m 1 2\n")
    r, _ = run(replay, path)
    expect("binary op", r, 2, ["line 2:", "\\x01\\xff\\x1b[31m"])
    if r is not None and any(b in r.stderr for b in (b"\x01", b"\xff", b"\x1b")):
        failures.append("binary op: raw bytes echoed on stderr")
    path = write(workdir, "long.trace", HEADER + b"a 1 " + b"\x02" * 20000 + b"\n")
    r, _ = run(replay, path)
    expect("long binary field", r, 2, ["line 2:", "..."])
    if r is not None and len(r.stderr) > 600:
        failures.append(f"long binary field: a message of {len(r.stderr)} bytes")


def arguments(replay, workdir):
    path = write(workdir, "args.trace", HEADER + b"a 0 4096\nf 0\n")
    for args in (["--pinners", "100"], ["--no-such-option"], ["--capacity", "12 parsecs"]):
        r, _ = run(replay, path, *args)
        expect(" ".join(args), r, 2, [])
    # The reserve budget's, its low watermark's and the think time's options: out of range or not numbers, refused
    # naming the option.
    for args in (["--reserve-fraction", "1.5"], ["--reserve-fraction", "lots"], ["--reserve-peak-ratio", "0.5"],
                 ["--reserve-peak-ratio", "5"], ["--reserve-low-pages", "0"], ["--reserve-low-pages", "2000"],
                 ["--reserve-low-pages", "some"], ["--think-us", "-1"], ["--think-us", "2000000"],
                 ["--think-us", "soon"], ["--standby-tail-aliases", "65"], ["--standby-tail-aliases", "many"],
                 ["--thread-cache-run-bytes", "lots"]):
        r, _ = run(replay, path, *args)
        expect(" ".join(args), r, 2, [args[0]])
    r = subprocess.run([replay, "--help"], capture_output=True)
    if r.returncode != 0:
        failures.append(f"--help: exit status {r.returncode}")


def main():
    replay, workdir = sys.argv[1:3]
    os.makedirs(workdir, exist_ok=True)
    capacities(replay, workdir)
    corrupt_gzip(replay, workdir)
    nul_and_empty(replay, workdir)
    binary_bytes(replay, workdir)
    arguments(replay, workdir)
    if failures:
        sys.exit("FAIL: " + "; ".join(failures))
    print("ok")


if __name__ == "__main__":
    main()
