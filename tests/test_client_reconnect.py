"""gosse.client reconnection, like a browser's EventSource: Last-Event-ID,
the server's retry, backoff, read timeouts, and the answers that end a feed."""
import threading
import time

import pytest

from gosse import FeedConnectionError, ResponseError
from gosse.client import SSEFeed, connect_with_sse_feed
from rawserver import RawServer, sse, status
from servers import wait_until as _wait

pytestmark = pytest.mark.timeout(60)


def collect(sub, n, timeout=5):
    return [sub.get(timeout=timeout) for _ in range(n)]


def test_reconnect_resumes_with_last_event_id_and_the_server_retry():
    first = sse(b"retry: 50\nid: 7\ndata: one\n\n", hold=False)
    with RawServer([first, sse(b"data: two\n\nid: 8\ndata: three\n\n")]) as server:
        with connect_with_sse_feed(server.url()) as feed:
            sub = feed.subscribe()
            start = time.monotonic()
            events = collect(sub, 3)
            assert time.monotonic() - start < 2   # 50 ms, not the default 3 s
            assert [(e.data, e.id, e.retry) for e in events] == [
                ("one", "7", 50), ("two", "7", 50), ("three", "8", 50)]
            first_request, second_request = server.requests
            assert first_request.header("Last-Event-ID") is None
            assert second_request.header("Last-Event-ID") == "7"
            assert feed.retry == 50 and feed.last_event_id == "8"


def test_reconnect_waits_the_reconnection_time():
    times = []

    def record(conn):
        times.append(time.monotonic())
        conn.start()
        conn.write(b"retry: 300\ndata: x\n\n")
        if conn.index == 0:
            conn.end()
        else:
            conn.hold()

    with RawServer(record) as server, connect_with_sse_feed(server.url()) as feed:
        sub = feed.subscribe()
        collect(sub, 2)
        gap = times[1] - times[0]
        assert 0.29 < gap < 1.5


def test_id_only_block_sets_the_last_event_id_for_reconnect():
    first = sse(b"id: 1\ndata: a\n\nid: 2\n\n", hold=False)
    with RawServer([first, sse(b"data: b\n\n")]) as server:
        with connect_with_sse_feed(server.url(), retry=20) as feed:
            sub = feed.subscribe()
            assert [(e.data, e.id) for e in collect(sub, 2)] == [("a", "1"), ("b", "2")]
            assert server.requests[1].header("Last-Event-ID") == "2"


def test_last_event_id_is_sent_as_utf8_and_persists_over_many_reconnects():
    ident = "é☃😀"
    first = sse(f"id: {ident}\ndata: a\n\n".encode(), hold=False)
    with RawServer([first, sse(b"data: b\n\n", hold=False),
                    sse(b"data: c\n\n")]) as server:
        with connect_with_sse_feed(server.url(), retry=20) as feed:
            sub = feed.subscribe()
            assert [e.data for e in collect(sub, 3)] == ["a", "b", "c"]
            raw = [r.raw_header("Last-Event-ID") for r in server.requests]
            assert raw == [None, ident.encode("utf-8"), ident.encode("utf-8")]
            assert feed.last_event_id == ident


def test_initial_last_event_id_and_retry_arguments():
    with RawServer([sse(b"data: a\n\n", hold=False), sse(b"data: b\n\n")]) as server:
        with connect_with_sse_feed(server.url(), last_event_id="41", retry=30) as feed:
            assert feed.retry == 30 and feed.last_event_id == "41"
            sub = feed.subscribe()
            assert [e.id for e in collect(sub, 2)] == ["41", "41"]
            assert [r.header("Last-Event-ID") for r in server.requests] == ["41", "41"]


def test_reconnect_after_reset_connection():
    def broken(conn):
        conn.start()
        conn.write(b"id: 5\ndata: a\n\ndata: unfinished")
        conn.abort()

    with RawServer([broken, sse(b"data: b\n\n")]) as server:
        with connect_with_sse_feed(server.url(), retry=20) as feed:
            sub = feed.subscribe()
            # The unterminated event is discarded, not glued to the next stream.
            assert [e.data for e in collect(sub, 2)] == ["a", "b"]
            assert server.requests[1].header("Last-Event-ID") == "5"


