"""The command line: `stubby-py [run]`, `check-config FILE`, `--version`. No logic here."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from stubby_py import __version__
from stubby_py.config import Overrides, apply_overrides, load_config
from stubby_py.errors import StubbyError

COMMANDS = ("run", "check-config")

DESCRIPTION = """\
An encrypted DNS stub forwarder. It answers plain DNS on 127.0.0.1:53 and [::1]:53 and forwards
every query over DNS over TLS to a pool of upstream resolvers. With no configuration file it uses
a built-in pool of well-known public resolvers (Quad9, Cloudflare).
"""

EPILOG = """\
examples:
  stubby-py                                   run on the built-in configuration (needs port 53)
  stubby-py --listen 127.0.0.1:5353           run without root on a high port
  stubby-py -c /etc/stubby-py/config.yaml     run on a configuration file
  stubby-py --upstream tls://9.9.9.9#dns.quad9.net --listen 127.0.0.1:5353
  stubby-py check-config config.yaml          validate a configuration file and exit
then: dig @127.0.0.1 -p 5353 example.com
"""


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", metavar="FILE", help="YAML configuration file")
    parser.add_argument(
        "--listen", action="append", default=[], metavar="ADDR:PORT",
        help="address to listen on, UDP and TCP (repeatable; replaces the configured ones; "
        "IPv6 as [::1]:53)",
    )  # fmt: skip
    parser.add_argument(
        "--upstream", action="append", default=[], metavar="URI",
        help="upstream resolver (repeatable; replaces the configured pool): "
        "DoT tls://IP[:PORT]#AUTH-NAME; DoH https://IP[:PORT]/PATH or "
        "https://NAME[:PORT]/PATH#IP (HTTP/2), h3://... likewise (HTTP/3); "
        "DoQ quic://IP[:PORT]#AUTH-NAME; or udp://IP[:PORT] / tcp://IP[:PORT] for a LAN resolver",
    )  # fmt: skip
    parser.add_argument(
        "--ca-file", metavar="FILE",
        help="PEM file of CA certificates to verify upstreams against (default: system store)",
    )  # fmt: skip
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")


def build_parser() -> argparse.ArgumentParser:
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
    check = commands.add_parser("check-config", help="validate a configuration file and exit")
    check.add_argument("file", metavar="FILE")
    return parser


def setup_logging(level: str) -> None:
    # journald adds its own timestamps; elsewhere we add ours
    fmt = "%(levelname)s %(name)s: %(message)s"
    if not os.environ.get("JOURNAL_STREAM"):
        fmt = "%(asctime)s " + fmt
    logging.basicConfig(level=level.upper(), format=fmt, stream=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if not args_list or (
        args_list[0] not in COMMANDS and args_list[0] not in ("-h", "--help", "--version")
    ):
        args_list.insert(0, "run")
    args = build_parser().parse_args(args_list)
    try:
        if args.command == "check-config":
            config = load_config(args.file)
            print(
                f"{args.file}: OK ({len(config.upstreams)} upstreams, "
                f"{len(config.listen)} listen addresses)"
            )
            return 0
        config = load_config(args.config)
        config = apply_overrides(
            config,
            Overrides(listen=tuple(args.listen), upstreams=tuple(args.upstream),
                      ca_file=args.ca_file, verbose=args.verbose),
        )  # fmt: skip
    except StubbyError as exc:
        print(f"stubby-py: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.log_level)
    from stubby_py.daemon import run

    try:
        run(config)
    except StubbyError as exc:
        logging.getLogger("stubby_py").error("%s", exc)
        return 1
    return 0
