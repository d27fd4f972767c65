#!/usr/bin/env python3
"""Every valetctl command against a live valet-serve (host backend, 512 MiB): human and --json
output, the JSON keys of each reply, a compaction that shows in the figures, a trace recorded
from the live service and replayed (valet-replay when built, else the format is checked here),
and a clean stop with SIGINT. Also: the figures agree with each other (pages by kind add up to
the totals beside them, the two cycle counts relate as documented), one exit status scheme
(0 / 1 target not reached / 2 every error, JSON errors with --json), unknown commands named,
readable bounds for bad numbers, aligned `list` columns, typed policy values."""
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


def check_stats_figures(st, where, all_cycles_recorded=True):
    """Pages: physical pages by use add up to mapped_bytes; virtual slots by kind to the slots in
    use, which exceed the physical pages by the slots mapping another slot's page. Cycles: every
    cycle the compactor counted is in the heap's count, with the emergency ones beside it; the
    compactor's cycles are its policy's by trigger plus the requested ones."""
    p, page = st["pages"], st["page_bytes"]
    physical = (p["slab"] - p["shared_tails"]) + p["large"] + p["reserve"] + p.get("releasing", 0) + p.get("moving", 0)
    # Reserve pages being given back without the heap lock are mapped until they are gone; a heap
    # that does not report them as "releasing" can only be held to "no more than mapped".
    exact = physical * page == st["mapped_bytes"] if "releasing" in p else physical * page <= st["mapped_bytes"]
    check(exact, "%s: slab %d - shared tails %d + large %d + reserve %d + releasing %s = %d pages, but %d pages are "
          "mapped" % (where, p["slab"], p["shared_tails"], p["large"], p["reserve"], p.get("releasing"), physical,
                      st["mapped_bytes"] // page))
    check(p["reserve"] * page == st["reserve_bytes"], "%s: reserve pages vs reserve_bytes" % where)
    check(sum(st["occupancy_histogram"]) == p["slab"], "%s: histogram counts %d slab pages of %d"
          % (where, sum(st["occupancy_histogram"]), p["slab"]))
    c = st["compaction"]
    if st["compactor"]["running"]:
        k = st["compactor"]["counters"]
        # A cycle that finds the handle table pinned (by a handle sweep) moves nothing and is
        # counted by the compactor only: compared where no sweep runs.
        check(not all_cycles_recorded or k["cycles"] + c["emergency_cycles"] <= c["cycles"], "%s: the compactor's %d cycles and %d emergency "
              "ones are not all in the heap's %d cycles" % (where, k["cycles"], c["emergency_cycles"], c["cycles"]))
        by_trigger = k["fragmentation"] + k["reserve_low"] + k["idle"] + k["safepoints"] + k["tails"]
        check(by_trigger + k["explicit_requests"] == k["cycles"], "%s: compactor cycles %d != %d by trigger + %d "
              "requested" % (where, k["cycles"], by_trigger, k["explicit_requests"]))


def check_stats_text(text, st):
    """The human summary prints each list beside the total it adds up to."""
    m = re.search(r"physical\s+(\d+) mapped of (\d+): slab (\d+), large (\d+), reserve (\d+) \(idle \d+\), "
                  r"releasing (\d+), moving (\d+)", text)
    check(m, "stats text has no physical pages line:\n%s" % text)
    total, capacity, *parts = map(int, m.groups())
    adds_up = total == sum(parts) if "releasing" in st["pages"] else total >= sum(parts)
    check(adds_up and capacity == st["capacity_bytes"] // st["page_bytes"],
          "physical pages line does not add up: %r" % m.group(0))
    m = re.search(r"virtual\s+(\d+) slots in use: slab (\d+), meshed (\d+), large (\d+), reserve (\d+), "
                  r"moving (\d+)", text)
    check(m, "stats text has no virtual slots line:\n%s" % text)
    total, *parts = map(int, m.groups())
    check(total == sum(parts), "virtual slots line does not add up: %r" % m.group(0))
    check("heap cycles" in text and "emergency" in text, "stats text: heap cycles unlabelled:\n%s" % text)
    if st["compactor"]["running"]:
        m = re.search(r"compactor cycles (\d+) = ([^\n]*)", text)
        check(m, "stats text: no compactor cycles line:\n%s" % text)
        check(int(m.group(1)) == sum(int(x) for x in re.findall(r"(\d+)(?: \+|$)", m.group(2))),
              "compactor cycles line does not add up: %r" % m.group(0))


def check_page_map(ctlbin, s, capacity_pages):
    """`pages`: slots in use, physical pages and capacity, each named, each list adding up."""
    pg = ctl_json(ctlbin, *s, "pages")
    require_keys(pg, ["page_bytes", "capacity_pages", "virtual_slots", "physical_pages", "not_created", "summary",
                      "physical", "pages", "exact"], "pages")
    summ, phys = pg["summary"], pg["physical"]
    check(pg["capacity_pages"] == capacity_pages, "capacity_pages %d" % pg["capacity_pages"])
    check(pg["virtual_slots"] == len(pg["pages"]) == summ["slab"] + summ["meshed"] + summ["large"] + summ["reserve"],
          "virtual slots %d, entries %d, summary %s" % (pg["virtual_slots"], len(pg["pages"]), summ))
    check(pg["physical_pages"] == phys["slab"] + phys["large"] + phys["reserve"], "physical: %s" % phys)
    check(phys["slab"] == summ["slab"] - summ["shared_tails"] and phys["reserve"] == summ["reserve"] + summ["idle"],
          "physical %s vs slots %s" % (phys, summ))
    check(pg["physical_pages"] + pg["not_created"] == capacity_pages, "physical %d + not created %d != capacity %d"
          % (pg["physical_pages"], pg["not_created"], capacity_pages))
    tails = [p for p in pg["pages"] if p["kind"] == "slab" and p.get("maps_page_of", p["slot"]) != p["slot"]]
    check(len(tails) == summ["shared_tails"], "shared tails: %d entries, summary %d" % (len(tails), summ["shared_tails"]))
    text, _ = ctl(ctlbin, *s, "pages")
    lines = text.splitlines()
    m = re.match(r"(\d+) pages of 2\.0 MiB capacity: (\d+) physical pages created .*, (\d+) not created$", lines[0])
    check(m and int(m.group(1)) == capacity_pages and int(m.group(2)) + int(m.group(3)) == capacity_pages,
          "pages header: %r" % lines[0])
    m2 = re.match(r"(\d+) virtual slots in use", lines[1])
    check(m2, "pages second line: %r" % lines[1])
    m3 = re.search(r"\((\d+) cells\)", lines[2])
    cells = sum(len(re.match(r"^\s*\d+ (\S*)$", l).group(1)) for l in lines[3:-1])
    check(m3 and int(m3.group(1)) == cells == int(m2.group(1)) + int(m.group(3)),
          "cells drawn %d vs %r: slots %s + not created %s" % (cells, lines[2], m2.group(1), m.group(3)))
    return pg


def check_exit_codes(ctlbin, serve, s, workdir):
    """0 success, 1 a target not reached, 2 every error; with --json an error object on stdout."""
    out, err = ctl(ctlbin, "frobnicate", expect_rc=2)
    check("unknown command 'frobnicate'" in err and "stats" in err and "policy" in err, "unknown command: %r" % err)
    _, err = ctl(ctlbin, "policy", "frob", expect_rc=2)
    check("unknown command 'policy frob'" in err and "get, set" in err, "unknown policy command: %r" % err)
    _, err = ctl(ctlbin, expect_rc=2)
    check("missing command" in err and "stats" in err, "no command: %r" % err)
    _, err = ctl(ctlbin, *s, "stats", "--bogus", expect_rc=2)  # CLI11's own error, exit 2 not 109
    _, err = ctl(ctlbin, *s, "watch", "-i", "-1", expect_rc=2)
    check("[0.05, 3600]" in err and "-1" in err and len(err) < 200, "watch -i -1: %r" % err)
    _, err = ctl(ctlbin, *s, "compact", "--max-pages", "0", expect_rc=2)
    check("[1, 1073741824]" in err, "--max-pages 0: %r" % err)
    _, err = ctl(ctlbin, *s, "policy", "set", "nonsense", expect_rc=2)
    check("KEY=VALUE" in err, "policy set without '=': %r" % err)
    help_text, _ = ctl(ctlbin, "--help")
    check("Exit status" in help_text and "docs/cli.md" in help_text, "--help has no exit status footer")
    # --json: the error is a JSON object on stdout, in the server's reply format.
    for args, words in [(["frobnicate"], "unknown command"),
                        (["-s", os.path.join(workdir, "nobody.sock"), "stats"], "nobody.sock"),
                        (s + ["policy", "set", "no_such_key=1"], "valid keys"),
                        (s + ["compact", "--budget", "lots"], "--budget")]:
        p = subprocess.run([ctlbin] + args + ["--json"], capture_output=True, text=True, timeout=60)
        check(p.returncode == 2, "%s --json: exit %d" % (args, p.returncode))
        e = json.loads(p.stdout)
        check(e["ok"] is False and e["v"] == 1 and words in e["error"], "%s --json: %r" % (args, p.stdout))
    # 1: the request ran and missed its target (fragmentation 0 needs live == mapped).
    r = subprocess.run([ctlbin] + s + ["compact", "--wait", "--target-fragmentation", "0", "--json"],
                       capture_output=True, text=True, timeout=300)
    check(r.returncode == 1, "target not reached: exit %d, %s %s" % (r.returncode, r.stdout, r.stderr))
    t = json.loads(r.stdout)
    check(t["ok"] is True and t["target_reached"] is False, "target not reached: %s" % t)
    # valet-serve: readable bounds, exit 2.
    for bad in [["--seconds", "-1"], ["--seconds", "1e300"], ["--step-ms", "-5"], ["--sweep-every", "-2"]]:
        p = subprocess.run([serve, "--backend", "host"] + bad, capture_output=True, text=True, timeout=60)
        check(p.returncode == 2, "valet-serve %s: exit %d" % (bad, p.returncode))
        check(bad[0] in p.stderr and len(p.stderr) < 200 and re.search(r"in \[0, \d+\]", p.stderr),
              "valet-serve %s: %r" % (bad, p.stderr))
    p = subprocess.run([serve, "--no-such-option"], capture_output=True, text=True, timeout=60)
    check(p.returncode == 2, "valet-serve --no-such-option: exit %d" % p.returncode)


def check_list_and_cycles(args, workdir, services):
    """A second service, found through the discovery directory: `list` lines its columns up; and
    with no handle sweeps (no handle-table pins) every cycle the compactor runs reaches the heap."""
    xdg = os.path.join(workdir, "xdg")
    os.mkdir(xdg, 0o700)
    env = dict(os.environ, XDG_RUNTIME_DIR=xdg)
    env.pop("VALET_CONTROL_SOCKET", None)
    saved = os.environ.get("XDG_RUNTIME_DIR")
    os.environ["XDG_RUNTIME_DIR"] = xdg  # for Service.wait_ready's discovery
    try:
        svc = Service(args.serve, workdir, env=env, extra=["--sweep-every", "0"], name="listed")
        services.append(svc)
        info = svc.wait_ready()
    finally:
        if saved is None:
            os.environ.pop("XDG_RUNTIME_DIR")
        else:
            os.environ["XDG_RUNTIME_DIR"] = saved
    text, _ = ctl(args.ctl, "list", env=env)
    lines = text.splitlines()
    check(len(lines) == 2 and lines[0].split() == ["PID", "KIND", "UPTIME", "SOCKET", "BACKEND"], "list: %r" % text)
    row = lines[1]
    for column, value in [("SOCKET", svc.socket_path), ("BACKEND", info["backend"])]:
        check(lines[0].index(column) == row.index(value), "list: column %s is not above %r:\n%s" % (column, value, text))
    s = ["-s", svc.socket_path]
    deadline = time.time() + 60
    while True:
        st = ctl_json(args.ctl, *s, "stats")
        check_stats_figures(st, "service without sweeps")
        if st["compactor"]["running"] and st["compactor"]["counters"]["cycles"] >= 3:
            break
        check(time.time() < deadline, "no compactor cycles in 60 s: %s" % st["compactor"])
        time.sleep(0.3)
    before = st["compaction"]["cycles"]
    ctl_json(args.ctl, *s, "compact", "--wait", timeout=300)
    after = ctl_json(args.ctl, *s, "stats")
    check_stats_figures(after, "after compact --wait")
    check(after["compaction"]["cycles"] > before, "heap cycles did not grow")
    check(after["compactor"]["counters"]["explicit_requests"] >= 1, "the request was not counted by the compactor")
    check(svc.stop() == 0, "the second service did not stop cleanly:\n%s" % svc.log_text()[-2000:])


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
    require_keys(st["pages"], ["slab", "large", "reserve", "idle", "meshed", "shared_tails"], "stats.pages")
    require_keys(st["ops"], ["allocate", "free", "resize", "pin", "failed_allocations"], "stats.ops")
    require_keys(st["compaction"], ["cycles", "bytes_moved", "objects_moved", "pages_freed", "pages_meshed"], "stats.compaction")
    check(len(st["occupancy_histogram"]) == 10, "histogram has %d bins" % len(st["occupancy_histogram"]))
    check(st["pid"] == svc.proc.pid and st["backend_kind"] == "host", "stats pid/backend: %s %s" % (st["pid"], st["backend_kind"]))
    check(st["capacity_bytes"] == 512 << 20, "capacity %d" % st["capacity_bytes"])
    check(0 <= st["fragmentation"] < 1 and st["live_bytes"] > 0 and st["mapped_bytes"] >= st["live_bytes"], "figures: %s" % st)
    for _ in range(20):  # the figures agree in every snapshot of the live service
        check_stats_figures(ctl_json(ctlbin, *s, "stats"), "stats")
    # --json also parses before the command and with -s after it.
    ctl_json(ctlbin, "--json", "stats", *s)
    human, _ = ctl(ctlbin, *s, "stats")
    check_stats_text(human, st)
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
    ctl(ctlbin, *s, "compact", "--budget", "lots", expect_rc=2)
    _, err = ctl(ctlbin, *s, "compact", "--target-fragmentation", "3", expect_rc=2)
    check("must be a fraction in [0, 1], not 3" in err, "--target-fragmentation 3: %r" % err)

    # policy (needs the background compactor)
    if st["compactor"]["running"]:
        g = ctl_json(ctlbin, *s, "policy", "get")
        require_keys(g, ["policy", "keys"], "policy get")
        check(set(g["policy"]) == set(g["keys"]) and g["keys"], "policy keys: %s" % g)
        key = "fragmentation_threshold" if "fragmentation_threshold" in g["keys"] else None
        if key:
            check(type(g["policy"][key]) is float, "policy values are numbers: %s" % g["policy"])
            p = ctl_json(ctlbin, *s, "policy", "set", key + "=0.2")
            check(p["policy"][key] == 0.2, "policy set did not stick: %s" % p["policy"])
            _, err = ctl(ctlbin, *s, "policy", "set", key + "=banana", expect_rc=2)
            check(key in err or "valid" in err or "invalid" in err.lower(), "bad value error: %r" % err)
            human, _ = ctl(ctlbin, *s, "policy", "get")
            check(re.search(r"^%s\s+= 0\.2$" % key, human, re.M), "policy text is not shortest: %r" % human)
        for k in ("background", "mesh", "evacuate"):
            check(type(g["policy"].get(k, True)) is bool, "policy %s is not a boolean: %s" % (k, g["policy"]))
        for k in ("interval_ms", "min_free_pages"):
            check(type(g["policy"].get(k, 0)) is int, "policy %s is not an integer: %s" % (k, g["policy"]))
        _, err = ctl(ctlbin, *s, "policy", "set", "no_such_key=1", expect_rc=2)
        check("valid keys" in err, "unknown key error should list the keys: %r" % err)
        human, _ = ctl(ctlbin, *s, "policy", "get")
        check(all(k in human for k in g["keys"]), "policy get text: %r" % human)
        check("000000" not in human, "policy text prints fixed decimals: %r" % human)
    else:
        _, err = ctl(ctlbin, *s, "policy", "get", expect_rc=2)
        check("compactor" in err, "policy without a compactor: %r" % err)

    # pages
    pg = check_page_map(ctlbin, s, st["capacity_bytes"] // st["page_bytes"])
    check(pg["exact"] is True, "the page map comes from Heap::page_map(), exact")
    summ = pg["summary"]
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
    check(svg_text.startswith("<?xml") and "<svg" in svg_text and svg_text.count("<rect") >= pg["virtual_slots"],
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
    ctl(ctlbin, *s, "trace", "start", trace, expect_rc=2)  # already recording
    time.sleep(1.5)
    tp = ctl_json(ctlbin, *s, "trace", "stop")
    check(tp["trace"]["steps"] > 0 and tp["trace"]["allocations"] > 0, "trace stop: %s" % tp)
    ctl(ctlbin, *s, "trace", "stop", expect_rc=2)  # not recording
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
    check_exit_codes(ctlbin, args.serve, s, workdir)
    check_list_and_cycles(args, workdir, services)

    # The service is still fine; stop it with SIGINT.
    check(svc.proc.poll() is None, "valet-serve died")
    rc = svc.stop(signal.SIGINT)
    check(rc == 0, "valet-serve exit status %d after SIGINT:\n%s" % (rc, svc.log_text()))
    check(not os.path.exists(sock), "socket file left behind")
    check("every page back" in svc.log_text(), "no clean shutdown line:\n%s" % svc.log_text()[-2000:])


if __name__ == "__main__":
    main(body)
