#!/usr/bin/env python3
"""Every valetctl command against a live valet-serve (host backend, 512 MiB): human and --json
output, the JSON keys of each reply, a compaction that shows in the figures, a trace recorded
from the live service and replayed (valet-replay when built, else the format is checked here),
and a clean stop with SIGINT."""
import json
import os
import re
import signal
import subprocess
import time

from e2e_util import Service, check, ctl, ctl_json, main, require_keys

STATS_KEYS = ["v", "ok", "cmd", "pid", "backend", "backend_kind", "capacity_bytes", "live_bytes", "live_objects",
              "footprint_bytes", "mapped_bytes", "reserved_bytes", "reserve_bytes", "fragmentation",
              "largest_allocatable_bytes", "pages", "occupancy_histogram", "ops", "driver_calls", "compaction",
              "recent_cycles", "compactor", "uptime_s", "page_bytes"]
RECORD_KEYS = ["trigger", "objects_moved", "bytes_moved", "pages_freed", "pages_meshed", "objects_skipped",
               "duration_ns"]


def check_trace_format(path):
    """A gpuheap-trace v1 that replays to an empty heap: every free names a live id."""
    with open(path) as f:
        lines = f.read().splitlines()
    check(lines and lines[0].startswith("# gpuheap-trace v1"), "trace header: %r" % lines[:1])
    check(re.search(r"capacity=\d+", lines[0]), "trace header has no capacity=: %r" % lines[0])
    live, ops = set(), 0
    for n, line in enumerate(lines, 1):
        if not line or line.startswith("#"):
            continue
        f = line.split()
        ops += 1
        if f[0] == "a" and len(f) == 3:
            check(f[1] not in live and int(f[2]) > 0, "line %d: bad allocation %r" % (n, line))
            live.add(f[1])
        elif f[0] == "f" and len(f) == 2:
            check(f[1] in live, "line %d: free of an id not live: %r" % (n, line))
            live.remove(f[1])
        elif f[0] == "s" and len(f) == 1:
            pass
        elif f[0] == "p" and len(f) == 2:
            check(int(f[1]) >= 0, "line %d: bad probe" % n)
        else:
            raise AssertionError("line %d: not a trace op: %r" % (n, line))
    check(not live, "%d objects still live at the end of the trace" % len(live))
    check(ops > 10, "trace has only %d ops" % ops)
    return ops


