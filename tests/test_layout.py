"""The package layout is the architecture: which ring may import which.

core/ and dnssec/ are pure (no sockets, no awaiting), so they import none of the rings that do I/O;
transports/ and listeners/ are the edges, which the daemon drives, so they never reach back into
daemon/ or commands/; only commands/ (the command line) may import everything. The test reads
every module's imports (including those under `if TYPE_CHECKING:` and inside functions), so a
dependency that breaks the rings fails here rather than in a review.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "stubby_py"

#: ring → the rings it must not import
FORBIDDEN = {
    "core": {"dnssec", "transports", "listeners", "daemon", "commands"},
    "dnssec": {"transports", "listeners", "daemon", "commands"},
    "transports": {"listeners", "daemon", "commands"},
    "listeners": {"daemon", "commands"},
    "daemon": {"commands"},
}

#: modules of the pure rings may not import these (they do I/O or run an event loop)
IO_MODULES = {"asyncio", "socket", "ssl", "selectors", "subprocess", "uvloop", "aioquic", "h2"}
PURE_RINGS = {"core", "dnssec"}

#: the one exception: loading a configuration checks, with the file's line in the error, that the
#: PEM files it names load into OpenSSL (a CA file, the listeners' certificate and key)
ALLOWED = {
    ("core/config.py", "ssl"),
    ("core/config.py", "stubby_py.transports.tls"),
}


def _modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).parts
        yield (parts[0] if len(parts) > 1 else ""), path


def _imports(path: Path) -> Iterator[str]:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "stubby_py":
                yield from (f"stubby_py.{alias.name}" for alias in node.names)
            else:
                yield node.module


def _ring_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "stubby_py" and len(parts) > 2 else None


def test_every_module_lives_in_a_ring() -> None:
    loose = [path.name for ring, path in _modules() if ring == ""]
    # the package marker, `python -m stubby_py`, and the state-file writer that both the daemon
    # and the bootstrap address book (transports/) use
    assert sorted(loose) == ["__init__.py", "__main__.py", "state_files.py"]


@pytest.mark.parametrize("ring", sorted(FORBIDDEN))
def test_rings_import_only_inwards(ring: str) -> None:
    wrong = [
        f"{path.relative_to(PACKAGE)} imports {module}"
        for module_ring, path in _modules()
        if module_ring == ring
        for module in _imports(path)
        if _ring_of(module) in FORBIDDEN[ring]
        and (str(path.relative_to(PACKAGE)), module) not in ALLOWED
    ]
    assert wrong == []


@pytest.mark.parametrize("ring", sorted(PURE_RINGS))
def test_pure_rings_do_no_io(ring: str) -> None:
    wrong = [
        f"{path.relative_to(PACKAGE)} imports {module}"
        for module_ring, path in _modules()
        if module_ring == ring
        for module in _imports(path)
        if module.split(".")[0] in IO_MODULES or module == "stubby_py.state_files"
        if (str(path.relative_to(PACKAGE)), module) not in ALLOWED
    ]
    assert wrong == []
