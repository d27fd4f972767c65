#!/usr/bin/env python3
"""CTest: generate a short trace (valet-replay generate), replay it (gzip-compressed) with --json --verify --pinners 2 on the
host backend, and check the figures: every key present, no failed probe, no OOM, no signature
mismatch, peak mapped >= peak live, exit status 0; with compaction, that the background compactor
ran and its safepoint() was called at every step line; with --no-compact, that nothing moved.

usage: test_replay_short.py REPLAY WORKDIR [extra replay arguments...]
"""
import gzip, json, os, shutil, subprocess, sys

KEYS = ["backend", "ops", "ooms", "wall_s", "probes", "probes_failed", "peak_live_bytes", "peak_mapped_bytes",
        "peak_mapped_over_live", "mean_fragmentation", "mean_fragmentation_unweighted", "alloc_ns_median",
        "alloc_ns_p99", "compactions", "bytes_moved", "objects_moved", "pages_freed", "pin_wait_ns_max",
        "moved_fraction", "verify_errors", "compactor"]
COMPACTOR_KEYS = ["cycles", "background_cycles", "safepoint_calls", "safepoint_cycles", "by_trigger", "failed_cycles",
                  "policy"]


def main():
    replay, workdir = sys.argv[1:3]
    extra = sys.argv[3:]
    os.makedirs(workdir, exist_ok=True)
    plain = os.path.join(workdir, "short.trace")
    subprocess.run([replay, "generate", "--steps", "300", "--seed", "3", "--capacity", "1GiB",
                    "--probe-every", "50", "-o", plain], check=True)
    with open(plain) as f:
        step_lines = sum(1 for line in f if line.strip() == "s")
    packed = plain + ".gz"
    with open(plain, "rb") as src, gzip.open(packed, "wb") as dst:
        shutil.copyfileobj(src, dst)
    cmd = [replay, packed, "--json", "--verify", "--pinners", "2", "--backend", "host"] + extra
    print("running:", " ".join(cmd), flush=True)
    run = subprocess.run(cmd, capture_output=True, text=True)
    sys.stderr.write(run.stderr)
    print(run.stdout)
    failures = []
    if run.returncode != 0:
        failures.append(f"exit status {run.returncode}")
    try:
        out = json.loads(run.stdout)
    except json.JSONDecodeError as e:
        sys.exit(f"FAIL: stdout is not one JSON object: {e}")
    failures += [f"key '{k}' missing" for k in KEYS if k not in out]
    for key in ["probes_failed", "ooms", "verify_errors", "heap_errors", "pin_errors"]:
        if out.get(key, 0) != 0:
            failures.append(f"{key} = {out[key]}")
    if out.get("peak_mapped_bytes", 0) < out.get("peak_live_bytes", 1):
        failures.append("peak_mapped_bytes < peak_live_bytes")
    if out.get("probes", 0) == 0 or out.get("ops", 0) == 0:
        failures.append("nothing was replayed")
    if out.get("verified_objects", 0) == 0:
        failures.append("--verify checked no object")
    compactor = out.get("compactor")
    if "--no-compact" in extra:
        if compactor is not None:
            failures.append("--no-compact: a compactor ran")
        for key in ["compactions", "emergency_compactions", "bytes_moved", "pages_meshed"]:
            if out.get(key, 0) != 0:
                failures.append(f"--no-compact: {key} = {out[key]}")
    elif not isinstance(compactor, dict):
        failures.append("no compactor object in the report")
    else:
        failures += [f"compactor key '{k}' missing" for k in COMPACTOR_KEYS if k not in compactor]
        if compactor.get("safepoint_calls") != step_lines:
            failures.append(f"safepoint() called {compactor.get('safepoint_calls')} times for {step_lines} step lines")
        if compactor.get("failed_cycles", 0) != 0:
            failures.append(f"failed_cycles = {compactor['failed_cycles']}")
        if compactor.get("cycles", 0) > out.get("compactions", 0):
            failures.append("the compactor counts more cycles than the heap")
    if failures:
        sys.exit("FAIL: " + "; ".join(failures))
    print("ok")


if __name__ == "__main__":
    main()
