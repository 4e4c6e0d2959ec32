"""The deployment defects of issue 14, each against the real server or
proxy (tests/deploy.py; the app is tests/deploy_app.py).  They back the
the deployment guide's (docs/guides/gunicorn.rst): where the defect was in the code, the test
failed before the fix; where it was in the docs, the test checks what the
docs now say.  (The whole matrix is tests/test_deploy_matrix.py.)
"""
import signal
import subprocess
import time

import pytest
import requests

from defects_app import payload
from deploy import BY_NAME, past_hand_over, sigterm
from rawhttp import FramingError, RawStream
from servers import (
    free_port,
    require_uwsgi,
    require_waitress,
    server_process,
    uwsgi_command,
    wait_for_port,
    wait_until,
    waitress_command,
)

pytestmark = pytest.mark.timeout(60)


def proc_stats(url, timeout=10):
    return requests.get(f"{url}/proc", headers={"Connection": "close"}, timeout=timeout).json()


def expect_clean_sigterm(deployment, **env):
    """A stream with 3 events; SIGTERM: the stream ends with the last chunk
    within 5 s, the client leaves, the server exits 0 within 5 s, no
    traceback or error in its log."""
    with deployment.start(**env) as running:
        url = running.url
        with RawStream(url, "/sse?client=t", timeout=10) as s:
            assert s._read_chunk(65536) == b":ok\n\n"
            if deployment.per_worker != 1:
                requests.post(f"{url}/burst", params={"n": 3, "size": 100, "tag": "t"},
                              timeout=5)
                s.read_events(3)
            else:
                past_hand_over(s)
            t0 = time.monotonic()
            sigterm(running)
            try:
                s.read_to_end()
            except (FramingError, OSError, EOFError) as exc:
                pytest.fail(f"the stream was cut {time.monotonic() - t0:.2f} s after "
                            f"SIGTERM: {exc!r}\n{running.log()[-3000:]}")
            ended = time.monotonic() - t0
            assert ended < 5, f"the stream ended {ended:.2f} s after SIGTERM"
        rc = running.proc.wait(10)
        stopped = time.monotonic() - t0
        log = running.log()
        assert rc == 0, (rc, log[-3000:])
        assert stopped < 5, f"exited {stopped:.2f} s after SIGTERM"
        assert "Traceback" not in log and "[ERROR]" not in log, log[-3000:]


# -- defect 1: the gunicorn hooks under every worker class -----------------------------

@pytest.mark.parametrize("worker", ["gthread", "sync", "gevent", "eventlet"])
def test_gunicorn_hooks_end_streams_cleanly_on_sigterm(worker):
    """``-c python:gosse.contrib.gunicorn``: before the fix the gevent and
    eventlet workers crashed in the SIGTERM handler (a thread started and
    waited for inside the event loop) and cut the stream."""
    expect_clean_sigterm(BY_NAME[f"gunicorn-{worker}"])


# -- defect 2: waitress -------------------------------------------------------------

def test_waitress_notices_a_departed_client_within_a_second():
    """heartbeat_interval 15 s: a client that closes is noticed through
    ``waitress.client_disconnected`` (``--channel-request-lookahead=1``),
    not at the next failed write (before the fix: after 2 heartbeats)."""
    require_waitress()
    with BY_NAME["waitress"].start(GOSSE_T_HEARTBEAT="15") as running:
        url = running.url
        s = RawStream(url, "/sse?client=gone", timeout=5)
        assert s._read_chunk(65536) == b":ok\n\n"
        assert wait_until(lambda: proc_stats(url)["sessions"] == 1, timeout=5)
        s.close()
        t0 = time.monotonic()
        assert wait_until(lambda: proc_stats(url)["sessions"] == 0, timeout=3), \
            "waitress: the departed client is still a session 3 s later"
        assert time.monotonic() - t0 < 2.0


