"""``gosse demo``: the demo app in-process, and the command as a subprocess
(Werkzeug by default, ``--gunicorn``) exercised over HTTP."""
import datetime
import json
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

import pytest
import requests

from gosse import Broker
from gosse.demo import (
    CHAT_EVENT,
    CLOCK_EVENT,
    JOB_EVENT,
    JOBS_TOPIC,
    MAX_BODY_BYTES,
    MAX_RUNNING_JOBS,
    create_app,
)
from servers import ROOT, SSEReader, free_port, wait_for_port, werkzeug_server

START_TIMEOUT = 20.0


def child_env():
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": ROOT + (os.pathsep + path if path else ""),
            "PYTHONUNBUFFERED": "1"}


class DemoProcess:
    """``python -m gosse demo ARGS`` in a subprocess.  Its stdout lines are
    read by a thread (so the pipe never fills); stderr goes to a file."""

    def __init__(self, *args, wait_url=True):
        self.stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gosse", "demo", *args], cwd=ROOT, env=child_env(),
            stdout=subprocess.PIPE, stderr=self.stderr, text=True)
        self.lines = queue.Queue()
        self._reader = threading.Thread(target=self._read_stdout, daemon=True)
        self._reader.start()
        self.url = None
        if wait_url:
            try:
                first = self.next_line(START_TIMEOUT)
                match = re.search(r"serving (http://\S+/) ", first)
                assert match, f"no URL in the banner: {first!r}"
                self.url = match.group(1)
            except BaseException:
                self.kill()
                raise

    def _read_stdout(self):
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def next_line(self, timeout=10.0):
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no output in {timeout} s; stderr: {self.stderr_text()}") from None
        if line is None:
            raise RuntimeError(f"demo exited ({self.proc.poll()}); stderr: "
                               f"{self.stderr_text()}")
        return line

    def stderr_text(self):
        self.stderr.seek(0)
        return self.stderr.read().decode("utf-8", "replace")

    def stop(self, sig=signal.SIGINT, timeout=10.0):
        """Send ``sig`` and return the exit status (TimeoutError if it hangs)."""
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"demo still running {timeout} s after signal {sig}; "
                               f"stderr: {self.stderr_text()}") from None

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc.stdout.close()
        self._reader.join(5)
        self.stderr.close()


@pytest.fixture
def start_demo():
    """Factory: start_demo(*args) -> DemoProcess, killed after the test."""
    started = []

    def start(*args, **kw):
        demo = DemoProcess(*args, **kw)
        started.append(demo)
        return demo

    yield start
    for demo in started:
        demo.kill()


@pytest.fixture(scope="module")
def demo():
    """One ``gosse demo --port 0`` shared by the tests that only read and publish."""
    d = DemoProcess("--port", "0")
    yield d
    d.kill()


def not_clock(event):
    return event.event != CLOCK_EVENT


def wait_sessions(url, n, timeout=10.0):
    deadline = time.monotonic() + timeout
    while True:
        stats = requests.get(url + "stats", timeout=5).json()
        if stats["sessions"] >= n:
            return stats
        if time.monotonic() > deadline:
            raise TimeoutError(f"expected {n} sessions, stats: {stats}")
        time.sleep(0.02)


# -- the demo app in-process ---------------------------------------------------

@pytest.fixture
def app_url():
    app = create_app(clock_interval=0.2)
    with werkzeug_server(app) as url:
        yield app, url + "/"
        app.close()


