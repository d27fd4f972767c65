#!/usr/bin/env python3
# A model, not part of the heap: could a heap that keeps every object in one virtual range, whose
# mapped prefix grows and shrinks by whole physical chunks at its top, and that closes holes by
# copying objects (handles let it move them) rather than by remapping 2 MiB pages, hold the memory
# targets with far fewer driver calls? It replays a trace (valet-replay generate's format) and
# counts chunks created and released, the caller's own growths (a request that the mapped top
# space did not cover), and the bytes moved, and estimates their cost with the H200's measured
# per-call costs (docs/speed.md, session 21: a 64 MiB chunk's create + map + access ~58 us, its
# unmap + release ~78 us) and a device copy at 2.9 TB/s (bytes read and written).
#
# Objects are byte ranges 512-aligned. Allocation: best fit among holes, else at the top. A
# background keeper keeps `headroom` chunks (plus `recent_share` x the largest of the last
# `window` requests) mapped above the top and releases surplus chunks with `hysteresis`.
# Compaction (at step lines, and with --eager after frees) runs while holes exceed `hole_hi` x
# mapped, down to `hole_lo`, at most `move_budget_mib` a run: the highest object moves into the
# best-fitting hole below it; where none fits, the cheapest segment of objects between two holes
# slides down to merge them (--slide: or is staged, or evacuated to the top). Stream order is not
# modelled; --region-min-bytes leaves small objects out (slab pages hold them).
# --oracle N asks what knowing each object's lifetime would save (the trace's own future): no
# object freed within N operations is moved (the highest that lives on moves instead; none within
# --scan objects: the cycle waits for the frees), no slide moves one. --fixed-share and
# --pinned-share make a share of the objects never movable, or each move find its object pinned
# with that probability; --long-pins K keeps K random live objects pinned, each for
# --long-pin-ops operations. All are skipped the same way.
# docs/speed.md ("Session 31", "Session 50") has its figures.
#
#   python3 arena_model.py TRACE [--chunk-mib 64] [--hole-hi 0.04 --hole-lo 0.03] [--eager] ...
import sys, argparse
from sortedcontainers import SortedDict, SortedList
from trace_ops import read_ops
ap = argparse.ArgumentParser()
ap.add_argument("trace"); ap.add_argument("--chunk-mib", type=float, default=64)
ap.add_argument("--hole-hi", type=float, default=0.03, help="compact when holes / mapped exceeds this")
ap.add_argument("--hole-lo", type=float, default=0.01, help="compact down to this")
ap.add_argument("--headroom", type=float, default=1.0, help="free top space kept mapped, in chunks, plus the largest recent request")
ap.add_argument("--move-budget-mib", type=float, default=4096)
ap.add_argument("--scan", type=int, default=100000)
ap.add_argument("--recent-share", type=float, default=1.0)
ap.add_argument("--eager", action="store_true")
ap.add_argument("--hysteresis", type=int, default=1)
ap.add_argument("--align", type=int, default=512)
ap.add_argument("--window", type=int, default=2000, help="allocations the 'recent largest request' looks back over")
ap.add_argument("--oracle", type=int, default=0,
                help="a lifetime oracle (the trace's own future): compaction leaves alone a top object freed within this many "
                     "operations (its free lowers the top anyway) and moves no object that dies that soon; 0: off")
ap.add_argument("--fixed-share", type=float, default=0.0,
                help="this share of the objects (chosen at random at allocation) is fixed: never moved or slid")
ap.add_argument("--pinned-share", type=float, default=0.0,
                help="each move or slide finds each object it would move pinned with this probability (the move is skipped)")
ap.add_argument("--long-pins", type=int, default=0,
                help="this many live objects, chosen at random, are pinned at any time, each for --long-pin-ops operations")
