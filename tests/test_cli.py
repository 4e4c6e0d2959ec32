"""The ``gosse`` command line as a subprocess: ``listen`` against the demo and
against small servers that misbehave on purpose, ``publish``, ``--help``."""
import json
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
import requests

from gosse.cli import build_parser, main
from servers import ROOT, SSEReader, free_port, werkzeug_server
from test_demo import DemoProcess, child_env, not_clock


def run_cli(*args, timeout=20.0):
    return subprocess.run([sys.executable, "-m", "gosse", *args], cwd=ROOT, env=child_env(),
                          capture_output=True, text=True, timeout=timeout)


def start_cli(*args):
    return subprocess.Popen([sys.executable, "-m", "gosse", *args], cwd=ROOT,
                            env=child_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc, timeout=15.0):
    """Wait for a started command; return (returncode, stdout, stderr)."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(5)
        raise AssertionError(f"command still running after {timeout} s; "
                             f"stdout={out!r} stderr={err!r}") from None
    return proc.returncode, out, err


@pytest.fixture(scope="module")
def demo():
    d = DemoProcess("--port", "0", "--quiet")
    yield d
    d.kill()


def sessions_total(url):
    return requests.get(url + "stats", timeout=5).json()["sessions_total"]


def wait_connected(url, baseline, proc, timeout=15.0):
    """Wait until the demo has opened a session beyond ``baseline`` (the
    started listener connected)."""
    deadline = time.monotonic() + timeout
    while sessions_total(url) <= baseline:
        if proc.poll() is not None:
            raise AssertionError(f"listener exited with {proc.returncode}: "
                                 f"{proc.stderr.read()!r}")
        if time.monotonic() > deadline:
            raise TimeoutError("the listener did not connect")
        time.sleep(0.02)


def publish(url, **fields):
    r = requests.post(url + "publish", data=fields, timeout=5)
    r.raise_for_status()


def one_line(text):
    lines = text.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {text!r}"
    return lines[0]


# -- help --------------------------------------------------------------------------

def test_help_lists_commands():
    out = run_cli("--help")
    assert out.returncode == 0 and out.stdout.startswith("usage: gosse")
    for command in ("demo", "listen", "publish"):
        assert command in out.stdout
    for command in ("listen", "publish"):
        assert run_cli(command, "--help").returncode == 0


def test_no_command_is_usage_error(capsys):
    assert main([]) == 2
    assert "usage: gosse" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["listen"])  # URL missing
    assert exc.value.code == 2


def test_parser_options():
    args = build_parser().parse_args(
        ["listen", "http://x/sse", "-e", "a", "-e", "b", "-H", "X-A: 1 2", "--json",
         "--last-event-id", "7", "--count", "3", "--timeout", "1.5"])
    assert args.event == ["a", "b"] and args.header == [("X-A", "1 2")]
    assert (args.json, args.last_event_id, args.count, args.timeout) == (True, "7", 3, 1.5)
    for bad in (["-H", "no colon"], ["--count", "0"], ["--timeout", "-1"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["listen", "http://x/sse", *bad])


# -- gosse listen against the demo ------------------------------------------------

def test_listen_json_count(demo):
    baseline = sessions_total(demo.url)
    proc = start_cli("listen", demo.url + "sse", "--json", "--count", "2", "-e", "message",
                     "-e", "news")
    wait_connected(demo.url, baseline, proc)
    publish(demo.url, data="first")
    publish(demo.url, data="ünï ✓\nsecond line", event="news", id="n-1")
    publish(demo.url, data="not printed")
    code, out, err = finish(proc)
    assert code == 0, err
    objects = [json.loads(line) for line in out.splitlines()]
    assert len(objects) == 2
    assert all(set(o) == {"event", "data", "id", "retry"} for o in objects)
    assert objects[0]["event"] == "message" and objects[0]["data"] == "first"
    assert re.fullmatch(r"[0-9a-z]+-[0-9]+", objects[0]["id"]) and objects[0]["retry"] == 2000
    assert objects[1] == {"event": "news", "data": "ünï ✓\nsecond line", "id": "n-1",
                          "retry": 2000}


def test_listen_human_format_and_last_event_id(demo):
    publish(demo.url, data="before", id="h-0")
    publish(demo.url, data="line 1\nline 2", event="note", id="h-1")
    publish(demo.url, data="plain", id="h-2")
    # Resumes after h-0: the two later events are replayed from the history.
    code, out, err = finish(start_cli("listen", demo.url + "sse", "--last-event-id", "h-0",
                                      "--count", "2", "-e", "note", "-e", "message"))
    assert code == 0, err
    assert out == ("[note] id=h-1 line 1\n"
                   "              line 2\n"
                   "[message] id=h-2 plain\n")


def test_listen_event_filter_clock(demo):
    code, out, err = finish(start_cli("listen", demo.url + "sse", "-e", "clock",
                                      "--count", "1"))
    assert code == 0, err
    assert out.startswith("[clock] id=") and out.count("\n") == 1


def test_listen_ctrl_c_exits_130(demo):
    baseline = sessions_total(demo.url)
    proc = start_cli("listen", demo.url + "sse")
    wait_connected(demo.url, baseline, proc)
    proc.send_signal(signal.SIGINT)
    code, out, err = finish(proc, timeout=5)
    assert code == 130
    assert "Traceback" not in err


def test_listen_timeout(demo):
    t0 = time.monotonic()
    code, out, err = finish(start_cli("listen", demo.url + "sse", "-e", "never",
                                      "--timeout", "0.5"))
    assert (code, out) == (0, ""), err
    code, out, err = finish(start_cli("listen", demo.url + "sse", "-e", "never",
                                      "--count", "1", "--timeout", "0.5"))
    assert (code, out) == (124, ""), err
    assert time.monotonic() - t0 < 10


# -- gosse listen: fatal errors ------------------------------------------------------

def test_listen_connection_refused():
    url = f"http://127.0.0.1:{free_port()}/sse"
    out = run_cli("listen", url)
    assert out.returncode == 1 and out.stdout == ""
    line = one_line(out.stderr)
    assert line.startswith(f"gosse listen: cannot connect to {url}")
    assert "refused" in line.lower()


def test_listen_404(demo):
    out = run_cli("listen", demo.url + "nope")
    assert out.returncode == 1
    line = one_line(out.stderr)
    assert line.startswith("gosse listen: ") and " 404 " in line


def test_listen_wrong_content_type(demo):
    out = run_cli("listen", demo.url + "stats")
    assert out.returncode == 1
    line = one_line(out.stderr)
    assert "application/json" in line and "text/event-stream" in line


def test_listen_bad_url():
    out = run_cli("listen", "not-a-url")
    assert out.returncode == 1
    assert one_line(out.stderr).startswith("gosse listen: ")


# -- gosse listen: headers and reconnection (small purpose-built servers) -------------

def test_listen_sends_headers():
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/event-stream")])
        return [f"data: {environ.get('HTTP_X_TOKEN')}|{environ.get('HTTP_X_OTHER')}\n\n"
                .encode()]

    with werkzeug_server(app) as url:
        code, out, err = finish(start_cli("listen", url + "/sse", "-H", "X-Token: s3cret",
                                          "-H", "X-Other:two", "--count", "1"))
    assert code == 0, err
    assert out == "[message] s3cret|two\n"


def test_listen_reconnects_with_last_event_id():
    lock = threading.Lock()
    connections = []

    def app(environ, start_response):
        with lock:
            connections.append(environ.get("HTTP_LAST_EVENT_ID"))
            n = len(connections)
        start_response("200 OK", [("Content-Type", "text/event-stream")])
        # One event per connection, then the stream ends.
        return [f"retry: 20\nid: {n}\ndata: last={connections[-1]}\n\n".encode()]

    with werkzeug_server(app) as url:
        code, out, err = finish(start_cli("listen", url + "/sse", "--json", "--count", "3"))
    assert code == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    assert [(e["id"], e["data"], e["retry"]) for e in events] == [
        ("1", "last=None", 20), ("2", "last=1", 20), ("3", "last=2", 20)]


def test_listen_fatal_error_on_reconnect():
    calls = []

    def app(environ, start_response):
        calls.append(1)
        if len(calls) == 1:
            start_response("200 OK", [("Content-Type", "text/event-stream")])
            return [b"retry: 20\ndata: once\n\n"]
        start_response("410 Gone", [("Content-Type", "text/plain")])
        return [b"gone\n"]

    with werkzeug_server(app) as url:
        code, out, err = finish(start_cli("listen", url + "/sse"))
    assert code == 1
    assert out == "[message] once\n"
    assert " 410 " in one_line(err)


def test_listen_204_ends_quietly():
    calls = []

    def app(environ, start_response):
        calls.append(1)
        if len(calls) == 1:
            start_response("200 OK", [("Content-Type", "text/event-stream")])
            return [b"retry: 20\ndata: last one\n\n"]
        start_response("204 No Content", [])
        return []

    with werkzeug_server(app) as url:
        code, out, err = finish(start_cli("listen", url + "/sse"))
    assert (code, out, err) == (0, "[message] last one\n", "")


# -- gosse publish ------------------------------------------------------------------

def test_publish(demo):
    with SSEReader(demo.url + "sse") as reader:
        out = run_cli("publish", demo.url + "publish", "--data", "hi <there>",
                      "--event", "greeting", "--id", "p-1")
        assert out.returncode == 0, out.stderr
        assert re.fullmatch(r"published to [1-9]\d* streams?\n", out.stdout)
        e = reader.next_event(not_clock)
        assert (e.event, e.data, e.id) == ("greeting", "hi <there>", "p-1")
        # A URL without a path means the demo's /publish.
        out = run_cli("publish", demo.url.rstrip("/"), "-d", "short form")
        assert out.returncode == 0, out.stderr
        e = reader.next_event(not_clock)
        assert (e.event, e.data) == ("message", "short form")


def test_publish_errors(demo):
    out = run_cli("publish", demo.url + "publish")  # --data is required
    assert out.returncode == 2 and "--data" in out.stderr
    out = run_cli("publish", demo.url + "nope", "--data", "x")
    assert out.returncode == 1 and " 404 " in one_line(out.stderr)
    url = f"http://127.0.0.1:{free_port()}/publish"
    out = run_cli("publish", url, "--data", "x")
    assert out.returncode == 1
    assert one_line(out.stderr).startswith(f"gosse publish: cannot connect to {url}")


# -- gosse listen: a late response head, credentials (issue 13: defects 9, 11) -------

def _late_head(delay):
    def handler(conn):
        time.sleep(delay)         # go-sse sends its head with its first heartbeat
        conn.start()
        conn.write(b"data: late\n\n")
        conn.hold(timeout=10)
    return handler


def test_listen_timeout_while_the_server_has_not_sent_its_head():
    from rawserver import RawServer
    with RawServer(_late_head(3.0)) as server:
        r = run_cli("listen", server.url(), "--count", "1", "--timeout", "1")
        code, out, err = r.returncode, r.stdout, r.stderr
        assert (code, out) == (124, ""), err
        r = run_cli("listen", server.url(), "--timeout", "1")
        code, out, err = r.returncode, r.stdout, r.stderr
        assert (code, out) == (0, ""), err


def test_listen_waits_for_a_late_head():
    from rawserver import RawServer
    with RawServer(_late_head(1.0)) as server:
        r = run_cli("listen", server.url(), "--count", "1", "--timeout", "8")
        code, out, err = r.returncode, r.stdout, r.stderr
        assert (code, out) == (0, "[message] late\n"), err


def test_listen_verbose_redacts_credentials():
    from rawserver import RawServer, sse, status
    with RawServer([sse(b"data: one\n\n", hold=False), status(401, b"no")]) as server:
        url = f"http://bob:hunter2@127.0.0.1:{server.port}/sse?access_token=tok-xyz"
        r = run_cli("listen", "-v", url, "--count", "2", "--timeout", "8")
        code, out, err = r.returncode, r.stdout, r.stderr
        assert code == 1 and out == "[message] one\n", err
        assert "401" in err and "connected to" in err
        assert "hunter2" not in err and "tok-xyz" not in err, err
