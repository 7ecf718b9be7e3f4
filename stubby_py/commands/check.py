"""`stubby-py check --connect`: connect to every configured upstream, say what is wrong if anything.

For each upstream, concurrently:

* DoT and DoH (h2): a TLS handshake of our own (asyncio + ssl, the daemon's verifying context,
  ALPN "h2" for DoH) gives the TLS version, ALPN, cipher, handshake time, the leaf certificate
  and the verified chain (each certificate's SPKI pin), then the configured pins and a DNS
  stamp's certificate hashes (TBS SHA-256 of a certificate in the chain) are checked; the
  stamp's informal properties (DNSSEC, no-log, no-filter) are shown, never checked.
  When verification fails, a second handshake WITHOUT verification is made only to read the
  certificate the server presents (reported with ``"certificate_source": "unverified"``), so a
  name mismatch or an expiry can be seen. Then one test query goes through the real transport
  (DoTTransport, DoHTransport): the answer the daemon would get.
* DoQ and DoH over HTTP/3: the real transport connects (aioquic); its ALPN, the leaf
  certificate and the handshake time are read from the connection, and the test query goes over
  it. aioquic exposes no chain, cipher or version (QUIC is TLS 1.3 always).
* udp:// and tcp://: the test query only.

An upstream with a proxy is reached through it for every step (transports/proxy.py), and the
report shows the path (`via socks5 127.0.0.1:1080`).

Failure kinds are the ones the daemon counts in its stats and names in SERVFAIL EDE texts
(stubby_py/transports/failures.py). An upstream is usable when the handshake, the certificate,
the pins and the test query all succeed (any rcode is an answer). JSON fields: see README,
"Checking upstreams".
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import ssl
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
from cryptography import x509

from stubby_py.core.config import Config, UpstreamSpec
from stubby_py.core.errors import (
    ALPNMismatchError,
    CertificateError,
    PinMismatchError,
    TLSConfigError,
    UpstreamError,
    UpstreamTimeoutError,
)
from stubby_py.transports import make_transport
from stubby_py.transports.bootstrap import endpoint_for
from stubby_py.transports.failures import connect_error
from stubby_py.transports.proxy import open_stream, path_text
from stubby_py.transports.tls import (
    ClientContexts,
    check_pins,
    server_hostname,
    spki_pin,
    verified_chain,
)

#: the test query: the root's name servers (every resolver answers it; it tells nothing of us),
#: asked with DO and CD as the validator asks: the root signs them, so an upstream that hands
#: back no RRSIG strips DNSSEC data, and validated answers through it would all fail
QUERY_NAME = "."
QUERY_TYPE = "NS"


@dataclass
class CertificateFacts:
    subject: str
    issuer: str
    san_dns: list[str]
    san_ip: list[str]
    not_before: str
    not_after: str
    expired: bool
    spki_pin: str


@dataclass
class QueryResult:
    name: str
    type: str
    rcode: str | None = None
    answers: list[str] = field(default_factory=list)
    ms: float | None = None
    error: str | None = None
    kind: str | None = None
    #: whether the answer carried RRSIGs (DO honoured): None when there was no answer
    dnssec: bool | None = None


@dataclass
class UpstreamReport:
    name: str
    url: str
    group: str
    transport: str
    address: str
    port: int
    auth_name: str | None
    #: how it is reached: "direct", or "via socks5 127.0.0.1:1080" (never with credentials)
    path: str = "direct"
    usable: bool = False
    kind: str | None = None
    error: str | None = None
    handshake_ms: float | None = None
    tls_version: str | None = None
    alpn: str | None = None
    cipher: str | None = None
    #: "verified" (the handshake that checked it), "unverified" (a second handshake without
    #: verification, made only to show what the server presents), None (no certificate)
    certificate_source: str | None = None
    certificate: CertificateFacts | None = None
    name_matched: bool | None = None
    #: the verified chain, leaf first, when ssl can give it (else the leaf only)
    chain: list[CertificateFacts] = field(default_factory=list)
    pins_configured: list[str] = field(default_factory=list)
    pins_matched: bool | None = None
    #: from a DNS stamp: TBS certificate hashes (hex), whether one is in the chain, its props
    cert_hashes: list[str] = field(default_factory=list)
    cert_hashes_matched: bool | None = None
    stamp_props: list[str] = field(default_factory=list)
    query: QueryResult | None = None

    def fail(self, error: UpstreamError) -> None:
        if self.kind is None:
            self.kind = error.kind
            self.error = str(error.args[0]) if error.args else error.kind


def upstreams_of(config: Config) -> list[tuple[str, UpstreamSpec]]:
    """Every upstream the configuration names once: the main pool, then the rules' groups."""
    seen: set[UpstreamSpec] = set()
    result: list[tuple[str, UpstreamSpec]] = []
    for group, specs in (("default", config.forwarding.upstreams), *config.forwarding.groups):
        for spec in specs:
            if spec not in seen:
                seen.add(spec)
                result.append((group, spec))
    return result