def test_app_routes(app_url):
    app, url = app_url
    page = requests.get(url, timeout=5)
    assert page.status_code == 200
    assert page.headers["Content-Type"] == "text/html; charset=utf-8"
    assert "script-src" not in page.headers["Content-Security-Policy"]  # default-src 'self'
    assert "'self'" in page.headers["Content-Security-Policy"]
    assert '<ol id="events"' in page.text and 'src="static/demo.js"' in page.text
    js = requests.get(url + "static/demo.js", timeout=5)
    assert js.status_code == 200 and "javascript" in js.headers["Content-Type"]
    assert "innerHTML" not in js.text  # event text goes in as textContent only
    assert requests.get(url + "static/demo.css", timeout=5).status_code == 200
    assert requests.get(url + "static/../demo.py", timeout=5).status_code == 404
    assert requests.get(url + "nope", timeout=5).status_code == 404
    head = requests.head(url + "sse", timeout=5)  # headers only, no session
    assert head.status_code == 200 and head.headers["Content-Type"].startswith(
        "text/event-stream")
    r = requests.get(url + "publish", timeout=5)
    assert r.status_code == 405 and r.headers["Allow"] == "POST"
    assert requests.post(url + "stats", timeout=5).status_code == 405
    live = requests.get(url + "live", timeout=5)
    assert live.status_code == 200 and live.headers["Content-Type"] == "text/html; charset=utf-8"
    assert '<ul id="jobs"' in live.text and 'src="static/live.js"' in live.text
    assert live.headers["Content-Security-Policy"] == page.headers["Content-Security-Policy"]
    for name in ("live.js", "common.js"):
        js = requests.get(url + "static/" + name, timeout=5)
        assert js.status_code == 200 and "innerHTML" not in js.text
    r = requests.get(url + "chat", timeout=5)
    assert r.status_code == 405 and r.headers["Allow"] == "POST"
    r = requests.put(url + "jobs", timeout=5)
    assert r.status_code == 405 and r.headers["Allow"] == "GET, HEAD, POST"
    assert requests.get(url + "jobs", timeout=5).json() == {"jobs": []}
    assert app.broker.stats()["sessions_total"] == 0


def test_app_publish_validation(app_url):
    app, url = app_url
    r = requests.post(url + "publish", data={"event": "x"}, timeout=5)
    assert r.status_code == 400 and '"data"' in r.text
    r = requests.post(url + "publish", json={"event": "x"}, timeout=5)
    assert r.status_code == 400 and '"data"' in r.text
    r = requests.post(url + "publish", json=["data"], timeout=5)
    assert r.status_code == 400 and "JSON object" in r.text
    r = requests.post(url + "publish", data=b"{not json",
                      headers={"Content-Type": "application/json"}, timeout=5)
    assert r.status_code == 400
    r = requests.post(url + "publish", json={"data": "x", "event": 5}, timeout=5)
    assert r.status_code == 400 and "event" in r.text
    r = requests.post(url + "publish", data={"data": "x" * (MAX_BODY_BYTES + 1)}, timeout=5)
    assert r.status_code == 413
    r = requests.post(url + "publish", data={"data": ""}, timeout=5)
    assert r.status_code == 200 and r.json() == {"delivered": 0}


def test_app_chat_broadcasts_to_every_stream(app_url):
    _, url = app_url
    with SSEReader(url + "sse") as plain, SSEReader(url + "sse?topic=jobs") as joined:
        r = requests.post(url + "chat", json={"name": " ada ", "text": "hello <b>"},
                          timeout=5)
        assert r.status_code == 200 and r.json() == {"delivered": 2}
        requests.post(url + "chat", data={"text": "from a form"}, timeout=5)
        for reader in (plain, joined):
            first = reader.next_event(lambda e: e.event == CHAT_EVENT)
            msg = json.loads(first.data)
            assert (msg["name"], msg["text"]) == ("ada", "hello <b>")
            assert datetime.datetime.fromisoformat(msg["time"]).tzinfo is not None
            assert first.id  # resumable like every demo event
            second = json.loads(reader.next_event(lambda e: e.event == CHAT_EVENT).data)
            assert (second["name"], second["text"]) == ("anonymous", "from a form")