def test_connected_event_tracks_the_connection():
    release = threading.Event()

    def first(conn):
        conn.start()
        conn.write(b"retry: 100\ndata: a\n\n")
        conn.end()

    def second(conn):
        release.wait(5)
        conn.start()
        conn.write(b"data: b\n\n")
        conn.hold()

    with RawServer([first, second]) as server:
        with connect_with_sse_feed(server.url()) as feed:
            assert feed.connected.is_set()
            sub = feed.subscribe()
            sub.get(timeout=3)
            server.next_request()
            server.next_request()   # the reconnect is waiting for its answer
            assert not feed.connected.is_set()
            release.set()
            assert sub.get(timeout=3).data == "b"
            assert feed.connected.is_set()
        assert not feed.connected.is_set()


def test_204_on_reconnect_ends_the_feed():
    with RawServer([sse(b"data: 1\n\ndata: 2\n\n", hold=False), status(204, content_type=None)]
                   ) as server:
        with connect_with_sse_feed(server.url(), retry=20) as feed:
            subs = [feed.subscribe(), feed.subscribe("message"), feed.subscribe("other")]
            errors = [s.err_feed.get(timeout=3) for s in subs]
            assert all(e is errors[0] for e in errors)
            assert isinstance(errors[0], ResponseError) and errors[0].status_code == 204
            feed._thread.join(3)
            assert feed.closed and feed.error is errors[0]
            # Queued events first, then the error.
            got = []
            with pytest.raises(ResponseError):
                for event in subs[0]:
                    got.append(event.data)
            assert got == ["1", "2"]
            with pytest.raises(ResponseError):
                list(subs[2])
            assert len(server.requests) == 2


@pytest.mark.parametrize("answer,code,content_type", [
    (status(500, b"oops"), 500, "text/plain"),
    (status(404, b"gone"), 404, "text/plain"),
    (sse(b"data: x\n\n", content_type="text/html"), 200, "text/html"),
])
def test_bad_answer_on_reconnect_ends_the_feed_with_an_error(answer, code, content_type):
    with RawServer([sse(b"data: 1\n\n", hold=False), answer]) as server:
        with connect_with_sse_feed(server.url(), retry=20) as feed:
            sub = feed.subscribe()
            assert sub.get(timeout=3).data == "1"
            error = sub.err_feed.get(timeout=3)
            assert isinstance(error, ResponseError)
            assert (error.status_code, error.content_type) == (code, content_type)
            assert str(code) in str(error) and content_type in str(error)
            with pytest.raises(ResponseError):
                next(iter(sub))
            with pytest.raises(ResponseError):
                sub.get(timeout=1)


def test_max_retries_exhausted():
    server = RawServer(sse(b"data: 1\n\n", hold=False))
    try:
        feed = connect_with_sse_feed(server.url(), retry=20, max_retries=3)
        sub = feed.subscribe()
        assert sub.get(timeout=3).data == "1"
    finally:
        server.close()   # from now on every attempt is refused
    start = time.monotonic()
    error = sub.err_feed.get(timeout=10)
    assert time.monotonic() - start < 5
    assert isinstance(error, FeedConnectionError)
    assert "3 failed reconnection attempt" in str(error)
    assert isinstance(error.__cause__, FeedConnectionError)
    with pytest.raises(FeedConnectionError):
        list(sub)
    feed.close()
    assert len(server.requests) == 1


def test_failed_attempts_back_off_then_recover():
    times = []

    def refuse_twice(conn):
        times.append(time.monotonic())
        if len(times) in (2, 3):
            conn.abort()          # reset before any answer: a failed attempt
            return
        conn.start()
        conn.write(b"retry: 40\ndata: %d\n\n" % len(times))
        if len(times) == 1:
            conn.end()
        else:
            conn.hold()

    with RawServer(refuse_twice) as server:
        with connect_with_sse_feed(server.url(), max_retries=5) as feed:
            sub = feed.subscribe()
            assert [e.data for e in collect(sub, 2)] == ["1", "4"]
    gaps = [b - a for a, b in zip(times, times[1:])]
    # stream ended: the reconnection time; failures: doubling, jittered
    assert 0.035 < gaps[0] < 1
    assert 0.04 <= gaps[1] and 0.08 <= gaps[2]
    assert gaps[2] < 2