async def check_all(config: Config, timeout: float) -> list[UpstreamReport]:
    probe_config = config.with_options(attempt_timeout=timeout, timeout=timeout)
    reports = await asyncio.gather(
        *(check_one(spec, group, probe_config, timeout) for group, spec in upstreams_of(config))
    )
    await asyncio.sleep(0.05)  # let closed TLS transports finish closing
    return list(reports)


async def check_one(
    spec: UpstreamSpec, group: str, config: Config, timeout: float
) -> UpstreamReport:
    report = UpstreamReport(
        name=spec.label, url=spec.url, group=group, transport=spec.transport,
        address=spec.address, port=spec.port, auth_name=spec.auth_name,
        pins_configured=list(spec.spki_pins), cert_hashes=list(spec.cert_hashes),
        stamp_props=list(spec.stamp_props), path=path_text(spec, config),
    )  # fmt: skip
    if spec.needs_bootstrap:
        # by hostname: the address from the bootstrap resolvers; the name is still checked
        try:
            report.address = await endpoint_for(spec, config).address()
        except UpstreamError as exc:
            report.fail(exc)
            return report
        spec = replace(spec, address=report.address)
    if spec.transport in ("quic", "h3"):
        await _check_quic(report, spec, config, timeout)
    else:
        if spec.transport in ("tls", "https"):
            await _probe_tls(report, spec, config, timeout)
        if report.kind is None:
            await _run_query(report, spec, config, timeout, None)
    report.usable = report.kind is None
    return report


# --- TLS (DoT, DoH over h2) -------------------------------------------------------------------


async def _handshake(
    spec: UpstreamSpec, config: Config, context: ssl.SSLContext, timeout: float
) -> tuple[asyncio.BaseTransport, float]:
    started = time.perf_counter()
    connecting = open_stream(
        spec, config, spec.address, spec.port, asyncio.Protocol, ssl_context=context,
        server_hostname=server_hostname(spec), timeout=timeout,
    )  # fmt: skip
    transport, _ = await asyncio.wait_for(connecting, timeout)
    return transport, (time.perf_counter() - started) * 1000


async def _probe_tls(
    report: UpstreamReport, spec: UpstreamSpec, config: Config, timeout: float
) -> None:
    alpn = ["h2"] if spec.transport == "https" else None
    try:
        context = ClientContexts(spec, config, alpn).get()
    except TLSConfigError as exc:  # the CA file broke after the configuration was read
        report.fail(exc)
        return
    try:
        transport, report.handshake_ms = await _handshake(spec, config, context, timeout)
    except TimeoutError:
        report.fail(UpstreamTimeoutError(f"{spec.label}: TLS handshake timed out ({timeout} s)"))
        return
    except UpstreamError as exc:  # the proxy's part (transports/proxy.py)
        report.fail(exc)
        return
    except OSError as exc:
        error = connect_error(spec.label, exc)
        report.fail(error)
        if isinstance(error, CertificateError):
            await _read_unverified(report, spec, config, alpn, timeout)
        return
    try:
        _read_session(report, spec, transport.get_extra_info("ssl_object"))
    finally:
        transport.close()


def _read_session(report: UpstreamReport, spec: UpstreamSpec, ssl_object: ssl.SSLObject) -> None:
    report.tls_version = ssl_object.version()
    report.alpn = ssl_object.selected_alpn_protocol()
    cipher = ssl_object.cipher()
    report.cipher = cipher[0] if cipher else None
    der = ssl_object.getpeercert(binary_form=True)
    if der is None:
        return
    _set_certificate(report, spec, der, "verified")
    report.chain = [certificate_facts(c) for c in verified_chain(ssl_object)] or [
        certificate_facts(der)
    ]
    if spec.transport == "https" and report.alpn != "h2":
        report.fail(ALPNMismatchError(f"{spec.label}: server does not speak HTTP/2"))
    if spec.spki_pins:
        try:
            check_pins(replace(spec, cert_hashes=()), der)
            report.pins_matched = True
        except PinMismatchError as exc:
            report.pins_matched = False
            report.fail(exc)
    if spec.cert_hashes:
        try:
            check_pins(replace(spec, spki_pins=()), der, verified_chain(ssl_object))
            report.cert_hashes_matched = True
        except PinMismatchError as exc:
            report.cert_hashes_matched = False
            report.fail(exc)