@pytest.mark.parametrize("body, status, says", [
    ({"name": "ada"}, 400, '"text"'),
    ({"text": "   "}, 400, '"text"'),
    ({"text": 5}, 400, '"text"'),
    ({"text": "hi", "name": ["x"]}, 400, '"name"'),
    ({"text": "x" * 501}, 400, "at most 500"),
    ({"text": "hi", "name": "n" * 41}, 400, "at most 40"),
    (["text"], 400, "JSON object"),
])
def test_app_chat_validation(app_url, body, status, says):
    _, url = app_url
    r = requests.post(url + "chat", json=body, timeout=5)
    assert r.status_code == status and says in r.text, r.text


def job_events(reader, job, timeout=10.0):
    """The job's events from ``reader`` up to and including its last one."""
    got = []
    while not got or got[-1]["state"] == "running":
        e = reader.next_event(lambda e: e.event == JOB_EVENT
                              and json.loads(e.data)["job"] == job, timeout)
        got.append(json.loads(e.data))
    return got


def test_app_job_publishes_progress_on_its_topic():
    app = create_app(clock_interval=0, job_interval=0.02)
    with werkzeug_server(app) as url:
        with SSEReader(url + "/sse?topic=" + JOBS_TOPIC) as joined, \
                SSEReader(url + "/sse") as plain:
            r = requests.post(url + "/jobs", data={"steps": "4"}, timeout=5)
            assert r.status_code == 202
            job = r.json()
            assert job == {"job": job["job"], "done": 0, "total": 4, "state": "running",
                           "topic": JOBS_TOPIC}
            got = job_events(joined, job["job"])
            assert [(e["done"], e["state"]) for e in got] == [
                (0, "running"), (1, "running"), (2, "running"), (3, "running"),
                (4, "done")]
            assert all(e["total"] == 4 for e in got)
            # A topic, not a broadcast: the stream that did not join saw none.
            requests.post(url + "/publish", data={"data": "marker"}, timeout=5)
            plain.next_event(lambda e: e.data == "marker")
            assert not [e for e in plain.events if e.event == JOB_EVENT]
            listed = requests.get(url + "/jobs", timeout=5).json()["jobs"]
            assert listed == [{"job": job["job"], "done": 4, "total": 4, "state": "done"}]
            r = requests.post(url + "/jobs", json={}, timeout=5)  # default: 20 steps
            assert r.status_code == 202 and r.json()["total"] == 20
        app.close()


@pytest.mark.parametrize("steps", ["0", "101", "x", "2.5", True, 2.5, -1, [3]])
def test_app_job_steps_validation(app_url, steps):
    app, url = app_url
    r = requests.post(url + "jobs", json={"steps": steps}, timeout=5)
    assert r.status_code == 400 and '"steps"' in r.text, r.text
    assert app.jobs() == []
    with pytest.raises(ValueError):
        app.start_job(0)


def test_app_jobs_limit_and_close_stops_them():
    app = create_app(clock_interval=0, job_interval=30)  # jobs that outlive the test
    with werkzeug_server(app) as url:
        for _ in range(MAX_RUNNING_JOBS):
            assert requests.post(url + "/jobs", data={"steps": "3"},
                                 timeout=5).status_code == 202
        r = requests.post(url + "/jobs", timeout=5)
        assert r.status_code == 429 and r.headers["Retry-After"] == "1"
        assert f"at most {MAX_RUNNING_JOBS}" in r.text
        t0 = time.monotonic()
        app.close()
        assert time.monotonic() - t0 < 3
        assert not any(t.name.startswith("gosse-demo-job-") for t in threading.enumerate())
        assert {j["state"] for j in app.jobs()} == {"stopped"}
        assert requests.post(url + "/jobs", timeout=5).status_code == 503


@pytest.mark.parametrize("query", ["topic=", "topic=a%20b", "topic=" + "x" * 65,
                                   "&".join(["topic=t"] * 9)])