def test_backoff_is_capped_and_never_below_the_reconnection_time():
    with RawServer(sse()) as server:
        with connect_with_sse_feed(server.url(), retry=100, max_backoff=1.0) as feed:
            for failures in range(1, 40):
                delays = [feed._backoff(failures) for _ in range(20)]
                assert all(0.1 <= d <= 1.0 for d in delays)
            assert all(0.5 <= feed._backoff(30) <= 1.0 for _ in range(20))
        # a server retry longer than the cap is still honoured
        with connect_with_sse_feed(server.url(), retry=5000, max_backoff=1.0) as feed:
            assert feed._backoff(3) == 5.0


def test_read_timeout_replaces_a_silent_connection():
    with RawServer([sse(b"id: 1\ndata: a\n\n"), sse(b"data: b\n\n")]) as server:
        with connect_with_sse_feed(server.url(), read_timeout=0.3, retry=20) as feed:
            sub = feed.subscribe()
            start = time.monotonic()
            assert [e.data for e in collect(sub, 2)] == ["a", "b"]
            assert 0.25 < time.monotonic() - start < 3
            assert server.requests[1].header("Last-Event-ID") == "1"


def test_heartbeats_keep_a_connection_alive_under_read_timeout():
    def beating(conn):
        conn.start()
        for _ in range(8):
            conn.write(b":\n\n")
            time.sleep(0.1)
        conn.write(b"data: late\n\n")
        conn.hold()

    with RawServer(beating) as server:
        with connect_with_sse_feed(server.url(), read_timeout=0.4, retry=20) as feed:
            assert feed.subscribe().get(timeout=5).data == "late"
            assert len(server.requests) == 1


def test_reconnect_false():
    with RawServer(sse(b"data: 1\n\n", hold=False)) as server:
        with connect_with_sse_feed(server.url(), reconnect=False) as feed:
            sub = feed.subscribe()
            assert [e.data for e in sub] == ["1"]       # orderly end: quiet
            assert sub.err_feed.empty() and feed.error is None

    def broken(conn):
        conn.start()
        conn.write(b"data: 1\n\n")
        conn.send(b"5\r\ndata")           # a chunk cut short: a broken stream
        conn.abort()

    with RawServer(broken) as server:
        with connect_with_sse_feed(server.url(), reconnect=False) as feed:
            sub = feed.subscribe()
            got = []
            with pytest.raises(FeedConnectionError):
                for event in sub:
                    got.append(event.data)
            assert got == ["1"]
            assert len(server.requests) == 1


def test_close_during_the_reconnect_wait_is_prompt():
    with RawServer(sse(b"data: 1\n\n", hold=False)) as server:
        feed = connect_with_sse_feed(server.url())   # waits 3 s before reconnecting
        sub = feed.subscribe()
        sub.get(timeout=3)
        assert _wait(lambda: not feed.connected.is_set())
        start = time.monotonic()
        feed.close()
        assert time.monotonic() - start < 1
        assert not feed._thread.is_alive()
        assert len(server.requests) == 1


def test_close_while_the_reconnect_request_waits_for_headers():
    # The one wait close() cannot interrupt: it returns anyway and the reader
    # finishes by itself once the attempt times out.
    def silent(conn):
        conn.hold(3)

    with RawServer([sse(b"data: 1\n\n", hold=False), silent]) as server:
        feed = connect_with_sse_feed(server.url(), retry=10, timeout=0.5)
        sub = feed.subscribe()
        sub.get(timeout=3)
        server.next_request()
        server.next_request()
        start = time.monotonic()
        feed.close()
        assert time.monotonic() - start < 1
        feed._thread.join(3)
        assert not feed._thread.is_alive()
        assert sub.err_feed.empty()




def test_feed_class_is_what_connect_returns():
    with RawServer(sse()) as server, connect_with_sse_feed(server.url()) as feed:
        assert type(feed) is SSEFeed
        assert "connected" in repr(feed)


def test_max_retries_zero_ends_the_feed_when_the_stream_is_lost():
    with RawServer(sse(b"data: 1\n\n", hold=False)) as server:
        with connect_with_sse_feed(server.url(), retry=20, max_retries=0) as feed:
            sub = feed.subscribe()
            assert sub.get(timeout=3).data == "1"
            assert isinstance(sub.err_feed.get(timeout=3), FeedConnectionError)
        assert len(server.requests) == 1
