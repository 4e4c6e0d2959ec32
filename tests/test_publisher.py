"""Publishing from anywhere (issue 15): ``gosse.backplane.redis.Publisher``
in a plain script, ``gosse publish --redis`` and a Celery worker, each
publishing into a real gunicorn app with two workers and a RedisBackplane
on a real redis-server; the streams are read over HTTP."""
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest
import requests

from gosse import BackplaneConfigError, BrokerClosedError, Event, UnknownClientError
from gosse.event import RESET_EVENT

pytest.importorskip("redis")
from gosse.backplane.redis import Publisher  # noqa: E402
from redis_fixture import RedisServer, redis_server, require_redis_server  # noqa: E402,F401
from servers import ROOT, SSEReader, free_port, gunicorn_server  # noqa: E402

WORKERS = 2
MAX_SESSIONS = 4        # per worker: a full worker answers 503, so streams spread
AUTO_ID = re.compile(r"[0-9a-z]{8}-[0-9]+-[0-9]+")
EXAMPLE = os.path.join(ROOT, "examples", "celery_publish")
ENV = {**os.environ, "PYTHONPATH": ROOT}


class App:
    """The gunicorn app of tests/redis_app.py: streams on two workers."""

    def __init__(self, url, redis_url, prefix):
        self.url, self.redis_url, self.prefix = url, redis_url, prefix

    def sse(self, client, topics=(), last_id=None):
        headers = {"Last-Event-ID": last_id} if last_id is not None else None
        query = f"client={client}&topics={','.join(topics)}"
        for _ in range(100):
            r = SSEReader(f"{self.url}/sse?{query}", headers=headers)
            if r.status != 503:      # that worker is full: connect again
                break
            r.close()
            time.sleep(0.02)
        assert r.status == 200
        r.pid = int(r.headers["X-Worker-Pid"])
        r.client = client
        return r

    def spread(self):
        """One stream on each worker: (reader on one, reader on the other)."""
        readers = {}
        opened = []
        for i in range(WORKERS * MAX_SESSIONS):
            r = self.sse(f"u{i}-{uuid.uuid4().hex[:6]}")
            opened.append(r)
            readers.setdefault(r.pid, r)
            if len(readers) == WORKERS:
                break
        for r in opened:
            if r not in readers.values():
                r.close()
        assert len(readers) == WORKERS, "the streams did not spread over the workers"
        return list(readers.values())


@pytest.fixture(scope="module")
def app():
    server = RedisServer(require_redis_server()).start()
    prefix = "p" + uuid.uuid4().hex[:8]
    env = {"GOSSE_REDIS_URL": server.url, "GOSSE_REDIS_PREFIX": prefix,
           "GOSSE_TEST_HEARTBEAT": "0.5", "GOSSE_TEST_MAX_SESSIONS": str(MAX_SESSIONS)}
    try:
        with gunicorn_server("redis_app:app", workers=WORKERS, threads=20, env=env) as (url, _):
            yield App(url, server.url, prefix)
    finally:
        server.stop()


def run_script(code, timeout=20):
    proc = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def until(reader, data, timeout=10):
    """The events of ``reader`` up to the one with ``data`` (which every
    test publishes last: events arrive in stream order, so whatever else,
    a duplicate too, would have arrived before it)."""
    reader.next_event(lambda e: e.data == data, timeout=timeout)
    events = [e for e in reader.events if e.event != RESET_EVENT]
    return events[:[e.data for e in events].index(data) + 1]


SCRIPT = """
import json, threading
from gosse import Event, UnknownClientError
from gosse.backplane.redis import Publisher

with Publisher({url!r}, prefix={prefix!r}) as p:
    ids = {{"b1": p.broadcast(Event("b1")),
           "to-x": p.send({x!r}, Event("to-x", event="note")),
           "to-y": p.send({y!r}, Event("to-y")),
           "n1": p.publish("news", Event("n1")),
           "own": p.broadcast(Event("own", id="my-id"))}}
    try:
        p.send("nobody-" + {x!r}, Event("lost"))
        nobody = "delivered?"
    except UnknownClientError as exc:
        nobody = str(exc)
    ids["end"] = p.broadcast(Event("end"))
print(json.dumps({{"ids": ids, "nobody": nobody, "threads": threading.active_count()}}))
"""