async def _read_unverified(
    report: UpstreamReport,
    spec: UpstreamSpec,
    config: Config,
    alpn: list[str] | None,
    timeout: float,
) -> None:
    """A second handshake, NOT verified, only to show which certificate the server presents."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if alpn:
        context.set_alpn_protocols(alpn)
    try:
        transport, _ = await _handshake(spec, config, context, timeout)
    except (OSError, TimeoutError, UpstreamError):
        return
    try:
        der = transport.get_extra_info("ssl_object").getpeercert(binary_form=True)
        if der is not None:
            _set_certificate(report, spec, der, "unverified")
    finally:
        transport.close()


# --- QUIC (DoQ, DoH over h3) ------------------------------------------------------------------


async def _check_quic(
    report: UpstreamReport, spec: UpstreamSpec, config: Config, timeout: float
) -> None:
    from stubby_py.transports.quic import QuicTransport  # aioquic only when QUIC is checked

    transport = make_transport(spec, config)
    assert isinstance(transport, QuicTransport)
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    try:
        # the transport's own connect step: handshake, certificate, name and pins checked
        connection = await transport._connected(loop.time() + timeout)
    except UpstreamError as exc:
        report.fail(exc)
        await transport.aclose()
        return
    report.handshake_ms = (time.perf_counter() - started) * 1000
    report.tls_version = "TLSv1.3"
    report.alpn = connection.alpn
    der = connection.peer_certificate()
    if der is not None:
        _set_certificate(report, spec, der, "verified")
        report.chain = [certificate_facts(der)]
    report.pins_matched = True if spec.spki_pins else None
    report.cert_hashes_matched = True if spec.cert_hashes else None
    await _run_query(report, spec, config, timeout, transport)


# --- the test query ---------------------------------------------------------------------------


async def _run_query(
    report: UpstreamReport,
    spec: UpstreamSpec,
    config: Config,
    timeout: float,
    transport: Any,
) -> None:
    result = QueryResult(QUERY_NAME, QUERY_TYPE)
    report.query = result
    pad = (
        config.transport.padding_block
        if spec.is_encrypted and config.transport.padding_block
        else 0
    )
    query = dns.message.make_query(QUERY_NAME, QUERY_TYPE, use_edns=0, pad=pad, want_dnssec=True)
    query.flags |= dns.flags.CD
    query.id = 0
    if transport is None:
        transport = make_transport(spec, config)
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    try:
        wire = await transport.exchange(query.to_wire(), loop.time() + timeout)
        result.ms = (time.perf_counter() - started) * 1000
        reply = dns.message.from_wire(wire)
        result.rcode = dns.rcode.to_text(reply.rcode())
        result.answers = [
            rr.to_text()
            for rrset in reply.answer
            if rrset.rdtype != dns.rdatatype.RRSIG
            for rr in rrset.to_rdataset()
        ]
        result.dnssec = any(rrset.rdtype == dns.rdatatype.RRSIG for rrset in reply.answer)
    except UpstreamError as exc:
        result.error = str(exc.args[0]) if exc.args else exc.kind
        result.kind = exc.kind
        report.fail(exc)
    finally:
        await transport.aclose()


# --- certificates -----------------------------------------------------------------------------


def certificate_facts(der: bytes) -> CertificateFacts:
    cert = x509.load_der_x509_certificate(der)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns_names = [str(n) for n in san.get_values_for_type(x509.DNSName)]
        ips = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        dns_names, ips = [], []
    not_after = cert.not_valid_after_utc
    return CertificateFacts(
        subject=cert.subject.rfc4514_string(), issuer=cert.issuer.rfc4514_string(),
        san_dns=dns_names, san_ip=ips, not_before=cert.not_valid_before_utc.isoformat(),
        not_after=not_after.isoformat(), expired=not_after < datetime.now(UTC),
        spki_pin=spki_pin(der),
    )  # fmt: skip


def _set_certificate(report: UpstreamReport, spec: UpstreamSpec, der: bytes, source: str) -> None:
    report.certificate = certificate_facts(der)
    report.certificate_source = source
    report.name_matched = name_matches(report.certificate, server_hostname(spec))
    if spec.spki_pins and report.pins_matched is None:
        report.pins_matched = report.certificate.spki_pin in spec.spki_pins


def name_matches(facts: CertificateFacts, name: str) -> bool:
    """RFC 6125 as OpenSSL applies it: an IP against the IP SANs; a name against the DNS SANs,
    a wildcard standing for exactly the leftmost label."""
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        pass
    else:
        return any(ipaddress.ip_address(ip) == address for ip in facts.san_ip)
    wanted = name.lower().rstrip(".")
    parent = wanted.partition(".")[2]
    for pattern in (p.lower().rstrip(".") for p in facts.san_dns):
        if pattern == wanted or (pattern.startswith("*.") and parent and pattern[2:] == parent):
            return True
    return False


# --- output -----------------------------------------------------------------------------------


def to_json(reports: list[UpstreamReport]) -> dict[str, Any]:
    return {
        "usable": all(r.usable for r in reports),
        "upstreams": [asdict(r) for r in reports],
    }


def format_table(reports: list[UpstreamReport]) -> str:
    return "".join(_format_one(r) for r in reports)


def _format_one(r: UpstreamReport) -> str:
    status = "OK" if r.usable else f"UNUSABLE  {r.kind}"
    lines = [f"{r.url}  [{r.group}]  {status}"]
    if r.path != "direct":
        lines.append(f"  path         {r.path}")
    if r.error:
        lines.append(f"  error        {r.error}")
    if r.stamp_props:
        lines.append(f"  stamp says   {', '.join(r.stamp_props)} (informal, not checked)")
    if r.tls_version or r.handshake_ms is not None:
        lines.append(
            f"  tls          {r.tls_version or '?'}, ALPN {r.alpn or '-'}, "
            f"{r.cipher or 'cipher ?'}, handshake {_ms(r.handshake_ms)}"
        )
    if r.certificate is not None:
        lines.extend(_certificate_lines(r, r.certificate))
    if r.query is not None:
        lines.append(f"  query        {_query_text(r.query)}")
        if r.query.dnssec is not None:
            lines.append(f"  dnssec       {_dnssec_text(r.query.dnssec)}")
    return "\n".join(lines) + "\n\n"


def _certificate_lines(r: UpstreamReport, c: CertificateFacts) -> list[str]:
    unverified = "  (UNVERIFIED: read by a second handshake)" if r.certificate_source else ""
    if r.certificate_source == "verified":
        unverified = ""
    sans = ", ".join(c.san_dns + c.san_ip) or "none"
    matched = "matches" if r.name_matched else "does NOT match"
    lines = [
        f"  certificate  {c.subject}{unverified}",
        f"  names        {sans}; {r.auth_name or r.address} {matched}",
        f"  expires      {c.not_after}{'  EXPIRED' if c.expired else ''}",
        f"  pin          {c.spki_pin}  (leaf, base64 SHA-256 of the SPKI)",
    ]
    for index, link in enumerate(r.chain[1:], 1):
        lines.append(f"  chain[{index}]     {link.spki_pin}  {link.subject}")
    if r.pins_configured:
        state = "matched" if r.pins_matched else "NOT matched"
        lines.append(f"  pins         {len(r.pins_configured)} configured, {state}")
    if r.cert_hashes:
        state = "one in the chain" if r.cert_hashes_matched else "NONE in the chain"
        lines.append(f"  stamp hashes {len(r.cert_hashes)} (SHA-256 of a TBS certificate), {state}")
    return lines


def _query_text(q: QueryResult) -> str:
    if q.error:
        return f"{q.name} {q.type}: failed: {q.kind}"
    shown = "; ".join(q.answers[:3]) + (" ..." if len(q.answers) > 3 else "")
    return f"{q.name} {q.type}: {q.rcode}, {len(q.answers)} answers, {_ms(q.ms)}" + (
        f": {shown}" if shown else ""
    )


def _dnssec_text(signed: bool) -> str:
    if signed:
        return "RRSIGs returned with DO: answers through it can be validated"
    return (
        "NO RRSIG for the signed root NS with DO set: this upstream strips DNSSEC data, "
        "and with `dnssec: validate` answers through it will fail validation"
    )


def _ms(value: float | None) -> str:
    return "?" if value is None else f"{value:.1f} ms"


def run(config: Config, timeout: float, output: str) -> int:
    """Check every upstream, print the report; 0 when all are usable, 1 otherwise."""
    # the transports log each connect failure as a warning: the report says it once, better
    logging.getLogger("stubby_py").setLevel(logging.ERROR)
    reports = asyncio.run(check_all(config, timeout))
    if output == "json":
        import json

        print(json.dumps(to_json(reports), indent=2))
    else:
        sys.stdout.write(format_table(reports))
        usable = sum(r.usable for r in reports)
        print(f"{usable} of {len(reports)} upstreams usable")
    return 0 if reports and all(r.usable for r in reports) else 1