def test_app_sse_topic_validation(app_url, query):
    app, url = app_url
    # stream=True: were the stream opened instead, reading it would not end.
    with requests.get(url + "sse?" + query, timeout=5, stream=True) as r:
        assert r.status_code == 400
        assert "topic" in r.text
    assert app.broker.stats()["sessions_total"] == 0


def test_app_close_ends_streams_and_clock(app_url):
    app, url = app_url
    with SSEReader(url + "sse") as reader:
        tick = reader.next_event(lambda e: e.event == CLOCK_EVENT, timeout=5)
        assert tick.id  # auto_id: every event is resumable
        app.close()
        reader.read_until_eof(5)
    assert not any(t.name == "gosse-demo-clock" for t in threading.enumerate())
    r = requests.get(url + "sse", timeout=5)
    assert r.status_code == 503
    assert requests.post(url + "publish", data={"data": "x"}, timeout=5).status_code == 503


def test_app_with_own_broker():
    broker = Broker(history=10, auto_id=True, heartbeat_interval=0.2)
    app = create_app(broker, clock_interval=0)  # no clock
    with werkzeug_server(app) as url:
        with SSEReader(url + "/sse?client=me") as reader:
            assert wait_sessions(url + "/", 1)["clients"] == 1
            assert broker.is_client_present("me")
            requests.post(url + "/publish", data={"data": "x"}, timeout=5)
            assert reader.wait_events(1)[0].data == "x"
        app.close()
    assert app._clock is None


# -- gosse demo as a subprocess --------------------------------------------------

def test_demo_serves_page_and_stats(demo):
    assert demo.url.startswith("http://127.0.0.1:")
    page = requests.get(demo.url, timeout=5)
    assert page.status_code == 200 and "gosse demo" in page.text
    stats = requests.get(demo.url + "stats", timeout=5)
    assert stats.headers["Content-Type"] == "application/json"
    assert set(stats.json()) >= {"clients", "sessions", "queued", "events_delivered",
                                 "sessions_dropped_slow", "sessions_total"}


def test_demo_publish_form_and_json_reach_the_stream(demo):
    with SSEReader(demo.url + "sse") as reader:
        before = wait_sessions(demo.url, 1)
        r = requests.post(demo.url + "publish",
                          data={"data": "from a form\nline 2", "event": "news", "id": "f-1"},
                          timeout=5)
        assert r.status_code == 200 and r.json()["delivered"] >= 1
        e = reader.next_event(not_clock)
        assert (e.event, e.data, e.id) == ("news", "from a form\nline 2", "f-1")
        r = requests.post(demo.url + "publish", json={"data": "from JSON <b>"}, timeout=5)
        assert r.status_code == 200
        e = reader.next_event(not_clock)
        assert (e.event, e.data) == ("message", "from JSON <b>")
        assert re.fullmatch(r"[0-9a-z]+-[0-9]+", e.id)  # numbered by the broker
        requests.post(demo.url + "publish", json={"data": {"n": 1}, "event": "j"}, timeout=5)
        assert reader.next_event(not_clock).data == '{"n":1}'
        stats = requests.get(demo.url + "stats", timeout=5).json()
        assert stats["events_delivered"] >= before["events_delivered"] + 3


def test_demo_publish_without_data_is_400(demo):
    r = requests.post(demo.url + "publish", data={"event": "news"}, timeout=5)
    assert r.status_code == 400
    assert r.text.startswith('missing field "data"')
    r = requests.post(demo.url + "publish", json={}, timeout=5)
    assert r.status_code == 400 and '"data"' in r.text


def test_demo_clock_ticks(demo):
    with SSEReader(demo.url + "sse") as reader:
        first = reader.next_event(lambda e: e.event == CLOCK_EVENT, timeout=3)
        second = reader.next_event(lambda e: e.event == CLOCK_EVENT, timeout=3)
    t1 = datetime.datetime.fromisoformat(first.data)
    t2 = datetime.datetime.fromisoformat(second.data)
    assert 0.5 <= (t2 - t1).total_seconds() <= 2
    epoch, n1 = first.id.rsplit("-", 1)
    assert second.id.startswith(epoch + "-") and int(second.id.rsplit("-", 1)[1]) > int(n1)


