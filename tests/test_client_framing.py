"""The feed's own HTTP/1.1 chunked body reader (gosse._transport._ChunkedBody):
chunked framing undone across read boundaries, malformed framing treated as a
broken connection; Content-Length and unframed bodies over a socket.

The first tests drive the reader with scripted read results (the boundaries
of what one socket read returns are the input here, like the parser's
chunk splits); the rest go through a real socket with the raw server.
"""
import http.client
import io

import pytest

from gosse import FeedConnectionError
from gosse._transport import _ChunkedBody
from gosse.client import connect_with_sse_feed
from rawserver import RawServer

pytestmark = pytest.mark.timeout(60)


class Reads:
    """A stand-in for the connection's buffered reader: each read1() call
    returns the next scripted piece (never more than asked for)."""

    def __init__(self, pieces):
        self.pieces = [p for p in pieces if p]
        self.asked = []

    def read1(self, size):
        self.asked.append(size)
        if not self.pieces:
            return b""
        piece = self.pieces[0]
        if len(piece) > size:
            self.pieces[0] = piece[size:]
            return piece[:size]
        self.pieces.pop(0)
        return piece


def read_all(body):
    out = []
    while True:
        data = body.read()
        if not data:
            return b"".join(out)
        assert isinstance(data, (bytes, bytearray))
        out.append(bytes(data))


def frame(*chunks, last=b"0\r\n\r\n"):
    return b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + last


PAYLOADS = [b"data: a\n\n", b"x" * 300, b"\r\n\r\n", b"0\r\n", b"id: 1\ndata: \xc3\xa9\n\n"]


def test_chunked_whole_and_split_at_every_position():
    wire = frame(*PAYLOADS)
    expected = b"".join(PAYLOADS)
    assert read_all(_ChunkedBody(Reads([wire]))) == expected
    for cut in range(1, len(wire)):
        reads = Reads([wire[:cut], wire[cut:]])
        assert read_all(_ChunkedBody(reads)) == expected, cut


def test_chunked_byte_by_byte():
    wire = frame(*PAYLOADS)
    reads = Reads([wire[i:i + 1] for i in range(len(wire))])
    assert read_all(_ChunkedBody(reads)) == b"".join(PAYLOADS)


def test_many_chunks_in_one_read_come_out_as_one_piece():
    wire = frame(*[b"data: %d\n\n" % i for i in range(100)])
    body = _ChunkedBody(Reads([wire]))
    first = body.read()
    assert first == b"".join(b"data: %d\n\n" % i for i in range(100))
    assert body.read() == b""


def test_chunk_extensions_bare_lf_hex_case_and_trailers():
    wire = (b"A;name=value\r\n0123456789\r\n"      # extension, upper-case hex
            b"00005\n12345\n"                       # leading zeros, LF-only framing
            b"0\r\nX-Trailer: yes\r\n\r\n")
    reads = Reads([wire, b"never read"])
    assert read_all(_ChunkedBody(reads)) == b"012345678912345"
    assert reads.pieces == [b"never read"]           # stopped at the last chunk


@pytest.mark.parametrize("wire", [
    b"zz\r\ndata\r\n",            # not hex
    b"0x5\r\nhello\r\n",          # int() would accept this prefix; HTTP does not
    b"1_0\r\n",                   # nor this underscore
    b"-5\r\nhello\r\n",
    b"\r\n",                      # empty size line
    b"5\r\nhelloXX0\r\n\r\n",     # no line end after the chunk data
], ids=["not-hex", "0x-prefix", "underscore", "negative", "empty", "no-crlf-after-data"])
def test_malformed_framing_is_an_http_error(wire):
    body = _ChunkedBody(Reads([wire]))
    with pytest.raises(http.client.HTTPException):
        read_all(body)


