"""`stubby-py bench --html FILE`: the page is well-formed XML-compatible HTML with no external
resource, escapes what it shows, draws every phase the results carry (a `resumed` one included),
and a real run against loopback upstreams renders in headless Chromium with its SVG charts and a
row for every upstream."""

from __future__ import annotations

import html.parser
import re
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
import trustme

from stubby_py.commands import bench_html, cli
from stubby_py.core.benchstats import PHASES, Tally, UpstreamResult
from tests.conftest import dot_uri, server_context
from tests.peers import require_tool
from tests.servers import LocalUpstream, doq_server, local_upstream, write_cert_files

pytestmark = pytest.mark.timeout(90)
Capture = pytest.CaptureFixture[str]

WHERE = bench_html.Where(
    "laptop", "2026-12-07 06:00:00 UTC", "0.1.0", "default route via 10.0.0.1 on wlan0"
)
#: attributes that would make a browser fetch something
FETCHING = {"src", "href", "xlink:href", "srcset", "poster", "data", "action", "formaction"}


def _resources(root: ET.Element) -> list[str]:
    found = []
    for element in root.iter():
        tag = element.tag.lower()
        if tag in ("script", "link", "img", "iframe", "object", "embed", "image", "use", "base"):
            found.append(f"<{tag}>")
        found += [
            f"{tag} {name}={value}"
            for name, value in element.attrib.items()
            if name.lower() in FETCHING
        ]
    return found


def check_self_contained(page: str) -> ET.Element:
    """Parse the page as XML (well-formed: every element closed, attributes quoted) and check
    that nothing in it would be fetched."""
    root = ET.fromstring(page)
    assert _resources(root) == []
    styles = " ".join(e.text or "" for e in root.iter("style")) + " ".join(
        e.attrib.get("style", "") for e in root.iter()
    )
    assert "url(" not in styles and "@import" not in styles
    # no http(s) reference in any attribute (upstream URLs appear only as text and data-*)
    for element in root.iter():
        for name, value in element.attrib.items():
            assert not (re.match(r"\s*(https?:)?//", value) and not name.startswith("data-")), (
                name,
                value,
            )
    return root


def _result(name: str, transport: str, **phases: list[float]) -> UpstreamResult:
    return UpstreamResult(
        name,
        transport,
        {p: Tally(latencies=[v / 1000 for v in values]) for p, values in phases.items()},
    )


def test_page_is_well_formed_self_contained_and_escaped() -> None:
    hostile = 'tls://127.0.0.1:853#<script>alert("x")</script>'
    dead = _result("quic://192.0.2.9:853#dead.test", "doq", cached=[])
    dead.tallies["cached"].fail("timeout")
    dead.tallies["cached"].fail("connect-failed")
    results = [
        _result(
            hostile, "dot", cached=[30.0, 31.0, 35.0], handshake=[12.0, 14.0], resumed=[4.0, 5.0]
        ),
        _result(
            "https://127.0.0.1:4443/dns-query", "doh", cached=[5.0, 6.0, 9.0], handshake=[0.0, 8.0]
        ),
        dead,
    ]
    page = bench_html.render(results, {"zone": "example.com", "stopped_by": None}, WHERE)
    root = check_self_contained(page)
    assert "<script>" not in page and "&lt;script&gt;" in page
    charts = [e for e in root.iter("svg")]
    assert [c.attrib["data-phase"] for c in charts] == ["cached", "handshake", "resumed"]
    rows = {
        (r.attrib["data-upstream"], r.attrib["data-phase"])
        for r in root.iter("tr")
        if "data-upstream" in r.attrib
    }
    assert (hostile, "resumed") in rows  # the table has every phase benchstats knows
    assert (hostile, "cached") in rows and ("quic://192.0.2.9:853#dead.test", "cached") in rows
    text = "".join(root.itertext())
    assert "no answer (1 timeouts, 1 errors)" in text and "connect-failed 1" in text
    for shown in (
        "laptop",
        "2026-12-07 06:00:00 UTC",
        "default route via 10.0.0.1 on wlan0",
        "example.com",
    ):
        assert shown in text
    # fastest first in every chart
    first_rows = [
        g.attrib["data-upstream"] for g in charts[0].iter("g") if g.attrib.get("class") == "row"
    ]
    assert first_rows[0] == "https://127.0.0.1:4443/dns-query"
    assert "Fastest for cached names" in text


