"""Shared helpers of the end-to-end tests: start the real valet-serve, run valetctl, speak the
control protocol over a raw Unix socket, and check replies with python's json."""
import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback


class TestFailure(Exception):
    pass


def check(condition, message):
    if not condition:
        raise TestFailure(message)


def parse_args():
    ap = argparse.ArgumentParser()
    ap.add_argument("--serve", required=True, help="valet-serve binary")
    ap.add_argument("--ctl", required=True, help="valetctl binary")
    ap.add_argument("--replay", default="", help="valet-replay binary, when built")
    return ap.parse_args()


class Service:
    """One valet-serve process on the host backend (512 MiB), logging to a file."""

    def __init__(self, serve, workdir, socket_path=None, extra=(), env=None, ignore_sigint=False, name="serve"):
        self.workdir = workdir
        self.socket_path = socket_path
        self.log_path = os.path.join(workdir, name + ".log")
        self.log = open(self.log_path, "w")
        cmd = [serve, "--backend", "host", "--capacity", "512MiB"]
        if socket_path:
            cmd += ["--socket", socket_path]
        cmd += list(extra)

        def preexec():
            # What a shell does to a background job: SIGINT ignored. The service must still stop.
            if ignore_sigint:
                signal.signal(signal.SIGINT, signal.SIG_IGN)

        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env, preexec_fn=preexec)

    def log_text(self):
        self.log.flush()
        with open(self.log_path) as f:
            return f.read()

    def wait_ready(self, timeout=60):
        """Waits until the control socket answers `info`; returns its reply."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise TestFailure("valet-serve exited early (rc %s):\n%s" % (self.proc.returncode, self.log_text()))
            if self.socket_path is None:
                candidate = discovered_socket(self.proc.pid)
                if candidate and os.path.exists(candidate):
                    self.socket_path = candidate
            if self.socket_path and os.path.exists(self.socket_path):
                try:
                    reply = request(self.socket_path, {"v": 1, "cmd": "info"})
                    if reply.get("ok"):
                        return reply
                except OSError:
                    pass
            time.sleep(0.1)
        raise TestFailure("valet-serve did not open its control socket in %ss:\n%s" % (timeout, self.log_text()))

    def stop(self, sig=signal.SIGINT, timeout=60):
        """Sends `sig` and waits for the exit; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise TestFailure("valet-serve did not stop within %ss of signal %d:\n%s" % (timeout, sig, self.log_text()))

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def discovered_socket(pid):
    base = os.environ.get("XDG_RUNTIME_DIR")
    directory = os.path.join(base, "valet") if base else "/tmp/valet-%d" % os.getuid()
    return os.path.join(directory, "%d.sock" % pid)


def connect(path, timeout=10):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # A blocking connect: with a timeout python connects non-blocking, and a Unix socket whose
    # listen backlog is momentarily full then fails with EAGAIN instead of waiting.
    s.connect(path)
    s.settimeout(timeout)
    return s


def read_line(s):
    """One reply line, newline included (b"" or a partial line at EOF). Peeks first, so the
    bytes of a following reply stay in the socket for the next call."""
    data = b""
    while not data.endswith(b"\n"):
        peek = s.recv(65536, socket.MSG_PEEK)
        if not peek:
            break
        nl = peek.find(b"\n")
        data += s.recv(nl + 1 if nl >= 0 else len(peek))
    return data


def request(path, obj, timeout=10):
    """One request on a fresh connection; the reply parsed."""
    with connect(path, timeout) as s:
        s.sendall((json.dumps(obj) + "\n").encode())
        return json.loads(read_line(s))


def ctl(binary, *args, expect_rc=0, env=None, timeout=120, cwd=None):
    """Runs valetctl; checks its exit status; returns (stdout, stderr)."""
    p = subprocess.run([binary] + list(args), capture_output=True, text=True, env=env, timeout=timeout, cwd=cwd)
    if expect_rc is not None:
        ok = p.returncode == expect_rc if expect_rc != "nonzero" else p.returncode != 0
        check(ok, "valetctl %s: exit %d (wanted %s)\nstdout: %s\nstderr: %s"
              % (" ".join(args), p.returncode, expect_rc, p.stdout, p.stderr))
    if p.returncode != 0:
        # A failure is reported in one line on stderr.
        check(len(p.stderr.strip().splitlines()) == 1, "valetctl %s: stderr is not one line: %r" % (" ".join(args), p.stderr))
    return p.stdout, p.stderr


def ctl_json(binary, *args, env=None, timeout=120):
    """Runs valetctl ... --json; the output must be exactly one JSON object with ok: true."""
    out, _ = ctl(binary, *args, "--json", env=env, timeout=timeout)
    lines = [l for l in out.splitlines() if l.strip()]
    check(len(lines) == 1, "valetctl %s --json printed %d lines: %r" % (" ".join(args), len(lines), out))
    obj = json.loads(lines[0])
    check(isinstance(obj, dict) and obj.get("ok") is True, "valetctl %s --json: not ok: %r" % (" ".join(args), obj))
    return obj


def require_keys(obj, keys, where):
    missing = [k for k in keys if k not in obj]
    check(not missing, "%s: missing keys %s in %s" % (where, missing, json.dumps(obj)[:2000]))


def run_test(body):
    """Runs body(args, workdir, services) and reports; kills leftover services; exit status 0/1."""
    args = parse_args()
    workdir = tempfile.mkdtemp(prefix="valet-e2e-")
    services = []
    try:
        body(args, workdir, services)
        print("PASS")
        return 0
    except (TestFailure, AssertionError, json.JSONDecodeError, subprocess.TimeoutExpired, OSError) as e:
        print("FAIL: %s: %s" % (type(e).__name__, e))
        traceback.print_exc(limit=4)
        for s in services:
            print("---- log of %s ----\n%s" % (s.log_path, s.log_text()[-4000:]))
        return 1
    finally:
        for s in services:
            s.kill()
        shutil.rmtree(workdir, ignore_errors=True)


def main(body):
    sys.exit(run_test(body))