def body(args, workdir, services):
    sock = os.path.join(workdir, "s.sock")
    svc = Service(args.serve, workdir, sock)
    services.append(svc)
    info = svc.wait_ready()
    check(info["pid"] == svc.proc.pid, "info pid %s != %s" % (info["pid"], svc.proc.pid))
    check(oct(os.stat(sock).st_mode & 0o777) == "0o600", "socket mode %o" % (os.stat(sock).st_mode & 0o777))
    ctlbin = args.ctl
    s = ["-s", sock]

    # Let the loop build up some objects.
    deadline = time.time() + 30
    while ctl_json(ctlbin, *s, "stats")["live_objects"] < 50:
        check(time.time() < deadline, "the serving loop allocated nothing in 30 s")
        time.sleep(0.2)

    # stats
    st = ctl_json(ctlbin, *s, "stats")
    require_keys(st, STATS_KEYS, "stats")
    require_keys(st["pages"], ["slab", "large", "reserve", "idle", "meshed"], "stats.pages")
    require_keys(st["ops"], ["allocate", "free", "resize", "pin", "failed_allocations"], "stats.ops")
    require_keys(st["compaction"], ["cycles", "bytes_moved", "objects_moved", "pages_freed", "pages_meshed"], "stats.compaction")
    check(len(st["occupancy_histogram"]) == 10, "histogram has %d bins" % len(st["occupancy_histogram"]))
    check(st["pid"] == svc.proc.pid and st["backend_kind"] == "host", "stats pid/backend: %s %s" % (st["pid"], st["backend_kind"]))
    check(st["capacity_bytes"] == 512 << 20, "capacity %d" % st["capacity_bytes"])
    check(0 <= st["fragmentation"] < 1 and st["live_bytes"] > 0 and st["mapped_bytes"] >= st["live_bytes"], "figures: %s" % st)
    # --json also parses before the command and with -s after it.
    ctl_json(ctlbin, "--json", "stats", *s)
    human, _ = ctl(ctlbin, *s, "stats")
    for word in ["live", "mapped", "reserved", "fragmentation", "slab", "large", "largest allocatable", "allocate",
                 "compaction"]:
        check(word in human, "stats text lacks %r:\n%s" % (word, human))

    # compact: the figures change.
    cycles_before = st["compaction"]["cycles"]
    c = ctl_json(ctlbin, *s, "compact", "--wait", timeout=300)
    require_keys(c, ["ran", "record", "fragmentation_before", "fragmentation_after", "mapped_bytes_before",
                     "mapped_bytes_after", "by"], "compact --wait")
    require_keys(c["record"], RECORD_KEYS, "compact record")
    after = ctl_json(ctlbin, *s, "stats")
    check(after["compaction"]["cycles"] > cycles_before, "compaction cycles did not grow: %d -> %d"
          % (cycles_before, after["compaction"]["cycles"]))
    check(any(r["trigger"] == "explicit" for r in after["recent_cycles"]), "no explicit cycle in recent_cycles")
    human, _ = ctl(ctlbin, *s, "compact", "--wait", "--budget", "4MiB", timeout=300)
    check("moved" in human and "fragmentation" in human and "freed" in human, "compact text: %r" % human)
    b = ctl_json(ctlbin, *s, "compact", "--wait", "--budget", "1MiB", timeout=300)
    check(b["record"]["bytes_moved"] <= 1 << 20, "budget 1 MiB, moved %d" % b["record"]["bytes_moved"])
    q = ctl_json(ctlbin, *s, "compact")
    check(q.get("queued") is True, "compact without --wait: %s" % q)
    t = ctl_json(ctlbin, *s, "compact", "--wait", "--target-fragmentation", "0.999", timeout=300)
    check(t["ran"] is False and "reason" in t, "target already met should run nothing: %s" % t)
    ctl(ctlbin, *s, "compact", "--budget", "lots", expect_rc=1)
    ctl(ctlbin, *s, "compact", "--target-fragmentation", "3", expect_rc="nonzero")

    # policy (needs the background compactor)
    if st["compactor"]["running"]:
        g = ctl_json(ctlbin, *s, "policy", "get")
        require_keys(g, ["policy", "keys"], "policy get")
        check(set(g["policy"]) == set(g["keys"]) and g["keys"], "policy keys: %s" % g)
        key = "fragmentation_threshold" if "fragmentation_threshold" in g["keys"] else None
        if key:
            p = ctl_json(ctlbin, *s, "policy", "set", key + "=0.2")
            check(abs(float(p["policy"][key]) - 0.2) < 1e-9, "policy set did not stick: %s" % p["policy"])
            _, err = ctl(ctlbin, *s, "policy", "set", key + "=banana", expect_rc=1)
            check(key in err or "valid" in err or "invalid" in err.lower(), "bad value error: %r" % err)
        _, err = ctl(ctlbin, *s, "policy", "set", "no_such_key=1", expect_rc=1)
        check("valid keys" in err, "unknown key error should list the keys: %r" % err)
        human, _ = ctl(ctlbin, *s, "policy", "get")
        check(all(k in human for k in g["keys"]), "policy get text: %r" % human)
    else:
        _, err = ctl(ctlbin, *s, "policy", "get", expect_rc=1)
        check("compactor" in err, "policy without a compactor: %r" % err)

    # pages
    pg = ctl_json(ctlbin, *s, "pages")
    require_keys(pg, ["page_bytes", "capacity_pages", "summary", "pages", "exact"], "pages")
    check(pg["exact"] is True, "the page map comes from Heap::page_map(), exact")
    summ = pg["summary"]
    check(len(pg["pages"]) == summ["slab"] + summ["meshed"] + summ["large"] + summ["reserve"],
          "pages entries vs summary: %s" % summ)
    check(all(p["kind"] in ("slab", "meshed", "large", "reserve") and 0 <= p["occupancy"] <= 1 for p in pg["pages"]),
          "page entries")
    slots = [p["slot"] for p in pg["pages"]]
    check(slots == sorted(set(slots)), "page entries are distinct slots in address order")
    svg = os.path.join(workdir, "pages.svg")
    text, _ = ctl(ctlbin, *s, "pages", "--svg", svg)
    check("L" in text or summ["large"] == 0, "page map text: %r" % text[:500])
    check("\x1b[" not in text, "ANSI colours in a pipe")
    with open(svg) as f:
        svg_text = f.read()
    check(svg_text.startswith("<?xml") and "<svg" in svg_text and svg_text.count("<rect") >= pg["capacity_pages"],
          "SVG: %d rects" % svg_text.count("<rect"))

    # watch
    out, _ = ctl(ctlbin, *s, "watch", "-i", "0.2", "--count", "3")
    check(out.count("valet service pid") == 3, "watch printed %d summaries" % out.count("valet service pid"))
    out, _ = ctl(ctlbin, *s, "watch", "-i", "0.2", "--count", "2", "--json")
    snaps = [json.loads(l) for l in out.splitlines() if l.strip()]
    check(len(snaps) == 2 and all(x["ok"] for x in snaps), "watch --json: %r" % out[:300])

    # list: this service's socket is not in the discovery directory; list must not fail anyway.
    ctl_json(ctlbin, "list")

    # trace: record the live service, then replay it.
    trace = os.path.join(workdir, "live.trace")
    ts = ctl_json(ctlbin, *s, "trace", "start", trace)
    check(ts["trace"]["recording"] is True, "trace start: %s" % ts)
    ctl(ctlbin, *s, "trace", "start", trace, expect_rc=1)  # already recording
    time.sleep(1.5)
    tp = ctl_json(ctlbin, *s, "trace", "stop")
    check(tp["trace"]["steps"] > 0 and tp["trace"]["allocations"] > 0, "trace stop: %s" % tp)
    ctl(ctlbin, *s, "trace", "stop", expect_rc=1)  # not recording
    ops = check_trace_format(trace)
    print("trace: %d ops, %d steps" % (ops, tp["trace"]["steps"]))
    if args.replay and os.path.exists(args.replay):
        p = subprocess.run([args.replay, trace, "--json"], capture_output=True, text=True, timeout=300)
        check(p.returncode == 0, "valet-replay failed (%d): %s %s" % (p.returncode, p.stdout[-2000:], p.stderr[-2000:]))
        rep = json.loads(p.stdout.strip().splitlines()[-1])
        require_keys(rep, ["probes_failed", "peak_live_bytes", "peak_mapped_bytes", "mean_fragmentation"], "valet-replay")
        print("replayed: %s" % {k: rep[k] for k in ["probes_failed", "peak_live_bytes", "peak_mapped_bytes"]})
    else:
        print("valet-replay not built: trace format checked here")
    # A relative path is made absolute by valetctl (against its own working directory).
    rel = subprocess.run([ctlbin, *s, "trace", "start", "rel.trace"], cwd=workdir, capture_output=True, text=True)
    check(rel.returncode == 0, "trace start with a relative path: %s" % rel.stderr)
    ctl(ctlbin, *s, "trace", "stop")
    check(os.path.exists(os.path.join(workdir, "rel.trace")), "relative trace path not resolved against valetctl's cwd")

    # Unreachable service: non-zero exit, one line on stderr.
    _, err = ctl(ctlbin, "-s", os.path.join(workdir, "nobody.sock"), "stats", expect_rc=2)
    check("nobody.sock" in err, "unreachable error: %r" % err)

    # The service is still fine; stop it with SIGINT.
    check(svc.proc.poll() is None, "valet-serve died")
    rc = svc.stop(signal.SIGINT)
    check(rc == 0, "valet-serve exit status %d after SIGINT:\n%s" % (rc, svc.log_text()))
    check(not os.path.exists(sock), "socket file left behind")
    check("every page back" in svc.log_text(), "no clean shutdown line:\n%s" % svc.log_text()[-2000:])


if __name__ == "__main__":
    main(body)
