#!/usr/bin/env python3
# A model, not part of the heap: evacuation_model.py's objects (byte ranges, 512-aligned, moved by
# copying, which handles allow) in physical chunks of *any* size (a multiple of 2 MiB), each
# mapped at its own virtual range. evacuation_model.py closed holes only by copying a sparse
# chunk's objects into holes of other chunks, and at the live peak 5-8 % of mapped memory stayed
# in holes no object could move into (16-64 MiB objects in 64 MiB chunks: docs/speed.md,
# "Session 44"). Here a sparse chunk whose objects fit no hole elsewhere is *repacked*: its
# objects (with those of other sparse chunks, up to `--merge-mib` of live bytes) are copied side by
# side into one new chunk of exactly their size rounded up to 2 MiB, and the old chunks are
# released. Repacking never depends on room elsewhere; it costs one create + map + access grant, the
# copies, and an unmap + release per old chunk, and for a moment both copies are mapped (counted in
# the peak).
#
# Allocation: best fit among holes of mapped chunks; else a new chunk of max(chunk_mib, the
# request rounded up to 2 MiB) (a "miss": in the heap the mapper's calls, which a step waits for).
# A background keeper keeps `headroom` whole free chunks mapped and releases the others
# (hysteresis). Compaction (after frees with --eager, and at step lines) runs while free bytes of
# partly used chunks exceed `hole_hi` x mapped, down to `hole_lo`, at most `move_budget_mib` of
# copies a run, on the chunk that wastes the most bytes first. Pins, fixed objects and stream
# order are not modelled. Costs as evacuation_model.py's (per chunk: create + map + access ~58 us,
# unmap + release ~78 us, the H200's; copies at 2.9 TB/s read and written).
#
#   python3 repack_model.py TRACE [--chunk-mib 64] [--hole-hi 0.04 --hole-lo 0.03] [--eager]
#                                 [--merge-mib 64] [--no-evacuate] ...
import argparse
from sortedcontainers import SortedDict, SortedList
from trace_ops import read_ops

ap = argparse.ArgumentParser()
ap.add_argument("trace")
ap.add_argument("--chunk-mib", type=float, default=64, help="a new chunk for a request that fits no hole holds at least this")
ap.add_argument("--hole-hi", type=float, default=0.04)
ap.add_argument("--hole-lo", type=float, default=0.03)
ap.add_argument("--headroom", type=int, default=1)
ap.add_argument("--hysteresis", type=int, default=1)
ap.add_argument("--move-budget-mib", type=float, default=256)
ap.add_argument("--merge-mib", type=float, default=64, help="a repack gathers sparse chunks up to this many live bytes")
ap.add_argument("--min-waste-mib", type=float, default=2, help="repack no chunk wasting fewer bytes than this")
ap.add_argument("--no-evacuate", action="store_true", help="repack only; never copy into holes of other chunks")
ap.add_argument("--eager", action="store_true")
ap.add_argument("--peak-ratio", type=float, default=0, help="also compact while mapped exceeds this x the peak live bytes so far (0: off)")
ap.add_argument("--align", type=int, default=512)
a = ap.parse_args()
C = int(a.chunk_mib * 2**20); AL = a.align; P = 2 << 20
MERGE = int(a.merge_mib * 2**20); MIN_WASTE = int(a.min_waste_mib * 2**20)


def rup(x, m): return (x + m - 1) // m * m


chunks = SortedDict()   # start -> [size, live bytes]
holes = SortedDict()    # start -> length
by_size = SortedList()  # (length, start)
objs = {}               # id -> (start, padded size, size)
by_addr = SortedDict()  # start -> id
next_va = 0
mapped = live = peak_live = peak_mapped = free_partial = 0
sum_live = sum_mapped = 0
st = dict(creates=0, releases=0, misses=0, allocs=0, moves=0, moved_bytes=0, evacuated=0, repacks=0,
          repacked_chunks=0, probes=0, probes_failed=0, runs=0)