@pytest.mark.parametrize("threads, answered", [(4, False), (8, True)])
def test_waitress_threads_must_exceed_the_streams(threads, answered):
    """The documented sizing: each stream holds a waitress thread.  4 streams
    with waitress's default ``threads=4``: no other request is answered;
    with ``threads=8`` (streams + 4) it is."""
    require_waitress()
    port = free_port()
    with server_process(waitress_command("deploy_app:app", port, threads=threads), port) as (
            url, proc):
        streams = [RawStream(url, f"/sse?client=s{i}", timeout=5) for i in range(4)]
        try:
            for s in streams:
                assert s._read_chunk(65536) == b":ok\n\n"
            try:
                sessions = proc_stats(url, timeout=2)["sessions"]
            except requests.ReadTimeout:
                sessions = None
            if answered:
                assert sessions == 4
            else:
                assert sessions is None, "answered with every thread holding a stream"
        finally:
            for s in streams:
                s.close()


def test_waitress_old_send_bytes_holds_events_back():
    """``send_bytes=18000`` (waitress's default before 1.4): small events
    sit in waitress's buffer; the deployment guide says to leave it at 1."""
    require_waitress()
    port = free_port()
    command = waitress_command("deploy_app:app", port, extra=["--send-bytes=18000"])
    with server_process(command, port) as (url, proc):
        with pytest.raises(OSError):   # socket.timeout: not even the response head arrives
            RawStream(url, "/sse?client=sb", timeout=1.5)
        assert proc_stats(url)["sessions"] == 1   # the stream is open, its bytes held back


# -- defect 3: uWSGI ----------------------------------------------------------------

@pytest.mark.parametrize("mode", ["http", "http-socket"])
def test_uwsgi_streams_after_the_first_bytes(mode):
    """uWSGI calls the body's ``__next__`` from C: before the fix the stream
    died right after its first bytes (``sys._getframe(2)``: "call stack is
    not deep enough")."""
    require_uwsgi()
    with BY_NAME[f"uwsgi-{mode}"].start() as running:
        url = running.url
        with RawStream(url, "/sse?client=u", timeout=5) as s:
            assert wait_until(lambda: proc_stats(url)["sessions"] == 1, timeout=5)
            requests.post(f"{url}/burst", params={"n": 5, "size": 100}, timeout=5)
            s.read_events(5)
            assert [e.data for e in s.events] == [payload("b", i, 100) for i in range(5)]


@pytest.mark.parametrize("die_on_term", [True, False])
def test_uwsgi_sigterm_stops_only_with_die_on_term(die_on_term):
    """uWSGI 2.0: SIGTERM reloads the workers unless ``--die-on-term``."""
    require_uwsgi()
    port = free_port()
    command = uwsgi_command("deploy_app:app", port, "http-socket", die_on_term=die_on_term)
    with server_process(command, port) as (url, proc):
        first = proc_stats(url)["pid"]
        proc.send_signal(signal.SIGTERM)
        if die_on_term:
            assert proc.wait(10) == 0
        else:
            with pytest.raises(subprocess.TimeoutExpired):
                proc.wait(3)          # still running: it reloaded
            wait_for_port(port, proc)
            assert wait_until(lambda: proc_stats(url)["pid"] != first, timeout=10)
            proc.send_signal(signal.SIGINT)   # uWSGI's "stop now"
            assert proc.wait(10) == 0


# -- defect 4: nginx in front ----------------------------------------------------------

@pytest.mark.parametrize("name, protocol, direct", [
    ("nginx-http11-gunicorn", "HTTP/1.1", 1), ("nginx-http10-gunicorn", "HTTP/1.0", 0)])
def test_nginx_upstream_protocol_and_the_fast_path(name, protocol, direct):
    """With the documented block gunicorn sees HTTP/1.1 and the stream takes
    the writer (``sessions_direct``); with nginx's default 1.0 it streams,
    without the fast path."""
    with BY_NAME[name].start() as running:
        url = running.url
        with RawStream(url, "/sse?client=n", timeout=5) as s:
            assert s._read_chunk(65536) == b":ok\n\n"
            assert wait_until(lambda: proc_stats(url)["sessions"] == 1, timeout=5)
            stats = proc_stats(url)
            assert stats["protocol"] == protocol
            assert wait_until(lambda: proc_stats(url)["sessions_direct"] == direct, timeout=2)
            requests.post(f"{url}/burst", params={"n": 3, "size": 100}, timeout=5)
            s.read_events(3)
            assert [e.id for e in s.events] == ["b-0", "b-1", "b-2"]


