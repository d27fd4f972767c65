"""The valet_torch package without PyTorch: it loads libvalet_torch.so, configures the host
backend, and round-trips stats, compaction and the page map while objects are live.

Run by CTest (torch-python) with PYTHONPATH=python, VALET_TORCH_LIBRARY and
VALET_TORCH_BACKEND=host. Exit status 0 when every check holds."""
import ctypes
import sys

import valet_torch

MiB = 1 << 20
failures = []


def check(ok, what):
    if not ok:
        failures.append(what)
        print("FAILED:", what, file=sys.stderr)


def main():
    assert "torch" not in sys.modules
    lib = valet_torch.load()
    check(valet_torch.memory_stats(0)["allocation.all.current"] == 0, "no heap yet: zero figures")
    check(valet_torch.compact(0) == {"active": False, "device": 0}, "no heap yet: compact says so")

    try:
        valet_torch.configure(capacity="lots")
        check(False, "a bad capacity is refused")
    except valet_torch.ValetError as e:
        check("capacity='lots'" in str(e), f"the error names the capacity: {e}")
    valet_torch.configure(capacity="64MiB", policy={"background": False, "max_occupancy": 0.8})

    # What PyTorch would do: allocate and free through the C ABI (64 KiB objects, 32 a page).
    ptrs = [lib.valet_torch_malloc(64 * 1024, 0, None) for _ in range(8 * 32)]
    check(all(p and p % 512 == 0 for p in ptrs), "allocations succeed, 512-byte aligned")
    for i, p in enumerate(ptrs):
        ctypes.memset(p, i % 251, 64 * 1024)
    # A checkerboard over (page, slot), so that pages can be meshed.
    kept = [(i, p) for i, p in enumerate(ptrs) if (p // (2 * MiB) + (p % (2 * MiB)) // (64 * 1024)) % 2 == 0]
    for i, p in enumerate(ptrs):
        if (i, p) not in kept:
            lib.valet_torch_free(p, 64 * 1024, 0, None)

    stats = valet_torch.memory_stats()
    check(stats["allocation.all.current"] == len(kept), f"live allocations: {stats}")
    check(stats["requested_bytes.all.current"] == len(kept) * 64 * 1024, "requested bytes")
    check(stats["allocated_bytes.all.peak"] == len(ptrs) * 64 * 1024, "peak allocated bytes")
    check(stats["reserved_bytes.all.peak"] >= stats["reserved_bytes.all.current"] > 0, "reserved bytes")
    check(0 < stats["fragmentation"] < 1, "fragmented before compaction")
    check(stats["capacity_bytes"] == 64 * MiB, "the configured capacity")
    check(stats["valet"]["live_objects"] == len(kept), "the heap's own stats")

    record = valet_torch.compact()
    check(record["active"] and record["pages_meshed"] > 0, f"compaction meshed pages: {record}")
    after = valet_torch.memory_stats()
    check(after["valet"]["pages"]["meshed"] == record["pages_meshed"], "the heap counts the meshed pages")
    check(after["valet"]["pages"]["slab"] == stats["valet"]["pages"]["slab"] - record["pages_meshed"],
          "each meshed page gave its physical page back")
    for i, p in kept:
        data = ctypes.string_at(p, 64 * 1024)
        check(data == bytes([i % 251]) * (64 * 1024), f"object {i} kept its bytes at its address")

    pages = valet_torch.page_map()
    kinds = [page["kind"] for page in pages["pages"]]
    check(kinds.count("meshed") == record["pages_meshed"], f"the page map shows the meshed pages: {kinds}")

    for _, p in kept:
        lib.valet_torch_free(p, 64 * 1024, 0, None)
    check(valet_torch.memory_stats(0)["allocation.all.current"] == 0, "everything freed")
    check(valet_torch.last_error() == "" or "capacity" in valet_torch.last_error(), "no new error")
    try:
        valet_torch.configure(capacity="1GiB")
        check(False, "configure after the first allocation is refused")
    except valet_torch.ValetError as e:
        check("before the first allocation" in str(e), f"the refusal says why: {e}")
    check("torch" not in sys.modules, "torch was never imported")
    if failures:
        print(f"{len(failures)} check(s) failed", file=sys.stderr)
        return 1
    print("valet_torch package: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
