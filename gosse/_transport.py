"""Every access gosse makes to private attributes of urllib3 and http.client.

The client reads a streaming ``requests`` response without ``iter_content``
(which waits for a full block on unchunked bodies) and, on identity-encoded
chunked bodies, undoes the chunked framing itself: that buys about 2x CPU when
a server writes one chunk per event.  Doing so needs urllib3's ``_fp`` (the
``http.client.HTTPResponse``), its ``chunked`` / ``chunk_left`` / ``fp`` and,
to close promptly, the socket under it.  All of that lives here, behind
:data:`FAST_PATH`, a version guard: on a urllib3 line this module was not
written for (or if an attribute is missing) only public APIs are used
(``HTTPResponse.read1`` of urllib3 2.3+, ``read_chunked``, ``stream``), slower
but correct; close() then interrupts a read with ``HTTPResponse.shutdown()``
(urllib3 2.3+) or waits for the next byte or ``read_timeout``.

Routes (``path``): ``fast-chunked`` (identity + chunked: :class:`_ChunkedBody`),
``public-read1`` (urllib3 2.3+, other bodies, decoding included),
``private-read1`` / ``private-decoder`` (urllib3 1.26-2.2: http.client's
``read1``, plus urllib3's decoder for gzip/deflate), ``public-chunked`` /
``public-stream`` (unknown urllib3 without ``read1``).

:func:`body_reader` returns ``(path, read)``; tests assert which ``path`` each
urllib3 line takes.
"""
from __future__ import annotations

import http.client
import re
import socket
from typing import Any, Callable, Iterator, List, Optional, Tuple

import urllib3


def _version(text: str) -> Tuple[int, int]:
    try:
        major, minor = text.split(".")[:2]
        return int(major), int(minor)
    except ValueError:
        return (0, 0)


# (urllib3 does not list __version__ in its exports, but every release has it.)
URLLIB3_VERSION = _version(urllib3.__version__)  # type: ignore[attr-defined]
#: The urllib3 lines whose private attributes this module knows.
FAST_PATH = (1, 26) <= URLLIB3_VERSION < (3, 0)

READ_SIZE = 65536
# Bytes taken from the connection per read when gosse undoes the chunked
# framing itself: large, so that a fast stream is parsed and handed to
# subscribers in few, large batches (a read returns only what has arrived).
BODY_READ_SIZE = 262144
_MAX_CHUNK_LINE = 4096
# RFC 9112 allows any number of leading zeros; the value itself is bounded.
_HEX = re.compile(rb"0*([0-9A-Fa-f]{1,16})")


def _http_client_response(raw: Any) -> Optional[http.client.HTTPResponse]:
    fp = getattr(raw, "_fp", None)
    if (FAST_PATH and isinstance(fp, http.client.HTTPResponse)
            and hasattr(fp, "chunk_left") and hasattr(fp, "chunked")):
        return fp
    return None


def socket_of(raw: Any) -> Optional[socket.socket]:
    """The OS socket under a streaming urllib3 response, if it can be found.

    Through an ``https://`` proxy to an ``https://`` URL (TLS inside TLS) the
    connection's ``sock`` is urllib3's ``SSLTransport``, whose ``socket`` is
    the TLS socket to the proxy: that one is shut down to end a read.
    """
    if not FAST_PATH:
        return None
    sock = getattr(getattr(raw, "_connection", None), "sock", None)
    if sock is None:  # through http.client: HTTPResponse.fp is sock.makefile()
        fp = getattr(getattr(raw, "_fp", None), "fp", None)
        sock = getattr(getattr(fp, "raw", None), "_sock", None)
    for _ in range(4):   # SSLTransport wraps a socket (maybe another transport)
        if sock is None or isinstance(sock, socket.socket):
            break
        sock = getattr(sock, "socket", None)
    return sock if isinstance(sock, socket.socket) else None


def discard_connection(raw: Any) -> None:
    """Close the connection of a response that will not be read to its end,
    without handing it back to the pool (a stream's connection cannot be
    reused, and a full pool logs a warning for each one returned)."""
    if FAST_PATH:
        conn = getattr(raw, "_connection", None)
        pool = getattr(raw, "_pool", None)
        if conn is not None:
            raw._connection = None
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass
            # Give the pool its slot back (matters for block=True pools).
            slots = getattr(pool, "pool", None)
            if slots is not None:
                try:
                    slots.put(None, block=False)
                except Exception:  # noqa: BLE001 - queue.Full: nothing owed
                    pass
    try:
        raw.close()
    except Exception:  # noqa: BLE001
        pass
    try:
        raw.release_conn()
    except Exception:  # noqa: BLE001
        pass


