#!/usr/bin/env python3
"""CTest: generate a short trace (valet-replay generate), replay it (gzip-compressed) with --json --verify --pinners 2 on the
host backend, and check the figures: every key present, no failed probe, no OOM, no signature
mismatch, peak mapped >= peak live, exit status 0; the latency figures ordered (median <= p99 <=
p999 <= max); the alloc path's driver calls: one integer count >= 0 per DriverOp name that
heap/include/valet/driver_op.h spells, their sum as `total`, and total / ops as the per-op figure; with compaction, that the background compactor
ran and its safepoint() was called at every step line; with --no-compact, that nothing moved.

usage: test_replay_short.py REPLAY WORKDIR [extra replay arguments...]
"""
import gzip, json, os, re, shutil, subprocess, sys

KEYS = ["backend", "ops", "ooms", "wall_s", "probes", "probes_failed", "peak_live_bytes", "peak_mapped_bytes",
        "peak_mapped_over_live", "mean_fragmentation", "mean_fragmentation_unweighted", "alloc_ns_median",
        "alloc_ns_p99", "alloc_ns_p999", "alloc_ns_max", "free_ns_median", "free_ns_p99", "free_ns_max",
        "alloc_path_driver_calls", "alloc_path_driver_calls_per_op", "probe_driver_calls", "compactions", "bytes_moved", "objects_moved", "pages_freed", "pin_wait_ns_max",
        "moved_fraction", "verify_errors", "compactor"]
COMPACTOR_KEYS = ["cycles", "background_cycles", "safepoint_calls", "safepoint_cycles", "by_trigger", "failed_cycles",
                  "policy"]

DRIVER_OP_H = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "heap", "include", "valet",
                           "driver_op.h")


def driver_op_names():
    """The call kinds as driver_op_name() spells them (the report names its counts so)."""
    with open(DRIVER_OP_H) as f:
        names = re.findall(r'case DriverOp::(\w+): return "(\w+)";', f.read())
    if not names or any(a != b for a, b in names):
        sys.exit(f"FAIL: cannot read the DriverOp names from {DRIVER_OP_H}")
    return [a for a, _ in names]


def latency_failures(out):
    """The latency figures: numbers >= 0, in order."""
    failures = []
    for prefix, ranks in [("alloc_ns", ["median", "p90", "p95", "p99", "p999", "max"]), ("free_ns", ["median", "p99", "max"])]:
        values = [out.get(f"{prefix}_{r}") for r in ranks]
        if not all(isinstance(v, (int, float)) and v >= 0 for v in values):
            failures.append(f"{prefix} figures are not numbers >= 0: {values}")
        elif values != sorted(values):
            failures.append(f"{prefix} figures out of order ({', '.join(ranks)}): {values}")
    if out.get("free_ns_max", 0) <= 0:
        failures.append("no free was timed")
    # The slowest allocations: at most 8, slowest first, the first being the max.
    slowest = out.get("slowest_allocations")
    if not isinstance(slowest, list) or not 1 <= len(slowest) <= 8:
        failures.append(f"slowest_allocations is not a list of 1 to 8 entries: {slowest!r}")
    else:
        ns = [a.get("ns") for a in slowest]
        if ns != sorted(ns, reverse=True) or ns[0] != out.get("alloc_ns_max"):
            failures.append(f"slowest_allocations not slowest first from alloc_ns_max: {ns}")
        if any(not isinstance(a.get("line"), int) or a["line"] <= 0 or a.get("bytes", 0) <= 0 for a in slowest):
            failures.append(f"slowest_allocations without a trace line or size: {slowest}")
        # The thread's CPU time across each call: not more than the call's wall time and the two
        # clock reads around it (50 us of slack), and some of it on the slowest.
        cpu = [a.get("cpu_ns") for a in slowest]
        if any(not isinstance(c, int) or c < 0 or c > a["ns"] + 50_000 for c, a in zip(cpu, slowest)) or max(cpu) <= 0:
            failures.append(f"slowest_allocations' cpu_ns missing or beyond their ns: {slowest}")
    # The allocations at or over the p99 (a histogram's bucket: about 1% of them, not exactly),
    # each part a count within them.
    tail = out.get("alloc_tail")
    if not isinstance(tail, dict) or tail.get("over_ns") != out.get("alloc_ns_p99"):
        failures.append(f"alloc_tail missing or not over alloc_ns_p99: {tail!r}")
    else:
        if not 1 <= tail.get("count", 0) <= 0.05 * out.get("ops", 0) or tail["median_ns"] < tail["over_ns"]:
            failures.append(f"alloc_tail holds none or over 5% of the allocations, or ones under the p99: {tail}")
        if any(not 0 <= tail.get(k, -1) <= tail["count"] for k in ("pending", "waited", "with_driver_calls", "under_page")):
            failures.append(f"alloc_tail's parts are not counts within it: {tail}")
        if not 0 <= tail.get("lock_wait_share", -1) <= 1 or tail.get("median_ns_without_wait", -1) > tail["median_ns"]:
            failures.append(f"alloc_tail's lock wait is not a part of its time: {tail}")
        on = tail.get("waited_on")
        if not isinstance(on, dict) or sorted(on) != sorted(HOLDERS) or sum(on.values()) != tail["waited"]:
            failures.append(f"alloc_tail's waited_on does not split its waits among {HOLDERS}: {tail}")
    # Lock waits by holder: the four roles, summing to the total.
    for key in ("alloc_lock_wait", "free_lock_wait"):
        w = out.get(key, {})
        by = w.get("by_holder_s")
        if not isinstance(by, dict) or sorted(by) != sorted(HOLDERS) or \
                abs(sum(by.values()) - w.get("total_s", -1)) > 1e-6 + 1e-6 * w.get("total_s", 0):
            failures.append(f"{key}.by_holder_s does not split total_s among {HOLDERS}: {w}")
    return failures


