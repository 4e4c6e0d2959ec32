"""Which body-reading route (gosse/_transport.py) each urllib3 line takes,
that every route delivers the same events, and compressed streams whose
first network read decodes to nothing (issue 13: the fast path's hygiene,
defect 14).  CI runs this file on urllib3 1.26 and 2.x (.ci/client-matrix.sh).
"""
import zlib

import pytest
import urllib3

from gosse import _transport
from gosse.client import connect_with_sse_feed
from rawserver import RawServer, sse

pytestmark = pytest.mark.timeout(60)

V = _transport.URLLIB3_VERSION
HAS_READ1 = hasattr(urllib3.HTTPResponse, "read1")
EVENTS = b"".join(b"id: %d\ndata: event %d\n\n" % (i, i) for i in range(5))


def gzip_stream(header_alone=True, wbits=31):
    """A handler writing a gzip (or deflate) stream the way Django's
    GZipMiddleware does for streaming responses: the gzip header as its own
    write, then one flushed compressed piece per event."""
    def handler(conn):
        name = "gzip" if wbits == 31 else "deflate"
        conn.start(chunked=True, headers={"Content-Encoding": name})
        compressor = zlib.compressobj(6, zlib.DEFLATED, wbits)
        pieces = [compressor.compress(b"")]
        for i in range(5):
            pieces.append(compressor.compress(b"id: %d\ndata: event %d\n\n" % (i, i))
                          + compressor.flush(zlib.Z_SYNC_FLUSH))
        first = b"".join(pieces[:1]) + compressor.flush(zlib.Z_SYNC_FLUSH) \
            if header_alone else b""
        if header_alone:
            conn.write(first)             # decodes to b"" on its own
            for piece in pieces[1:]:
                conn.write(piece)
        else:
            conn.write(b"".join(pieces))
        conn.hold()
    return handler


def expected_path(kind):
    if kind == "gzip":
        return "decoded-read1" if HAS_READ1 else "decoded-legacy"
    return {"chunked": "chunked-fast", "close-delimited": "identity-read1",
            "content-length": "identity-read1"}[kind]


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
        # close() still returns promptly without the socket (raw.shutdown).
        assert not feed._thread.is_alive(), started


@pytest.mark.parametrize("wbits", [31, 15], ids=["gzip", "deflate"])
def test_a_compressed_stream_whose_first_read_decodes_to_nothing(wbits):
    with RawServer(gzip_stream(header_alone=True, wbits=wbits)) as server:
        with connect_with_sse_feed(server.url(), reconnect=False) as feed:
            sub = feed.subscribe()
            got = [sub.get(timeout=5).data for _ in range(5)]
            assert got == [f"event {i}" for i in range(5)]
            assert feed.error is None and not sub.closed
