# The project's workload generator (copied from the team's shared workloads/gen_trace.py; tests use this copy).
#!/usr/bin/env python3
"""Generate an allocation trace that models a long-running LLM serving process.

Trace format (text, one op a line, '#' starts a comment):
  a <id> <bytes>   allocate object <id> of <bytes> bytes
  f <id>           free object <id>
  s                step boundary: one serving tick has ended (a heap may compact here)
  p <bytes>        probe: allocate one object of <bytes> bytes, record success, free it at once
                   (a probe is not a live object: it counts in no peak)

The model: requests arrive at random; each owns a KV cache that grows as tokens are
generated, by reallocation (allocate the larger buffer, free the old one), plus a few
small per-request objects (sampling state, logits rows, token buffers). Every step
also allocates and frees temporary activations whose size follows the batch. Every
`--probe-every` steps a probe asks for one large object of a fixed fraction of the
memory that is free at that point (capacity minus live bytes), the situation in which
a fragmented heap reports out-of-memory although enough memory is free in total.

Standard library only; deterministic for a given seed.
"""
import argparse, math, random, sys

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--capacity-gib", type=float, default=8.0, help="memory the replaying heap is given")
    ap.add_argument("--bytes-per-token", type=int, default=32 * 1024)
    ap.add_argument("--arrivals", type=float, default=0.6, help="mean new requests per step")
    ap.add_argument("--prompt-median", type=int, default=384)
    ap.add_argument("--output-median", type=int, default=192)
    ap.add_argument("--grow-every", type=int, default=16, help="tokens between KV cache reallocations")
    ap.add_argument("--small-objects", type=int, default=6, help="small objects per request")
    ap.add_argument("--phase-every", type=int, default=0,
                    help="steps between shifts of the small-object size mix (0: no shifts); objects of the old mix linger")
    ap.add_argument("--linger", type=int, default=800,
                    help="most steps a finished request's leftover small object stays alive")
    ap.add_argument("--probe-every", type=int, default=250)
    ap.add_argument("--probe-fraction", type=float, default=0.5)
    ap.add_argument("-o", "--output", default="-")
    a = ap.parse_args()
    rng = random.Random(a.seed)
    cap = int(a.capacity_gib * (1 << 30))
    out = sys.stdout if a.output == "-" else open(a.output, "w")
    w = out.write
    w(f"# gpuheap-trace v1 seed={a.seed} steps={a.steps} capacity={cap}\n")
    next_id = 0
    live = {}            # id -> bytes
    live_bytes = 0
    reqs = []            # dicts: kv id, kv tokens, tokens, target, smalls
    def alloc(n):
        nonlocal next_id, live_bytes
        i = next_id; next_id += 1
        live[i] = n; live_bytes += n
        w(f"a {i} {n}\n")
        return i
    def free(i):
        nonlocal live_bytes
        live_bytes -= live.pop(i)
        w(f"f {i}\n")
    def lognorm(median, sigma=0.9):
        return max(8, int(median * math.exp(rng.gauss(0, sigma))))
    for step in range(a.steps):
        # admission: keep live bytes under 70% of capacity so a good heap never runs out
        n_new = 0
        lam = a.arrivals
        L = math.exp(-lam); k = 0; p = 1.0
        while True:
            p *= rng.random()
            if p <= L: break
            k += 1
        n_new = k
        for _ in range(n_new):
            prompt = min(lognorm(a.prompt_median), 8192)
            target = prompt + min(lognorm(a.output_median), 4096)
            if live_bytes + target * a.bytes_per_token > 0.70 * cap:
                continue
            kv_tokens = prompt + a.grow_every
            menu = MENUS[(step // a.phase_every) % len(MENUS)] if a.phase_every else SMALL_SIZES
            smalls = [alloc(rng.choice(menu) + rng.randrange(0, 256, 16))
                      for _ in range(rng.randint(1, a.small_objects))]
            reqs.append({"kv": alloc(kv_tokens * a.bytes_per_token), "kv_tokens": kv_tokens,
                         "tokens": prompt, "target": target, "smalls": smalls})
        # temporaries of this step: activations that follow the batch size
        batch_tokens = sum(1 for _ in reqs) + n_new * a.prompt_median
        temps = [alloc(max(4096, batch_tokens * rng.choice([2048, 4096, 8192, 11008 * 2]))) for _ in range(rng.randint(2, 5))]
        # decode one token for each running request
        done = []
        for r in reqs:
            r["tokens"] += 1
            if r["tokens"] >= r["kv_tokens"]:
                r["kv_tokens"] += a.grow_every
                new = alloc(r["kv_tokens"] * a.bytes_per_token)
                free(r["kv"]); r["kv"] = new
            if rng.random() < 0.05:   # a small object is replaced now and then
                j = rng.randrange(len(r["smalls"]))
                n = live[r["smalls"][j]]
                free(r["smalls"][j]); r["smalls"][j] = alloc(n)
            if r["tokens"] >= r["target"]:
                done.append(r)
        for t in reversed(temps):
            free(t)
        for r in done:
            reqs.remove(r)
            free(r["kv"])
            # a finished request leaves one small object behind for a while (results cache)
            for s in r["smalls"][1:]:
                free(s)
            r["smalls"] = r["smalls"][:1]
            lingering.append((step + rng.randint(50, max(50, a.linger)), r["smalls"][0]))
        keep = []
        for (until, i) in lingering:
            if until <= step: free(i)
            else: keep.append((until, i))
        lingering[:] = keep
        w("s\n")
        if a.probe_every and step % a.probe_every == a.probe_every - 1:
            want = int((cap - live_bytes) * a.probe_fraction)
            w(f"p {want}\n")
    for r in reqs:
        free(r["kv"])
        for s in r["smalls"]: free(s)
    for (_, i) in lingering: free(i)
    w("# end\n")

SMALL_SIZES = [256, 512, 4096, 16384, 65536, 131072, 262144]
# size mixes that follow one another with --phase-every (a change of model, adapter or batch shape)
MENUS = [[256, 512, 4096], [16384, 65536], [131072, 262144], [24576, 98304, 196608], [768, 1536, 8192]]
lingering = []
if __name__ == "__main__":
    main()