def test_a_plain_script_publishes_to_streams_on_every_worker(app):
    x, y = app.spread()
    watcher = app.sse("watcher-" + uuid.uuid4().hex[:6], topics=["news"])
    try:
        out = run_script(SCRIPT.format(url=app.redis_url, prefix=app.prefix,
                                       x=x.client, y=y.client))
        ids = out["ids"]
        assert out["threads"] == 1, "the publisher started a thread"
        assert "nobody-" in out["nobody"]
        for name in ("b1", "to-x", "to-y", "n1", "end"):
            assert AUTO_ID.fullmatch(ids[name]), ids
        assert len({ids[n].split("-")[0] for n in ("b1", "to-x", "n1", "end")}) == 1
        assert ids["own"] == "my-id"
        expected = {x: ["b1", "to-x", "own", "end"], y: ["b1", "to-y", "own", "end"],
                    watcher: ["b1", "n1", "own", "end"]}
        seen = {reader: until(reader, "end") for reader in expected}
        for reader, wanted in expected.items():
            assert [e.data for e in seen[reader]] == wanted, f"worker {reader.pid}"
            assert [e.id for e in seen[reader]] == [ids[d] for d in wanted]
        assert seen[x][1].event == "note"
    finally:
        for r in (x, y, watcher):
            r.close()
    # The auto ids resume on any worker: after b1, x's client missed to-x, own, end.
    with app.sse(x.client, last_id=ids["b1"]) as again:
        assert [e.data for e in until(again, "end")] == ["to-x", "own", "end"]


FORK_SCRIPT = """
import json, os
from gosse import Event
from gosse.backplane.redis import Publisher

p = Publisher({url!r}, prefix={prefix!r})
p.broadcast(Event("before fork"))     # the parent's pool holds a connection now
pid = os.fork()
if pid == 0:
    p.broadcast(Event("from child"))
    os._exit(0)
_, status = os.waitpid(pid, 0)
p.broadcast(Event("from parent"))
p.close()
print(json.dumps({{"child_status": status}}))
"""


def test_a_publisher_created_before_a_fork_works_in_the_child(app):
    # Celery's default (prefork) pool imports the tasks module, then forks.
    reader = app.sse("fork-" + uuid.uuid4().hex[:6])
    try:
        out = run_script(FORK_SCRIPT.format(url=app.redis_url, prefix=app.prefix))
        assert out["child_status"] == 0
        assert [e.data for e in until(reader, "from parent")] == [
            "before fork", "from child", "from parent"]
    finally:
        reader.close()


