#!/usr/bin/env python3
"""Bad clients against a live valet-serve, over raw Unix sockets: garbage, truncated JSON, a 1 MB
line, unknown commands, wrong types, an empty line, invalid UTF-8, a client that connects and
says nothing (it times out without blocking others), a client that never reads, too many
clients (idle ones make room for new ones). Each gets an error reply naming the problem (or times
out), and the service lives on."""
import json
import os
import signal
import socket
import time

from e2e_util import Service, check, connect, read_line, request, main

CASES = [
    # (request bytes, a phrase the error must contain)
    (b"hello\n", "not valid JSON"),
    (b'{"v":1,"cmd":"sta\n', "not valid JSON"),
    (b'{"v":1,"cmd":"stats"\n', "not valid JSON"),
    (b"[1,2,3]\n", "expected a JSON object"),
    (b"42\n", "expected a JSON object"),
    (b'{"cmd":"stats"}\n', "missing protocol version"),
    (b'{"v":2,"cmd":"stats"}\n', "unsupported protocol version"),
    (b'{"v":"1","cmd":"stats"}\n', "unsupported protocol version"),
    (b'{"v":1}\n', "'cmd' must be a string"),
    (b'{"v":1,"cmd":["stats"]}\n', "'cmd' must be a string"),
    (b'{"v":1,"cmd":"format_disk"}\n', "unknown command 'format_disk'"),
    (b'{"v":1,"cmd":"stats","extra":1}\n', "unknown field 'extra'"),
    (b'{"v":1,"cmd":"compact","wait":"yes"}\n', "'wait' must be true or false"),
    (b'{"v":1,"cmd":"compact","budget":-1}\n', "'budget'"),
    (b'{"v":1,"cmd":"compact","budget":"a lot"}\n', "'budget'"),
    (b'{"v":1,"cmd":"compact","budget":1.5}\n', "'budget'"),
    (b'{"v":1,"cmd":"compact","target_fragmentation":"low"}\n', "'target_fragmentation'"),
    (b'{"v":1,"cmd":"compact","target_fragmentation":7}\n', "[0, 1]"),
    (b'{"v":1,"cmd":"policy_set","set":"x=1"}\n', "policy"),
    (b'{"v":1,"cmd":"trace_start","path":42}\n', "'path' must be a string"),
    (b'{"v":1,"cmd":"trace_start","path":"relative.trace"}\n', "absolute"),
    (b'{"v":1,"cmd":"\xff\xfe"}\n', "not valid JSON"),
    (b"\n", "empty request"),
    (b"\x00\x01\x02\x03\n", "not valid JSON"),
]


def expect_error(s, data, phrase):
    s.sendall(data)
    line = read_line(s)
    check(line.endswith(b"\n"), "no reply line to %r (got %r)" % (data[:60], line[:200]))
    r = json.loads(line)
    check(r.get("v") == 1 and r.get("ok") is False, "not an error reply to %r: %r" % (data[:60], r))
    check(phrase in r.get("error", ""), "error for %r does not say %r: %r" % (data[:60], phrase, r.get("error")))


def stats_ok(sock):
    r = request(sock, {"v": 1, "cmd": "stats"})
    check(r.get("ok") is True, "stats failed: %r" % r)
    return r


