#!/usr/bin/env python3
"""trace_start against a live valet-serve with paths that must not be written: a FIFO (with no
reader, and with a reader that never reads), an existing file, a symlink to one, a dangling
symlink, '..', an embedded NUL. Each is refused at once with an error naming the problem; the
service keeps serving (its operation counters advance) and stops on SIGTERM. A good path creates
a new 0600 file, and the reply names it (its directories resolved)."""
import os
import signal
import time

from e2e_util import Service, check, ctl, ctl_json, main, request


def trace_start(sock, path, timeout=30):
    # A start that blocked on the path (a FIFO without a reader) would take the whole timeout; the
    # bound leaves room for a loaded machine or a sanitizer build.
    t0 = time.time()
    r = request(sock, {"v": 1, "cmd": "trace_start", "path": path}, timeout=timeout)
    elapsed = time.time() - t0
    check(elapsed < 15, "trace_start to %r took %.1fs" % (path, elapsed))
    return r


def refused(sock, path, phrase):
    r = trace_start(sock, path)
    check(r.get("ok") is False and phrase in r.get("error", ""),
          "trace_start to %r: wanted an error saying %r, got %r" % (path, phrase, r))


def allocations(ctlbin, sock):
    return ctl_json(ctlbin, "-s", sock, "stats", timeout=10)["ops"]["allocate"]


def still_serving(ctlbin, sock, seconds):
    """The serving loop goes on: its allocation count grows over `seconds`."""
    before = allocations(ctlbin, sock)
    time.sleep(seconds)
    after = allocations(ctlbin, sock)
    check(after > before, "the serving loop stalled: %d allocations, then %d after %.1fs" % (before, after, seconds))


def body(args, workdir, services):
    sock = os.path.join(workdir, "s.sock")
    svc = Service(args.serve, workdir, sock)
    services.append(svc)
    svc.wait_ready()
    ctlbin = args.ctl

    # A FIFO with no reader: opening it for writing would wait forever.
    fifo = os.path.join(workdir, "fifo")
    os.mkfifo(fifo)
    refused(sock, fifo, "a FIFO")
    still_serving(ctlbin, sock, 1.0)
    # A reader that opens it and never reads: refused the same, and the loop never stalls.
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    refused(sock, fifo, "a FIFO")
    still_serving(ctlbin, sock, 2.0)
    os.close(reader)

    # An existing file: refused, not truncated. A symlink to it: refused, the target untouched.
    victim = os.path.join(workdir, "victim")
    with open(victim, "w") as f:
        f.write("keep me")
    refused(sock, victim, "exists (a file)")
    link = os.path.join(workdir, "link")
    os.symlink(victim, link)
    refused(sock, link, "a symlink")
    with open(victim) as f:
        check(f.read() == "keep me", "the symlink's target was written")
    dangling, target = os.path.join(workdir, "dangling"), os.path.join(workdir, "target")
    os.symlink(target, dangling)
    refused(sock, dangling, "a symlink")
    check(not os.path.exists(target), "a dangling symlink's target was created")
    # '..' and NUL (which would silently cut the path at the NUL).
    os.mkdir(os.path.join(workdir, "sub"))
    refused(sock, os.path.join(workdir, "sub", "..", "up.trace"), "'..'")
    check(not os.path.exists(os.path.join(workdir, "up.trace")), "'..' path written")
    refused(sock, os.path.join(workdir, "cut") + "\x00.trace", "NUL")
    check(not os.path.exists(os.path.join(workdir, "cut")), "the path was cut at its NUL")
    # The same refusal through valetctl: one line on stderr, non-zero exit.
    _, err = ctl(ctlbin, "-s", sock, "trace", "start", victim, expect_rc="nonzero")
    check("exists" in err, "valetctl trace start to an existing file: %r" % err)

    # A good path, through a symlinked directory: a new 0600 file, named by its resolved path.
    real = os.path.join(workdir, "real")
    os.mkdir(real)
    os.symlink(real, os.path.join(workdir, "via"))
    want = os.path.join(os.path.realpath(real), "t.trace")
    r = trace_start(sock, os.path.join(workdir, "via", "t.trace"))
    check(r.get("ok") is True and r.get("file") == want, "trace_start reply does not name %s: %r" % (want, r))
    check(os.stat(want).st_mode & 0o777 == 0o600, "trace file mode %o" % (os.stat(want).st_mode & 0o777))
    st = ctl_json(ctlbin, "-s", sock, "stats")
    check(st["trace"]["recording"] is True and st["trace"]["path"] == want and "dropped_lines" in st["trace"],
          "stats trace: %r" % st["trace"])
    time.sleep(0.5)
    r = request(sock, {"v": 1, "cmd": "trace_stop"})
    check(r.get("ok") is True and r.get("file") == want and r["trace"]["dropped_lines"] == 0 and r["trace"]["lines"] > 0,
          "trace_stop: %r" % r)
    with open(want) as f:
        text = f.read()
    check(text.startswith("# gpuheap-trace v1") and text.rstrip().endswith("# end"), "trace file incomplete")
    check(r["trace"]["written_bytes"] == len(text), "written_bytes %d, file %d" % (r["trace"]["written_bytes"], len(text)))
    # valetctl names the resolved file too.
    out, _ = ctl(ctlbin, "-s", sock, "trace", "start", "via/t2.trace", cwd=workdir)
    check(os.path.join(os.path.realpath(real), "t2.trace") in out, "valetctl trace start: %r" % out)
    ctl(ctlbin, "-s", sock, "trace", "stop")

    # After all that, SIGTERM still stops it promptly and cleanly.
    rc = svc.stop(signal.SIGTERM, timeout=30)
    check(rc == 0, "exit status %d:\n%s" % (rc, svc.log_text()))


if __name__ == "__main__":
    main(body)