HOLDERS = ["callers", "mapper", "keeper", "compaction"]


def driver_call_failures(out):
    """alloc_path_driver_calls: total and one integer count >= 0 per kind; the per-op figure."""
    calls = out.get("alloc_path_driver_calls")
    if not isinstance(calls, dict):
        return [f"alloc_path_driver_calls is not an object: {calls!r}"]
    failures = []
    kinds = driver_op_names()
    if sorted(calls) != sorted(kinds + ["total"]):
        failures.append(f"alloc_path_driver_calls has keys {sorted(calls)}, not total and {kinds}")
    bad = {k: v for k, v in calls.items() if not isinstance(v, int) or isinstance(v, bool) or v < 0}
    if bad:
        return failures + [f"alloc_path_driver_calls counts that are not integers >= 0: {bad}"]
    if calls.get("total") != sum(calls.get(k, 0) for k in kinds):
        failures.append(f"alloc_path_driver_calls total {calls.get('total')} is not the sum of the kinds")
    per_op, ops = out.get("alloc_path_driver_calls_per_op"), out.get("ops", 0)
    if not isinstance(per_op, (int, float)) or ops <= 0 or abs(per_op - calls.get("total", 0) / ops) > 1e-9 * (1 + per_op):
        failures.append(f"alloc_path_driver_calls_per_op {per_op} is not total / ops ({calls.get('total')} / {ops})")
    return failures


def calling_ops_failures(out):
    """allocs_with_calls / frees_with_calls: integers within the ops, and zero exactly when no call was made."""
    failures = []
    for key in ["allocs_with_calls", "frees_with_calls"]:
        v = out.get(key)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0 or v > out.get("ops", 0):
            failures.append(f"{key} is not an integer within [0, ops]: {v!r}")
    calls = out.get("alloc_path_driver_calls", {}).get("total", 0)
    if isinstance(calls, int) and (calls > 0) != (out.get("allocs_with_calls", 0) + out.get("frees_with_calls", 0) > 0):
        failures.append(f"{calls} alloc-path calls, but allocs/frees with calls {out.get('allocs_with_calls')}/{out.get('frees_with_calls')}")
    return failures


def think_failures(out, extra, step_lines):
    """--think-us N: think_s at least N us per step line and within wall_s; without it, zero."""
    asked = int(extra[extra.index("--think-us") + 1]) if "--think-us" in extra else 0
    think, wall = out.get("think_s"), out.get("wall_s", 0)
    if out.get("think_us") != asked or not isinstance(think, (int, float)):
        return [f"think_us {out.get('think_us')!r} / think_s {think!r} for --think-us {asked}"]
    if asked == 0:
        return [] if think == 0 else [f"think_s {think} without --think-us"]
    if think < step_lines * asked * 1e-6 or think > wall:
        return [f"think_s {think} is not within [{step_lines} steps x {asked} us, wall_s {wall}]"]
    return []


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
    failures += latency_failures(out)
    failures += driver_call_failures(out)
    failures += calling_ops_failures(out)
    failures += think_failures(out, extra, step_lines)
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
