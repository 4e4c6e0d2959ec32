"""Which body-reading route (gosse/_transport.py) each urllib3 line takes,
and that every route delivers the same events (issue 13: the fast path's
hygiene).  CI runs this file on urllib3 1.26 and 2.x (.ci/client-matrix.sh).
"""
import pytest
import urllib3

from gosse import _transport
from gosse.client import connect_with_sse_feed
from rawserver import RawServer, sse
from test_client_compressed import gzip_stream

pytestmark = pytest.mark.timeout(60)

V = _transport.URLLIB3_VERSION
HAS_READ1 = hasattr(urllib3.HTTPResponse, "read1")
EVENTS = b"".join(b"id: %d\ndata: event %d\n\n" % (i, i) for i in range(5))


def expected_path(kind):
    """urllib3 2.3+ has a public read1(); 1.26 and 2.0-2.2 do not."""
    if kind == "chunked":
        return "fast-chunked"
    if HAS_READ1:
        return "public-read1"
    return "private-decoder" if kind == "gzip" else "private-read1"


def content_length(conn):
    conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
              b"Content-Length: %d\r\n\r\n" % len(EVENTS) + EVENTS)
    conn.hold()


HANDLERS = {"chunked": sse(EVENTS), "close-delimited": sse(EVENTS, chunked=False),
            "content-length": content_length, "gzip": gzip_stream()}


def test_the_supported_urllib3_lines_take_the_fast_path():
    assert (1, 26) <= V < (3, 0), f"urllib3 {urllib3.__version__} is not a supported line"
    assert _transport.FAST_PATH


@pytest.mark.parametrize("kind", sorted(HANDLERS))
def test_each_body_kind_takes_its_route_and_delivers_everything(kind):
    with RawServer(HANDLERS[kind]) as server:
        with connect_with_sse_feed(server.url(), reconnect=False) as feed:
            sub = feed.subscribe()
            got = [sub.get(timeout=5).data for _ in range(5)]
            assert got == [f"event {i}" for i in range(5)]
            assert feed._core.body_path == expected_path(kind), urllib3.__version__


@pytest.mark.parametrize("kind", sorted(HANDLERS))
def test_without_the_fast_path_public_routes_deliver_the_same(kind, monkeypatch):
    monkeypatch.setattr(_transport, "FAST_PATH", False)
    with RawServer(HANDLERS[kind]) as server:
        with connect_with_sse_feed(server.url(), reconnect=False) as feed:
            sub = feed.subscribe()
            got = [sub.get(timeout=5).data for _ in range(5)]
            assert got == [f"event {i}" for i in range(5)]
            assert feed._core.body_path.startswith("public-")
            started = feed._core.body_path
        # close() still returns promptly without the socket where urllib3 has
        # a public HTTPResponse.shutdown() (2.3+).
        if hasattr(urllib3.HTTPResponse, "shutdown"):
            assert not feed._thread.is_alive(), started
