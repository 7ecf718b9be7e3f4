#!/usr/bin/env python3
"""Rewrite code written against the flat `Config` (one field per option) to its sections.

    config.cache_size                 -> config.cache.max_entries
    self.config.hedge_min             -> self.config.pool.hedge_min
    config.cache_max_memory           -> (config.cache.max_bytes >> 20)
    replace(config, cache_size=0)     -> config.with_options(cache_size=0)
    Config(ca_file=x)                 -> Config.from_options(ca_file=x)
    replace(Config(), ca_file=x)      -> Config.from_options(ca_file=x)
    getattr(old, key)                 -> old.option(key)   (the value by its flat name)
    cache_limits(config)              -> config.cache      (and the helper's def is removed)
    pool_settings(config)             -> config.pool       (likewise)

Only receivers known to be configurations are touched, so `spec.proxy` (an UpstreamSpec) or
`args.timeout` (argparse) stay as they are. A receiver is a configuration when it is:
- a name in CONFIG_NAMES, or annotated `: Config` in the file (parameters, assignments), or
  assigned from a configuration expression in the file (flow-insensitive, to a fixed point);
- an attribute whose name is in CONFIG_ATTRS or is annotated `: Config` in some class
  (`self.config`, `daemon.config`, `self._config`);
- a call of `Config`, of a function annotated `-> Config` in any scanned file, of a known
  config function (parse_config, load_config, apply_overrides, …), or `X.with_options(…)`;
- `load(…)[0]` (stubby_import.load gives (Config, Conversion)).
Names that hold a configuration in some functions only are not guessed: with `--mypy`, what
mypy (which knows the types) then reports on stubby_py as `"Config" has no attribute X` is
rewritten too, until it reports none. tests/ and bench/ are not type-checked: what the names
miss there shows up in the suite (fakes such as `SimpleNamespace(watch_network=False)` too).

Idempotent: already rewritten code is left alone (`config.dnssec.mode` is not rewritten again;
`config.cache` is no flat option). The one thing it cannot tell apart is a bare read of the
`dnssec` or `bootstrap` *section* (`settings = config.bootstrap`), or a `getattr(config, name)`
of a section, from the flat option of that name: such reads are rewritten to `.dnssec.mode` /
`.bootstrap.resolvers` / `.option(name)`. Code written for the sections (outside core/config.py)
reads fields of those two sections, never the bare section, until this script has done its
last run.

Usage, from the repository root (the stubby_py there is the one imported):
    python tools/config_sections_rewrite.py [--check] [--mypy] [--no-ruff] [PATH ...]
PATHs default to stubby_py, tests, bench; stubby_py/core/config.py is never rewritten (it
defines the sections, and the table FLAT is checked against its OPTIONS). Afterwards
`ruff check --fix --select F401,I001` runs on the changed files (unused `replace` and
`cache_limits` imports) and `ruff format` on those that were formatted before (the others keep
their layout); new lines over 100 characters are listed, to wrap by hand. --no-ruff: neither.
--check: print the diff, change nothing (exit 1 if anything would change).
"""

from __future__ import annotations

import argparse
import ast
import difflib
import re
import subprocess
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

