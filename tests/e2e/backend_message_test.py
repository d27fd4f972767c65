#!/usr/bin/env python3
"""What the binaries say about the CUDA backend: `--backend cuda` where CUDA is not usable fails
with one line that names libcuda.so.1 at most once (exactly once when the driver is missing:
dlerror() names the library itself, and the message must not repeat it), and with `--backend
auto` valet-serve says in one line why it fell back to the host backend, with the same reason."""
import os
import re
import subprocess

from e2e_util import check, main

FALLBACK = "valet-serve: no usable GPU, running on the host backend: "


def run(cmd, timeout=60):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout + p.stderr


def check_cuda_refusal(name, rc, out):
    """The reason CUDA was refused (None where CUDA is usable here), after checking the message."""
    if rc == 0:
        return None
    lines = [l for l in out.splitlines() if l.strip()]
    check(len(lines) == 1, "%s --backend cuda: %d lines of error: %r" % (name, len(lines), out))
    line = lines[0]
    m = re.match(r"%s: (?:cannot open a heap: )?unsupported: (.+)$" % re.escape(name), line)
    check(m, "%s --backend cuda: not an 'unsupported' error: %r" % (name, line))
    reason = m.group(1)
    count = line.count("libcuda.so.1")
    if "CUDA driver not found" in reason:
        check(count == 1, "%s: libcuda.so.1 named %d times (wanted once): %r" % (name, count, line))
    else:
        check(count <= 1, "%s: libcuda.so.1 named %d times: %r" % (name, count, line))
    return reason


def body(args, workdir, services):
    serve = [args.serve, "--capacity", "64MiB", "--seconds", "1", "--socket", os.path.join(workdir, "s.sock")]

    rc, out = run(serve + ["--backend", "cuda"])
    check(rc in (0, 2), "valet-serve --backend cuda: exit %d: %r" % (rc, out))
    reason = check_cuda_refusal("valet-serve", rc, out)

    if args.replay:
        trace = os.path.join(workdir, "tiny.trace")
        with open(trace, "w") as f:
            f.write("# gpuheap-trace v1 capacity=67108864\na 1 4096\ns\nf 1\n")
        rc, out = run([args.replay, "--backend", "cuda", trace])
        check((rc == 0) == (reason is None), "valet-replay and valet-serve disagree on CUDA: exit %d: %r" % (rc, out))
        replay_reason = check_cuda_refusal("valet-replay", rc, out)
        check(replay_reason == reason, "valet-replay's reason %r != valet-serve's %r" % (replay_reason, reason))

    # auto: where CUDA was refused above, one line says so and gives the same reason.
    rc, out = run(serve + ["--backend", "auto"])
    check(rc == 0, "valet-serve --backend auto: exit %d: %r" % (rc, out))
    fallbacks = [l for l in out.splitlines() if "no usable GPU" in l]
    on_host = re.search(r"^valet-serve: pid \d+, host ", out, re.M) is not None
    if reason is None:
        check(not on_host and not fallbacks, "CUDA is usable, yet auto ran on the host: %r" % out)
    else:
        check(on_host, "auto did not run on the host backend: %r" % out)
        check(fallbacks == [FALLBACK + reason], "fallback lines %r, wanted [%r]" % (fallbacks, FALLBACK + reason))

    # An explicit host backend is no fallback: nothing to explain.
    rc, out = run(serve + ["--backend", "host"])
    check(rc == 0, "valet-serve --backend host: exit %d: %r" % (rc, out))
    check("no usable GPU" not in out, "--backend host explains a fallback: %r" % out)


if __name__ == "__main__":
    main(body)
