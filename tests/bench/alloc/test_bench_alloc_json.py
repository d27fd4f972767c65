#!/usr/bin/env python3
"""CTest: valet-bench-alloc --json on the host backend with few pairs prints one JSON object with
every figure: per size, the heap's one-thread and N-thread runs (pairs, median <= p99, the
aggregate rate and the ratio of the two rates), and the cold large allocations (512 MiB among
them); no cuMemAllocAsync or cuMemAlloc figures on the host; exit status 0.

usage: test_bench_alloc_json.py BENCH
"""
import json, subprocess, sys

THREADS, PAIRS = 3, 96
RUN_KEYS = ["threads", "pairs", "failed_pairs", "median_ns", "p99_ns", "wall_s", "pairs_per_s"]


def run_failures(where, run, threads, pairs):
    if not isinstance(run, dict):
        return [f"{where}: not an object"]
    failures = [f"{where}: key '{k}' missing" for k in RUN_KEYS if k not in run]
    if failures:
        return failures
    if run["threads"] != threads or run["pairs"] != pairs:
        failures.append(f"{where}: {run['pairs']} pairs on {run['threads']} threads, not {pairs} on {threads}")
    if run["failed_pairs"] != 0:
        failures.append(f"{where}: {run['failed_pairs']} failed pairs")
    if not 0 < run["median_ns"] <= run["p99_ns"]:
        failures.append(f"{where}: median {run['median_ns']} and p99 {run['p99_ns']} not 0 < median <= p99")
    if not run["wall_s"] > 0 or abs(run["pairs_per_s"] - run["pairs"] / run["wall_s"]) > 1e-6 * run["pairs_per_s"]:
        failures.append(f"{where}: pairs_per_s {run['pairs_per_s']} is not pairs / wall_s")
    return failures


def main():
    bench = sys.argv[1]
    cmd = [bench, "--backend", "host", "--pairs", str(PAIRS), "--threads", str(THREADS), "--json"]
    print("running:", " ".join(cmd), flush=True)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    sys.stderr.write(r.stderr)
    if r.returncode != 0:
        sys.exit(f"FAIL: exit status {r.returncode}")
    try:
        out = json.loads(r.stdout)
    except json.JSONDecodeError as e:
        sys.exit(f"FAIL: stdout is not one JSON object: {e}\n{r.stdout[:500]}")
    failures = [f"key '{k}' missing" for k in ["backend", "threads", "pairs", "gpu", "fast_path", "cold_large"]
                if k not in out]
    if failures:
        sys.exit("FAIL: " + "; ".join(failures))
    if out["threads"] != THREADS or out["pairs"] != PAIRS or out["gpu"] is not False:
        failures.append(f"threads {out['threads']}, pairs {out['pairs']}, gpu {out['gpu']}")
    if not out["fast_path"]:
        failures.append("no fast-path size")
    for row in out["fast_path"]:
        where = f"fast_path {row.get('bytes')} bytes"
        v = row.get("valet", {})
        failures += run_failures(where + " one_thread", v.get("one_thread"), 1, PAIRS)
        failures += run_failures(where + " n_threads", v.get("n_threads"), THREADS, THREADS * PAIRS)
        if not failures:
            want = v["n_threads"]["pairs_per_s"] / v["one_thread"]["pairs_per_s"]
            if abs(v.get("throughput_ratio", -1) - want) > 1e-6 * want:
                failures.append(f"{where}: throughput_ratio {v.get('throughput_ratio')} is not {want}")
        if "cuMemAllocAsync" in row:
            failures.append(f"{where}: cuMemAllocAsync figures on the host backend")
    cold = {c.get("bytes"): c for c in out["cold_large"]}
    if 512 << 20 not in cold:
        failures.append(f"no 512 MiB cold allocation among {sorted(cold)}")
    for b, c in cold.items():
        if c.get("failed") != 0 or not c.get("valet_median_ns", 0) > 0 or not c.get("valet_back_to_back_median_ns", 0) > 0 \
                or "cuMemAlloc_median_ns" in c:
            failures.append(f"cold_large {b} bytes: {c}")
    if failures:
        sys.exit("FAIL: " + "; ".join(failures))
    print("ok")


if __name__ == "__main__":
    main()
