"""Allocator modes for the programs that run Valet under real PyTorch.

Each program runs ONE allocator mode per process, chosen before torch is imported:
  valet       PyTorch's allocator swapped for libvalet_torch.so (valet_torch.install)
  native      PyTorch's default caching allocator
  expandable  the caching allocator with PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True,
              which PyTorch reads once, when the allocator starts: it must be set before import
A program that cannot run here (no torch, no CUDA device, no library) prints "skipped: WHY" and
exits with SKIP (77), which CTest reports as skipped (SKIP_RETURN_CODE). Results are ONE JSON line
on stdout (emit), so a driver can run the modes side by side and collect them.
"""
import json
import os
import sys

MODES = ("valet", "native", "expandable")
SKIP = 77
ALIGNMENT = 512  # what PyTorch's own allocator guarantees; vectorised kernels and cuBLAS rely on it
PAGE_BYTES = 2 << 20  # valet::kPageBytes, the heap's page (heap/include/valet/types.h)
REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
_ALLOC_CONF_KEYS = ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF")


def default_mode():
    """The mode the environment asks for (how tests/bench/gpu_session.sh calls a replayer)."""
    conf = ",".join(os.environ.get(k, "") for k in _ALLOC_CONF_KEYS)
    return "expandable" if "expandable_segments:True" in conf else "native"


def add_mode_argument(parser, default=None):
    parser.add_argument("--allocator", choices=MODES, default=default or default_mode(),
                        help="allocator of this process (default: native, or expandable where "
                             "PYTORCH_CUDA_ALLOC_CONF asks for expandable_segments:True)")


def skip(reason):
    print(f"skipped: {reason}", flush=True)
    sys.exit(SKIP)


def emit(record):
    """The program's one result line."""
    print(json.dumps(record, default=str), flush=True)  # default=str: records from the library


def import_torch(mode):
    """Sets the environment of `mode`, then imports torch; skips where torch or CUDA is missing."""
    for key in _ALLOC_CONF_KEYS:
        os.environ.pop(key, None)
    if mode == "expandable":
        os.environ["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"
    try:
        import torch
    except ImportError as e:
        skip(f"PyTorch is not installed ({e})")
    if not torch.cuda.is_available():
        skip("PyTorch sees no usable CUDA device")
    return torch


def import_valet_torch():
    """The valet_torch package (from PYTHONPATH, else the source tree's python/) and the library
    path; skips where the library is not built or not named."""
    library = os.environ.get("VALET_TORCH_LIBRARY", "")
    if not library:
        skip("VALET_TORCH_LIBRARY is not set (the path of libvalet_torch.so)")
    if not os.path.isfile(library):
        skip(f"VALET_TORCH_LIBRARY={library}: no such file")
    try:
        import valet_torch
    except ImportError:
        sys.path.insert(0, os.path.join(REPO, "python"))
        import valet_torch
    return valet_torch, library


class Allocator:
    """One mode's allocator in this process, set up before the first CUDA allocation.

    capacity: bytes the allocator may hold, or None. valet: the heap's capacity (install);
    native/expandable: set_per_process_memory_fraction of the device's total memory, the cap that
    makes the caching allocator raise OutOfMemoryError.
    """

    def __init__(self, mode, capacity=None):
        self.mode = mode
        self.capacity = capacity
        self.torch = import_torch(mode)
        self.valet = None
        self.library = None
        torch = self.torch
        if mode == "valet":
            self.valet, self.library = import_valet_torch()
            self.valet.install(capacity=capacity, library=self.library)
        torch.cuda.init()
        if capacity is not None and mode != "valet":
            total = torch.cuda.mem_get_info()[1]
            torch.cuda.set_per_process_memory_fraction(min(1.0, float(capacity) / float(total)))

    def backend(self):
        try:
            return self.torch.cuda.memory.get_allocator_backend()
        except Exception as e:  # older builds: report rather than fail the run
            return f"unknown ({type(e).__name__})"

    def figures(self):
        """reserved/allocated bytes now and at their peak, from the allocator's own counters
        (torch.cuda.memory_stats is not fed by a pluggable allocator: valet_torch's instead)."""
        if self.valet is not None:
            s = self.valet.memory_stats()
        else:
            s = self.torch.cuda.memory_stats()
        return {
            "reserved": int(s.get("reserved_bytes.all.current", 0)),
            "reserved_peak": int(s.get("reserved_bytes.all.peak", 0)),
            "allocated": int(s.get("allocated_bytes.all.current", 0)),
            "allocated_peak": int(s.get("allocated_bytes.all.peak", 0)),
        }

    def safe_point(self):
        """Synchronizes, then compacts (valet) or empties the cache (native modes, the nearest
        thing they have). Returns valet's cycle record, or None."""
        self.torch.cuda.synchronize()
        if self.valet is not None:
            return self.valet.compact()
        self.torch.cuda.empty_cache()
        return None

    def describe(self):
        return {"allocator": self.mode, "allocator_backend": self.backend(),
                "torch": self.torch.__version__, "cuda": self.torch.version.cuda,
                "device": self.torch.cuda.get_device_name(), "capacity_bytes": self.capacity}


def is_oom(torch, exc):
    """Whether `exc` is an allocation failure. The caching allocator raises OutOfMemoryError; a
    pluggable allocator's failure may surface as OutOfMemoryError, MemoryError or a RuntimeError
    naming it, depending on how the library reports it."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(
        k in text for k in ("out of memory", "out_of_memory", "bad_alloc"))


def empty_bytes(torch, n, device="cuda"):
    """torch.empty(n, uint8), or None where the allocator failed. A pluggable allocator's null is
    not checked by PyTorch (CUDAPluggableAllocator::allocate wraps whatever malloc returns), so a
    data_ptr of 0 for n > 0 counts as a failure too."""
    try:
        t = torch.empty(n, dtype=torch.uint8, device=device)
    except Exception as e:  # noqa: BLE001 -- is_oom decides; anything else is re-raised
        if is_oom(torch, e):
            return None
        raise
    if n > 0 and t.data_ptr() == 0:
        return None
    return t


def median(sorted_values):
    """As valet-replay computes it (runtime/tools/replay/latency.h): the mean of the middle two."""
    n = len(sorted_values)
    if n == 0:
        return 0.0
    return float(sorted_values[n // 2]) if n % 2 else (sorted_values[n // 2 - 1] + sorted_values[n // 2]) / 2.0


def percentile(sorted_values, q):
    """The sorted element at rank q * n, as valet-replay computes p99."""
    n = len(sorted_values)
    if n == 0:
        return 0.0
    return float(sorted_values[min(n - 1, int(q * n))])


def round_up(n, unit):
    return (n + unit - 1) // unit * unit
