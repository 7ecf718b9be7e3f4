"""The cache kept across restarts: its image (`Cache.dump`/`Cache.restore`, core/cache.py) in a
state file (state_files.py), loaded at start and saved at stop. Whatever is wrong with the file
(damage, a link, a device, too big, writable by others), the daemon starts without it."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from stubby_py.core.cache import Cache, CacheFileError, file_limit
from stubby_py.state_files import StateFileError, read_state, state_path, write_state

log = logging.getLogger(__name__)

#: the cache file's name in the state directory
CACHE_FILE = "cache.bin"
#: how the cache's temporary files begin (privileges.Handover, given by service.py, knows them)
TEMPORARY_PREFIX = ".cache-"


def default_cache_file(setting: str | None, environ: Mapping[str, str]) -> str | None:
    """Where the cache persists: `auto` means systemd's StateDirectory= when the daemon runs under
    it ($STATE_DIRECTORY, the first of a colon-separated list), else nowhere; None: nowhere."""
    return state_path(setting, CACHE_FILE, environ)


def load(cache: Cache, path: str, now: float, wall_now: float) -> int:
    """Fill the cache from a file; a missing file loads nothing, a bad one is ignored (warning).
    The file is read as state_files.read_state reads (at most `file_limit` octets)."""
    try:
        data = read_state(path, file_limit(cache.limits))
    except StateFileError as exc:
        log.warning("cache file %s ignored: %s", path, exc)
        return 0
    except OSError as exc:
        log.warning("cache file %s not read: %s", path, exc.strerror or exc)
        return 0
    if data is None:
        return 0
    try:
        return cache.restore(data, now, wall_now)
    except CacheFileError as exc:
        log.warning("cache file %s ignored: %s", path, exc)
    except Exception:  # whatever a file holds, the daemon starts (without it)
        log.exception("cache file %s ignored: unreadable", path)
    cache.flush()
    return 0


def save(cache: Cache, path: str, now: float, wall_now: float) -> bool:
    """Write the cache to a file atomically (state_files.write_state); False on failure. Only a
    regular file is replaced: a device, a FIFO or a symbolic link at the path stays."""
    try:
        write_state(path, cache.dump(now, wall_now), temporary_prefix=TEMPORARY_PREFIX)
    except StateFileError as exc:
        log.warning("cache not saved to %s: %s", path, exc)
        return False
    except OSError as exc:
        log.warning("cache not saved to %s: %s", path, exc.strerror or exc)
        return False
    return True
