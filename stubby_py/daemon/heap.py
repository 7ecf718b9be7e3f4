"""Give the C heap's free pages back to the kernel after a burst of churn, and tell what the
heap holds (glibc only).

A reload builds new transports, TLS contexts and connections while the old ones still serve,
then frees the old ones: the heap grew for the overlap and is left with free chunks between
live ones, which glibc keeps (only the top of the heap is returned on its own). bench/soak.py
showed it: a reload a minute, the heap's free chunks at half its size while the memory in use
stayed flat. malloc_trim(0) returns every whole free page inside the heap (madvise), not only
the top; it walks the heap once (155 ms for a fragmented 1 GiB heap, so a few milliseconds for
the daemon's tens of MiB) and runs only once the retired transports of a reload are closed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
from collections.abc import Callable
from typing import Any, cast

log = logging.getLogger(__name__)


@functools.cache
def _libc_function(name: str) -> Any:
    """A C library function by name, or None (not glibc, or a glibc without it)."""
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c")), name)
    except (OSError, AttributeError, TypeError):
        return None


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    function = _libc_function("malloc_trim")
    if function is not None:
        function.argtypes = [ctypes.c_size_t]
        function.restype = ctypes.c_int
    return cast("Callable[[int], int] | None", function)


def release_free_pages() -> bool:
    """malloc_trim(0); whether memory went back to the kernel (False off glibc)."""
    trim = _malloc_trim()
    if trim is None:
        return False
    released = bool(trim(0))
    log.debug("free heap pages %s to the kernel", "returned" if released else "none to return")
    return released


#: struct mallinfo2's fields, all size_t: arena = main-arena bytes from brk, hblkhd = mmapped
#: blocks, uordblks/fordblks = bytes in use/free in chunks, keepcost = the releasable top
MALLINFO2_FIELDS = (
    "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
    "fsmblks", "uordblks", "fordblks", "keepcost",
)  # fmt: skip


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in MALLINFO2_FIELDS]


def mallinfo() -> dict[str, int] | None:
    """glibc's mallinfo2 over all arenas, or None off glibc (or before glibc 2.33)."""
    function = _libc_function("mallinfo2")
    if function is None:
        return None
    function.restype = _Mallinfo2
    info = function()
    return {field: int(getattr(info, field)) for field in MALLINFO2_FIELDS}
