#!/usr/bin/env python3
# A model, not part of the heap: arena_model.py's objects (byte ranges, 512-aligned, moved by
# copying, which handles allow) in physical chunks of `chunk_mib` mapped anywhere in a large
# virtual range, as the heap maps 2 MiB pages today, instead of one prefix that grows and shrinks
# at its top. Holes are free bytes of mapped chunks; an object may span chunks mapped side by
# side. What closes holes is evacuation, as the compactor does for slab pages: the mapped chunk
# with the fewest live bytes has its objects copied into holes of other chunks, then it is
# unmapped and released. arena_model.py slides runs of objects down to the top instead, which
# copied 2.3-2.7x the bytes a trace allocates (docs/speed.md, "Session 31"); here only the
# sparsest chunks' objects move.
#
# Allocation: best fit among holes; else the request's chunks are mapped after a mapped region
# that ends in a hole (the object starts in that hole), else at fresh virtual space. A background
# keeper keeps `headroom` whole free chunks mapped and releases the others (hysteresis). Evacuation
# (after frees, with --eager, and at step lines) runs while free mapped bytes exceed `hole_hi` x
# mapped, down to `hole_lo`, at most `move_budget_mib` of copies a run, and never evacuates a chunk
# more than `max_live` full (its copies would buy little). With --peak-ratio it also evacuates
# while mapped memory exceeds that ratio of the peak live bytes, and maps no headroom beyond it;
# with --fit-evacuate a request that no hole holds first evacuates sparse chunks for room; with
# --overflow-pages such a request gets 2 MiB pages of its own (today's page path) instead. Pins,
# fixed objects and stream order are not modelled. Costs as arena_model.py's (the H200's
# per-chunk calls, copies at 2.9 TB/s). docs/speed.md ("Session 44") has its figures.
#
#   python3 evacuation_model.py TRACE [--chunk-mib 64] [--hole-hi 0.04 --hole-lo 0.03] [--eager]
#                                     [--max-live 0.9] [--peak-ratio 1.04] [--fit-evacuate] ...
import argparse
from sortedcontainers import SortedDict, SortedList
from trace_ops import read_ops

ap = argparse.ArgumentParser()
ap.add_argument("trace")
ap.add_argument("--chunk-mib", type=float, default=64)
ap.add_argument("--hole-hi", type=float, default=0.04, help="evacuate when free mapped bytes / mapped exceed this")
ap.add_argument("--hole-lo", type=float, default=0.03, help="evacuate down to this")
ap.add_argument("--headroom", type=int, default=1, help="whole free chunks the keeper keeps mapped")
ap.add_argument("--hysteresis", type=int, default=1, help="free chunks beyond the headroom before it releases")
ap.add_argument("--move-budget-mib", type=float, default=64)
ap.add_argument("--max-live", type=float, default=0.5, help="evacuate no chunk fuller than this")
ap.add_argument("--eager", action="store_true")
ap.add_argument("--peak-ratio", type=float, default=0, help="also evacuate while mapped exceeds this x the peak live bytes, and map no headroom beyond it (0: off)")
ap.add_argument("--overflow-pages", action="store_true", help="a request that fits no hole gets 2 MiB pages of its own (today's page path) instead of new chunks")
ap.add_argument("--fit-evacuate", action="store_true", help="a request no hole holds evacuates sparse chunks first")
ap.add_argument("--align", type=int, default=512)
a = ap.parse_args()
C = int(a.chunk_mib * 2**20); AL = a.align


def rup(x, m): return (x + m - 1) // m * m


objs = {}                   # id -> (start, padded size, size)
by_addr = SortedDict()      # start -> id
holes = SortedDict()        # start -> length (free bytes of mapped chunks)
by_size = SortedList()      # (length, start)
mapped = set()              # chunk indices
live_in = {}                # chunk -> live (padded) bytes overlapping it
next_fresh = 0              # first chunk index never used
live = peak_live = peak_mapped = 0
paged = {}        # --overflow-pages: id -> (size, pages)
paged_bytes = 0
P = 2 << 20
sum_live = sum_mapped = steps = 0
st = dict(creates=0, releases=0, caller_maps=0, moves=0, moved_bytes=0, evacuations=0, evacuated_chunks=0,
          aborted=0, fit_evacuations=0, page_objects=0, page_maps=0, page_releases=0, probes=0, probes_failed=0, allocs=0, hole_hits=0)
free_bytes = 0


def hole_add(s, n):
    i = holes.bisect_left(s)
    if i > 0:
        ps, pn = holes.peekitem(i - 1)
        if ps + pn == s:
            del holes[ps]; by_size.remove((pn, ps)); s, n = ps, pn + n
    if s + n in holes:
        nn = holes.pop(s + n); by_size.remove((nn, s + n)); n += nn
    holes[s] = n; by_size.add((n, s))