ap.add_argument("--long-pin-ops", type=int, default=1000)
ap.add_argument("--seed", type=int, default=1)
ap.add_argument("--slide", choices=["shift", "stage", "evacuate"], default="shift",
                help="how a run of objects between two holes is closed up. shift: each object copied down by the "
                     "lower hole's size, counted once (optimistic: an object larger than the hole overlaps its own "
                     "source, and each object's copy must wait for the one below it). stage: the same placement, "
                     "the run copied out to free space and back in two batches (its bytes twice). evacuate: the "
                     "run's objects copied to the top (once; the holes and the run's space become one hole)")
ap.add_argument("--region-min-bytes", type=int, default=0,
                help="only objects of at least this size live in the region (smaller ones are left out of every "
                     "figure: slab pages hold them)")
a = ap.parse_args()
import random
rng = random.Random(a.seed)
fixed = set()
long_pinned = {}  # object -> the operation its pin ends at
def movable(oid):
    if oid in fixed or oid in long_pinned or dies_soon(oid): return False
    return not (a.pinned_share > 0 and rng.random() < a.pinned_share)
ops_list = list(read_ops(a.trace))
free_at = {}
for i, (op, v) in enumerate(ops_list):
    if op == 'f': free_at[v[0]] = i
now = 0  # the index of the operation being replayed
def dies_soon(oid): return a.oracle > 0 and free_at.get(oid, 1 << 62) - now <= a.oracle
C = int(a.chunk_mib * 2**20); AL = a.align
cap = 8 << 30
objs = {}; by_addr = SortedDict(); holes = SortedDict(); by_size = SortedList()
top = 0; mapped = 0; live = 0; peak_live = 0; peak_mapped = 0; holes_total = 0
st = dict(chunk_creates=0, chunk_releases=0, caller_grows=0, caller_grow_chunks=0, moves=0, moved_bytes=0, compactions=0,
          slide_moves=0, probes=0, probes_failed=0, probe_slides=0, probe_slide_bytes=0, allocs=0, hole_hits=0, top_allocs=0,
          slides=0, oracle_waits=0, oracle_skipped_slides=0,
          slide_bytes=0, overlapping_slide_bytes=0, staged_bytes=0, evacuated_bytes=0)
sum_live = sum_mapped = 0; recent = []
def rup(x, m): return (x + m - 1) // m * m
def add_hole(s, n):
    global holes_total, top
    i = holes.bisect_left(s)
    if i > 0:
        ps, pn = holes.peekitem(i - 1)
        if ps + pn == s: del holes[ps]; by_size.remove((pn, ps)); holes_total -= pn; s, n = ps, pn + n
    if s + n in holes:
        nn = holes.pop(s + n); by_size.remove((nn, s + n)); holes_total -= nn; n += nn
    if s + n == top:
        top = s; return
    holes[s] = n; by_size.add((n, s)); holes_total += n
def take_hole(s, n, sz):
    global holes_total
    del holes[s]; by_size.remove((n, s)); holes_total -= n
    if n > sz: holes[s + sz] = n - sz; by_size.add((n - sz, s + sz)); holes_total += n - sz
def place(sz, below=None):
    i = by_size.bisect_left((sz, -1))
    while i < len(by_size):
        n, s = by_size[i]
        if below is None or s + sz <= below:
            take_hole(s, n, sz); return s
        i += 1
        if below is not None: break
    return None
def headroom():
    return int(a.headroom * C) + int(a.recent_share * (max(recent) if recent else 0))
def keep():  # the background keeper: top space mapped ahead, surplus chunks released
    global mapped
    want = rup(top + headroom(), C)
    want = min(want, cap)
    if mapped < want: st["chunk_creates"] += (want - mapped) // C; mapped = want
    elif mapped - want >= a.hysteresis * C: st["chunk_releases"] += (mapped - want) // C; mapped = want
