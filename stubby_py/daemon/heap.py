"""Give the C heap's free pages back to the kernel after a burst of churn (glibc only).

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

log = logging.getLogger(__name__)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        function = ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim
    except (OSError, AttributeError, TypeError):
        return None  # not glibc
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    return function


def release_free_pages() -> bool:
    """malloc_trim(0); whether memory went back to the kernel (False off glibc)."""
    trim = _malloc_trim()
    if trim is None:
        return False
    released = bool(trim(0))
    log.debug("free heap pages %s to the kernel", "returned" if released else "none to return")
    return released
