"""Keep glibc's freed heap with the process while a method or a metric runs its forwards.

glibc's malloc gives the freed top of its heap back to the kernel once it is larger than a
*trim threshold*, and serves any allocation above an *mmap threshold* with a fresh mapping.
Both start at 128 KiB and move up by glibc's own rule only: when the process frees a mapped
block larger than the current mmap threshold (and at most 32 MiB), that block's size becomes
the mmap threshold and twice it the trim threshold. A forward of a chunk of masked images
allocates activations of a few MiB each and frees all of them at its end, so with the
thresholds near one activation's size every forward maps fresh pages and faults on each of
them: on the shipped digits ViT (64 images, 2 cores) a GradMask call took about 560,000 page
faults and 0.8 s of system time out of 4.1 s, and 3.3 s with the faults gone.

:func:`settle_heap` frees one untouched block just under glibc's 32 MiB ceiling, once per
process. That is the event glibc's rule answers, and its answer is the largest it ever gives:
allocations up to 32 MiB come from the heap, and up to 64 MiB of freed heap stays with the
process (where glibc itself leaves any process that has freed a tensor of just under 32 MiB).
No ``mallopt`` call (which would switch the adaptive rule off for good), no page of the block
touched. With another C library, or a preloaded allocator (jemalloc, tcmalloc), it changes
nothing.
"""

from __future__ import annotations

import ctypes

#: glibc's ceiling for its adaptive mmap threshold on 64-bit systems
#: (``DEFAULT_MMAP_THRESHOLD_MAX``: 4 MiB x sizeof(long)).
GLIBC_MMAP_THRESHOLD_MAX = 32 * 2**20

#: Bytes asked for: two pages under the ceiling, so the block with its header and page
#: rounding stays at or under it (a larger block would leave the thresholds where they are).
BLOCK_BYTES = GLIBC_MMAP_THRESHOLD_MAX - 2 * 4096

_settled = False


def settle_heap() -> None:
    """Raise glibc's adaptive mmap and trim thresholds to their ceilings (see the module
    docstring); once per process, a no-op after that and off glibc."""
    global _settled
    if _settled:
        return
    _settled = True
    libc = _glibc()
    if libc is None:
        return
    block = libc.malloc(BLOCK_BYTES)
    if block:
        libc.free(block)


def _glibc() -> ctypes.CDLL | None:
    """The process's C library with typed ``malloc``/``free`` when it is glibc, else None."""
    try:
        libc = ctypes.CDLL(None)
    except OSError:  # no handle on the running process (Windows)
        return None
    if not hasattr(libc, "gnu_get_libc_version"):  # musl, macOS, ...
        return None
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.restype = None
    libc.free.argtypes = [ctypes.c_void_p]
    return libc