#: flat option -> its place in the sectioned Config (core/config.py OPTIONS says the same)
FLAT: dict[str, str] = {
    "listen": "listeners.addresses",
    "encrypted_listen": "listeners.encrypted",
    "tls_cert": "listeners.tls_cert",
    "tls_key": "listeners.tls_key",
    "listen_padding_block": "listeners.padding_block",
    "tcp_idle_timeout": "listeners.tcp_idle_timeout",
    "tcp_max_connections": "listeners.tcp_max_connections",
    "tcp_max_connections_per_client": "listeners.tcp_max_connections_per_client",
    "allow": "access.allow",
    "deny_action": "access.deny_action",
    "rate_limit": "access.rate_limit",
    "rate_limit_burst": "access.rate_limit_burst",
    "rate_limit_action": "access.rate_limit_action",
    "rate_limit_exempt": "access.rate_limit_exempt",
    "ipv6_client_prefix": "access.ipv6_client_prefix",
    "upstreams": "forwarding.upstreams",
    "upstream_groups": "forwarding.groups",
    "rules": "forwarding.rules",
    "timeout": "forwarding.timeout",
    "retry_servfail": "forwarding.retry_servfail",
    "attempt_timeout": "transport.attempt_timeout",
    "upstream_idle_timeout": "transport.idle_timeout",
    "padding_block_size": "transport.padding_block",
    "tls_min_version": "transport.tls_min_version",
    "ca_file": "transport.ca_file",
    "proxy": "transport.proxy",
    "strategy": "pool.strategy",
    "parallel_fanout": "pool.fanout",
    "fastest_explore": "pool.explore",
    "hedge": "pool.hedge",
    "hedge_percentile": "pool.hedge_percentile",
    "hedge_min": "pool.hedge_min",
    "hedge_max": "pool.hedge_max",
    "failures_to_down": "pool.failures_to_down",
    "backoff_min": "pool.backoff_min",
    "backoff_max": "pool.backoff_max",
    "cache_size": "cache.max_entries",
    "cache_max_memory": "cache.max_bytes",
    "cache_min_ttl": "cache.min_ttl",
    "cache_max_ttl": "cache.max_ttl",
    "cache_negative_max_ttl": "cache.negative_max_ttl",
    "serve_stale": "cache.serve_stale",
    "stale_window": "cache.stale_window",
    "prefetch": "cache.prefetch",
    "dnssec": "dnssec.mode",
    "trust_anchors": "dnssec.trust_anchors",
    "dnssec_clock_skew": "dnssec.clock_skew",
    "nsec3_max_iterations": "dnssec.nsec3_max_iterations",
    "trust_anchor_updates": "dnssec.trust_anchor_updates",
    "aggressive_nsec": "dnssec.aggressive_nsec",
    "bootstrap": "bootstrap.resolvers",
    "bootstrap_min_ttl": "bootstrap.min_ttl",
    "bootstrap_max_ttl": "bootstrap.max_ttl",
    "bootstrap_file": "bootstrap.file",
    "user": "service.user",
    "log_level": "service.log_level",
    "control_socket": "service.control_socket",
    "metrics_listen": "service.metrics_listen",
    "metrics_allow": "service.metrics_allow",
    "metrics_max_connections": "service.metrics_max_connections",
    "query_log": "service.query_log",
    "cache_file": "service.cache_file",
    "watch_network": "service.watch_network",
}
#: reads whose value is not the field's as it is: (receiver text) -> expression
READ_TEMPLATES = {"cache_max_memory": "({}.cache.max_bytes >> 20)"}
SECTIONS = {path.split(".")[0] for path in FLAT.values()}
#: the fields of each section that the flat options set (to leave `config.dnssec.mode` alone)
SECTION_FIELDS: dict[str, set[str]] = {}
for _path in FLAT.values():
    SECTION_FIELDS.setdefault(_path.split(".")[0], set()).add(_path.split(".")[1])

CONFIG_NAMES = {"config", "cfg", "_config", "new_config", "old_config"}
CONFIG_ATTRS = {"config", "_config", "new_config", "old_config"}
CONFIG_FUNCS = {
    "Config", "parse_config", "load_config", "apply_overrides", "with_defaults",
    "make_config", "from_options", "with_options", "_override_proxy",
}  # fmt: skip
#: helpers that copied a section field by field: call -> the section, and their defs go
COPY_HELPERS = {"cache_limits": "cache", "pool_settings": "pool"}
SKIP = {"stubby_py/core/config.py", "tools/config_sections_rewrite.py"}
LINE_LENGTH = 100


@dataclass(frozen=True, slots=True)
class Edit:
    start: int
    end: int
    text: str


def _is_config_annotation(node: ast.expr | None) -> bool:
    if node is None:
        return False
    text = ast.unparse(node).replace(" ", "")
    return text in ("Config", "'Config'", '"Config"', "Config|None", "config.Config")


