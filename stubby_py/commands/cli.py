"""The command line: `stubby-py [run]`, `check-config FILE`, `stats`, `monitor`, `flush [NAME]`,
`reload`, `explain NAME [TYPE]`, `import-stubby FILE`, `import-dnscrypt-proxy FILE`, `--version`.
No logic here."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from stubby_py import __version__
from stubby_py.commands import explain, portal, stats, stubby_import
from stubby_py.core.config import DNSSEC_MODES, Config, Overrides, apply_overrides, parse_config
from stubby_py.core.errors import StubbyError
from stubby_py.daemon import control

COMMANDS = (
    "run", "check-config", "check", "stats", "flush", "reload", "explain", "portal",
    "import-stubby", "import-dnscrypt-proxy", "bench", "monitor",
)  # fmt: skip
CONTROL_COMMANDS = ("stats", "flush", "reload", "explain", "portal")

DESCRIPTION = """\
An encrypted DNS stub forwarder. It answers plain DNS on 127.0.0.1:53 and [::1]:53 and forwards
every query over DNS over TLS to a pool of upstream resolvers, validating every answer with
DNSSEC from the root trust anchors. With no configuration file it uses a built-in pool of
well-known public resolvers (Quad9, Cloudflare).
"""

EPILOG = """\
examples:
  stubby-py                                   run on the built-in configuration (needs port 53)
  stubby-py --listen 127.0.0.1:5353           run without root on a high port
  stubby-py -c /etc/stubby-py/config.yaml     run on a configuration file
  stubby-py --upstream tls://9.9.9.9#dns.quad9.net --listen 127.0.0.1:5353
  stubby-py check-config config.yaml          validate a configuration file and exit
  stubby-py check -c config.yaml --connect    connect to every upstream and report (TLS, pins)
  stubby-py -c /etc/stubby/stubby.yml         run on a Stubby configuration as it is
then: dig @127.0.0.1 -p 5353 example.com

and, with the daemon running (as root, or as the user it runs as):
  stubby-py stats [--json]                    queries, cache, upstreams
  stubby-py monitor                           the upstreams live: latency, trend, share, failures
  stubby-py flush [NAME]                      forget cached answers (all, or for one name)
  stubby-py reload                            re-read the configuration (as SIGHUP does)
  stubby-py explain example.com AAAA          how that question is answered: rule, cache, upstream,
                                              transport, DNSSEC chain, Extended DNS Errors, timings
  stubby-py import-stubby /etc/stubby/stubby.yml > config.yaml
  stubby-py import-dnscrypt-proxy /etc/dnscrypt-proxy/dnscrypt-proxy.toml > config.yaml
