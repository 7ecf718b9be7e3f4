"""One family of configurable local servers for tests, all answering from `answers.outcome`.

- `stream.LocalUpstream`: DNS over TLS, or TCP and UDP (RFC 7766 framing);
- `doh.H2DoHServer`: DoH over HTTP/2; `quic.H3DoHServer`: DoH over HTTP/3; `quic.DoQServer`: DoQ;
- `tamper_proxy`: a forging DNS proxy and a connection-cutting TLS relay;
- `proxies`: real SOCKS5 and HTTP CONNECT proxies (Debian packages) and a garbage "proxy".

Each server's `state` (`answers.ServerState`) takes the answers to give and one `Misbehaviour`
(or a per-query chooser), and records what the server saw.
"""

from tests.servers.answers import Outcome, ServerState, build_answer, outcome
from tests.servers.certs import server_pin, write_cert_files
from tests.servers.doh import H2DoHServer, h2_server
from tests.servers.misbehaviour import Misbehaviour
from tests.servers.quic import DoQServer, H3DoHServer, QuicServerThread, doq_server, h3_server
from tests.servers.stream import LocalUpstream, local_upstream
from tests.servers.thread import ServerThread

__all__ = [
    "DoQServer",
    "H2DoHServer",
    "H3DoHServer",
    "LocalUpstream",
    "Misbehaviour",
    "Outcome",
    "QuicServerThread",
    "ServerState",
    "ServerThread",
    "build_answer",
    "doq_server",
    "h2_server",
    "h3_server",
    "local_upstream",
    "outcome",
    "server_pin",
    "write_cert_files",
]