def body_reader(raw: Any) -> Tuple[str, Callable[[], bytes]]:
    """``(path, read)``: ``read()`` returns the (decoded) body bytes that have
    arrived, at least one byte, or ``b""`` at the end.  ``path`` names the
    route taken (see the module docstring)."""
    encoding = (raw.headers.get("Content-Encoding") or "identity").strip().lower()
    fp = _http_client_response(raw)
    if fp is not None and fp.fp is not None:
        if encoding == "identity" and fp.chunked and fp.chunk_left is None:
            return "fast-chunked", _ChunkedBody(fp.fp).read
        if not hasattr(raw, "read1"):     # urllib3 < 2.3
            if encoding == "identity" and not fp.chunked:
                return "private-read1", lambda: fp.read1(READ_SIZE)
            if encoding != "identity":
                return "private-decoder", _legacy_decoder(raw, fp)
    if hasattr(raw, "read1"):   # urllib3 >= 2.3: also undoes content encoding
        return "public-read1", lambda: raw.read1(READ_SIZE, decode_content=True)
    chunked = "chunked" in (raw.headers.get("Transfer-Encoding") or "").lower()
    if chunked and hasattr(raw, "read_chunked"):
        chunks = raw.read_chunked(None, decode_content=True)
        return "public-chunked", lambda: _next_nonempty(chunks)
    pieces = raw.stream(1, decode_content=True)
    return "public-stream", lambda: _next_nonempty(pieces)


def _next_nonempty(pieces: Iterator[bytes]) -> bytes:
    for piece in pieces:
        if piece:
            return piece
    return b""


def _legacy_decoder(raw: Any, fp: http.client.HTTPResponse) -> Callable[[], bytes]:
    """urllib3 without ``read1``: http.client's ``read1``, then urllib3's
    gzip/deflate decoder.  A network read that decodes to nothing (a gzip
    header on its own) is not the end: read on."""
    raw._init_decoder()

    def read() -> bytes:
        while True:
            data = fp.read1(READ_SIZE)
            decoder = raw._decoder
            if decoder is None:
                return data
            decoded: bytes = raw._decode(data, True, not data)
            if decoded or not data:
                return decoded
    return read


class _ChunkedBody:
    """Reads an identity-encoded, chunked HTTP/1.1 response body straight from
    the connection's buffered reader, undoing the chunked framing itself.

    http.client's ``read1`` returns at most the rest of one HTTP chunk per
    call, through several Python calls per chunk; a server that writes many
    small chunks then costs the reader one parse and one subscriber wake-up
    per chunk.  This reads everything that has arrived (up to
    ``BODY_READ_SIZE``) in one call and hands it on in one piece.
    """

    def __init__(self, fp: Any):
        self._read1 = fp.read1
        self._left = 0            # bytes left of the current chunk
        self._line = b""          # an unfinished chunk-size line
        self._need_crlf = False   # the line end after a chunk's data is next
        self._done = False
        self._failure: Optional[Exception] = None

    def read(self) -> bytes:
        if self._failure is not None:
            raise self._failure
        while not self._done:
            data = self._read1(BODY_READ_SIZE)
            if not data:
                raise http.client.IncompleteRead(b"", self._left or None)
            body = self._unchunk(data)
            if body:
                return body
        return b""

    def _unchunk(self, data: bytes) -> bytes:
        if self._line:
            data = self._line + data
            self._line = b""
        pieces: List[Tuple[int, int]] = []
        try:
            self._left = self._split(data, pieces)
        except http.client.HTTPException as exc:
            if not pieces:
                raise
            self._failure = exc   # hand on the good bytes first
        if not pieces:
            return b""
        if len(pieces) == 1:
            start, stop = pieces[0]
            return data if start == 0 and stop == len(data) else data[start:stop]
        view = memoryview(data)
        return b"".join([view[start:stop] for start, stop in pieces])

    def _split(self, data: bytes, pieces: List[Tuple[int, int]]) -> int:
        """Append the (start, stop) spans of chunk data in ``data`` to
        ``pieces``; return the bytes left of the current chunk."""
        pos = 0
        end = len(data)
        left = self._left
        while pos < end:
            if left:
                stop = min(pos + left, end)
                pieces.append((pos, stop))
                left -= stop - pos
                pos = stop
                if left:
                    break
                self._need_crlf = True
                continue
            nl = data.find(b"\n", pos)
            if nl < 0:
                self._line = data[pos:]
                if len(self._line) > _MAX_CHUNK_LINE:
                    raise http.client.HTTPException("chunk size line too long")
                break
            line = data[pos:nl].rstrip(b"\r")
            pos = nl + 1
            if self._need_crlf:
                if line:
                    raise http.client.HTTPException(f"no line end after chunk data: {line[:40]!r}")
                self._need_crlf = False
                continue
            match = _HEX.fullmatch(line.split(b";", 1)[0].strip())
            if match is None:
                raise http.client.HTTPException(f"invalid chunk size line {line[:40]!r}")
            left = int(match.group(1), 16)
            if not left:    # the last chunk; trailers, if any, are not read
                self._done = True
                break
        return left
