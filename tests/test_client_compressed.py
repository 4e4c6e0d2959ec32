"""Compressed streams whose first network read decodes to nothing: Django's
GZipMiddleware sends the gzip header as its own write (issue 13, defect 14:
urllib3 without read1(), i.e. older than 2.3, took that empty read for the
end).  CI runs this on urllib3 1.26 too (.ci/client-matrix.sh)."""
import zlib

import pytest

from gosse.client import connect_with_sse_feed
from rawserver import RawServer

pytestmark = pytest.mark.timeout(60)


def gzip_stream(header_alone=True, wbits=31):
    """A handler writing a gzip (wbits=31) or deflate (15) stream the way
    Django's GZipMiddleware does for streaming responses: first a write that
    holds only the header (it decodes to nothing), then one flushed
    compressed piece per event."""
    def handler(conn):
        name = "gzip" if wbits == 31 else "deflate"
        conn.start(chunked=True, headers={"Content-Encoding": name})
        compressor = zlib.compressobj(6, zlib.DEFLATED, wbits)
        if header_alone:
            conn.write(compressor.flush(zlib.Z_SYNC_FLUSH))   # header + empty block
        for i in range(5):
            conn.write(compressor.compress(b"id: %d\ndata: event %d\n\n" % (i, i))
                       + compressor.flush(zlib.Z_SYNC_FLUSH))
        conn.hold()
    return handler


@pytest.mark.parametrize("wbits", [31, 15], ids=["gzip", "deflate"])
def test_a_compressed_stream_whose_first_read_decodes_to_nothing(wbits):
    with RawServer(gzip_stream(header_alone=True, wbits=wbits)) as server:
        with connect_with_sse_feed(server.url(), reconnect=False) as feed:
            sub = feed.subscribe()
            got = [sub.get(timeout=5).data for _ in range(5)]
            assert got == [f"event {i}" for i in range(5)]
            assert feed.error is None and not sub.closed
