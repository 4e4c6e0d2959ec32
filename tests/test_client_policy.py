"""The feed's request and reconnect policy (issue 13: defects 5, 7, 8, 9,
11, 12 and 15): POST once, "come back later" statuses retried, ids that
cannot be a header, the wait for the response head, credentials redacted,
the server's error kept, bad arguments refused clearly."""
import email.utils
import json
import logging
import time
import traceback

import pytest
import requests

from gosse import FeedConnectionError, InvalidURLError, ResponseError, SSEError
from gosse.client import connect_with_sse_feed
from rawserver import RawServer, sse, status

pytestmark = pytest.mark.timeout(60)


# -- defect 5: a request with a body is made once --------------------------------

def llm_like(conn):
    conn.start()
    conn.write(b'data: {"choices": [{"delta": {"content": "Hi"}}]}\n\n')
    conn.write(b"data: [DONE]\n\n")
    conn.end()


def test_a_post_stream_ends_after_its_response_and_is_not_sent_again():
    with RawServer(llm_like) as server:
        with connect_with_sse_feed(server.url(), method="POST", json={"stream": True},
                                   retry=20) as feed:
            sub = feed.subscribe()
            got = []
            for event in sub:                 # ends by itself (bounded here)
                got.append(event.data)
                if len(got) > 6:
                    break
            assert got == ['{"choices": [{"delta": {"content": "Hi"}}]}', "[DONE]"]
            assert feed.error is None and sub.done.wait(3)
        assert len(server.requests) == 1


def test_a_get_feed_still_reconnects_by_default():
    with RawServer(sse(b"data: x\n\n", hold=False)) as server:
        with connect_with_sse_feed(server.url(), retry=20) as feed:
            sub = feed.subscribe()
            assert [sub.get(timeout=3).data for _ in range(2)] == ["x", "x"]
        assert len(server.requests) >= 2


def test_reconnect_false_for_get_and_true_for_post_are_honoured():
    with RawServer(sse(b"data: x\n\n", hold=False)) as server:
        with connect_with_sse_feed(server.url(), reconnect=False) as feed:
            assert [e.data for e in feed.subscribe()] == ["x"]
        assert len(server.requests) == 1


# -- defect 7: 429 / 502 / 503 / 504 are retried, honouring Retry-After ---------

@pytest.mark.parametrize("code", [429, 502, 503, 504])
def test_come_back_later_statuses_on_reconnect_are_retried(code):
    answer = status(code, b"busy", headers={"Retry-After": "0"})
    with RawServer([sse(b"id: 1\ndata: one\n\n", hold=False), answer,
                    sse(b"id: 2\ndata: two\n\n")]) as server:
        with connect_with_sse_feed(server.url(), retry=20) as feed:
            sub = feed.subscribe()
            assert [sub.get(timeout=5).data for _ in range(2)] == ["one", "two"]
            assert sub.err_feed.empty()
        assert server.requests[2].header("Last-Event-ID") == "1"


@pytest.mark.parametrize("form", ["seconds", "http-date"])
def test_retry_after_is_waited(form):
    value = "1" if form == "seconds" else email.utils.formatdate(time.time() + 2, usegmt=True)
    arrivals = []

    def stamped(handler):
        def wrapper(conn):
            arrivals.append(time.monotonic())
            handler(conn)
        return wrapper

    with RawServer([stamped(sse(b"data: one\n\n", hold=False)),
                    stamped(status(503, b"", headers={"Retry-After": value})),
                    stamped(sse(b"data: two\n\n"))]) as server:
        with connect_with_sse_feed(server.url(), retry=20) as feed:
            sub = feed.subscribe()
            assert [sub.get(timeout=6).data for _ in range(2)] == ["one", "two"]
    assert arrivals[2] - arrivals[1] >= 0.9, "Retry-After was not honoured"


def test_come_back_later_is_bounded_by_max_retries():
    answer = status(503, b"busy", headers={"Retry-After": "0"})
    with RawServer([sse(b"data: one\n\n", hold=False), answer]) as server:
        with connect_with_sse_feed(server.url(), retry=10, max_retries=3) as feed:
            sub = feed.subscribe()
            assert sub.get(timeout=3).data == "one"
            error = sub.err_feed.get(timeout=5)
            assert isinstance(error, FeedConnectionError) and "max_retries=3" in str(error)
            assert isinstance(error.__cause__, ResponseError)
            assert error.__cause__.status_code == 503
        assert len(server.requests) == 4


def test_204_and_other_statuses_stay_final():
    for answer, code in [(status(204), 204), (status(403, b"no"), 403)]:
        with RawServer([sse(b"data: one\n\n", hold=False), answer]) as server:
            with connect_with_sse_feed(server.url(), retry=10) as feed:
                sub = feed.subscribe()
                assert sub.get(timeout=3).data == "one"
                assert sub.err_feed.get(timeout=3).status_code == code
            assert len(server.requests) == 2


# -- defect 8: an id with leading whitespace ------------------------------------

def test_an_id_with_leading_whitespace_does_not_prevent_the_reconnect():
    with RawServer([sse(b"id:  7\ndata: a\n\n", hold=False),
                    sse(b"data: b\n\n")]) as server:
        with connect_with_sse_feed(server.url(), retry=20) as feed:
            sub = feed.subscribe()
            first = sub.get(timeout=3)
            assert first.id == " 7"                       # the legal id, as sent
            assert sub.get(timeout=5).data == "b"
            assert sub.err_feed.empty()
        assert server.requests[1].header("Last-Event-ID") == "7"


