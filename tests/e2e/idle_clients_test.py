#!/usr/bin/env python3
"""A crowd of idle connections does not lock anyone out: with 200 connections open to a live
valet-serve that never send anything (three times its client limit), valetctl still gets its
answers promptly, because a new connection takes the slot of the one idle the longest. The
service then stops cleanly."""
import os
import signal
import socket
import time

from e2e_util import Service, check, connect, ctl_json, main, request

CROWD = 200


def body(args, workdir, services):
    sock = os.path.join(workdir, "s.sock")
    svc = Service(args.serve, workdir, sock)
    services.append(svc)
    svc.wait_ready()

    crowd = []
    for _ in range(CROWD):
        crowd.append(connect(sock))
    time.sleep(0.5)
    for attempt in range(5):
        t0 = time.time()
        st = ctl_json(args.ctl, "-s", sock, "stats", timeout=30)
        elapsed = time.time() - t0
        # A server that waited on the idle crowd would take valetctl's whole timeout (30 s); the
        # bound leaves room for starting a process on a loaded machine or a sanitizer build.
        check(elapsed < 15, "valetctl stats took %.1fs with %d idle connections open" % (elapsed, CROWD))
        check(st["pid"] == svc.proc.pid, "stats from the wrong service: %r" % st["pid"])
    r = request(sock, {"v": 1, "cmd": "info"})
    check(r.get("ok") is True, "info with the crowd open: %r" % r)

    # The connections over the limit were told why, then closed.
    closed = 0
    for c in crowd:
        c.setblocking(False)
        try:
            data = c.recv(65536)
        except BlockingIOError:
            continue
        # Connections that came in the same instant as others (not read yet, so not known to
        # be idle) may have been refused instead.
        check(data == b"" or b"idle while the service was at its limit" in data or b"too many clients" in data,
              "crowd got %r" % data[:200])
        closed += 1
    check(closed >= CROWD - 64, "only %d of %d idle connections were closed" % (closed, CROWD))
    for c in crowd:
        c.close()
    print("valetctl served with %d idle connections open; %d of them closed to make room" % (CROWD, closed))

    rc = svc.stop(signal.SIGTERM)
    check(rc == 0, "exit status %d:\n%s" % (rc, svc.log_text()))


if __name__ == "__main__":
    main(body)