left_out = set()
def alloc(oid, size):
    global top, mapped, live, peak_live, peak_mapped
    if size < a.region_min_bytes: left_out.add(oid); return
    sz = rup(size, AL); st["allocs"] += 1
    recent.append(sz)
    if len(recent) > a.window: recent.pop(0)
    s = place(sz)
    if s is None:
        s = top; top += sz; st["top_allocs"] += 1
        if top > mapped:
            need = rup(top, C); st["caller_grows"] += 1; st["caller_grow_chunks"] += (need - mapped) // C; st["chunk_creates"] += (need - mapped) // C; mapped = need
    else: st["hole_hits"] += 1
    objs[oid] = (s, sz, size); by_addr[s] = oid; live += size
    if a.fixed_share > 0 and rng.random() < a.fixed_share: fixed.add(oid)
    if live > peak_live: peak_live = live; peak_mapped = max(peak_mapped, mapped)
def free(oid):
    global live
    if oid in left_out: left_out.discard(oid); return
    s, sz, size = objs.pop(oid); del by_addr[s]; live -= size; fixed.discard(oid); long_pinned.pop(oid, None)
    add_hole(s, sz)
def segment_after(hs, hn):
    # objects from the hole's end up to the next hole (or the top): (bytes, [starts])
    end = hs + hn
    j = holes.bisect_right(hs)
    nxt = holes.peekitem(j)[0] if j < len(holes) else top
    starts = list(by_addr.irange(end, nxt, inclusive=(True, False)))
    return sum(objs[by_addr[x]][1] for x in starts), starts
def slide(hs, hn, starts):
    global holes_total, top
    del holes[hs]; by_size.remove((hn, hs)); holes_total -= hn
    for x in starts:
        oid = by_addr.pop(x); _, sz, size = objs[oid]
        objs[oid] = (x - hn, sz, size); by_addr[x - hn] = oid
        st["slide_moves"] += 1; st["moved_bytes"] += sz; st["slide_bytes"] += sz
        if sz > hn: st["overlapping_slide_bytes"] += sz
        if a.slide == "stage": st["moved_bytes"] += sz; st["staged_bytes"] += sz
    end = starts[-1] - hn + objs[by_addr[starts[-1] - hn]][1] if starts else hs
    add_hole(end, hn)
def evacuate(hs, hn, starts):
    # the run's objects go to the top, lowest first; their old space joins the holes around it
    global top, mapped
    for x in starts:
        oid = by_addr.pop(x); _, sz, size = objs[oid]
        d = top; top += sz
        objs[oid] = (d, sz, size); by_addr[d] = oid
        st["slide_moves"] += 1; st["moved_bytes"] += sz; st["slide_bytes"] += sz; st["evacuated_bytes"] += sz
        add_hole(x, sz)
    if top > mapped:  # the keeper's headroom did not cover it: the cycle grows the region first
        need = rup(top, C); st["chunk_creates"] += (need - mapped) // C; mapped = need
def compact():
    st["compactions"] += 1
    target = a.hole_lo * mapped
    budget = a.move_budget_mib * 2**20
    moved0 = st["moved_bytes"]
    while holes_total > target and by_addr and st["moved_bytes"] - moved0 < budget:
        s, oid = by_addr.peekitem(-1)
        _, sz, size = objs[oid]
        if not movable(oid):
            # The highest movable object that lives on instead (its hole moves up, where the dying ones'
            # frees merge it into the top); none within `scan` objects: wait for the frees.
            found = None
            for k in range(2, min(len(by_addr), a.scan) + 1):
                s2, o2 = by_addr.peekitem(-k)
                if movable(o2):
                    found = (s2, o2)
                    break
            if found is None:
                st["oracle_waits"] += 1
                break
            s, oid = found
            _, sz, size = objs[oid]
        d = place(sz, below=s)
        if d is not None:
            del by_addr[s]; objs[oid] = (d, sz, size); by_addr[d] = oid
            st["moves"] += 1; st["moved_bytes"] += sz
            add_hole(s, sz)
            continue
        # no hole below fits the top object: merge two holes by sliding the cheapest segment down
        best = None
        for hs, hn in list(holes.items())[: a.scan]:
            b, starts = segment_after(hs, hn)
            if (a.oracle or fixed or a.pinned_share or long_pinned) and not all(movable(by_addr[x]) for x in starts):
                st["oracle_skipped_slides"] += 1
                continue
            if best is None or b < best[0]: best = (b, hs, hn, starts)
        if best is None: break
        st["slides"] += 1
        if a.slide == "evacuate": evacuate(best[1], best[2], best[3])
        else: slide(best[1], best[2], best[3])
