"""importlib.metadata stays unloaded in the command line's process until something reads it,
where no `idna` module can be imported (commands/lean_imports.py), and everything that reads it
still gets the real module. Each case runs in a fresh interpreter: the import system's state is
what is tested."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path


def run(code: str, *, path: Path | None = None) -> str:
    env_path = [str(path)] if path else []
    program = f"import sys\nsys.path[:0] = {env_path!r}\n" + textwrap.dedent(code)
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_without_idna_metadata_waits_for_its_first_reader() -> None:
    out = run(
        """
        sys.modules["idna"] = None  # no idna module can be imported
        import stubby_py.commands.cli, stubby_py.daemon.service, stubby_py.dnssec.validate
        import dns.name, dns.version
        stand_in = sys.modules["importlib.metadata"]
        assert type(stand_in).__name__ == "_DeferredMetadata", type(stand_in)
        # (zipfile and importlib.resources may come with something else, e.g. certifi)
        assert not {"email", "csv"} & set(sys.modules)
        assert dns.name.have_idna_2008 is False  # what dnspython finds without idna
        from importlib.metadata import version, PackageNotFoundError
        assert version("dnspython") == dns.version.version
        import importlib.metadata
        assert type(importlib.metadata).__name__ == "module" and "email" in sys.modules
        assert sys.modules["importlib.metadata"] is importlib.metadata
        assert stand_in.version is importlib.metadata.version  # an old reference still works
        try:
            version("no-such-package-here")
        except PackageNotFoundError:
            print("ok")
        """
    )
    assert out.strip() == "ok"


def test_with_an_importable_idna_dnspython_reads_metadata_as_before(tmp_path: Path) -> None:
    (tmp_path / "idna").mkdir()
    (tmp_path / "idna" / "__init__.py").write_text("")  # importable, with no metadata
    out = run(
        """
        import stubby_py.commands.cli
        import dns.name
        assert type(sys.modules["importlib.metadata"]).__name__ == "module"
        print(dns.name.have_idna_2008)
        """,
        path=tmp_path,
    )
    assert out.strip() == "False"  # no distribution metadata: dnspython's own verdict


def test_nothing_is_deferred_once_metadata_is_loaded() -> None:
    out = run(
        """
        sys.modules["idna"] = None
        import importlib.metadata
        from stubby_py.commands.lean_imports import defer_package_metadata
        assert defer_package_metadata() is False
        assert sys.modules["importlib.metadata"] is importlib.metadata
        print("ok")
        """
    )
    assert out.strip() == "ok"