def hole_take(s, n, at, sz):  # take [at, at+sz) out of hole (s, n)
    del holes[s]; by_size.remove((n, s))
    if at > s: holes[s] = at - s; by_size.add((at - s, s))
    if at + sz < s + n: holes[at + sz] = s + n - at - sz; by_size.add((s + n - at - sz, at + sz))


def chunks_of(s, sz): return range(s // C, (s + sz - 1) // C + 1)


def occupy(s, sz, sign):
    for c in chunks_of(s, sz):
        lo, hi = max(s, c * C), min(s + sz, (c + 1) * C)
        live_in[c] += sign * (hi - lo)


def map_chunk(c):
    global free_bytes, next_fresh
    assert c not in mapped
    next_fresh = max(next_fresh, c + 1)
    mapped.add(c); live_in[c] = 0; st["creates"] += 1; free_bytes += C
    hole_add(c * C, C)


def release_chunk(c):  # a whole free chunk: out of its hole
    global free_bytes
    i = holes.bisect_right(c * C) - 1
    s, n = holes.peekitem(i)
    hole_take(s, n, c * C, C)
    mapped.discard(c); del live_in[c]; st["releases"] += 1; free_bytes -= C


def in_use(at, sz): return all(live_in[c] > 0 for c in chunks_of(at, sz))


def best_fit(sz, avoid=None):
    # With `avoid` (an evacuation's source chunk): a place outside it, inside chunks in use (a
    # whole free chunk filled by an evacuation would only trade one sparse chunk for another).
    i = by_size.bisect_left((sz, -1))
    while i < len(by_size):
        n, s = by_size[i]
        i += 1
        if avoid is None: return s, s
        for at in (s, s + n - sz):
            if (at + sz <= avoid * C or at >= (avoid + 1) * C) and in_use(at, sz): return s, at
    return None


def place(oid, sz, size, at):
    global free_bytes
    objs[oid] = (at, sz, size); by_addr[at] = oid; occupy(at, sz, +1); free_bytes -= sz


def alloc(oid, size):
    global live, peak_live, peak_mapped, next_fresh
    sz = rup(size, AL); st["allocs"] += 1
    f = best_fit(sz)
    if not f and a.fit_evacuate and partial_free() >= sz:
        # room by copying: the sparsest chunks in use are evacuated until a hole holds the
        # request or the budget is spent (the request waits for those copies, not for a map)
        budget = a.move_budget_mib * 2**20; moved0 = st["moved_bytes"]; tried = set()
        while not f and st["moved_bytes"] - moved0 < budget:
            cands = [c for c in mapped if 0 < live_in[c] <= a.max_live * C and c not in tried]
            if not cands: break
            c = min(cands, key=lambda x: live_in[x]); tried.add(c)
            if evacuate_chunk(c): st["fit_evacuations"] += 1
            f = best_fit(sz)
    if f:
        st["hole_hits"] += 1
        hole_take(f[0], holes[f[0]], f[0], sz); place(oid, sz, size, f[0])
    elif a.overflow_pages:
        global paged_bytes
        pages = (size + P - 1) // P
        paged[oid] = (size, pages); paged_bytes += pages * P
        st["page_objects"] += 1; st["page_maps"] += pages
    else:
        # map chunks after a mapped region ending in a hole (the object starts there), else fresh
        st["caller_maps"] += 1
        start = None
        for n, s in reversed(by_size):
            end = s + n
            if end % C == 0 and end // C not in mapped:
                k = (sz - n + C - 1) // C
                if all((end // C + j) not in mapped for j in range(k)):
                    start = s
                    for j in range(k): map_chunk(end // C + j)
                    break
            if n < C // 16: break  # only sizeable holes are worth extending
        if start is None:
            k = (sz + C - 1) // C
            base = next_fresh
            for j in range(k): map_chunk(base + j)
            start = base * C
        i = holes.bisect_right(start) - 1
        s, n = holes.peekitem(i)
        hole_take(s, n, start, sz); place(oid, sz, size, start)
    live += size
    if live > peak_live: peak_live = live
    peak_mapped = max(peak_mapped, len(mapped) * C + paged_bytes)


def free(oid):
    global live, free_bytes, paged_bytes
    if oid in paged:
        size, pages = paged.pop(oid); live -= size; paged_bytes -= pages * P; st["page_releases"] += pages
        return
    s, sz, size = objs.pop(oid); del by_addr[s]; occupy(s, sz, -1); live -= size; free_bytes += sz
    hole_add(s, sz)


def keep():
    free_chunks = [c for c in mapped if live_in[c] == 0]
    if len(free_chunks) > a.headroom + a.hysteresis - 1:
        for c in sorted(free_chunks)[a.headroom:]: release_chunk(c)
    while sum(1 for c in mapped if live_in[c] == 0) < a.headroom and \
            not (a.peak_ratio and (len(mapped) + 1) * C > a.peak_ratio * peak_live):
        global next_fresh
        map_chunk(next_fresh)


def partial_free():  # free bytes of chunks in use (whole free chunks are the keeper's)
    return free_bytes - C * sum(1 for c in mapped if live_in[c] == 0)


def over_bound(): return a.peak_ratio and len(mapped) * C > a.peak_ratio * peak_live


def evacuate_wanted(): return partial_free() > a.hole_hi * len(mapped) * C or (over_bound() and partial_free() > C)


def evacuate():
    st["evacuations"] += 1
    budget = a.move_budget_mib * 2**20; moved0 = st["moved_bytes"]
    tried = set()
    while (partial_free() > a.hole_lo * len(mapped) * C or (over_bound() and partial_free() > C)) and \
            st["moved_bytes"] - moved0 < budget:
        cands = [c for c in mapped if 0 < live_in[c] <= a.max_live * C and c not in tried]
        if not cands: break
        c = min(cands, key=lambda x: live_in[x])
        tried.add(c)
        # an emptied chunk goes at once unless the keeper wants it as headroom
        if evacuate_chunk(c) and (sum(1 for x in mapped if live_in[x] == 0) > a.headroom or over_bound()): release_chunk(c)


def evacuate_chunk(c):
    # its objects, whole inside it (one that spans chunks stays: the chunk is not emptied)
    inside = [by_addr[x] for x in by_addr.irange(c * C, (c + 1) * C, inclusive=(True, False))]
    if any(objs[o][0] + objs[o][1] > (c + 1) * C for o in inside) or \
       (by_addr.bisect_left(c * C) > 0 and sum(objs[by_addr.peekitem(by_addr.bisect_left(c * C) - 1)[1]][:2]) > c * C):
        return False
    for o in sorted(inside, key=lambda o: -objs[o][1]):
        s, sz, size = objs[o]
        f = best_fit(sz, avoid=c)
        if not f: st["aborted"] += 1; return False
        hole_take(f[0], holes[f[0]], f[1], sz)
        del by_addr[s]; occupy(s, sz, -1); hole_add(s, sz)
        objs[o] = (f[1], sz, size); by_addr[f[1]] = o; occupy(f[1], sz, +1)
        st["moves"] += 1; st["moved_bytes"] += sz
    st["evacuated_chunks"] += 1  # empty now: kept as a hole for the request when it asked
    return True


def probe(n):
    st["probes"] += 1
    sz = rup(n, AL)
    if best_fit(sz): return
    if live + sz > (8 << 30): st["probes_failed"] += 1


for op, v in read_ops(a.trace):
    if op == 'a': alloc(v[0], v[1]); keep()
    elif op == 'f':
        free(v[0])
        if a.eager and evacuate_wanted(): evacuate()
        keep()
    elif op == 's':
        steps += 1
        if evacuate_wanted(): evacuate(); keep()
        sum_live += live; sum_mapped += len(mapped) * C + paged_bytes
    elif op == 'p': probe(v[0])
copy_s = st["moved_bytes"] * 2 / 2.9e12
chunk_s = st["creates"] * (17 + 2 + 39) * 1e-6 + st["releases"] * (24 + 54) * 1e-6 + \
    st["page_maps"] * (17 + 2 + 39) * 1e-6 + st["page_releases"] * (22 + 17) * 1e-6
print(f"{a.trace.split('/')[-1]} chunk={a.chunk_mib}MiB hi={a.hole_hi} lo={a.hole_lo} max_live={a.max_live}: "
      f"peak mapped/live {peak_mapped/peak_live:.4f} frag {1-sum_live/sum_mapped:.4f} | caller maps {st['caller_maps']} of "
      f"{st['allocs']} | objects on pages {st['page_objects']} ({st['page_maps']} pages) | chunks created {st['creates']} released {st['releases']} (~{chunk_s:.3f} s driver) | moves "
      f"{st['moves']} {st['moved_bytes']/2**30:.1f} GiB (~{copy_s*1e3:.1f} ms copy) evacuations {st['evacuations']} "
      f"chunks emptied {st['evacuated_chunks']} (for a fit {st['fit_evacuations']}) aborted {st['aborted']} | probes {st['probes']} failed {st['probes_failed']} "
      f"| hole hits {st['hole_hits']}")