def test_nginx_reuses_the_upstream_connection_after_a_server_ended_stream():
    """HTTP/1.1 upstream keepalive: the upstream connection that carried a
    stream the server ended carries the next request, byte-correct."""
    with BY_NAME["nginx-http11-gunicorn"].start() as running:
        url = running.url
        with RawStream(url, "/sse?client=r", timeout=5) as s:
            assert s._read_chunk(65536) == b":ok\n\n"
            assert wait_until(lambda: proc_stats(url)["sessions"] == 1, timeout=5)
            port = proc_stats(url)["stream_port"]
            # End the stream with a request that does not pass nginx: the
            # stream's upstream connection is then the last one nginx freed
            # (its keepalive cache hands out the last freed first).
            assert requests.post(f"{running.upstream}/close/r", timeout=5).text == "1"
            s.read_to_end()
            ports = set()
            for _ in range(20):   # nginx takes its cached connections in turn
                head, body = s.next_response("/whoami")
                assert head.startswith(b"HTTP/1.1 200") and body.isdigit(), (head, body)
                ports.add(body.decode())
                if port in ports:
                    break
            assert port in ports, f"upstream connection {port} not reused: {ports}"


# -- defect 5: gunicorn --timeout ------------------------------------------------------

@pytest.mark.parametrize("worker, cut", [("sync", True), ("gthread", False)])
def test_gunicorn_timeout_cuts_a_stream_only_under_the_sync_worker(worker, cut):
    """``--timeout 2``: the sync worker is killed under its stream (the
    README said --timeout never trips long streams); gthread's heartbeat
    does not depend on the request."""
    from servers import gunicorn_server
    with gunicorn_server("deploy_app:app", worker_class=worker, env={"GOSSE_T_HEARTBEAT": "0.5"},
                         extra=("--timeout", "2")) as (url, proc):
        with RawStream(url, "/sse?client=long", timeout=8) as s:
            assert s._read_chunk(65536) == b":ok\n\n"
            deadline = time.monotonic() + 5
            try:
                while time.monotonic() < deadline:
                    assert s._read_chunk(65536) == b":\n\n"   # heartbeats
                survived = True
            except (FramingError, OSError, EOFError):
                survived = False
            assert survived != cut, ("cut" if cut else "not cut") + " expected"


# -- defect 6: servers without hooks: the app-level recipe -----------------------------

@pytest.mark.parametrize("name", ["werkzeug", "waitress", "django-runserver"])
def test_close_on_sigterm_recipe_ends_streams_cleanly(name):
    deployment = BY_NAME[name]
    if deployment.chunked:
        expect_clean_sigterm(deployment)
        return
    with deployment.start() as running:   # close-delimited: every event whole, then EOF
        with RawStream(running.url, "/sse?client=t", timeout=10) as s:
            requests.post(f"{running.url}/burst", params={"n": 3, "size": 100, "tag": "t"},
                          timeout=5)
            s.read_events(3)
            sigterm(running)
            s.sock.settimeout(5)
            while True:
                data = s.sock.recv(65536)
                if not data:
                    break
                s._take(data)
        assert running.proc.wait(10) == 0
        assert s.body.endswith(b"\n\n")


@pytest.mark.parametrize("name", ["werkzeug", "waitress"])
def test_without_the_recipe_sigterm_cuts_the_stream(name):
    """The control experiment: the same servers without the recipe."""
    deployment = BY_NAME[name]
    with deployment.start(GOSSE_T_RECIPE="none") as running:
        with RawStream(running.url, "/sse?client=t", timeout=10) as s:
            assert s._read_chunk(65536) == b":ok\n\n"
            sigterm(running)
            with pytest.raises((FramingError, OSError, EOFError)):
                s.read_to_end()


# -- the recipes in examples/ ------------------------------------------------------------

