"""Broker argument checks and on_connect refusals (issue 12, defects 16 and
17): bad headers, caps and callbacks are refused when the broker is built,
a bad on_connect result raises a clear ConnectHookError from connect(), and
a refusal can carry headers such as WWW-Authenticate and Retry-After."""
import socket
from urllib.parse import urlsplit

import pytest
import requests
from werkzeug.test import EnvironBuilder

from broker_app import make_app
from gosse import Broker, ConnectHookError, SSEError
from rawhttp import read_head_from
from servers import werkzeug_server

SECRET = "s3cr3t-token-value"


def environ():
    return EnvironBuilder("/sse", headers={"Accept": "text/event-stream"}).get_environ()


def raw_head(url, path="/sse?client=x", timeout=5.0):
    """The response head (status line and headers) of a GET, read from a
    raw socket: exactly the bytes the server wrote before the body."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\n"
                  "Accept: text/event-stream\r\n\r\n".encode())
        head = read_head_from(s)
    return head.split(b"\r\n\r\n", 1)[0]


# -- Broker(headers=...) ---------------------------------------------------

def test_crlf_header_value_cannot_inject_a_header_over_werkzeug():
    evil = {"X-Note": "fine\r\nX-Injected: yes"}
    with pytest.raises(ValueError, match="X-Note") as info:
        broker = Broker(headers=evil, heartbeat_interval=0.2)
        # Only reached when the constructor accepts the value: see what it does.
        try:
            with werkzeug_server(make_app(broker)) as url:
                head = raw_head(url)
        finally:
            broker.close()
        assert b"x-injected" not in head.lower(), f"header injected: {head!r}"
    assert "X-Injected" not in str(info.value)   # the value is not echoed


@pytest.mark.parametrize("headers", [
    [("X-A", "1")], "X-A: 1", {"X-A": 1}, {"X-A": None}, {b"X-A": "1"}, {1: "x"},
], ids=["pairs", "str", "int-value", "none-value", "bytes-name", "int-name"])
def test_headers_must_be_a_mapping_of_str(headers):
    with pytest.raises(TypeError, match="headers|header names"):
        Broker(headers=headers)


@pytest.mark.parametrize("name", ["X A", "X:A", "", "X-\u00e9", "X-A\r\nY", "(x)"])
def test_header_name_must_be_a_token(name):
    with pytest.raises(ValueError, match="not an HTTP token"):
        Broker(headers={name: "1"})


@pytest.mark.parametrize("char,what", [("\r", "CR"), ("\n", "LF"), ("\0", "NUL"),
                                       ("\x1b", "U+001B"), ("\u20ac", "non-latin-1")])
def test_header_value_with_a_line_break_or_control_char_is_refused(char, what):
    with pytest.raises(ValueError) as info:
        Broker(headers={"Authorization-Hint": SECRET + char + "X-Evil: 1"})
    message = str(info.value)
    assert "Authorization-Hint" in message and what in message
    assert SECRET not in message and "X-Evil" not in message


def test_good_headers_still_accepted():
    broker = Broker(headers={"Access-Control-Allow-Origin": "*", "X-Tab": "a\tb",
                             "X-Latin": "caf\u00e9", "Cache-Control": "no-store"})
    try:
        assert ("Access-Control-Allow-Origin", "*") in broker.headers
        assert ("Cache-Control", "no-store") in broker.headers   # may replace ours
        assert [n for n, _ in broker.headers].count("Cache-Control") == 1
    finally:
        broker.close()


@pytest.mark.parametrize("name", ["Content-Type", "content-type", "CONTENT-TYPE"])
def test_content_type_cannot_replace_the_stream_type(name):
    with pytest.raises(ValueError, match="Content-Type"):
        Broker(headers={name: "text/html"})


def test_hop_by_hop_still_refused():
    with pytest.raises(ValueError, match="hop-by-hop"):
        Broker(headers={"Connection": "close"})


# -- caps, retry_after, callbacks ------------------------------------------

@pytest.mark.parametrize("arg", ["max_sessions", "max_sessions_per_client"])
@pytest.mark.parametrize("value", [0, -1, True, 1.5, "3"])
def test_session_caps_must_be_positive_ints(arg, value):
    with pytest.raises(ValueError, match=arg):
        Broker(**{arg: value})


@pytest.mark.parametrize("value", [-1, 1.5, True, "5", None])
def test_retry_after_must_be_a_non_negative_int(value):
    with pytest.raises(ValueError, match="retry_after"):
        Broker(retry_after=value)


def test_valid_caps_accepted():
    broker = Broker(max_sessions=1, max_sessions_per_client=1, retry_after=0,
                    on_connect=lambda environ: None)
    try:
        assert broker.connect("a", environ()).refused is False
        refusal = broker.connect("b", environ())
        assert refusal.refused and ("Retry-After", "0") in refusal.headers
    finally:
        broker.close()


@pytest.mark.parametrize("value", ["not callable", 1, object()])
def test_on_connect_must_be_callable(value):
    with pytest.raises(TypeError, match="on_connect"):
        Broker(on_connect=value)


@pytest.mark.parametrize("value", ["not callable", 1])
def test_disconnect_callback_must_be_callable(value):
    broker = Broker()
    try:
        with pytest.raises(TypeError, match="callable"):
            broker.set_disconnect_callback(value)
        with pytest.raises(TypeError, match="on_disconnect"):
            broker.on_disconnect(value)
        with pytest.raises(TypeError, match="on_disconnect"):
            broker.on_disconnect(None)
        broker.set_disconnect_callback(None)   # None removes it
    finally:
        broker.close()


# -- on_connect refusals ---------------------------------------------------

@pytest.fixture
def served():
    brokers = []

    def serve(on_connect):
        broker = Broker(heartbeat_interval=0.2, on_connect=on_connect)
        brokers.append(broker)
        return broker, werkzeug_server(make_app(broker))

    yield serve
    for broker in brokers:
        broker.close()


@pytest.mark.parametrize("result,status,header", [
    ((401, "log in", {"WWW-Authenticate": 'Bearer realm="events"'}),
     401, ("WWW-Authenticate", 'Bearer realm="events"')),
    (("429 Too Many Requests", "slow down", [("Retry-After", "7")]),
     429, ("Retry-After", "7")),
    ((503, "maintenance", (("Retry-After", "120"),)), 503, ("Retry-After", "120")),
], ids=["401-mapping", "429-pairs", "503-tuple"])
def test_on_connect_refusal_carries_headers_over_http(served, result, status, header):
    broker, server = served(lambda environ: result)
    with server as url:
        r = requests.get(f"{url}/sse?client=x", timeout=5)
    assert r.status_code == status
    assert r.headers[header[0]] == header[1]
    assert r.text == result[1] + "\n"
    assert r.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert not broker.is_client_present("x")


def test_two_tuple_refusal_unchanged(served):
    broker, server = served(lambda environ: ("403 Forbidden", "no"))
    with server as url:
        r = requests.get(f"{url}/sse", timeout=5)
    assert (r.status_code, r.text) == (403, "no\n")


BAD_RESULTS = [
    (200, "ok"), (302, "elsewhere"), (399, "x"), (600, "x"), (True, "x"), (401.0, "x"),
    ("200 OK", "x"), ("401", "x"), ("4xx Bad", "x"), ("401 Bad\r\nX-Evil: 1", "x"),
    (" 401 Bad", "x"), (None, "x"),
    (403, b"bytes message"), (403, None),
    (403, "x", {"X-Evil": "a\r\nb"}), (403, "x", {"Content-Type": "text/html"}),
    (403, "x", {"Content-Length": "0"}), (403, "x", {"Connection": "close"}),
    (403, "x", "X-A: 1"), (403, "x", [("X-A",)]),
    (403,), (403, "x", {}, "extra"), "403 Forbidden", 403, {"status": 403},
]


@pytest.mark.parametrize("result", BAD_RESULTS, ids=[repr(r)[:40] for r in BAD_RESULTS])
def test_bad_on_connect_result_raises_connect_hook_error(result):
    broker = Broker(on_connect=lambda environ: result)
    try:
        with pytest.raises(ConnectHookError, match="on_connect") as info:
            broker.connect("x", environ())
        assert isinstance(info.value, SSEError) and isinstance(info.value, ValueError)
        assert "a\r\nb" not in str(info.value)   # no header value echoed
        assert not broker.is_client_present("x") and broker.stats()["sessions"] == 0
    finally:
        broker.close()
