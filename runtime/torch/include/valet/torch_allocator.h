/* Valet as PyTorch's pluggable CUDA allocator (libvalet_torch.so).
 *
 * PyTorch loads the library with
 *   torch.cuda.memory.CUDAPluggableAllocator(path, "valet_torch_malloc_or_throw", "valet_torch_free")
 * and calls the pair for every tensor; python/valet_torch wraps the rest (docs/pytorch.md).
 * (valet_torch_malloc, which returns NULL on failure, is the plain C entry point; PyTorch 2.11
 * does not check for NULL, see valet_torch_malloc_or_throw.)
 *
 * Every object handed out is a fixed object of the heap (valet/heap.h): compaction never moves
 * it, so the raw pointer a tensor holds stays valid until it is freed. Meshing may fold its page
 * onto another physical page beneath the same address, but only in valet_torch_compact(), whose
 * caller vouches that no kernel and no host access touches the memory meanwhile.
 *
 * One heap per device index, made on the first allocation there, with a background compactor.
 * Its settings come from valet_torch_configure() where called, else from the environment:
 *   VALET_TORCH_CAPACITY  bytes ("8GiB", "512MiB", "4096") or a fraction in (0,1] of the device's
 *                         total memory ("0.9"; "1" is the whole device). Unset: what is free.
 *   VALET_TORCH_BACKEND   auto | cuda | host (default auto: CUDA where usable, else the host
 *                         emulation, which is what the tests use)
 *   VALET_TORCH_POLICY    "key=value,key=value" with the keys `valetctl policy` takes
 *   VALET_TORCH_CONTROL   unset or 0: no control socket; 1: the default socket path (see
 *                         valet/control_server.h); anything else: that path. Device d > 0
 *                         listens on the path with "-dev<d>" before its ".sock".
 * A bad value fails the allocation (NULL, a line on stderr naming the variable); the process
 * never aborts.
 *
 * No link-time dependency on libtorch, libcudart or libcuda: streams are taken as opaque
 * pointers (a cudaStream_t is a CUstream), and the CUDA driver is loaded at run time.
 *
 * Strings: every function returning char* returns a NUL-terminated string made with malloc, which
 * the caller gives back with valet_torch_free_string(); NULL means failure (see
 * valet_torch_last_error()).
 */
#ifndef VALET_TORCH_ALLOCATOR_H
#define VALET_TORCH_ALLOCATOR_H

#include <stddef.h>

#if defined(__GNUC__)
#define VALET_TORCH_API __attribute__((visibility("default")))
#else
#define VALET_TORCH_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Every returned pointer is aligned to 512 bytes, as PyTorch's own allocator guarantees: the
 * request is rounded up to a multiple of 512 bytes (the rounding counts in the figures of
 * valet_torch_stats). `stream` is the cudaStream_t the tensor is used on (NULL: the legacy
 * default stream). size 0 gives NULL. Out of memory, or a heap that cannot be made: NULL, and
 * valet_torch_last_error() says why. Thread-safe. */
VALET_TORCH_API void* valet_torch_malloc(size_t size, int device, void* stream);

#ifdef __cplusplus
/* valet_torch_malloc, except that out of memory (or a heap that cannot be made) throws a C++
 * std::runtime_error whose message begins "CUDA out of memory." instead of returning NULL. This
 * is the entry point valet_torch.install() hands PyTorch: its CUDAPluggableAllocator (2.11 and
 * earlier) does not check the pointer it gets, so NULL would become a tensor at address 0 and an
 * illegal-address fault in the next kernel, while an exception reaches Python as a RuntimeError
 * with the message programs look for, as the native allocator's OutOfMemoryError does. For C++
 * callers only; size 0 still gives NULL. */
VALET_TORCH_API void* valet_torch_malloc_or_throw(size_t size, int device, void* stream);
#endif

/* Frees `ptr`, given with the size, device and stream of its allocation (as PyTorch does). The
 * free is stream-ordered: allocations on `stream` may reuse the memory at once, other streams
 * only after the work queued on `stream` before this call has completed. The lookup of `ptr` is
 * O(1). A pointer that is not a live allocation of this library (foreign, or freed already) or
 * a size that does not match prints one line on stderr ("valet_torch_free: ...") and changes
 * nothing. NULL is a no-op. */
VALET_TORCH_API void valet_torch_free(void* ptr, size_t size, int device, void* stream);

/* Sets the capacity (as VALET_TORCH_CAPACITY) and the policy (as VALET_TORCH_POLICY) of heaps
 * made from now on; NULL or "" keeps the environment's (or the default) for that setting. Both
 * are checked here. Refused once any heap exists. 0 on success, -1 on error (see
 * valet_torch_last_error()). */
VALET_TORCH_API int valet_torch_configure(const char* capacity, const char* policy);

/* The safe point: the caller vouches that no kernel is queued or running on `device` and no
 * host code touches its memory (torch.cuda.synchronize() first). Runs compaction cycles that
 * mesh pages holding fixed objects (no address changes) and evacuate what may move, then trims
 * the page reserve. Returns the summed cycle record as JSON (valet/stats_json.h's fields plus
 * "device", "cycles", "mapped_bytes_before", "mapped_bytes_after"); {"device":d,"active":false}
 * where no heap exists on `device`. */
VALET_TORCH_API char* valet_torch_compact(int device);

/* The device's figures as JSON: "allocated_bytes" (sum of requested sizes),
 * "allocated_rounded_bytes" (the same rounded to 512), their peaks, "allocations",
 * "mapped_bytes" (physical memory held), "peak_mapped_bytes", "reserved_address_bytes",
 * "capacity_bytes", "fragmentation", "largest_allocatable_bytes", "fixed_objects",
 * "fixed_bytes", "stream_cached_bytes" (freed on a stream, not yet reusable by every stream),
 * and "heap" (the heap's whole stats). "active": false (and no figures) where no heap exists on
 * `device`. "peak_mapped_bytes" is the heap's own peak of mapped memory (every page creation
 * counts, not a sample). */
VALET_TORCH_API char* valet_torch_stats(int device);

/* The page map of `device` as JSON (the fields of `valetctl pages --json`), or "active": false. */
VALET_TORCH_API char* valet_torch_page_map(int device);

/* The last error of any call of this library in the process ("" when none yet). Never NULL
 * except when out of host memory. */
VALET_TORCH_API char* valet_torch_last_error(void);

VALET_TORCH_API void valet_torch_free_string(char* s);

#ifdef __cplusplus
}
#endif

#endif /* VALET_TORCH_ALLOCATOR_H */