def chunk_at(x): return chunks.peekitem(chunks.bisect_right(x) - 1)[0]


def hole_add(s, n):
    c = chunk_at(s); end = c + chunks[c][0]
    i = holes.bisect_left(s)
    if i > 0:
        ps, pn = holes.peekitem(i - 1)
        if ps + pn == s and ps >= c:
            del holes[ps]; by_size.remove((pn, ps)); s, n = ps, pn + n
    if s + n in holes and s + n < end:
        nn = holes.pop(s + n); by_size.remove((nn, s + n)); n += nn
    holes[s] = n; by_size.add((n, s))


def hole_take(s, at, sz):
    n = holes.pop(s); by_size.remove((n, s))
    if at > s: holes[s] = at - s; by_size.add((at - s, s))
    if at + sz < s + n: holes[at + sz] = s + n - at - sz; by_size.add((s + n - at - sz, at + sz))


def is_free(c): return chunks[c][1] == 0


def account(c, d):
    global free_partial
    size, lv = chunks[c]
    before = size - lv if lv > 0 else 0
    chunks[c][1] = lv + d
    after = size - chunks[c][1] if chunks[c][1] > 0 else 0
    free_partial += after - before


peak_at = None


def map_chunk(size, why):
    global next_va, mapped, peak_mapped, peak_at
    c = next_va; next_va += size + P  # a gap: holes never merge across chunks
    chunks[c] = [size, 0]; mapped += size; st["creates"] += 1
    holes[c] = size; by_size.add((size, c))
    if mapped > peak_mapped:
        peak_mapped = mapped
        whole = sum(sz for sz, lv in chunks.values() if lv == 0)
        peak_at = (why, size >> 20, live / 2**20, free_partial / 2**20, whole / 2**20)
    return c


def release_chunk(c):
    global mapped
    size, lv = chunks[c]
    assert lv == 0 and holes.get(c) == size
    del holes[c]; by_size.remove((size, c)); del chunks[c]; mapped -= size; st["releases"] += 1


def place(oid, at, sz, size):
    objs[oid] = (at, sz, size); by_addr[at] = oid; account(chunk_at(at), +sz)


def unplace(oid):
    s, sz, size = objs.pop(oid); del by_addr[s]; account(chunk_at(s), -sz); hole_add(s, sz)
    return s, sz, size


def best_fit(sz, avoid=()):
    i = by_size.bisect_left((sz, -1))
    while i < len(by_size):
        n, s = by_size[i]; i += 1
        c = chunk_at(s)
        if c in avoid: continue
        if avoid and is_free(c): continue  # an evacuation fills chunks in use, not free ones
        return s
    return None


def alloc(oid, size):
    global live, peak_live
    sz = rup(size, AL); st["allocs"] += 1
    s = best_fit(sz)
    if s is None:
        st["misses"] += 1
        s = map_chunk(max(C, rup(sz, P)), 'miss')
    hole_take(s, s, sz); place(oid, s, sz, size)
    live += size; peak_live = max(peak_live, live)


def free(oid):
    global live
    s, sz, size = unplace(oid); live -= size


def keep():
    free_chunks = [c for c, (size, lv) in chunks.items() if lv == 0]
    if len(free_chunks) > a.headroom + a.hysteresis - 1:
        # keep the standard-sized ones; a repacked or oversized chunk goes first
        free_chunks.sort(key=lambda c: (chunks[c][0] != C, c))
        for c in free_chunks[a.headroom:]: release_chunk(c)
    while sum(1 for c, (size, lv) in chunks.items() if lv == 0) < a.headroom: map_chunk(C, 'headroom')


def inside(c): return [by_addr[x] for x in by_addr.irange(c, c + chunks[c][0], inclusive=(True, False))]


