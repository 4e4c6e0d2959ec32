"""One-shot reading in the caller's thread: gosse.stream and gosse.iter_events,
Event.json(), and examples/llm_stream.py against a local server that streams
like an OpenAI-compatible endpoint (issue 13: the features)."""
import json
import os
import subprocess
import sys
import threading

import pytest
import requests
from werkzeug.wrappers import Request, Response

import gosse
from gosse import EventDataError, EventStreamError, FeedConnectionError, ResponseError, iter_events
from rawserver import RawServer, sse
from servers import ROOT, werkzeug_server

pytestmark = pytest.mark.timeout(60)

API_KEY = "sk-test-123"
WORDS = ["Queues ", "hold ", "events ", "in ", "order."]


def _error(status, message, kind):
    return Response(json.dumps({"error": {"message": message, "type": kind}}), status,
                    content_type="application/json", headers={"x-request-id": "req-err"})


@Request.application
def openai_like(request):
    """POST /v1/chat/completions as an OpenAI-compatible server answers it."""
    if request.path != "/v1/chat/completions" or request.method != "POST":
        return Response("not found", 404)
    if request.headers.get("Authorization") != f"Bearer {API_KEY}":
        return _error(401, "Incorrect API key provided", "invalid_request_error")
    body = request.get_json()
    prompt = body["messages"][-1]["content"]
    if len(prompt) > 50:
        return _error(400, "This model's maximum context length is 50 characters",
                      "invalid_request_error")
    openai_like.requests.append(body)

    def chunks():
        for i, word in enumerate(WORDS):
            chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk",
                     "choices": [{"index": 0, "delta": {"content": word},
                                  "finish_reason": None}]}
            if i == 0:
                chunk["choices"][0]["delta"]["role"] = "assistant"
            yield f"data: {json.dumps(chunk)}\n\n".encode()
        yield b'data: {"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {}, ' \
              b'"finish_reason": "stop"}]}\n\n'
        yield b"data: [DONE]\n\n"
    return Response(chunks(), content_type="text/event-stream",
                    headers={"x-request-id": "req-1", "x-ratelimit-remaining-requests": "99"})


openai_like.requests = []


@pytest.fixture
def api():
    openai_like.requests.clear()
    with werkzeug_server(openai_like) as base:
        yield base + "/v1"


def chat(prompt):
    return {"model": "m", "stream": True, "messages": [{"role": "user", "content": prompt}]}


def test_stream_posts_once_and_reads_in_the_callers_thread(api):
    texts = []
    with gosse.stream(api + "/chat/completions", method="POST", json=chat("hi"),
                      headers={"Authorization": f"Bearer {API_KEY}"}) as events:
        assert events.response.status_code == 200
        assert events.response.headers["x-request-id"] == "req-1"
        for event in events:
            assert not [t for t in threading.enumerate() if t.name.startswith("gosse")]
            if event.data == "[DONE]":
                break
            texts.append(event.json()["choices"][0]["delta"].get("content", ""))
    assert "".join(texts) == "".join(WORDS)
    assert len(openai_like.requests) == 1


def test_stream_ends_at_the_end_of_the_response(api):
    with gosse.stream(api + "/chat/completions", method="POST", json=chat("hi"),
                      headers={"Authorization": f"Bearer {API_KEY}"}) as events:
        data = [event.data for event in events]
    assert data[-1] == "[DONE]" and len(data) == len(WORDS) + 2


def test_stream_error_keeps_the_servers_message(api):
    with pytest.raises(ResponseError) as info:
        gosse.stream(api + "/chat/completions", method="POST", json=chat("x" * 60),
                     headers={"Authorization": f"Bearer {API_KEY}"})
    error = info.value
    assert error.status_code == 400
    assert error.response.json()["error"]["message"].startswith("This model's maximum")
    assert error.response.headers["x-request-id"] == "req-err"
    with pytest.raises(ResponseError) as info:
        gosse.stream(api + "/chat/completions", method="POST", json=chat("hi"),
                     headers={"Authorization": "Bearer wrong"})
    assert info.value.status_code == 401 and "Incorrect API key" in info.value.body


