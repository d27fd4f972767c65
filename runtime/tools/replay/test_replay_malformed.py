#!/usr/bin/env python3
"""CTest: malformed traces stop the replayer with exit status 2 and a message on stderr naming the
line that is wrong.

usage: test_replay_malformed.py REPLAY WORKDIR
"""
import os, subprocess, sys

HEADER = "# gpuheap-trace v1 seed=0 steps=1 capacity=67108864\n"
# (name, trace text, line number the message must name, words the message must contain)
CASES = [
    ("unknown-op", HEADER + "a 0 4096\ns\nx 1\n", 4, "unknown op"),
    ("missing-size", HEADER + "a 0 4096\na 1\n", 3, "a <id> <bytes>"),
    ("bad-number", HEADER + "a 0 4096\nf 0\na 1 12k\n", 4, "not a non-negative integer"),
    ("free-unknown", HEADER + "a 0 4096\ns\nf 7\n", 4, "not live"),
    ("double-alloc", HEADER + "a 0 4096\na 0 512\n", 3, "while it is live"),
    ("zero-size", HEADER + "s\na 0 0\n", 3, "0 bytes"),
    ("extra-field", HEADER + "s 1\n", 2, "'s'"),
    ("wrong-version", "# gpuheap-trace v2 capacity=1\n", 1, "unsupported trace format"),
]


def main():
    replay, workdir = sys.argv[1:3]
    os.makedirs(workdir, exist_ok=True)
    failures = []
    for name, text, line, words in CASES:
        path = os.path.join(workdir, f"malformed-{name}.trace")
        with open(path, "w") as f:
            f.write(text)
        run = subprocess.run([replay, path, "--backend", "host", "--json"], capture_output=True, text=True)
        print(f"{name}: exit {run.returncode}: {run.stderr.strip()}")
        if run.returncode != 2:
            failures.append(f"{name}: exit status {run.returncode}, expected 2")
        if f"line {line}:" not in run.stderr:
            failures.append(f"{name}: stderr does not name line {line}")
        if words not in run.stderr:
            failures.append(f"{name}: stderr does not say '{words}'")
        if run.stdout.strip():
            failures.append(f"{name}: printed figures for a malformed trace")
    missing = subprocess.run([replay, os.path.join(workdir, "no-such.trace"), "--backend", "host"],
                             capture_output=True, text=True)
    print(f"missing file: exit {missing.returncode}: {missing.stderr.strip()}")
    if missing.returncode != 2 or "cannot open" not in missing.stderr:
        failures.append("a missing trace file is not reported with exit status 2")
    if failures:
        sys.exit("FAIL: " + "; ".join(failures))
    print("ok")


if __name__ == "__main__":
    main()
