"""Valet as PyTorch's CUDA allocator: unmodified PyTorch programs on a compacting heap.

    import valet_torch
    valet_torch.install(capacity="0.9")      # before the program's first CUDA allocation
    ...                                      # the program, unchanged
    record = valet_torch.compact()           # a safe point: synchronizes, meshes, trims
    print(valet_torch.memory_stats())

Pure Python over ctypes around libvalet_torch.so (its C ABI is runtime/torch/include/valet/
torch_allocator.h; docs/pytorch.md says what is safe and why). PyTorch is imported only by
install(); the other functions work without it (the host tests use them so).

The library is found, in this order: the `library` argument, $VALET_TORCH_LIBRARY, next to this
package in an install tree (<prefix>/lib/libvalet_torch.so for <prefix>/lib/valet/python/
valet_torch), the build tree of a source checkout (<checkout>/build/lib), and the dynamic
loader's search path.
"""

import ctypes
import json
import os
import sys

__all__ = ["ValetError", "library_path", "load", "configure", "install", "installed",
           "compact", "memory_stats", "page_map", "last_error"]

_LIBRARY_NAME = "libvalet_torch.so"
_lib = None
_lib_path = None
_installed = False


class ValetError(RuntimeError):
    """A call of libvalet_torch.so failed; the message is the library's."""


def library_path(library=None):
    """The path of libvalet_torch.so that load() would use (a bare name: the loader's search)."""
    explicit = library or os.environ.get("VALET_TORCH_LIBRARY")
    if explicit:
        return os.path.abspath(os.fspath(explicit))
    here = os.path.dirname(os.path.abspath(__file__))
    for path in (os.path.join(here, "..", "..", "..", _LIBRARY_NAME),  # <prefix>/lib/valet/python/valet_torch
                 os.path.join(here, "..", "..", "build", "lib", _LIBRARY_NAME)):  # <checkout>/python/valet_torch
        if os.path.exists(path):
            return os.path.normpath(path)
    return _LIBRARY_NAME


def load(library=None):
    """Loads libvalet_torch.so once and returns it (a ctypes.CDLL)."""
    global _lib, _lib_path
    if _lib is not None:
        if library and library_path(library) != _lib_path:
            raise ValetError(f"valet_torch: {_lib_path} is loaded already; cannot switch to {library}")
        return _lib
    path = library_path(library)
    try:
        lib = ctypes.CDLL(path)
    except OSError as e:
        raise ValetError(f"valet_torch: cannot load {path}: {e} (build the target valet_torch, "
                         "or set VALET_TORCH_LIBRARY to the library's path)") from e
    lib.valet_torch_malloc.restype = ctypes.c_void_p
    lib.valet_torch_malloc.argtypes = [ctypes.c_size_t, ctypes.c_int, ctypes.c_void_p]
    lib.valet_torch_free.restype = None
    lib.valet_torch_free.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_void_p]
    lib.valet_torch_configure.restype = ctypes.c_int
    lib.valet_torch_configure.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    for name in ("valet_torch_compact", "valet_torch_stats", "valet_torch_page_map"):
        fn = getattr(lib, name)
        fn.restype = ctypes.c_void_p  # a malloc'd string: read, then valet_torch_free_string
        fn.argtypes = [ctypes.c_int]
    lib.valet_torch_last_error.restype = ctypes.c_void_p
    lib.valet_torch_last_error.argtypes = []
    lib.valet_torch_free_string.restype = None
    lib.valet_torch_free_string.argtypes = [ctypes.c_void_p]
    _lib, _lib_path = lib, path
    return lib


def _take_string(lib, ptr):
    if not ptr:
        return None
    try:
        return ctypes.string_at(ptr).decode("utf-8", "replace")
    finally:
        lib.valet_torch_free_string(ptr)


def last_error():
    """The library's last error message ("" when none)."""
    lib = load()
    return _take_string(lib, lib.valet_torch_last_error()) or ""


def _setting(value):
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValetError(f"valet_torch: not a setting: {value!r}")
    if isinstance(value, dict):  # a policy as {key: value}
        value = ",".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in value.items())
    return str(value).encode()


def configure(capacity=None, policy=None, library=None):
    """Sets the capacity and policy of heaps made from now on (before the first allocation).

    capacity: bytes (int, or a string such as "8GiB") or a fraction in (0, 1] of the device
    (float, or a string such as "0.9"). policy: "key=value,key=value" or a dict, with the keys
    `valetctl policy` takes. None keeps $VALET_TORCH_CAPACITY / $VALET_TORCH_POLICY.
    """
    lib = load(library)
    if lib.valet_torch_configure(_setting(capacity), _setting(policy)) != 0:
        raise ValetError(last_error())