def test_iter_events_over_a_response_the_user_made(api):
    response = requests.post(api + "/chat/completions", json=chat("hi"), stream=True,
                             headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10)
    events = list(iter_events(response))
    assert [e.json()["choices"][0]["delta"].get("content") for e in events[:5]] == WORDS
    assert events[-1].data == "[DONE]"
    # Also over a response whose body requests has read already.
    whole = requests.post(api + "/chat/completions", json=chat("hi"),
                          headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10)
    assert [e.data for e in iter_events(whole)] == [e.data for e in events]


def test_iter_events_checks_the_answer_unless_told_not_to(api):
    response = requests.post(api + "/chat/completions", json=chat("hi"), stream=True,
                             timeout=10)
    with pytest.raises(ResponseError) as info:
        list(iter_events(response))
    assert info.value.status_code == 401
    with RawServer(sse(b"data: plain\n\n", hold=False, content_type="text/plain")) as server:
        response = requests.get(server.url(), stream=True, timeout=10)
        assert [e.data for e in iter_events(response, check=False)] == ["plain"]


def test_event_json_raises_a_clear_error():
    with RawServer(sse(b'data: {"a": [1, 2]}\n\ndata: [DONE]\n\n', hold=False)) as server:
        with gosse.stream(server.url()) as events:
            first, done = list(events)
    assert first.json() == {"a": [1, 2]}
    with pytest.raises(EventDataError, match=r"not JSON.*\[DONE\]") as info:
        done.json()
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value.__cause__, json.JSONDecodeError)


def test_leaving_the_block_closes_the_response():
    closed = threading.Event()

    def handler(conn):
        conn.start()
        conn.write(b"data: 1\n\ndata: 2\n\n")
        if conn.hold(timeout=10):
            closed.set()

    with RawServer(handler) as server:
        with gosse.stream(server.url()) as events:
            assert next(iter(events)).data == "1"
        assert closed.wait(5), "the server still holds the connection"


def test_same_bounds_and_errors_as_the_feed():
    with RawServer(sse(b"data: " + b"x" * 5000 + b"\n\n", hold=False)) as server:
        with gosse.stream(server.url(), max_line_bytes=1024) as events:
            with pytest.raises(EventStreamError):
                list(events)

    def broken(conn):
        conn.start()
        conn.write(b"data: before\n\n")
        conn.send(b"5\r\nab")          # a chunk cut short, then a reset
        conn.abort()

    with RawServer(broken) as server:
        got = []
        with pytest.raises(FeedConnectionError):
            with gosse.stream(server.url()) as events:
                for event in events:
                    got.append(event.data)
        assert got == ["before"]
    with pytest.raises(gosse.InvalidURLError):
        gosse.stream("ftp://127.0.0.1/x")


def test_llm_example_against_a_local_openai_like_server(api):
    env = {**os.environ, "PYTHONPATH": ROOT, "OPENAI_BASE_URL": api,
           "OPENAI_API_KEY": API_KEY, "OPENAI_MODEL": "m"}
    example = os.path.join(ROOT, "examples", "llm_stream.py")
    done = subprocess.run([sys.executable, example, "Write", "a", "haiku"], env=env,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "".join(WORDS) + "\n"
    assert "req-1" in done.stderr
    assert len(openai_like.requests) == 1
    assert openai_like.requests[0]["messages"][0]["content"] == "Write a haiku"
    refused = subprocess.run([sys.executable, example, "x" * 60], env=env,
                             capture_output=True, text=True, timeout=30)
    assert refused.returncode == 1
    assert refused.stderr.strip() == \
        "error 400: This model's maximum context length is 50 characters"