def scan_globals(trees: Iterable[ast.AST]) -> tuple[set[str], set[str]]:
    """Functions annotated `-> Config` and attributes annotated `: Config`, in any file."""
    funcs, attrs = set(CONFIG_FUNCS), set(CONFIG_ATTRS)
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and _is_config_annotation(
                node.returns
            ):
                funcs.add(node.name)
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if (
                        isinstance(item, ast.AnnAssign)
                        and isinstance(item.target, ast.Name)
                        and _is_config_annotation(item.annotation)
                    ):
                        attrs.add(item.target.id)
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Attribute)
                and _is_config_annotation(node.annotation)
            ):
                attrs.add(node.target.attr)
    return funcs, attrs


def _assignments(tree: ast.AST) -> Iterator[tuple[str, ast.expr]]:
    """(name, value) of every assignment to a plain name, `with … as name` included."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.NamedExpr | ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        elif isinstance(node, ast.withitem) and node.optional_vars is not None:
            targets, value = [node.optional_vars], node.context_expr
        else:
            continue
        for target in targets:
            if isinstance(target, ast.Name):
                yield target.id, value


class FileRewriter:
    def __init__(self, path: Path, source: str, funcs: set[str], attrs: set[str]) -> None:
        self.path = path
        self.source = source
        self.tree = ast.parse(source)
        self.funcs = funcs
        self.attrs = attrs
        self.names = set(CONFIG_NAMES)
        self.edits: list[Edit] = []
        self.warnings: list[str] = []
        self._offsets = [0]
        for line in source.splitlines(keepends=True):
            self._offsets.append(self._offsets[-1] + len(line))
        self.parents: dict[ast.AST, ast.AST] = {}
        for node in ast.walk(self.tree):
            for child in ast.iter_child_nodes(node):
                self.parents[child] = node

    # --- positions ------------------------------------------------------------------------
    def offset(self, line: int, col: int) -> int:
        # ast columns are UTF-8 byte offsets
        start = self._offsets[line - 1]
        text = self.source[start : self._offsets[line]]
        return start + len(text.encode()[:col].decode())

    def start(self, node: ast.AST) -> int:
        return self.offset(node.lineno, node.col_offset)  # type: ignore[attr-defined]

    def end(self, node: ast.AST) -> int:
        return self.offset(node.end_lineno, node.end_col_offset)  # type: ignore[attr-defined]

    def text(self, node: ast.AST) -> str:
        return self.source[self.start(node) : self.end(node)]

    def where(self, node: ast.AST) -> str:
        return f"{self.path}:{node.lineno}"  # type: ignore[attr-defined]

    # --- what is a configuration ------------------------------------------------------------
    def is_config(self, node: ast.AST) -> bool:
        if isinstance(node, ast.Name):
            return node.id in self.names
        if isinstance(node, ast.Attribute):
            return node.attr in self.attrs
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            if name in self.funcs:
                return True
            return name == "replace" and bool(node.args) and self.is_config(node.args[0])
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Call):
            func = node.value.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            index = node.slice
            return name == "load" and isinstance(index, ast.Constant) and index.value == 0
        return False

    def collect_names(self) -> None:
        """Names annotated `Config`, and names assigned a configuration, to a fixed point."""
        for node in ast.walk(self.tree):
            if isinstance(node, ast.arg) and _is_config_annotation(node.annotation):
                self.names.add(node.arg)
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and _is_config_annotation(node.annotation)
            ):
                self.names.add(node.target.id)
        assignments = list(_assignments(self.tree))
        grew = True
        while grew:
            grew = False
            for target, value in assignments:
                if target not in self.names and self.is_config(value):
                    self.names.add(target)
                    grew = True

    # --- the rewrites -----------------------------------------------------------------------
    def run(self) -> str:
        self.collect_names()
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Attribute):
                self.attribute(node)
            elif isinstance(node, ast.Call):
                self.call(node)
            elif isinstance(node, ast.FunctionDef) and node.name in COPY_HELPERS:
                self.copy_helper_def(node)
        return self.apply()

    def attribute(self, node: ast.Attribute) -> None:
        if node.attr not in FLAT or not self.is_config(node.value):
            return
        if isinstance(node.ctx, ast.Store | ast.Del):
            self.warnings.append(f"{self.where(node)}: assigns {node.attr} (left alone)")
            return
        parent = self.parents.get(node)
        if (
            node.attr in SECTIONS
            and isinstance(parent, ast.Attribute)
            and parent.value is node
            and parent.attr in SECTION_FIELDS[node.attr]
        ):
            return  # already `config.dnssec.mode`
        template = READ_TEMPLATES.get(node.attr)
        if template is not None:
            receiver = self.text(node.value)
            self.edits.append(Edit(self.start(node), self.end(node), template.format(receiver)))
            return
        end = self.end(node)
        self.edits.append(Edit(end - len(node.attr), end, FLAT[node.attr]))

    def call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Name) and func.id in COPY_HELPERS:
            if len(node.args) == 1 and not node.keywords:
                receiver = self.text(node.args[0])
                if not isinstance(node.args[0], ast.Name | ast.Attribute | ast.Call):
                    receiver = f"({receiver})"
                section = COPY_HELPERS[func.id]
                self.edits.append(Edit(self.start(node), self.end(node), f"{receiver}.{section}"))
            return
        is_replace = (isinstance(func, ast.Name) and func.id == "replace") or (
            isinstance(func, ast.Attribute)
            and func.attr == "replace"
            and isinstance(func.value, ast.Name)
            and func.value.id == "dataclasses"
        )
        if isinstance(func, ast.Name) and func.id == "getattr":
            self.getattr_call(node)
        elif is_replace:
            self.replace_call(node)
        elif isinstance(func, ast.Name) and func.id == "Config" and node.keywords:
            names = {k.arg for k in node.keywords}
            if names <= {"source"}:
                return
            self.edits.append(Edit(self.start(func), self.end(func), "Config.from_options"))

    def getattr_call(self, node: ast.Call) -> None:
        """`getattr(config, "cache_size")` -> a read; `getattr(config, key)` -> `.option(key)`."""
        if len(node.args) != 2 or node.keywords or not self.is_config(node.args[0]):
            return
        target, key = node.args
        receiver = self.text(target)
        if not isinstance(target, ast.Name | ast.Attribute | ast.Call | ast.Subscript):
            receiver = f"({receiver})"
        if isinstance(key, ast.Constant):
            if key.value in FLAT:
                template = READ_TEMPLATES.get(key.value, "{}." + FLAT[key.value])
                self.edits.append(Edit(self.start(node), self.end(node), template.format(receiver)))
            return
        replacement = f"{receiver}.option({self.text(key)})"
        self.edits.append(Edit(self.start(node), self.end(node), replacement))

    def replace_call(self, node: ast.Call) -> None:
        if len(node.args) != 1 or not node.keywords:
            return
        target = node.args[0]
        names = {k.arg for k in node.keywords}
        flat = {n for n in names if n is not None} - {"source"}
        if not flat <= FLAT.keys():
            return  # another dataclass (UpstreamSpec, ProxySpec, …)
        if not self.is_config(target):
            if flat and not flat & {"ca_file", "proxy"} and None not in names:
                self.warnings.append(
                    f"{self.where(node)}: replace({self.text(target)}, {', '.join(sorted(flat))})"
                    " looks like a configuration's: rewrite it by hand if it is"
                )
            return
        if not flat and None not in names:
            return  # source= only: Config keeps that field
        first = min(node.keywords, key=lambda k: (k.lineno, k.col_offset))
        call_start, target_start = self.start(node), self.start(target)
        target_end = self.end(target)
        between = self.source[target_end : self.start(first)]
        if "**" in between:  # `replace(config, **changes)`: the keyword starts after the `**`
            between = between[: between.index("**")]
            first_start = target_end + len(between)
        else:
            first_start = self.start(first)
        layout = between.replace(",", "", 1)
        layout = layout[layout.index("\n") :] if "\n" in layout else ""
        lead = self.source[self.end(node.func) + 1 : target_start]
        if not layout and "\n" in lead:  # `replace(\n    config, a=1,\n …)`: keep the break
            layout = lead
        if isinstance(target, ast.Call) and self.text(target) == "Config()":
            self.edits.append(Edit(call_start, first_start, "Config.from_options(" + layout))
            return
        needs_parens = not isinstance(target, ast.Name | ast.Attribute | ast.Call | ast.Subscript)
        self.edits.append(Edit(call_start, target_start, "(" if needs_parens else ""))
        opening = (")" if needs_parens else "") + ".with_options(" + layout
        self.edits.append(Edit(target_end, first_start, opening))

    def copy_helper_def(self, node: ast.FunctionDef) -> None:
        returns = [n for n in node.body if isinstance(n, ast.Return)]
        if len(returns) != 1 or not isinstance(returns[0].value, ast.Call):
            self.warnings.append(f"{self.where(node)}: def {node.name}: remove it by hand")
            return
        start = self.offset(node.lineno, 0)
        if node.decorator_list:
            start = self.offset(node.decorator_list[0].lineno, 0)
        end = self._offsets[node.end_lineno]  # type: ignore[index]
        while self.source[end : end + 1] == "\n":
            end += 1
        self.edits.append(Edit(start, end, ""))

    def apply(self) -> str:
        edits = sorted(set(self.edits), key=lambda e: (e.start, -e.end))
        kept: list[Edit] = []
        for edit in edits:
            if kept and edit.start < kept[-1].end:
                if edit.end > kept[-1].end:
                    raise SystemExit(f"{self.path}: overlapping edits {kept[-1]} and {edit}")
                if kept[-1].text:  # not a removed def: the inner rewrite would be lost
                    self.warnings.append(f"{self.path}: {edit} inside {kept[-1]}: check by hand")
                continue
            kept.append(edit)
        out = self.source
        for edit in reversed(kept):
            out = out[: edit.start] + edit.text + out[edit.end :]
        return out


# --- mypy: what the names did not find -----------------------------------------------------------

_MYPY_ERROR = re.compile(
    r"^(?P<file>[^:]+):(?P<line>\d+):(?P<col>\d+):(?P<end_line>\d+):(?P<end_col>\d+): error: "
    r'(?:Item )?"Config"(?: of "[^"]*")? has no attribute "(?P<attr>\w+)"'
)


def mypy_pass(root: Path) -> dict[Path, str]:
    """Rewrite the reads mypy reports on Config; repeat while it finds new ones. The sources
    before, of the files changed."""
    before: dict[Path, str] = {}
    for _ in range(10):
        result = subprocess.run(
            [sys.executable, "-m", "mypy", "--show-column-numbers", "--show-error-end",
             "--no-error-summary", "--hide-error-context", "--no-pretty", "stubby_py"],
            cwd=root, capture_output=True, text=True, check=False,
        )  # fmt: skip
        spans: dict[Path, set[tuple[int, int, int, int, str]]] = {}
        for line in result.stdout.splitlines():
            match = _MYPY_ERROR.match(line)
            if match is None or match["attr"] not in FLAT:
                continue
            path = root / match["file"]
            if str(path.relative_to(root)) not in SKIP:
                line_no, col, end_line, end_col = (
                    int(match[k]) for k in ("line", "col", "end_line", "end_col")
                )
                spans.setdefault(path, set()).add((line_no, col, end_line, end_col, match["attr"]))
        if not spans:
            break
        for path, found in spans.items():
            source = path.read_text()
            before.setdefault(path, source)
            path.write_text(_fix_spans(path, source, found))
    return before


def _fix_spans(path: Path, source: str, spans: set[tuple[int, int, int, int, str]]) -> str:
    """Rewrite the member expressions mypy located: (line, column, end line, end column), all
    1-based and the end inclusive, so [start, end) below is `receiver.attr`."""
    offsets = [0]
    for line in source.splitlines(keepends=True):
        offsets.append(offsets[-1] + len(line))
    for line_no, col, end_line, end_col, attr in sorted(spans, reverse=True):
        start, end = offsets[line_no - 1] + col - 1, offsets[end_line - 1] + end_col
        if not source[start:end].endswith("." + attr):
            print(f"{path}:{line_no}: mypy reported {attr!r}, not found there", file=sys.stderr)
            continue
        template = READ_TEMPLATES.get(attr)
        if template is not None:
            receiver = source[start : end - len(attr) - 1]
            source = source[:start] + template.format(receiver) + source[end:]
        else:
            source = source[: end - len(attr)] + FLAT[attr] + source[end:]
    return source


def python_files(root: Path, paths: list[str]) -> Iterator[Path]:
    for name in paths:
        path = root / name
        found = [path] if path.is_file() else sorted(path.rglob("*.py"))
        for file in found:
            if str(file.relative_to(root)) not in SKIP:
                yield file


def is_format_clean(root: Path, path: Path, source: str) -> bool:
    """Whether `source` (the file before the rewrite) is as `ruff format` would leave it."""
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--check", "--quiet",
         f"--stdin-filename={path}", "-"],
        cwd=root, input=source, capture_output=True, text=True, check=False,
    )  # fmt: skip
    return result.returncode == 0


def check_table(root: Path) -> None:
    """FLAT must say what core/config.py's OPTIONS says."""
    sys.path.insert(0, str(root))
    try:
        from stubby_py.core.config import OPTIONS
    except ImportError:
        return
    theirs = {name: f"{o.section}.{o.field}" for name, o in OPTIONS.items()}
    if theirs != FLAT:
        raise SystemExit(f"FLAT differs from OPTIONS: {set(theirs.items()) ^ set(FLAT.items())}")