def test_an_id_of_only_whitespace_sends_no_header():
    with RawServer([sse(b"id: \t \ndata: a\n\n", hold=False),
                    sse(b"data: b\n\n")]) as server:
        with connect_with_sse_feed(server.url(), retry=20) as feed:
            sub = feed.subscribe()
            assert [sub.get(timeout=5).data for _ in range(2)] == ["a", "b"]
        assert server.requests[1].header("Last-Event-ID") is None


# -- defect 9: the wait for the response head ---------------------------------

def late_head(delay):
    def handler(conn):
        time.sleep(delay)       # the server's own behaviour (go-sse's first heartbeat)
        conn.start()
        conn.write(b"data: late\n\n")
        conn.hold()
    return handler


def test_a_server_sending_its_head_late_can_be_connected_to():
    with RawServer(late_head(1.0)) as server:
        started = time.monotonic()
        with connect_with_sse_feed(server.url(), connect_timeout=0.5) as feed:
            assert time.monotonic() - started >= 0.9
            assert feed.subscribe().get(timeout=3).data == "late"


def test_read_timeout_bounds_the_wait_for_the_head():
    with RawServer(late_head(1.0)) as server:
        with pytest.raises(FeedConnectionError):
            connect_with_sse_feed(server.url(), read_timeout=0.3)


def test_timeout_none_is_accepted_and_a_requests_style_timeout_still_works():
    with RawServer(sse(b"data: a\n\n")) as server:
        with connect_with_sse_feed(server.url(), timeout=None) as feed:
            assert feed.subscribe().get(timeout=3).data == "a"
        with connect_with_sse_feed(server.url(), timeout=(1, 5)) as feed:
            assert feed.subscribe().get(timeout=3).data == "a"
    with RawServer(late_head(1.0)) as server:
        with pytest.raises(FeedConnectionError):
            connect_with_sse_feed(server.url(), timeout=0.3)


# -- defect 11: credentials redacted --------------------------------------------

SECRET_URL = "http://alice:s3cr3t-pw@127.0.0.1:{port}/sse?access_token=tok-123&room=7"


def test_credentials_never_reach_logs_messages_or_repr(caplog):
    caplog.set_level(logging.DEBUG, logger="gosse")
    seen = []
    with RawServer([sse(b"data: one\n\n", hold=False),
                    status(503, b"busy", headers={"Retry-After": "0"}),
                    status(401, b"bad token")]) as server:
        url = SECRET_URL.format(port=server.port)
        with connect_with_sse_feed(url, retry=10) as feed:
            seen.append(repr(feed))
            sub = feed.subscribe()
            assert sub.get(timeout=3).data == "one"
            error = sub.err_feed.get(timeout=5)
            seen += [str(error), repr(error), error.url, repr(feed)]
        # The server did receive the credentials: they were used, not lost.
        assert server.requests[0].header("Authorization").startswith("Basic ")
        assert "access_token=tok-123" in server.requests[0].path
    port = server.port
    # A connection error's message quotes the URL (requests' text).
    with pytest.raises(FeedConnectionError) as info:
        connect_with_sse_feed(SECRET_URL.format(port=port), timeout=1)
    seen += [str(info.value), "".join(traceback.format_exception(
        type(info.value), info.value, info.value.__traceback__))]
    assert isinstance(info.value.__cause__, requests.ConnectionError)
    seen += [caplog.text] + [r.getMessage() for r in caplog.records]
    text = "\n".join(seen)
    assert "alice" in text and "room=7" in text          # what is not secret stays
    assert "s3cr3t-pw" not in text and "tok-123" not in text


# -- defect 12: the server's error and headers --------------------------------

def test_the_error_response_body_and_headers_are_kept():
    body = json.dumps({"error": {"message": "This model's maximum context length is 8192",
                                 "type": "invalid_request_error"}}).encode()
    answer = status(400, body, content_type="application/json",
                    headers={"x-request-id": "req-42"})
    with RawServer(answer) as server:
        with pytest.raises(ResponseError) as info:
            connect_with_sse_feed(server.url(), method="POST", json={"stream": True})
    error = info.value
    assert error.status_code == 400
    assert error.response.json()["error"]["message"].startswith("This model's maximum")
    assert "maximum context length" in error.body
    assert error.response.headers["x-request-id"] == "req-42"
    assert error.headers["x-request-id"] == "req-42"
    assert "maximum context length" in str(error)


def test_the_error_body_read_is_bounded():
    with RawServer(status(500, b"x" * 500000)) as server:
        with pytest.raises(ResponseError) as info:
            connect_with_sse_feed(server.url())
    assert 0 < len(info.value.body) <= 65536
    assert len(str(info.value)) < 1000


def test_the_feed_exposes_the_response_headers():
    with RawServer(sse(b"data: a\n\n", headers={"x-ratelimit-remaining": "99"})) as server:
        with connect_with_sse_feed(server.url()) as feed:
            assert feed.headers["x-ratelimit-remaining"] == "99"
            assert feed.response.status_code == 200


# -- defect 15: bad input gets a gosse error -------------------------------------

@pytest.mark.parametrize("url", ["127.0.0.1:8080/sse", "ftp://127.0.0.1/sse", None,
                                 "http:///sse", 42])
def test_a_bad_url_is_a_gosse_error(url):
    with pytest.raises(InvalidURLError) as info:
        connect_with_sse_feed(url)
    assert isinstance(info.value, SSEError) and isinstance(info.value, ValueError)


def test_a_bad_timeout_is_refused_clearly():
    for kwargs in [{"connect_timeout": -1}, {"read_timeout": 0}, {"timeout": "5"},
                   {"stall_timeout": 0}]:
        with pytest.raises(ValueError):
            connect_with_sse_feed("http://127.0.0.1:9/sse", **kwargs)