def test_data_before_malformed_framing_is_handed_on_first():
    body = _ChunkedBody(Reads([frame(b"data: a\n\n", last=b"zz\r\n")]))
    assert body.read() == b"data: a\n\n"
    with pytest.raises(http.client.HTTPException, match="invalid chunk size"):
        body.read()


def test_endless_chunk_size_line_is_refused():
    body = _ChunkedBody(Reads([b"1" * 3000, b"2" * 3000]))
    with pytest.raises(http.client.HTTPException, match="too long"):
        read_all(body)


@pytest.mark.parametrize("wire", [frame(b"data: a\n\n", last=b""), b"5\r\nab"],
                         ids=["no-last-chunk", "inside-a-chunk"])
def test_eof_before_the_last_chunk_is_incomplete(wire):
    body = _ChunkedBody(Reads([wire]))
    with pytest.raises(http.client.IncompleteRead):
        read_all(body)


def test_chunk_size_with_many_leading_zeros_is_valid():
    # RFC 9112: chunk-size = 1*HEXDIG; leading zeros are not bounded.
    wire = b"0" * 40 + b"9\r\ndata: a\n\n\r\n" + b"0" * 20 + b"\r\n\r\n"
    assert read_all(_ChunkedBody(Reads([wire]))) == b"data: a\n\n"


def test_reads_from_a_real_buffered_reader():
    wire = frame(*PAYLOADS)
    reader = io.BufferedReader(io.BytesIO(wire), buffer_size=7)
    assert read_all(_ChunkedBody(reader)) == b"".join(PAYLOADS)


# -- through a real socket -----------------------------------------------------------

def test_odd_but_valid_framing_over_a_socket():
    def handler(conn):
        conn.start(chunked=True)
        conn.send(b"9;ext=1\r\ndata: a\n\n\r\n")
        conn.send(b"0000a\r\ndata: bb\n\n\r")       # CRLF after the data split ...
        conn.send(b"\n1")                            # ... and a size line split
        conn.send(b"5\r\n" + b"data: " + b"c" * 13 + b"\n\n" + b"\r\n")
        conn.send(frame(*[b"data: %d\n\n" % i for i in range(200)],
                        last=b"0\r\nTrailer: x\r\n\r\n"))
        conn.hold()

    with RawServer(handler) as server:
        with connect_with_sse_feed(server.url(), reconnect=False) as feed:
            sub = feed.subscribe()
            got = [e.data for e in sub]
            assert got == ["a", "bb", "c" * 13] + [str(i) for i in range(200)]
            assert feed.error is None                 # an orderly end


def test_malformed_chunk_size_breaks_the_connection_and_reconnects():
    def bad(conn):
        conn.start(chunked=True)
        conn.write(b"id: 1\ndata: one\n\n")
        conn.send(b"0x10\r\n")                        # not a chunk size
        conn.hold()

    def good(conn):
        conn.start(chunked=True)
        conn.write(b"id: 2\ndata: two\n\n")
        conn.hold()

    with RawServer([bad, good]) as server:
        with connect_with_sse_feed(server.url(), retry=10) as feed:
            sub = feed.subscribe()
            assert [sub.get(timeout=5).data for _ in range(2)] == ["one", "two"]
            assert server.requests[1].header("Last-Event-ID") == "1"

    with RawServer(bad) as server:
        with connect_with_sse_feed(server.url(), reconnect=False) as feed:
            sub = feed.subscribe()
            assert sub.get(timeout=5).data == "one"
            with pytest.raises(FeedConnectionError, match="broke"):
                sub.get(timeout=5)
            assert len(server.requests) == 1


def test_content_length_stream_over_a_socket():
    body = b"data: 1\n\ndata: 2\n\n"

    def handler(conn):
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(body) + body + b"data: not body\n\n")
        conn.hold()

    with RawServer(handler) as server:
        with connect_with_sse_feed(server.url(), reconnect=False) as feed:
            sub = feed.subscribe()
            assert [e.data for e in sub] == ["1", "2"]
            assert feed.error is None