def evacuate_into_holes(c):
    # all of c's objects into holes of other chunks in use, or nothing
    plan = []
    for o in sorted(inside(c), key=lambda o: -objs[o][1]):
        sz = objs[o][1]
        s = best_fit(sz, avoid={c})
        if s is None: return undo(plan)
        hole_take(s, s, sz); plan.append((o, s))
    for o, s in plan:
        _, sz, size = unplace(o); place(o, s, sz, size); st["moves"] += 1; st["moved_bytes"] += sz
    st["evacuated"] += 1
    return True


def undo(plan):
    for o, s in plan: hole_add(s, objs[o][1])
    return False


def repack(c):
    # c and the next most wasteful chunks, up to MERGE live bytes, into one chunk of their size
    group, total = [c], chunks[c][1]
    for d in sorted((d for d, (size, lv) in chunks.items() if lv > 0 and d != c),
                    key=lambda d: -(chunks[d][0] - chunks[d][1])):
        if chunks[d][0] - chunks[d][1] < MIN_WASTE: break
        if total + chunks[d][1] <= MERGE: group.append(d); total += chunks[d][1]
    new = map_chunk(rup(total, P), 'repack'); at = new
    for g in group:
        for o in inside(g):
            _, sz, size = unplace(o); hole_take(holes.peekitem(holes.bisect_right(at) - 1)[0], at, sz)
            place(o, at, sz, size); at += sz
            st["moves"] += 1; st["moved_bytes"] += sz
    for g in group: release_chunk(g)
    st["repacks"] += 1; st["repacked_chunks"] += len(group)


def over_bound(): return a.peak_ratio and mapped > a.peak_ratio * peak_live and free_partial > MIN_WASTE


def wanted(): return free_partial > a.hole_hi * mapped or over_bound()


def compact():
    st["runs"] += 1
    moved0 = st["moved_bytes"]; tried = set()
    while (free_partial > a.hole_lo * mapped or over_bound()) and st["moved_bytes"] - moved0 < a.move_budget_mib * 2**20:
        cands = [c for c, (size, lv) in chunks.items() if lv > 0 and size - lv >= MIN_WASTE and c not in tried]
        if not cands: break
        c = max(cands, key=lambda c: chunks[c][0] - chunks[c][1]); tried.add(c)
        if not a.no_evacuate and evacuate_into_holes(c):
            release_chunk(c)  # at once: a repack after it must not find it still mapped
            continue
        repack(c)


def probe(n):
    st["probes"] += 1
    sz = rup(n, AL)
    if best_fit(sz) is None and live + sz > (8 << 30): st["probes_failed"] += 1


for op, v in read_ops(a.trace):
    if op == 'a': alloc(v[0], v[1]); keep()
    elif op == 'f':
        free(v[0])
        if a.eager and wanted(): compact()
        keep()
    elif op == 's':
        if wanted(): compact(); keep()
        sum_live += live; sum_mapped += mapped
    elif op == 'p': probe(v[0])
copy_s = st["moved_bytes"] * 2 / 2.9e12
driver_s = st["creates"] * (17 + 2 + 39) * 1e-6 + st["releases"] * (24 + 54) * 1e-6
print(f"{a.trace.split('/')[-1]} chunk={a.chunk_mib:g}MiB hi={a.hole_hi} lo={a.hole_lo} merge={a.merge_mib:g}MiB"
      f"{' no-evacuate' if a.no_evacuate else ''}: peak mapped/live {peak_mapped/peak_live:.4f} frag {1-sum_live/sum_mapped:.4f} | "
      f"misses {st['misses']} of {st['allocs']} | chunks created {st['creates']} released {st['releases']} (~{driver_s:.3f} s driver) | "
      f"moves {st['moves']} {st['moved_bytes']/2**30:.1f} GiB (~{copy_s*1e3:.1f} ms copy) | runs {st['runs']} evacuated {st['evacuated']} "
      f"repacks {st['repacks']} ({st['repacked_chunks']} chunks) | probes {st['probes']} failed {st['probes_failed']}")
print("  peak set by %s of a %d MiB chunk: live %.0f MiB, free in chunks in use %.0f MiB, whole free chunks %.0f MiB (new chunk counted as free)" % peak_at)
