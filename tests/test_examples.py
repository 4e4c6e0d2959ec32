"""Every example runs: started as a subprocess, exercised over HTTP."""
import os
import re
import subprocess
import sys

import pytest
import requests

from servers import ROOT, SSEReader, free_port, gunicorn_server, wait_for_port

EXAMPLES = os.path.join(ROOT, "examples")


@pytest.fixture
def run_example():
    procs = []

    def start(name, **env):
        port = free_port()
        proc = subprocess.Popen([sys.executable, os.path.join(EXAMPLES, name)],
                                env={**os.environ, "PORT": str(port), "PYTHONPATH": ROOT,
                                     **env},
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        procs.append(proc)
        wait_for_port(port, proc)
        return f"http://127.0.0.1:{port}"

    yield start
    for p in procs:
        p.terminate()
        p.wait(10)
        p.stdout.close()


def test_broadcast_message(run_example):
    url = run_example("broadcast_message.py", BROADCAST_EVERY="0.1")
    with SSEReader(f"{url}/sse") as r:
        e1, e2 = r.wait_events(2)
        assert e1.event == "foo_update" and int(e2.id) == int(e1.id) + 1


def test_custom_heartbeat_interval(run_example):
    url = run_example("custom_heartbeat_interval.py")
    with SSEReader(f"{url}/sse") as r:
        r.sock.settimeout(6)
        r.read_some()
        assert r.read_some() == b":\n\n"


def test_send_to_client_using_reference(run_example):
    url = run_example("send_to_client_using_reference.py")
    with SSEReader(f"{url}/sse?client=alice") as alice, SSEReader(f"{url}/sse?client=bob") as bob:
        r = requests.post(f"{url}/send?client=alice", data={"data": "hi"}, timeout=5)
        assert r.status_code == 200
        assert [(e.event, e.data) for e in alice.wait_events(1)] == [("private", "hi")]
        assert requests.post(f"{url}/send?client=carol", data={"data": "x"},
                             timeout=5).status_code == 404
        assert requests.post(f"{url}/send?client=bob", data={"data": "b"}, timeout=5).ok
        assert [e.data for e in bob.wait_events(1)] == ["b"]  # nothing of alice's first


def test_send_to_client_with_multiple_sessions(run_example):
    url = run_example("send_to_client_with_multiple_sessions.py")
    with SSEReader(f"{url}/sse?client=bob") as t1, SSEReader(f"{url}/sse?client=bob") as t2:
        w1, w2 = t1.wait_events(1)[0], t2.wait_events(1)[0]
        assert w1.event == "hello" and w1.data != w2.data  # own session ids
        r = requests.post(f"{url}/send?client=bob", data={"data": "both"}, timeout=5)
        assert r.json()["sessions"] == 2
        assert t1.wait_events(2)[1].data == "both" and t2.wait_events(2)[1].data == "both"


def test_gunicorn_conf_and_django_project():
    conf = os.path.join(EXAMPLES, "gunicorn.conf.py")
    with gunicorn_server("django_project", extra=["-c", conf, "--chdir", EXAMPLES]) as (url, _):
        with SSEReader(f"{url}/events") as r:
            assert r.status == 200
            r.sock.settimeout(5)
            r.read_some()
            assert requests.get(f"{url}/broadcast?data=dj", timeout=5).text.startswith("sent to 1")
            [e] = r.wait_events(1)
            assert e.data == "dj" and re.fullmatch(r"[0-9a-z]+-1", e.id)


def test_signed_cookie_auth(run_example):
    url = run_example("signed_cookie_auth.py", SECRET_KEY="test-secret")
    assert requests.get(f"{url}/sse", timeout=5).status_code == 401
    alice, bob = requests.Session(), requests.Session()
    assert alice.get(f"{url}/login?user=alice", timeout=5).ok
    assert bob.get(f"{url}/login?user=bob", timeout=5).ok
    assert bob.get(f"{url}/sse?topics=staff", timeout=5).status_code == 403
    forged = {"Cookie": "session=eyJ1c2VyIjoiYWxpY2UifQ.forged.sig"}
    assert requests.get(f"{url}/sse", headers=forged, timeout=5).status_code == 401

    def cookie(s):
        return {"Cookie": "; ".join(f"{k}={v}" for k, v in s.cookies.items())}

    with SSEReader(f"{url}/sse?topics=news", headers=cookie(alice)) as ra, \
            SSEReader(f"{url}/sse?topics=news", headers=cookie(bob)) as rb:
        assert ra.status == rb.status == 200
        assert requests.post(f"{url}/notify/alice", data={"data": "for alice"},
                             timeout=5).ok
        assert requests.post(f"{url}/news", data={"data": "n"}, timeout=5).text == "2\n"
        assert [e.data for e in ra.wait_events(2)] == ["for alice", "n"]
        assert [e.data for e in rb.wait_events(1)] == ["n"]  # never alice's private event
