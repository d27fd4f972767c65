#!/usr/bin/env python3
"""valet-serve stops cleanly: on SIGINT (also when started with SIGINT ignored, as a shell's
background job is), on SIGTERM (also in the middle of a trace recording and of a client's
waiting compaction), and at the end of --seconds. Each time: exit status 0, every object freed,
every page back, the socket file removed."""
import os
import signal
import time

from e2e_util import Service, check, connect, main, request


def expect_clean_exit(svc, sock, rc):
    check(rc == 0, "exit status %d:\n%s" % (rc, svc.log_text()))
    check(not os.path.exists(sock), "socket file %s left behind" % sock)
    log = svc.log_text()
    check("every page back" in log and "0 bytes corrupt" in log, "no clean shutdown line:\n%s" % log[-2000:])


def body(args, workdir, services):
    # SIGINT, with SIGINT ignored at start (a background job).
    sock = os.path.join(workdir, "int.sock")
    svc = Service(args.serve, workdir, sock, ignore_sigint=True, name="sigint")
    services.append(svc)
    svc.wait_ready()
    time.sleep(1)
    expect_clean_exit(svc, sock, svc.stop(signal.SIGINT))
    check("SIGINT received" in svc.log_text(), "SIGINT not reported")

    # SIGTERM while a trace is being recorded and a client waits on a compaction.
    sock = os.path.join(workdir, "term.sock")
    trace = os.path.join(workdir, "t.trace")
    svc = Service(args.serve, workdir, sock, name="sigterm")
    services.append(svc)
    svc.wait_ready()
    check(request(sock, {"v": 1, "cmd": "trace_start", "path": trace})["ok"], "trace_start")
    time.sleep(1)
    waiting = connect(sock)
    waiting.sendall(b'{"v":1,"cmd":"compact","wait":true}\n')
    expect_clean_exit(svc, sock, svc.stop(signal.SIGTERM))
    waiting.close()
    with open(trace) as f:
        text = f.read()
    check(text.startswith("# gpuheap-trace v1") and text.rstrip().endswith("# end"), "trace not closed at shutdown")

    # --seconds: stops by itself.
    sock = os.path.join(workdir, "timed.sock")
    svc = Service(args.serve, workdir, sock, extra=["--seconds", "2"], name="timed")
    services.append(svc)
    svc.wait_ready()
    expect_clean_exit(svc, sock, svc.proc.wait(timeout=60))


if __name__ == "__main__":
    main(body)