def test_waitress_example_streams_and_stops_cleanly():
    """examples/waitress_app.py: a stream, an event, SIGTERM: the last chunk."""
    import os
    import sys

    from servers import ROOT
    require_waitress()
    port = free_port()
    with server_process([sys.executable, os.path.join(ROOT, "examples", "waitress_app.py")],
                        port, env={"PORT": str(port), "STREAMS": "4"}) as (url, proc):
        with RawStream(url, "/sse", timeout=5) as s:
            assert s._read_chunk(65536) == b":ok\n\n"
            # bytes: requests 2.25 (the oldest allowed) sends a str body as latin-1
            assert requests.post(f"{url}/say", data="héllo".encode(), timeout=5).text == "1"
            s.read_events(1)
            assert s.events[0].data == "héllo"
            proc.send_signal(signal.SIGTERM)
            s.read_to_end()
        assert proc.wait(10) == 0


def test_uwsgi_example_ini_serves_streams():
    """examples/uwsgi.ini, on a free port."""
    import os

    from servers import ROOT
    require_uwsgi()
    port = free_port()
    binary = uwsgi_command("x:app", port)[0]
    ini = os.path.join(ROOT, "examples", "uwsgi.ini")
    with server_process([binary, "--ini", ini, "--http-socket", f"127.0.0.1:{port}",
                         "--disable-logging"], port, env={"BROADCAST_EVERY": "0.1"}) as (
            url, proc):
        with RawStream(url, "/sse", timeout=5) as s:
            s.read_events(2)
            assert s.events[0].event == "foo_update"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0


# -- the "Known limits" column of the deployment table --------------------------------------

def test_gevent_exit_waits_for_a_client_that_keeps_its_connection():
    """gevent: after the streams ended cleanly, a client that keeps the
    keep-alive connection open holds the worker's exit (up to --keep-alive,
    30 s here); once it leaves, gunicorn exits at once."""
    with BY_NAME["gunicorn-gevent"].start() as running:
        with RawStream(running.url, "/sse?client=k", timeout=10) as s:
            assert s._read_chunk(65536) == b":ok\n\n"
            past_hand_over(s)
            sigterm(running)
            s.read_to_end()
            with pytest.raises(subprocess.TimeoutExpired):
                running.proc.wait(2)      # still running: the connection is open
        t0 = time.monotonic()
        assert running.proc.wait(10) == 0
        # Soon, not after --keep-alive (30 s): gunicorn's gevent worker looks
        # at its connections once a second (1.5-1.8 s measured; 3.5 s at
        # load 10-14 on 2 cores, the compat matrix).
        assert time.monotonic() - t0 < 8


def test_sync_worker_answers_nothing_else_while_it_streams():
    with BY_NAME["gunicorn-sync"].start() as running:
        with RawStream(running.url, "/sse?client=busy", timeout=10) as s:
            assert s._read_chunk(65536) == b":ok\n\n"
            with pytest.raises(requests.ReadTimeout):
                requests.get(f"{running.url}/stats", timeout=1.5)
        assert wait_until(lambda: proc_stats(running.url)["sessions"] == 0, timeout=5)


def test_waitress_buffers_a_slow_reader_before_gosse_does():
    """A reader that stopped reading: 160 broadcasts of 64 KiB (10 MiB, more
    than the kernel's socket buffers hold) all leave gosse's queue while the
    reader reads nothing: waitress holds them (its outbuf, up to
    outbuf_high_watermark, 16 MiB), so gosse's queue_bytes does not see them."""
    require_waitress()
    with BY_NAME["waitress"].start(GOSSE_T_QUEUE_BYTES=str(64 << 20),
                                   GOSSE_T_QUEUE="100000") as running:
        url = running.url
        with RawStream(url, "/sse?client=slow", rcvbuf=4096, timeout=10) as s:
            assert s._read_chunk(65536) == b":ok\n\n"
            assert wait_until(lambda: proc_stats(url)["sessions"] == 1, timeout=5)
            result = requests.post(f"{url}/burst", params={"n": 160, "size": 64 * 1024},
                                   timeout=20).json()
            assert result["n"] == 160
            assert wait_until(lambda: proc_stats(url)["queued"] == 0, timeout=5), proc_stats(url)
            stats = proc_stats(url)
            assert stats["sessions"] == 1 and stats["sessions_dropped_slow"] == 0, stats