def body(args, workdir, services):
    sock = os.path.join(workdir, "s.sock")
    svc = Service(args.serve, workdir, sock)
    services.append(svc)
    svc.wait_ready()

    # Every malformed request on one connection: each answered, the connection still usable.
    with connect(sock) as s:
        for data, phrase in CASES:
            expect_error(s, data, phrase)
        s.sendall(b'{"v":1,"cmd":"info","id":17}\n')
        r = json.loads(read_line(s))
        check(r["ok"] and r["id"] == 17, "after the bad requests, info failed: %r" % r)
    print("%d malformed requests answered with errors" % len(CASES))

    # A 1 MB line: answered with "too long" once its newline arrives; the connection lives on.
    with connect(sock, timeout=30) as s:
        s.sendall(b'{"v":1,"cmd":"stats","pad":"' + b"x" * (1 << 20) + b'"}\n' + b'{"v":1,"cmd":"stats"}\n')
        r = json.loads(read_line(s))
        check(r["ok"] is False and "too long" in r["error"], "1 MB line: %r" % r)
        r = json.loads(read_line(s))
        check(r["ok"] is True, "request after the 1 MB line: %r" % r)

    # Truncated: bytes without a newline, then the client closes its side.
    with connect(sock) as s:
        s.sendall(b'{"v":1,"cmd":"st')
        s.shutdown(socket.SHUT_WR)
        r = json.loads(read_line(s))
        check(r["ok"] is False and "truncated" in r["error"], "truncated request: %r" % r)
        check(s.recv(1) == b"", "connection not closed after a truncated request")

    # A client that says nothing is not served ahead of others, and times out.
    silent = connect(sock, timeout=30)
    t0 = time.time()
    for _ in range(5):
        stats_ok(sock)
    check(time.time() - t0 < 5, "others were slowed down by a silent client: %.1fs" % (time.time() - t0))
    r = json.loads(read_line(silent))
    waited = time.time() - t0
    check(r["ok"] is False and "timed out" in r["error"], "silent client: %r" % r)
    check(3 <= waited <= 15, "silent client timed out after %.1fs (expected about 5 s)" % waited)
    check(silent.recv(1) == b"", "silent client's connection not closed")
    silent.close()

    # A slow talker that never finishes its line times out as well.
    with connect(sock, timeout=30) as s:
        s.sendall(b'{"v":1,')
        r = json.loads(read_line(s))
        check("timed out" in r["error"], "half a request: %r" % r)

    # A client that sends many requests and never reads: the service is not blocked.
    greedy = connect(sock)
    greedy.setblocking(False)
    try:
        for _ in range(2000):
            greedy.send(b'{"v":1,"cmd":"pages"}\n')
    except BlockingIOError:
        pass  # its buffers are full: the server stopped reading from it
    stats_ok(sock)
    greedy.close()

    # Too many clients: each one over the limit takes the slot of the one idle the longest, which
    # is told so and closed (or, when none is idle yet, is refused itself): 6 such messages, fewer
    # where a connection of the tests above had not been reaped yet and went instead.
    crowd = [connect(sock) for _ in range(70)]
    time.sleep(1)
    closed = 0
    for c in crowd:
        c.setblocking(False)
        try:
            data = c.recv(65536)
            if b"too many clients" in data or b"idle while the service was at its limit" in data:
                closed += 1
        except BlockingIOError:
            pass
    check(1 <= closed <= 6, "70 clients, limit 64: %d told to go" % closed)
    stats_ok(sock)  # served at once: it takes an idle client's slot
    for c in crowd:
        c.close()
    time.sleep(0.5)
    # Clients that are all mid-request are not idle: one more is refused.
    crowd = [connect(sock) for _ in range(64)]
    for c in crowd:
        c.sendall(b'{"v":1,')
    time.sleep(0.5)
    r = request(sock, {"v": 1, "cmd": "stats"})
    check(r.get("ok") is False and "too many clients" in r.get("error", ""), "65th client, 64 mid-request: %r" % r)
    for c in crowd:
        c.close()
    # The server notices the closes asynchronously: "try again later" is allowed for a moment.
    for attempt in range(50):
        r = request(sock, {"v": 1, "cmd": "stats"})
        if r.get("ok") or "too many clients" not in r.get("error", ""):
            break
        time.sleep(0.1)
    check(r.get("ok") is True, "after the crowd left: %r" % r)

    # Clients that vanish mid-request or mid-reply do not hurt.
    for _ in range(20):
        c = connect(sock)
        c.sendall(b'{"v":1,"cmd":"pages"}\n')
        c.close()
    c = connect(sock)
    c.sendall(b'{"v":1,"cmd":"compact","wait":true}\n')
    c.close()  # its waiting compaction finishes; the reply has no one to go to
    time.sleep(0.5)
    st = stats_ok(sock)
    check(svc.proc.poll() is None, "valet-serve died")
    print("service alive after the bad clients: %d live objects" % st["live_objects"])

    rc = svc.stop(signal.SIGTERM)
    check(rc == 0, "exit status %d:\n%s" % (rc, svc.log_text()))
    check(not os.path.exists(sock), "socket file left behind")


if __name__ == "__main__":
    main(body)
