"""RedisBackplane under gunicorn ``-w 3 -k gthread``: sessions spread over
three worker processes (each stream says which in ``X-Worker-Pid``), a real
redis-server, events published through HTTP endpoints that land in any
worker."""
import collections
import os
import signal
import threading
import time
import uuid

import pytest
import requests

from gosse.event import RESET_EVENT
from redis_fixture import RedisServer, require_redis_server
from servers import SSEReader, gunicorn_server, wait_until

WORKERS = 3
PRESENCE_TTL = 1.5
# Streams per worker: the kernel may hand most connections to one worker; a
# full worker answers 503 and Cluster.sse() tries again, so streams spread.
MAX_SESSIONS = 10




class Cluster:
    def __init__(self, url, proc, redis):
        self.url, self.proc, self.redis = url, proc, redis

    def post(self, path, **data):
        return requests.post(self.url + path, data=data, timeout=10)

    def get(self, path):
        return requests.get(self.url + path, timeout=10)

    def sse(self, client, last_id=None):
        headers = {"Last-Event-ID": last_id} if last_id is not None else None
        for _ in range(100):
            r = SSEReader(f"{self.url}/sse?client={client}", headers=headers)
            if r.status != 503:      # that worker is full: connect again
                break
            r.close()
            time.sleep(0.02)
        assert r.status == 200
        r.pid = int(r.headers["X-Worker-Pid"])
        return r

    def worker_pids(self, timeout=15.0):
        """Ask /stats until every worker has answered (they boot after the
        master listens)."""
        pids = set()
        deadline = time.monotonic() + timeout
        while len(pids) < WORKERS and time.monotonic() < deadline:
            pids.add(self.get("/stats").json()["pid"])
        assert len(pids) == WORKERS, f"only workers {pids} answered"
        return pids

    def spread(self, client_of, per_worker=1, max_conns=WORKERS * MAX_SESSIONS):
        """Open streams (client id ``client_of(i)``) until every worker holds
        at least ``per_worker`` of them; return them all."""
        readers = []
        counts = collections.Counter()
        pids = self.worker_pids()
        while min(counts[p] for p in pids) < per_worker:
            assert len(readers) < max_conns, f"streams did not spread: {counts}"
            r = self.sse(client_of(len(readers)))
            counts[r.pid] += 1
            readers.append(r)
            time.sleep(0.005)
        return readers


@pytest.fixture(scope="module")
def redis_binary():
    return require_redis_server()


def _cluster(redis_binary):
    server = RedisServer(redis_binary).start()
    env = {"GOSSE_REDIS_URL": server.url, "GOSSE_REDIS_PREFIX": "g" + uuid.uuid4().hex[:8],
           "GOSSE_PRESENCE_TTL": str(PRESENCE_TTL), "GOSSE_TEST_HEARTBEAT": "0.3",
           "GOSSE_TEST_MAX_SESSIONS": str(MAX_SESSIONS)}
    try:
        with gunicorn_server("redis_app:app", workers=WORKERS, threads=100, env=env) as (url, proc):
            cluster = Cluster(url, proc, server)
            cluster.pids = cluster.worker_pids()
            yield cluster
    finally:
        server.stop()


@pytest.fixture(scope="module")
def cluster(redis_binary):
    yield from _cluster(redis_binary)


@pytest.fixture
def fresh_cluster(redis_binary):
    yield from _cluster(redis_binary)