def test_default_route_is_read_from_proc_net_route() -> None:
    table = (
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\n"
        "wlan0\t0000A8C0\t00000000\t0001\t0\t0\t600\t00FFFFFF\n"
        "wlan0\t00000000\t0100A8C0\t0003\t0\t0\t600\t00000000\n"
    )
    assert bench_html.default_route(table) == "default route via 192.168.0.1 on wlan0"
    assert bench_html.default_route(table.splitlines()[0]) is None


# --- a real run, opened in Chromium ---------------------------------------------------------------


@pytest.fixture
def upstreams(ca: trustme.CA, tmp_path: Path) -> Iterator[list[str]]:
    cert, key = write_cert_files(ca, str(tmp_path), "dns.test", "127.0.0.1")
    with ExitStack() as stack:
        dot: list[LocalUpstream] = [
            stack.enter_context(local_upstream(server_context(ca))) for _ in range(2)
        ]
        doq = stack.enter_context(doq_server(cert, key))
        dot[0].state.delay, dot[1].state.delay, doq.state.delay = 0.020, 0.005, 0.010
        yield [dot_uri(dot[0]), dot_uri(dot[1]), f"quic://127.0.0.1:{doq.port}#dns.test"]


def chromium_dom(page: Path, profile: Path) -> str:
    """The DOM headless Chromium builds from `page`, with everything that could reach the
    network off: no background services, a dead proxy and a resolver that resolves nothing."""
    chromium = require_tool("chromium")
    command = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", "--proxy-server=socks5://127.0.0.1:9",
        "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={profile}", "--dump-dom",
        page.as_uri(),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


class _DomReader(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.charts: list[str] = []
        self.rows: list[tuple[str, str]] = []
        self.circles = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "svg" and found.get("class") == "chart":
            self.charts.append(str(found.get("data-phase")))
        elif tag == "tr" and "data-upstream" in found:
            self.rows.append((str(found["data-upstream"]), str(found.get("data-phase"))))
        elif tag == "circle":
            self.circles += 1


def test_real_run_report_opens_in_headless_chromium(
    upstreams: list[str], ca_file: str, tmp_path: Path, capsys: Capture
) -> None:
    report = tmp_path / "report.html"
    names = tmp_path / "names.txt"
    names.write_text("www.example.\nexample.org\n")
    args = [
        "bench",
        "--ca-file",
        ca_file,
        "--names",
        str(names),
        "--queries",
        "5",
        "--html",
        str(report),
    ]
    code = cli.main([*args, *(a for uri in upstreams for a in ("--upstream", uri))])
    _, err = capsys.readouterr()
    assert code == 0, err
    assert f"report written to {report}" in err
    page = report.read_text(encoding="utf-8")
    root = check_self_contained(page)
    assert len(list(root.iter("svg"))) == len(PHASES)
    dom = chromium_dom(report, tmp_path / "chromium-profile")
    reader = _DomReader()
    reader.feed(dom)
    assert reader.charts == list(PHASES)  # resumed and dnssec included
    for uri in upstreams:
        assert {(uri, phase) for phase in reader.charts} <= set(reader.rows)
    # every answer is a dot (however many a loaded machine let through in time)
    records = [r for r in root.iter("tr") if "data-upstream" in r.attrib]
    answered = sum(int(list(r.iter("td"))[4].text or 0) for r in records)
    assert answered > 0 and reader.circles == answered
    # the charts' rows come in the table's order: ranked
    ranked = list(dict.fromkeys(r.attrib["data-upstream"] for r in records))
    chart_rows = re.findall(r'<g class="row" data-upstream="([^"]+)" data-phase="cached"', dom)
    assert chart_rows == ranked


def test_unwritable_report_is_a_clear_error(
    plain_upstream: LocalUpstream, tmp_path: Path, capsys: Capture
) -> None:
    names = tmp_path / "names.txt"
    names.write_text("www.example.\n")
    report = tmp_path / "missing" / "report.html"
    udp = f"udp://127.0.0.1:{plain_upstream.port}"
    args = ["bench", "--upstream", udp, "--names", str(names), "--queries", "2"]
    code = cli.main([*args, "--html", str(report)])
    out, err = capsys.readouterr()
    assert code == 2 and f"--html {report}: No such file or directory" in err
    assert udp in out  # the table was printed before
