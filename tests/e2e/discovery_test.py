#!/usr/bin/env python3
"""Finding services without -s: valet-serve puts <pid>.sock in $XDG_RUNTIME_DIR/valet (0700);
valetctl uses the only live one, skips stale sockets, lists several and asks for -s when there is
more than one; VALET_CONTROL_SOCKET is used exactly as given by both sides."""
import os
import signal
import socket

from e2e_util import Service, check, ctl, ctl_json, main


def body(args, workdir, services):
    xdg = os.path.join(workdir, "xdg")
    os.mkdir(xdg, 0o700)
    env = dict(os.environ, XDG_RUNTIME_DIR=xdg)
    env.pop("VALET_CONTROL_SOCKET", None)
    os.environ.update(XDG_RUNTIME_DIR=xdg)  # for Service.wait_ready's discovery
    ctlbin = args.ctl
    sockdir = os.path.join(xdg, "valet")

    # Nothing running yet: a clear error, exit status 2.
    _, err = ctl(ctlbin, "stats", expect_rc=2, env=env)
    check("no running valet service" in err, "no service: %r" % err)

    a = Service(args.serve, workdir, env=env, name="a")
    services.append(a)
    a.wait_ready()
    check(a.socket_path == os.path.join(sockdir, "%d.sock" % a.proc.pid), "socket %s" % a.socket_path)
    check(os.stat(sockdir).st_mode & 0o777 == 0o700, "discovery dir mode %o" % (os.stat(sockdir).st_mode & 0o777))

    # A stale socket (its process is gone) sits next to it and is skipped.
    stale = os.path.join(sockdir, "999999.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(stale)
    s.close()

    st = ctl_json(ctlbin, "stats", env=env)
    check(st["pid"] == a.proc.pid, "the only live service was not picked: %s" % st["pid"])
    lst = ctl_json(ctlbin, "list", env=env)
    check([x["info"]["pid"] for x in lst["services"]] == [a.proc.pid], "list: %s" % lst)
    check(lst["stale"] == [stale], "stale sockets: %s" % lst["stale"])
    text, _ = ctl(ctlbin, "list", env=env)
    check(str(a.proc.pid) in text and "host" in text, "list text: %r" % text)

    # Two services: valetctl lists them and asks for -s.
    b = Service(args.serve, workdir, env=env, name="b")
    services.append(b)
    b.wait_ready()
    _, err = ctl(ctlbin, "stats", expect_rc=2, env=env)
    check("-s" in err and str(a.proc.pid) in err and str(b.proc.pid) in err, "several services: %r" % err)
    check(ctl_json(ctlbin, "-s", b.socket_path, "stats", env=env)["pid"] == b.proc.pid, "-s picks b")
    check(len(ctl_json(ctlbin, "list", env=env)["services"]) == 2, "list of two")

    # VALET_CONTROL_SOCKET: the server binds exactly there, the client goes there.
    explicit = os.path.join(workdir, "explicit.sock")
    env_c = dict(env, VALET_CONTROL_SOCKET=explicit)
    c = Service(args.serve, workdir, socket_path=None, env=env_c, name="c")
    c.socket_path = explicit
    services.append(c)
    c.wait_ready()
    check(ctl_json(ctlbin, "stats", env=env_c)["pid"] == c.proc.pid, "VALET_CONTROL_SOCKET not used by valetctl")

    for svc, sig in [(a, signal.SIGTERM), (b, signal.SIGINT), (c, signal.SIGTERM)]:
        rc = svc.stop(sig)
        check(rc == 0, "exit status %d:\n%s" % (rc, svc.log_text()))
        check(not os.path.exists(svc.socket_path), "socket %s left behind" % svc.socket_path)
    check(sorted(os.listdir(sockdir)) == ["999999.sock"], "discovery dir: %s" % os.listdir(sockdir))


if __name__ == "__main__":
    main(body)