def drain(reader, wait=0.05):
    """Read whatever else arrives within ``wait`` seconds (after the caller
    gave duplicates time to arrive)."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and not reader.eof:
        reader.sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            reader.read_some()
        except OSError:
            break
    return reader.events


def test_broadcast_over_http_reaches_every_client_exactly_once(cluster):
    readers = cluster.spread(lambda i: f"b{i}", per_worker=2)
    assert len({r.pid for r in readers}) == WORKERS
    n = 30
    pids = collections.Counter()

    def fire(k):
        for i in range(k, n, 3):
            resp = cluster.post("/broadcast", data=f"m{i}")
            assert resp.status_code == 200, resp.text
            pids[resp.headers["X-Worker-Pid"]] += 1

    threads = [threading.Thread(target=fire, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    orders = [[e.data for e in r.wait_events(n)] for r in readers]
    time.sleep(0.3)
    for r, order in zip(readers, orders):
        assert order == orders[0], "every stream sees one order"
        assert sorted(order) == sorted(f"m{i}" for i in range(n))
        assert len(drain(r)) == n, "exactly once"
        # Auto ids: "<dataset epoch>-<stream id>", one epoch, ordered.
        assert len({e.id.split("-")[0] for e in r.events}) == 1
        ids = [tuple(map(int, e.id.split("-")[1:])) for e in r.events]
        assert ids == sorted(ids)
    for r in readers:
        r.close()


def test_send_to_a_client_with_sessions_in_two_workers(cluster):
    dual = []
    while len({r.pid for r in dual}) < 2:
        assert len(dual) < 30, "could not place sessions in two workers"
        dual.append(cluster.sse("dual"))
    bystander = cluster.sse("bystander")
    for _ in range(3):   # whichever worker the request lands in
        assert cluster.post("/send/dual", data="for dual").status_code == 200
    assert cluster.post("/broadcast", data="marker").status_code == 200
    time.sleep(0.3)
    for r in dual:
        assert [e.data for e in r.wait_events(4)] == ["for dual"] * 3 + ["marker"]
        assert len(drain(r)) == 4
    assert [e.data for e in bystander.wait_events(1)] == ["marker"]
    assert len(drain(bystander)) == 1
    assert cluster.post("/send/nobody-here", data="x").status_code == 404
    for r in dual + [bystander]:
        r.close()


def test_reconnect_to_another_worker_resumes_exactly(cluster):
    r = cluster.sse("mover")
    first_pid = r.pid
    for i in range(5):
        assert cluster.post("/broadcast", data=f"e{i}").status_code == 200
    events = r.wait_events(5)
    last = events[2].id
    r.close()
    for i in range(5, 8):
        assert cluster.post("/broadcast", data=f"e{i}").status_code == 200
    for _attempt in range(40):
        again = cluster.sse("mover", last_id=last)
        if again.pid != first_pid:
            break
        again.close()
    else:
        pytest.fail("never landed on another worker")
    assert [e.data for e in again.wait_events(5)] == ["e3", "e4", "e5", "e6", "e7"]
    assert cluster.post("/broadcast", data="live").status_code == 200
    assert [e.data for e in again.wait_events(6)][5] == "live"
    assert len(drain(again, 0.3)) == 6
    again.close()


def test_presence_and_metadata_seen_by_every_worker(cluster):
    r = cluster.sse("meta")
    assert cluster.get("/present/meta").text == "1"
    resp = requests.post(cluster.url + "/metadata/meta", json={"plan": "pro"}, timeout=10)
    assert resp.status_code == 200
    answers = {cluster.get("/metadata/meta").text for _ in range(9)}
    assert answers == {'{"plan": "pro"}'}
    assert cluster.get("/metadata/absent").status_code == 404
    r.close()   # the worker notices at its next heartbeat write (0.3 s)
    assert wait_until(lambda: cluster.get("/present/meta").text == "0", timeout=5)
    assert cluster.get("/metadata/meta").status_code == 404


def test_presence_expires_after_a_worker_is_killed(cluster):
    victim = cluster.sse("victim")
    pid = victim.pid
    survivor = None
    for _ in range(30):
        s = cluster.sse("survivor")
        if s.pid != pid:
            survivor = s
            break
        s.close()
    assert survivor is not None
    assert cluster.get("/present/victim").text == "1"
    os.kill(pid, signal.SIGKILL)          # no chance to say goodbye
    t0 = time.monotonic()
    assert wait_until(lambda: cluster.get("/present/victim").text == "0", timeout=PRESENCE_TTL + 5)
    elapsed = time.monotonic() - t0
    assert elapsed <= PRESENCE_TTL + 1.5, elapsed
    assert cluster.get("/present/survivor").text == "1"   # refreshed by its live worker
    time.sleep(PRESENCE_TTL)
    assert cluster.get("/present/survivor").text == "1"
    victim.close()
    survivor.close()


def test_redis_killed_and_restarted_mid_stream(fresh_cluster):
    cluster = fresh_cluster
    readers = cluster.spread(lambda i: f"r{i}", per_worker=1)
    assert cluster.post("/broadcast", data="before").status_code == 200
    for r in readers:
        assert [e.data for e in r.wait_events(1)] == ["before"]
    cluster.redis.kill()
    resp = cluster.post("/broadcast", data="lost")
    assert resp.status_code == 503 and "unavailable" in resp.text
    for r in readers:     # streams stay open: heartbeats keep coming
        r.sock.settimeout(3)
        assert r.read_some() == b":\n\n"
    cluster.redis.start()
    deadline = time.monotonic() + 15
    while cluster.post("/broadcast", data="probe").status_code != 200:
        assert time.monotonic() < deadline, "publishing never recovered"
        time.sleep(0.1)
    for i in range(5):
        assert cluster.post("/broadcast", data=f"after{i}").status_code == 200
    orders = []
    time.sleep(0.3)
    for r in readers:
        # Redis came back empty: each stream is told (issue 15, defect 2).
        got = [(e.event, e.data) for e in r.wait_events(8)]
        assert got == ([("message", "before"), (RESET_EVENT, ""), ("message", "probe")]
                       + [("message", f"after{i}") for i in range(5)])
        orders.append(got)
        assert len(drain(r)) == 8
    for r in readers:
        r.close()
    stats = [cluster.get("/stats").json() for _ in range(6)]
    assert all(s["backplane_up"] == 1 for s in stats)


def test_example_redis_multiworker(redis_binary):
    """examples/redis_multiworker runs as its README says."""
    from servers import ROOT
    example = os.path.join(ROOT, "examples", "redis_multiworker")
    with RedisServer(redis_binary) as server:
        env = {"REDIS_URL": server.url, "GOSSE_PREFIX": "ex" + uuid.uuid4().hex[:8]}
        with gunicorn_server("app:app", workers=3, env=env,
                             extra=["-c", os.path.join(example, "gunicorn.conf.py"),
                                    "--chdir", example, "--graceful-timeout", "1"]) as (url, proc):
            cluster = Cluster(url, proc, server)
            with cluster.sse("alice") as alice:
                assert wait_until(lambda: requests.get(f"{url}/present/alice", timeout=5)
                                  .json()["present"])
                assert requests.post(f"{url}/broadcast", data={"data": "hello"},
                                     timeout=5).status_code == 200
                assert requests.post(f"{url}/send/alice", data={"data": "psst"},
                                     timeout=5).status_code == 200
                assert requests.post(f"{url}/send/bob", data={"data": "x"},
                                     timeout=5).status_code == 404
                assert [e.data for e in alice.wait_events(2)] == ["hello", "psst"]