def rewrite(root: Path, paths: list[str], *, check: bool) -> dict[Path, str]:
    """Rewrite the files under `paths`; the sources before, of those changed."""
    sources = {path: path.read_text() for path in python_files(root, paths)}
    funcs, attrs = scan_globals(ast.parse(text) for text in sources.values())
    before: dict[Path, str] = {}
    for path, source in sources.items():
        rewriter = FileRewriter(path.relative_to(root), source, funcs, attrs)
        new = rewriter.run()
        for warning in rewriter.warnings:
            print(f"note: {warning}", file=sys.stderr)
        if new == source:
            continue
        before[path] = source
        name = str(path.relative_to(root))
        if check:
            old_lines, new_lines = source.splitlines(keepends=True), new.splitlines(keepends=True)
            sys.stdout.writelines(difflib.unified_diff(old_lines, new_lines, name, name))
            continue
        ast.parse(new)  # never write a file that no longer parses
        path.write_text(new)
    return before


def tidy(root: Path, before: dict[Path, str]) -> None:
    """Drop the imports the rewrite left unused; format the files that were formatted before
    (the others keep their layout); list the new lines still too long, to wrap by hand."""
    names = sorted(str(path.relative_to(root)) for path in before)
    ruff = [sys.executable, "-m", "ruff"]
    subprocess.run(
        [*ruff, "check", "--fix", "--select", "F401,I001", *names], cwd=root, check=False
    )
    clean = [path for path, source in before.items() if is_format_clean(root, path, source)]
    if clean:
        subprocess.run([*ruff, "format", *map(str, clean)], cwd=root, check=False)
    for path, source in before.items():  # `# fmt: skip` and unformatted files
        old_lines = set(source.splitlines())
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if len(line) > LINE_LENGTH and line not in old_lines:
                name = path.relative_to(root)
                print(f"note: {name}:{number}: longer than {LINE_LENGTH}", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("paths", nargs="*", default=["stubby_py", "tests", "bench"])
    parser.add_argument("--check", action="store_true", help="show the diff, change nothing")
    parser.add_argument("--mypy", action="store_true", help="then fix what mypy reports")
    parser.add_argument("--no-ruff", action="store_true", help="no import clean-up, no format")
    args = parser.parse_args()
    root = Path.cwd()
    check_table(root)
    before = rewrite(root, args.paths, check=args.check)
    if args.check:
        return 1 if before else 0
    if args.mypy:
        before.update({p: s for p, s in mypy_pass(root).items() if p not in before})
    if before and not args.no_ruff:
        tidy(root, before)
    print(f"{len(before)} files rewritten", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
