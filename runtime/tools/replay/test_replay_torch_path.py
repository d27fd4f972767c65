#!/usr/bin/env python3
"""CTest: valet-replay --fixed --stream-frees, the way libvalet_torch.so serves PyTorch, on the
host backend: a short generated trace (KV caches larger than a stream's cache, so frees are
flushed under events) replayed with signatures and a pinner against the live compactor. Every
object keeps its bytes, no heap error, the report says how it replayed, the frees were
stream-ordered (events recorded and queried on the replaying thread), and no probe fails.

usage: test_replay_torch_path.py REPLAY WORKDIR
"""
import json, os, subprocess, sys


def main():
    replay, workdir = sys.argv[1:3]
    os.makedirs(workdir, exist_ok=True)
    trace = os.path.join(workdir, "torch-path.trace")
    subprocess.run([replay, "generate", "--seed", "5", "--steps", "150", "--capacity", "512MiB",
                    "--bytes-per-token", "2048", "--probe-every", "25", "-o", trace], check=True, timeout=60)
    r = subprocess.run([replay, trace, "--backend", "host", "--pinners", "1", "--verify", "--fixed",
                        "--stream-frees", "--json"], capture_output=True, text=True, timeout=240)
    if r.returncode != 0:
        sys.exit(f"FAIL: exit {r.returncode}: {r.stderr.strip()[:600]}")
    d = json.loads(r.stdout.strip().splitlines()[-1])
    calls = d["alloc_path_driver_calls"]
    checks = [
        (d["fixed"] is True and d["stream_frees"] is True, "the report names --fixed and --stream-frees"),
        (d["heap_errors"] == 0, f"heap errors: {d['heap_errors']}"),
        (d["verify_errors"] == 0, f"objects whose bytes changed: {d['verify_errors']}"),
        (d["verified_objects"] > 1000, f"only {d['verified_objects']} objects were checked"),
        (d["probes"] > 0 and d["probes_failed"] == 0, f"probes failed: {d['probes_failed']}/{d['probes']}"),
        (calls["record_event"] > 0, "no event was recorded: the frees were not stream-ordered"),
        (calls["query_event"] > 0, "no event was queried: allocations never took back the stream's frees"),
    ]
    failed = [m for ok, m in checks if not ok]
    for m in failed:
        print(f"FAIL: {m}")
    if failed:
        sys.exit(1)
    print(f"ok: {d['verified_objects']} objects verified, {calls['record_event']} events recorded, "
          f"peak mapped / live {d['peak_mapped_over_live']:.3f}")


if __name__ == "__main__":
    main()
