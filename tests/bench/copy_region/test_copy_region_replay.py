#!/usr/bin/env python3
"""CTest: valet-bench-copy-region on a generated trace. Every figure is present and sane, the region
moves objects when its thresholds are low, a region floor above every size leaves the region
empty, fails no probe, and bad options or a missing trace exit with status 2 naming the problem.
The tool checks the region's validate() at the end and exits 1 if it fails.

usage: test_copy_region_replay.py BENCH REPLAY WORKDIR
"""
import json, os, subprocess, sys

bench, replay, work = sys.argv[1:4]
trace = os.path.join(work, "copy_region.trace")
gen = subprocess.run([replay, "generate", "--seed", "5", "--steps", "600", "--capacity", "2GiB", "--grow-every", "8",
                      "--probe-every", "50", "-o", trace], capture_output=True, timeout=120)
if gen.returncode != 0:
    sys.exit(f"FAIL: generate exited {gen.returncode}: {gen.stderr.decode(errors='replace')}")


def run(*args):
    r = subprocess.run([bench, *args], capture_output=True, timeout=240)
    return r.returncode, r.stdout.decode(), r.stderr.decode(errors="replace")


KEYS = ["peak_mapped_over_live", "fragmentation_mean", "allocations", "region_allocations", "caller_growths",
        "chunks_created", "chunks_released", "chunk_driver_s_est", "compactions", "rounds", "objects_moved",
        "bytes_copied", "copy_device_s_est", "probes", "probes_failed", "place_free_ns_per_call", "compaction_cpu_s", "round_plan_cpu_ns_max"]

rc, out, err = run(trace, "--json", "--eager", "--chunk-mib", "8", "--hole-hi", "0.02", "--hole-lo", "0.01")
if rc != 0:
    sys.exit(f"FAIL: exited {rc}: {err}")
r = json.loads(out)
missing = [k for k in KEYS if k not in r]
if missing:
    sys.exit(f"FAIL: missing {missing}")
checks = [
    (0 < r["region_allocations"] < r["allocations"], "some allocations, not all, are the region's"),
    (r["objects_moved"] > 0 and r["bytes_copied"] > 0 and r["compactions"] > 0, "low thresholds move objects"),
    (1.0 <= r["peak_mapped_over_live"] < 1.5, "peak mapped / live in [1, 1.5)"),
    (0.0 <= r["fragmentation_mean"] < 0.2, "mean fragmentation under 0.2"),
    (r["probes"] > 0 and r["probes_failed"] == 0, "probes ran and none failed"),
    (r["chunks_created"] >= r["chunks_released"], "no more chunks released than created"),
]
for ok, what in checks:
    if not ok:
        sys.exit(f"FAIL: {what}: {json.dumps(r)}")

rc, out, err = run(trace, "--json", "--region-min-bytes", str(1 << 40))
if rc != 0 or json.loads(out)["region_allocations"] != 0 or json.loads(out)["chunks_created"] != 0:
    sys.exit(f"FAIL: a floor above every size: rc {rc}, {out} {err}")

for args, word in [(["--chunk-mib", "0"], "--chunk-mib"), (["--hole-lo", "0.5", "--hole-hi", "0.1"], "--hole-lo"),
                   (["--no-such-option"], "--no-such-option")]:
    rc, out, err = run(trace, *args)
    if rc != 2 or word not in err:
        sys.exit(f"FAIL: {args}: exit {rc}, stderr {err!r}")
rc, out, err = run(os.path.join(work, "no-such.trace"))
if rc != 2 or "no-such.trace" not in err:
    sys.exit(f"FAIL: a missing trace: exit {rc}, stderr {err!r}")
print("ok:", json.dumps(r))