"""


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", metavar="FILE", help="YAML configuration file")
    parser.add_argument(
        "--listen", action="append", default=[], metavar="ADDR:PORT",
        help="address to listen on, UDP and TCP (repeatable; replaces the configured ones; "
        "IPv6 as [::1]:53); tls://ADDR:PORT for DoT, https://ADDR:PORT/PATH for DoH, "
        "h3://ADDR:PORT/PATH for DoH over HTTP/3, quic://ADDR:PORT for DoQ "
        "(with --tls-cert and --tls-key)",
    )  # fmt: skip
    parser.add_argument(
        "--tls-cert", metavar="FILE",
        help="PEM certificate chain the tls://, https://, h3:// and quic:// listeners present",
    )  # fmt: skip
    parser.add_argument(
        "--tls-key", metavar="FILE", help="PEM private key of --tls-cert",
    )  # fmt: skip
    parser.add_argument(
        "--upstream", action="append", default=[], metavar="URI",
        help="upstream resolver (repeatable; replaces the configured pool): "
        "DoT tls://IP[:PORT]#AUTH-NAME; DoH https://IP[:PORT]/PATH or "
        "https://NAME[:PORT]/PATH#IP (HTTP/2), h3://... likewise (HTTP/3); "
        "DoQ quic://IP[:PORT]#AUTH-NAME; udp://IP[:PORT] / tcp://IP[:PORT] for a LAN resolver; "
        "or a DNS stamp sdns://... (DoH, DoT, DoQ)",
    )  # fmt: skip
    parser.add_argument(
        "--ca-file", metavar="FILE",
        help="PEM file of CA certificates to verify upstreams against (default: system store)",
    )  # fmt: skip
    parser.add_argument(
        "--bootstrap", action="append", default=[], metavar="URI",
        help="resolver, given by IP address, that finds the addresses of upstreams given by "
        "hostname (repeatable; replaces the configured ones): udp://IP[:PORT], tcp://IP, or an "
        "encrypted upstream URI with an IP address",
    )  # fmt: skip
    parser.add_argument(
        "--trust-anchors", metavar="FILE",
        help="DS or DNSKEY records in zone-file form to validate from, replacing the built-in "
        "root KSKs (20326, 38696)",
    )  # fmt: skip
    parser.add_argument(
        "--dnssec", choices=DNSSEC_MODES,
        help="validate answers (default: AD on secure ones, SERVFAIL on bogus ones) or off",
    )  # fmt: skip
    parser.add_argument(
        "--proxy", metavar="URI",
        help="reach the upstreams through this proxy (replaces the configured global one): "
        "socks5://[USER:PASS@]IP:PORT, socks5h://... (the proxy resolves the upstream's "
        "authentication name: Tor), http://[USER:PASS@]IP:PORT (HTTP CONNECT)",
    )  # fmt: skip
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")


def build_parser(full: bool = True) -> argparse.ArgumentParser:
    """The whole command line; with full False, `monitor` and `bench` without their options:
    those come from their modules, which the daemon (`run`) need not import (~1 MiB)."""
    parser = argparse.ArgumentParser(
        prog="stubby-py", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--version", action="version", version=f"stubby-py {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = commands.add_parser(
        "run", help="run the daemon (the default)", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    _add_run_options(run)
    check = commands.add_parser(
        "check-config", help="validate a configuration file (ours or Stubby's) and exit"
    )
    check.add_argument("file", metavar="FILE")
    _add_check_parser(commands)
    stats_parser = _control_parser(commands, "stats", "show the running daemon's statistics")
    stats_parser.add_argument("--json", action="store_true", help="print them as JSON")
    flush = _control_parser(commands, "flush", "forget cached answers: all, or one name's")
    flush.add_argument("name", nargs="?", metavar="NAME", help="a domain name (every type)")
    _control_parser(commands, "reload", "make the daemon re-read its configuration (SIGHUP)")
    _add_explain_parser(commands)
    monitor_parser = _control_parser(
        commands, "monitor", "watch the running daemon's upstreams live"
    )
    if full:
        from stubby_py.commands import monitor

        monitor.add_arguments(monitor_parser)
    _add_portal_parser(commands)
    convert = commands.add_parser(
        "import-stubby",
        help="convert a Stubby configuration (stubby.yml) to ours: YAML on stdout, notes on stderr",
    )
    convert.add_argument("file", metavar="FILE", help="e.g. /etc/stubby/stubby.yml")
    convert.add_argument("-o", "--output", metavar="OUT", help="write to OUT, not stdout")
    convert = commands.add_parser(
        "import-dnscrypt-proxy",
        help="convert a dnscrypt-proxy.toml (its [static] stamps, server_names, cached source "
        "lists) to our configuration: YAML on stdout, notes on stderr",
    )  # fmt: skip
    convert.add_argument("file", metavar="FILE", help="e.g. dnscrypt-proxy.toml")
    convert.add_argument("-o", "--output", metavar="OUT", help="write to OUT, not stdout")
    text = "compare upstreams' latency (cached, uncached, handshake) from here"
    bench_parser = commands.add_parser("bench", help=text, description=text)
    if full:
        from stubby_py.commands import bench

        bench.add_arguments(bench_parser)
    return parser


def _add_check_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    text = "validate the configuration; with --connect, connect to every upstream and report"
    parser = commands.add_parser("check", help=text, description=text)
    parser.add_argument("-c", "--config", metavar="FILE", help="YAML configuration file")
    parser.add_argument(
        "--upstream",
        action="append",
        default=[],
        metavar="URI",
        help="upstream to check (repeatable; replaces the configured pool)",
    )
    parser.add_argument("--ca-file", metavar="FILE", help="PEM file of CA certificates")
    parser.add_argument(
        "--bootstrap", action="append", default=[], metavar="URI",
        help="resolver for upstreams given by hostname (repeatable; replaces the configured ones)",
    )
    parser.add_argument(
        "--proxy", metavar="URI",
        help="reach the upstreams through this proxy (replaces the configured global one): "
        "socks5://[USER:PASS@]IP:PORT, socks5h://... (the proxy resolves the upstream's "
        "authentication name: Tor), http://[USER:PASS@]IP:PORT (HTTP CONNECT)",
    )  # fmt: skip
    parser.add_argument("--connect", action="store_true", help="connect and send a test query")
    parser.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        metavar="S",
        help="bound on each step (handshake, query), seconds (default 5)",
    )
    parser.add_argument("--format", choices=("table", "json"), default="table")


def _check(args: argparse.Namespace) -> int:
    overrides = Overrides(
        upstreams=tuple(args.upstream), ca_file=args.ca_file, bootstrap=tuple(args.bootstrap),
        proxy=args.proxy,
    )
    config = apply_overrides(stubby_import.load(args.config)[0], overrides)
    if not args.connect:
        upstreams = len(config.forwarding.upstreams)
        print(f"{config.source}: OK ({upstreams} upstreams); --connect to test them")
        return 0
    from stubby_py.commands import check

    return check.run(config, args.timeout, args.format)


EXPLAIN_EPILOG = """\
The daemon answers the question as a client would (EDNS, AD set, DO clear unless --do),
through its normal path: a cached answer is answered from the cache (and says so, with the TTL
left), a miss is asked upstream. The report names the forwarding rule and group, the cache
entry's state (fresh, stale, expired, absent, held failure), each upstream attempt (transport,
outcome or failure class such as timeout or cert-name-mismatch, time), the DNSSEC verdict with
its chain zone by zone, the rcode, AD and Extended DNS Errors, and the timings.