def installed():
    """True once install() made Valet PyTorch's allocator in this process."""
    return _installed


def install(capacity=None, policy=None, library=None):
    """Makes Valet PyTorch's CUDA allocator. Call it before the program's first CUDA allocation."""
    global _installed
    if _installed:
        return
    import torch  # only here: the rest of the package works without PyTorch

    if torch.cuda.is_initialized():
        raise ValetError("valet_torch.install() must come before the program's first CUDA allocation: "
                         "PyTorch has initialized CUDA and its allocator already, which cannot be swapped")
    configure(capacity, policy, library)
    # The throwing entry point: PyTorch does not check for NULL, and an exception becomes a
    # RuntimeError("CUDA out of memory. ...") in Python (torch_allocator.h says more).
    allocator = torch.cuda.memory.CUDAPluggableAllocator(_lib_path, "valet_torch_malloc_or_throw",
                                                         "valet_torch_free")
    try:
        torch.cuda.memory.change_current_allocator(allocator)
    except RuntimeError as e:
        raise ValetError(f"valet_torch.install(): PyTorch refused the allocator: {e}") from e
    _installed = True


def _device_index(device):
    if device is not None:
        if isinstance(device, int):
            return device
        index = getattr(device, "index", None)  # a torch.device
        if index is None and isinstance(device, str):
            index = int(device.split(":")[1]) if ":" in device else None
        return _current_device() if index is None else index
    return _current_device()


def _current_device():
    torch = sys.modules.get("torch")  # never imports it: a program without torch has device 0
    if torch is not None and torch.cuda.is_initialized():
        return torch.cuda.current_device()
    return 0


def _json_call(name, device):
    lib = load()
    text = _take_string(lib, getattr(lib, name)(device))
    if text is None:
        raise ValetError(last_error())
    return json.loads(text)


def compact(device=None):
    """The safe point: waits for every kernel on the device, then meshes pages beneath the live
    tensors (their addresses do not change), evacuates what may move and trims the page reserve.
    Returns the cycle record as a dict ({"active": False} where nothing was allocated yet).

    No other thread may touch the device's memory during the call (torch.cuda.synchronize()
    covers the kernels; host code reading tensors is the program's to hold back).
    """
    index = _device_index(device)
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.synchronize(index)
    return _json_call("valet_torch_compact", index)


def memory_stats(device=None):
    """The device's figures under key names close to torch.cuda.memory_stats():

    allocated_bytes.all.current/peak   bytes handed to tensors, rounded up to 512 each
    requested_bytes.all.current/peak   bytes the tensors asked for
    reserved_bytes.all.current/peak    physical memory the heap holds (what the driver sees)
    allocation.all.current             live allocations
    fragmentation                      1 - live / mapped
    largest_allocatable_bytes          the largest request that would succeed now
    plus capacity_bytes, fixed_objects, stream_cached_bytes (freed on a stream, not yet
    reusable by others) and, under "valet", the heap's own stats.
    """
    s = _json_call("valet_torch_stats", _device_index(device))
    if not s.get("active"):
        s = {}
    get = lambda key: s.get(key, 0)  # noqa: E731
    return {
        "allocated_bytes.all.current": get("allocated_rounded_bytes"),
        "allocated_bytes.all.peak": get("peak_allocated_rounded_bytes"),
        "requested_bytes.all.current": get("allocated_bytes"),
        "requested_bytes.all.peak": get("peak_allocated_bytes"),
        "reserved_bytes.all.current": get("mapped_bytes"),
        "reserved_bytes.all.peak": get("peak_mapped_bytes"),
        "allocation.all.current": get("allocations"),
        "fragmentation": s.get("fragmentation", 0.0),
        "largest_allocatable_bytes": get("largest_allocatable_bytes"),
        "capacity_bytes": get("capacity_bytes"),
        "fixed_objects": get("fixed_objects"),
        "stream_cached_bytes": get("stream_cached_bytes"),
        "valet": s.get("heap", {}),
    }


def page_map(device=None):
    """The device's page map: every 2 MiB page slot in use with its kind and occupancy, and the
    summaries `valetctl pages` prints ({"active": False} where nothing was allocated yet)."""
    return _json_call("valet_torch_page_map", _device_index(device))
