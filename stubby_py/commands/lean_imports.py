"""Leave importlib.metadata unloaded in the command line's process until something reads a
package's metadata.

dnspython's `dns.name`, imported by everything here, asks importlib.metadata at import time
whether the optional `idna` package is installed and recent enough (`dns/_features.py`), and
importing importlib.metadata loads the email package, zipfile (with bz2 and lzma), csv and
importlib.resources: 1.6 MiB resident in a daemon that never reads metadata otherwise, which
counts against the memory target (README "Memory"). Where no `idna` module can be imported the
answer is known without metadata: dnspython is told so (`dns._features.force`, its own way round
metadata), and a stand-in holds importlib.metadata's place in sys.modules until its first
attribute is read, which loads the real module. Where `idna` is importable nothing changes:
dnspython compares its version.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any

_NAME = "importlib.metadata"


class _DeferredMetadata(types.ModuleType):
    """importlib.metadata until something reads from it: then the real module, loaded by a
    normal import, takes its place (in sys.modules and on the importlib package)."""

    def __getattr__(self, name: str) -> Any:
        if sys.modules.get(_NAME) is self:
            del sys.modules[_NAME]
        real = importlib.import_module(_NAME)
        return getattr(real, name)


def defer_package_metadata() -> bool:
    """Do the above, before dnspython is first imported; whether it was done."""
    if _NAME in sys.modules or "dns._features" in sys.modules:
        return False  # too late, or metadata is read already (pytest does)
    if importlib.util.find_spec("idna") is not None:
        return False
    spec = importlib.util.find_spec(_NAME)
    if spec is None:
        return False
    stand_in = _DeferredMetadata(_NAME)
    stand_in.__spec__ = spec  # the import system reads it (is the module still initialising?)
    sys.modules[_NAME] = stand_in
    importlib.metadata = stand_in  # as importing a submodule binds it
    try:
        import dns._features

        dns._features.force("idna", False)
    except (ImportError, AttributeError):  # another dnspython: it reads metadata as before
        return False
    return True