examples:
  stubby-py explain example.com               the A question
  stubby-py explain example.com AAAA --json   as JSON
  stubby-py explain --socket /run/stubby-py/control.sock www.example.org MX
"""


def _add_explain_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = _control_parser(
        commands, "explain", "ask the running daemon one question and show how it was answered"
    )
    parser.epilog = EXPLAIN_EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("name", metavar="NAME", help="a domain name")
    parser.add_argument("type", nargs="?", default="A", metavar="TYPE", help="default A")
    parser.add_argument("--do", action="store_true", help="as a client that sets DO asks")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def _add_portal_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    text = (
        "the captive-portal state; `open` sends ALL names to the network's resolver for a few"
        " minutes (a portal whose sign-in page is on another host), `close` ends that"
    )
    parser = _control_parser(commands, "portal", text)
    parser.add_argument("action", nargs="?", choices=("status", "open", "close"), default="status")
    parser.add_argument(
        "--minutes", type=float, default=portal.DEFAULT_MINUTES, metavar="N",
        help=f"how long the window stays open (default {portal.DEFAULT_MINUTES:g}, at most"
        f" {portal.MAX_MINUTES:g})",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the state as JSON")


def _control_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], name: str, text: str
) -> argparse.ArgumentParser:
    parser = commands.add_parser(name, help=text, description=text)
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--socket", metavar="PATH", help=f"the control socket (default: {control.default_path()})"
    )
    where.add_argument(
        "-c", "--config", metavar="FILE", help="find the control socket in this configuration"
    )
    return parser


def setup_logging(level: str) -> None:
    # journald adds its own timestamps; elsewhere we add ours
    fmt = "%(levelname)s %(name)s: %(message)s"
    if not os.environ.get("JOURNAL_STREAM"):
        fmt = "%(asctime)s " + fmt
    logging.basicConfig(level=level.upper(), format=fmt, stream=sys.stderr)


def _socket_path(args: argparse.Namespace) -> str:
    if args.socket:
        return str(args.socket)
    setting = stubby_import.load(args.config)[0].service.control_socket if args.config else "auto"
    if setting is None:
        raise StubbyError(f"{args.config}: control_socket is off (false)")
    return control.default_path() if setting == "auto" else setting


def _ask(args: argparse.Namespace, command: str, **arguments: Any) -> dict[str, Any]:
    path = _socket_path(args)
    timeout = control.timeout_for(command)
    try:
        reply = control.request(path, command, timeout, **arguments)
    except TimeoutError:
        raise StubbyError(
            f"{path}: TimeoutError: no reply from the daemon in {timeout:g} s"
        ) from None
    except (FileNotFoundError, ConnectionRefusedError):
        raise StubbyError(
            f"no daemon answers on {path}: is it running? (elsewhere: --socket PATH or -c FILE)"
        ) from None
    except PermissionError:
        raise StubbyError(
            f"{path}: permission denied: run as root or as the daemon's user"
        ) from None
    except (OSError, ValueError) as exc:
        # some exceptions say nothing in str(): their class then tells what happened
        what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise StubbyError(f"{path}: {what}") from None
    if not reply.get("ok"):
        raise StubbyError(str(reply.get("error") or "the daemon refused the command"))
    return reply


def _control_command(args: argparse.Namespace) -> int:
    if args.command == "stats":
        reply = _ask(args, "stats")
        reply.pop("ok", None)
        print(json.dumps(reply, indent=2) if args.json else stats.format_table(reply), end="")
        if args.json:
            print()
    elif args.command == "explain":
        reply = _ask(args, "explain", name=args.name, type=args.type, do=args.do)
        report = reply["explain"]
        print(json.dumps(report, indent=2) if args.json else explain.format_table(report), end="")
        if args.json:
            print()
    elif args.command == "portal":
        if not 0 < args.minutes <= portal.MAX_MINUTES:
            raise StubbyError(f"--minutes: expected more than 0 and at most {portal.MAX_MINUTES:g}")
        arguments = {"minutes": args.minutes} if args.action == "open" else {}
        reply = _ask(args, "portal", action=args.action, **arguments)
        reply.pop("ok", None)
        print(json.dumps(reply, indent=2) if args.json else portal.format_status(reply), end="")
        if args.json:
            print()
    elif args.command == "flush":
        reply = _ask(args, "flush", name=args.name)
        print(f"{reply['dropped']} answers dropped")
    else:
        reply = _ask(args, "reload")
        print(f"reloaded {reply.get('source', '')}".rstrip())
    return 0


def _import_stubby(args: argparse.Namespace) -> int:
    conversion = stubby_import.read_stubby(args.file)
    if conversion is None:
        raise StubbyError(f"{args.file}: not a Stubby configuration (no Stubby option in it)")
    text = stubby_import.to_yaml(conversion, args.file)
    return _write_conversion(args, conversion, text)


def _import_dnscrypt_proxy(args: argparse.Namespace) -> int:
    from stubby_py.commands import dnscrypt_import

    conversion = dnscrypt_import.read(args.file)
    if not conversion.options.get("upstreams"):
        for note in conversion.notes:
            print(f"  {note}", file=sys.stderr)
        raise StubbyError(
            f"{args.file}: no server could be converted (the reasons are above); stubby-py "
            "would fall back to its built-in upstreams, so nothing is written"
        )
    return _write_conversion(args, conversion, dnscrypt_import.to_yaml(conversion, args.file))


def _write_conversion(
    args: argparse.Namespace, conversion: stubby_import.Conversion, text: str
) -> int:
    parse_config(text, f"{args.file} (converted)")  # what we write must load
    print(f"stubby-py {args.command}: {args.file}", file=sys.stderr)
    for note in conversion.notes:
        print(f"  {note}", file=sys.stderr)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as handle:
            handle.write(text)
        print(f"written to {args.output}: check it with stubby-py check-config", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _check_config(path: str) -> int:
    config, conversion = stubby_import.load(path)
    kind = " (Stubby's format)" if conversion is not None else ""
    upstreams, addresses = len(config.forwarding.upstreams), len(config.listeners.addresses)
    counts = f"{upstreams} upstreams, {addresses} listen addresses"
    print(f"{path}{kind}: OK ({counts})")
    return 0


def _run(args: argparse.Namespace) -> int:
    overrides = Overrides(
        listen=tuple(args.listen), upstreams=tuple(args.upstream), ca_file=args.ca_file,
        trust_anchors=args.trust_anchors, dnssec=args.dnssec, verbose=args.verbose,
        bootstrap=tuple(args.bootstrap), proxy=args.proxy, tls_cert=args.tls_cert,
        tls_key=args.tls_key,
    )  # fmt: skip

    def load() -> Config:
        return apply_overrides(stubby_import.load(args.config)[0], overrides)

    config, conversion = stubby_import.load(args.config)
    config = apply_overrides(config, overrides)
    setup_logging(config.service.log_level)
    logger = logging.getLogger("stubby_py")
    if conversion is not None:
        logger.info("%s: a Stubby configuration, converted", args.config)
        for note in conversion.notes:
            level = logging.WARNING if note.kind == "ignored" else logging.INFO
            logger.log(level, "stubby.yml %s", note)
    from stubby_py.daemon.service import run

    try:
        run(config, load, args.config)
    except StubbyError as exc:
        logger.error("%s", exc)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if not args_list or (
        args_list[0] not in COMMANDS and args_list[0] not in ("-h", "--help", "--version")
    ):
        args_list.insert(0, "run")
    args = build_parser(full=args_list[0] != "run").parse_args(args_list)
    try:
        if args.command == "check-config":
            return _check_config(args.file)
        if args.command == "check":
            return _check(args)
        if args.command in CONTROL_COMMANDS:
            return _control_command(args)
        if args.command == "monitor":
            from stubby_py.commands import monitor

            return monitor.main(args, lambda: _ask(args, "stats"))
        if args.command == "import-stubby":
            return _import_stubby(args)
        if args.command == "import-dnscrypt-proxy":
            return _import_dnscrypt_proxy(args)
        if args.command == "bench":
            from stubby_py.commands import bench

            return bench.main(args)
        return _run(args)
    except StubbyError as exc:
        print(f"stubby-py: {exc}", file=sys.stderr)
        return 2