def probe(n):
    st["probes"] += 1
    sz = rup(n, AL)
    if place(sz) is not None: return  # fits a hole (not given back: a probe fitting a hole is taken as rare)
    if top + sz <= cap:
        return
    # compaction by sliding everything down: always possible without pins
    if live + sz <= cap:
        st["probe_slides"] += 1; st["probe_slide_bytes"] += sum(objs[o][1] for o in by_addr.values()); return
    st["probes_failed"] += 1
steps = 0
def renew_long_pins():
    for o in [o for o, end in long_pinned.items() if end <= now]: del long_pinned[o]
    while len(long_pinned) < a.long_pins and len(long_pinned) < len(objs):
        o = by_addr.peekitem(rng.randrange(len(by_addr)))[1]
        long_pinned.setdefault(o, now + a.long_pin_ops)
for now, (op, v) in enumerate(ops_list):
    if a.long_pins: renew_long_pins()
    if op == 'a': alloc(v[0], v[1]); keep()
    elif op == 'f':
        free(v[0])
        if a.eager and holes_total > a.hole_hi * mapped: compact()
        keep()
    elif op == 's':
        steps += 1
        if holes_total > a.hole_hi * mapped: compact(); keep()
        sum_live += live; sum_mapped += mapped; peak_mapped = max(peak_mapped, mapped)
    elif op == 'p': probe(v[0])
copy_s = st["moved_bytes"] * 2 / 2.9e12
chunk_s = st["chunk_creates"] * (17 + 2 + 39) * 1e-6 + st["chunk_releases"] * (24 + 54) * 1e-6
print(f"peak live {peak_live/2**30:.2f} GiB; mean live {sum_live/steps/2**30:.2f}"); print(f"{a.trace.split('/')[-1]} chunk={a.chunk_mib}MiB hi={a.hole_hi} lo={a.hole_lo}: peak mapped/live {peak_mapped/peak_live:.4f} "
      f"frag {1-sum_live/sum_mapped:.4f} | caller grows {st['caller_grows']} of {st['allocs']} allocs ({st['caller_grow_chunks']} chunks) "
      f"| chunks created {st['chunk_creates']} released {st['chunk_releases']} (~{chunk_s:.3f} s driver) | moves {st['moves']} "
      f"{st['moved_bytes']/2**30:.1f} GiB (~{copy_s*1e3:.1f} ms copy) compactions {st['compactions']} "
      f"slides {st['slides']} ({st['slide_moves']} objects slid, their bytes in the GiB moved) | probes {st['probes']} failed {st['probes_failed']} "
      f"(slid for {st['probe_slides']}: {st['probe_slide_bytes']/2**30:.1f} GiB) | hole hits {st['hole_hits']} top {st['top_allocs']}"
      + (f" | unmovable (oracle {a.oracle}, fixed {a.fixed_share}, pinned {a.pinned_share}): waits {st['oracle_waits']}, "
         f"slides skipped {st['oracle_skipped_slides']}" if a.oracle or a.fixed_share or a.pinned_share or a.long_pins else "")
      + f" | slides ({a.slide}): {st['slide_bytes']/2**30:.1f} GiB, of it {st['overlapping_slide_bytes']/2**30:.1f} GiB in objects larger than the hole below them; staged {st['staged_bytes']/2**30:.1f} GiB, evacuated {st['evacuated_bytes']/2**30:.1f} GiB; object moves (repoints) {st['moves'] + st['slide_moves']}"
      + (f" | region from {a.region_min_bytes} B" if a.region_min_bytes else "")
      + (f" | long pins {a.long_pins} x {a.long_pin_ops} ops" if a.long_pins else ""))