def gosse_cli(*args, env=None, timeout=20):
    return subprocess.run([sys.executable, "-m", "gosse", "publish", *args],
                          env={**ENV, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)


def test_cli_publishes_through_redis(app):
    reader = app.sse("cli-" + uuid.uuid4().hex[:6], topics=["ops"])
    try:
        sent = gosse_cli("--redis", app.redis_url, "--prefix", app.prefix,
                         "--client", reader.client, "--event", "note", "--data", "hello")
        assert sent.returncode == 0, sent.stderr
        sent_id = sent.stdout.split(", id ")[-1].strip()
        assert AUTO_ID.fullmatch(sent_id), sent.stdout
        topic = gosse_cli("--redis", "--prefix", app.prefix, "--topic", "ops",
                          "--data", "deploy done", "--id", "d1",
                          env={"GOSSE_REDIS_URL": app.redis_url})
        assert topic.returncode == 0, topic.stderr
        assert topic.stdout.strip().endswith(", id d1")
        nobody = gosse_cli("--redis", app.redis_url, "--prefix", app.prefix,
                           "--client", "nobody-here", "--data", "x")
        assert nobody.returncode == 5, nobody.stderr
        assert "nobody-here" in nobody.stderr and nobody.stdout == ""
        last = gosse_cli("--redis", app.redis_url, "--prefix", app.prefix, "--data", "end")
        assert last.returncode == 0, last.stderr
        events = until(reader, "end")
        assert [(e.event, e.data, e.id) for e in events[:2]] == [
            ("note", "hello", sent_id), ("message", "deploy done", "d1")]
        assert len(events) == 3
    finally:
        reader.close()


def test_cli_failures_have_their_exit_status_and_mask_the_password():
    require_redis_server()
    # Unreachable: nothing listens on that port.
    port = free_port()
    down = gosse_cli("--redis", f"redis://:hunter22@127.0.0.1:{port}/0", "--data", "x",
                     "--timeout", "2")
    assert down.returncode == 3, down.stderr
    assert "unavailable" in down.stderr and "hunter22" not in down.stderr + down.stdout
    assert "redis://:***@127.0.0.1" in down.stderr
    # No answer: a peer that accepts the connection and never replies.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)
    try:
        lost = gosse_cli("--redis", f"redis://127.0.0.1:{silent.getsockname()[1]}/0",
                         "--data", "x", "--timeout", "0.5")
    finally:
        silent.close()
    # redis-py 5 and later wait for the answer to a handshake (CLIENT
    # SETINFO) before sending anything: certainly not published (3).  4.5
    # sends the command at once, and its answer is what never comes (4).
    assert lost.returncode in (3, 4), lost.stderr
    assert ("may or may not" if lost.returncode == 4 else "unavailable") in lost.stderr
    # Usage errors: a bad URL (masked), --client without --redis.
    bad = gosse_cli("--redis", "http://:hunter22@127.0.0.1/0", "--data", "x")
    assert bad.returncode == 2 and "hunter22" not in bad.stderr and "scheme" in bad.stderr
    assert gosse_cli("http://127.0.0.1:1/publish", "--client", "a",
                     "--data", "x").returncode == 2


def test_cli_wrong_password_is_a_refusal_not_an_outage():
    with RedisServer(require_redis_server()) as server:
        server.client().config_set("requirepass", "right-pw-1")
        wrong = gosse_cli("--redis", f"redis://:wrong-pw-2@127.0.0.1:{server.port}/0",
                          "--data", "x")
        assert wrong.returncode == 1, wrong.stderr
        assert "rejected the credentials" in wrong.stderr and "wrong-pw-2" not in wrong.stderr
        ok = gosse_cli("--redis", "--data", "x", env={
            "GOSSE_REDIS_URL": f"redis://:right-pw-1@127.0.0.1:{server.port}/0"})
        assert ok.returncode == 0, ok.stderr
        assert "right-pw-1" not in ok.stdout + ok.stderr and ":***@" in ok.stdout


def test_publisher_api_errors_and_secrets(redis_server):  # noqa: F811
    # Nothing listens there (a password the server does not expect would be
    # refused at construction, as it should).
    url = f"redis://:pw-secret-9@127.0.0.1:{free_port()}/0"
    before = set(threading.enumerate())
    with pytest.raises(BackplaneConfigError) as bad:
        Publisher("redis://:pw-secret-9@127.0.0.1:bad/0")
    assert "pw-secret-9" not in str(bad.value)
    prefix = "q" + uuid.uuid4().hex[:8]
    publisher = Publisher(redis_server.url, prefix=prefix)
    assert "pw-secret-9" not in repr(Publisher(url)) + Publisher(url).url
    with publisher:
        with pytest.raises(TypeError):
            publisher.broadcast("not an event")
        with pytest.raises(TypeError):
            publisher.send(42, Event("x"))
        with pytest.raises(ValueError):
            publisher.publish("bad \udc80 topic", Event("x"))
        with pytest.raises(UnknownClientError):
            publisher.send("nobody", Event("x"))
        assert AUTO_ID.fullmatch(publisher.publish("nobody listens", Event("x")))
        with Publisher(redis_server.url, prefix=prefix, auto_id=False) as plain:
            assert plain.broadcast(Event("no id")) is None
        # Neither the refused send nor the type errors appended anything.
        assert redis_server.client().xlen(f"{prefix}:events") == 2
        threads = [threading.Thread(target=publisher.broadcast, args=(Event(f"t{i}"),))
                   for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert redis_server.client().xlen(f"{prefix}:events") == 10
    assert publisher.closed and "closed" in repr(publisher)
    with pytest.raises(BrokerClosedError):
        publisher.broadcast(Event("late"))
    assert set(threading.enumerate()) - before == set()


def test_celery_task_reports_progress_to_a_browser_stream(redis_server):  # noqa: F811
    pytest.importorskip("celery")
    prefix = "c" + uuid.uuid4().hex[:8]
    env = {"REDIS_URL": redis_server.url, "GOSSE_PREFIX": prefix,
           "CELERY_BROKER_URL": redis_server.url.rsplit("/", 1)[0] + "/1"}
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tasks", "worker", "--pool", "solo",
         "--without-heartbeat", "--without-gossip", "--without-mingle", "--loglevel", "info"],
        cwd=EXAMPLE, env={**ENV, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        with gunicorn_server("app:app", workers=WORKERS, threads=20, env=env,
                             extra=("--pythonpath", EXAMPLE)) as (url, _):
            user = "carol-" + uuid.uuid4().hex[:6]
            with SSEReader(f"{url}/sse?user={user}") as stream:
                assert stream.status == 200
                # The page's "Export" button: the web app queues the task.
                started = requests.post(f"{url}/export", data={"user": user, "steps": 3},
                                        timeout=10)
                assert started.status_code == 202, started.text
                job = started.json()["job"]
                stream.next_event(lambda e: e.event == "done", timeout=15)
                events = [e for e in stream.events if e.event in ("progress", "done")]
    except BaseException:
        print("celery worker output:\n" + stop_worker(worker))
        raise
    out = stop_worker(worker)
    assert [(e.event, json.loads(e.data)) for e in events] == [
        ("progress", {"job": job, "done": 1, "total": 3}),
        ("progress", {"job": job, "done": 2, "total": 3}),
        ("progress", {"job": job, "done": 3, "total": 3}),
        ("done", {"job": job, "result": f"/exports/{job}.csv"})], out
    assert all(AUTO_ID.fullmatch(e.id) for e in events)
    assert "Task tasks.export[" in out and "succeeded" in out, out
    assert "Traceback" not in out and "not connected" not in out, out


def stop_worker(worker):
    """SIGTERM (Celery's warm shutdown), then SIGKILL; its output."""
    worker.terminate()
    try:
        return worker.communicate(timeout=10)[0].decode(errors="replace")
    except subprocess.TimeoutExpired:
        worker.kill()
        return worker.communicate(timeout=5)[0].decode(errors="replace")
