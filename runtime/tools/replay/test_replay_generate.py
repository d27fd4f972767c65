#!/usr/bin/env python3
"""CTest: `valet-replay generate`. For two seeds: the same options write the same bytes (plain and
gzip alike), different seeds write different traces, and valet-replay replays each with --verify on
the host backend with exit status 0, no OOM, no failed probe and no error. Bad options exit with
status 2 and a message that names what is wrong, and write no trace.

usage: test_replay_generate.py REPLAY WORKDIR
"""
import gzip, json, os, subprocess, sys

SMALL = ["--steps", "160", "--capacity", "512MiB", "--probe-every", "40", "--weights-fraction", "0.2",
         "--phase-every", "60", "--linger", "120", "--grow-every", "8"]
# (arguments after `valet-replay`, words stderr must contain)
BAD = [
    (["generate", "--steps", "0", "-o", "{out}"], "--steps"),
    (["generate", "--probe-fraction", "2", "-o", "{out}"], "--probe-fraction"),
    (["generate", "--capacity", "12q", "-o", "{out}"], "--capacity"),
    (["generate", "--capacity", "1MiB", "-o", "{out}"], "smallest request"),
    (["generate", "--weights-fraction", "0.8", "-o", "{out}"], "--weights-fraction"),
    (["generate", "--arrivals", "-1", "-o", "{out}"], "--arrivals"),
    (["generate", "--no-such-option", "-o", "{out}"], "--no-such-option"),
    (["generate", "--seed", "1"], "--output"),
    (["--json", "generate", "-o", "{out}"], "--json"),
    (["generate", "-o", "{missing}/trace"], "cannot open"),
    ([], "TRACE"),
]


def run(cmd):
    return subprocess.run(cmd, capture_output=True, timeout=120)


def generate(replay, path, seed):
    r = run([replay, "generate", "--seed", str(seed), *SMALL, "-o", path])
    if r.returncode != 0:
        sys.exit(f"FAIL: generate --seed {seed} exited {r.returncode}: {r.stderr.decode(errors='replace')}")
    with open(path, "rb") as f:
        data = f.read()
    return gzip.decompress(data) if path.endswith(".gz") else data


def main():
    replay, workdir = sys.argv[1:3]
    os.makedirs(workdir, exist_ok=True)
    failures = []
    traces = {}
    for seed in (5, 6):
        first = os.path.join(workdir, f"seed{seed}.trace")
        a = generate(replay, first, seed)
        b = generate(replay, os.path.join(workdir, f"seed{seed}-again.trace"), seed)
        c = generate(replay, os.path.join(workdir, f"seed{seed}.trace.gz"), seed)
        if a != b:
            failures.append(f"seed {seed}: two runs wrote different bytes")
        if a != c:
            failures.append(f"seed {seed}: the gzip trace holds other lines than the plain one")
        if not a.startswith(b"# gpuheap-trace v1 ") or b"capacity=536870912" not in a.split(b"\n")[0]:
            failures.append(f"seed {seed}: the header is not a gpuheap-trace v1 header with the capacity")
        traces[seed] = a
        r = run([replay, first, "--json", "--verify", "--pinners", "1", "--backend", "host"])
        if r.returncode != 0:
            failures.append(f"seed {seed}: replay exited {r.returncode}: {r.stderr.decode(errors='replace')}")
            continue
        out = json.loads(r.stdout)
        for key in ["ooms", "probes_failed", "verify_errors", "heap_errors", "pin_errors"]:
            if out.get(key, 0) != 0:
                failures.append(f"seed {seed}: {key} = {out[key]}")
        if out.get("probes") != 4 or out.get("ops", 0) < 1000:
            failures.append(f"seed {seed}: replayed {out.get('ops')} ops and {out.get('probes')} probes "
                            "(expected 4 probes, over 1000 ops)")
    if traces[5] == traces[6]:
        failures.append("seeds 5 and 6 wrote the same trace")
    for args, words in BAD:
        out = os.path.join(workdir, "bad.trace")
        if os.path.exists(out):
            os.remove(out)
        cmd = [replay] + [a.format(out=out, missing=os.path.join(workdir, "no-such-dir")) for a in args]
        r = run(cmd)
        err = r.stderr.decode(errors="replace")
        if r.returncode != 2 or words not in err:
            failures.append(f"{' '.join(args) or '(no arguments)'}: exit {r.returncode}, stderr {err.strip()!r} "
                            f"(expected 2 and '{words}')")
        elif os.path.exists(out):
            failures.append(f"{' '.join(args)}: refused, but wrote a trace")
    if failures:
        sys.exit("FAIL: " + "; ".join(failures))
    print("ok")


if __name__ == "__main__":
    main()