def test_demo_resumes_from_last_event_id(demo):
    ids = []
    for i in range(3):
        requests.post(demo.url + "publish", data={"data": f"r{i}", "id": f"resume-{i}"},
                      timeout=5).raise_for_status()
        ids.append(f"resume-{i}")
    with SSEReader(demo.url + "sse", headers={"Last-Event-ID": "resume-0"}) as reader:
        got = [reader.next_event(not_clock).data for _ in range(2)]
    assert got == ["r1", "r2"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_demo_signal_ends_streams_and_exits_0(start_demo, sig):
    d = start_demo("--port", "0", "--quiet")
    with SSEReader(d.url + "sse") as reader:
        reader.next_event(lambda e: e.event == CLOCK_EVENT, timeout=3)
        t0 = time.monotonic()
        d.proc.send_signal(sig)
        reader.read_until_eof(3)  # the stream ends cleanly (chunked end, no reset)
    assert d.proc.wait(5) == 0
    assert time.monotonic() - t0 < 3
    err = d.stderr_text()
    assert "gosse demo: stopped" in err and "Traceback" not in err


def test_demo_port_in_use_fails(demo, start_demo):
    port = demo.url.rsplit(":", 1)[1].strip("/")
    d = start_demo("--port", port, wait_url=False)
    assert d.proc.wait(15) == 1
    assert "in use" in d.stderr_text()


def test_demo_threads_needs_gunicorn(start_demo):
    d = start_demo("--threads", "4", wait_url=False)
    assert d.proc.wait(15) == 2
    assert "--threads needs --gunicorn" in d.stderr_text()


def test_demo_gunicorn(start_demo):
    port = free_port()
    d = start_demo("--gunicorn", "--port", str(port), "--threads", "8")
    assert d.url == f"http://127.0.0.1:{port}/"
    lines = [d.next_line() for _ in range(6)]  # the rest of the banner
    running = [line for line in lines if "running:" in line]
    assert running and "-k gthread --threads 8 -w 1" in running[0]
    wait_for_port(port, d.proc)
    with SSEReader(d.url + "sse") as reader:
        assert reader.status == 200 and reader.headers["Server"].startswith("gunicorn")
        wait_sessions(d.url, 1)
        requests.post(d.url + "publish", json={"data": "via gunicorn"},
                      timeout=5).raise_for_status()
        assert reader.next_event(not_clock).data == "via gunicorn"
        # The jobs page's parts work in the worker too: a job's thread
        # publishes on its topic, to the stream that joined it.
        assert requests.get(d.url + "live", timeout=5).status_code == 200
        with SSEReader(d.url + "sse?topic=" + JOBS_TOPIC) as joined:
            r = requests.post(d.url + "jobs", data={"steps": "2"}, timeout=5)
            assert r.status_code == 202
            got = job_events(joined, r.json()["job"])
            assert [(e["done"], e["state"]) for e in got] == [
                (0, "running"), (1, "running"), (2, "done")]
        t0 = time.monotonic()
        d.proc.send_signal(signal.SIGTERM)
        reader.read_until_eof(3)  # the worker hook ends the streams at once
        assert time.monotonic() - t0 < 2
    assert d.proc.wait(10) == 0
    assert "Traceback" not in d.stderr_text()


def test_demo_help():
    out = subprocess.run([sys.executable, "-m", "gosse", "demo", "--help"], cwd=ROOT,
                         env=child_env(), capture_output=True, text=True, timeout=20)
    assert out.returncode == 0
    for option in ("--host", "--port", "--gunicorn", "--threads"):
        assert option in out.stdout
