"""RedisBackplane presence and metadata after Redis lost its data, fork
safety of the broker's locks, and what client metadata may be (issue 15,
defects 9, 11 and 12b).  Real redis-server processes, brokers on real
Werkzeug servers, real forks."""
import json
import os
import pickle
import signal
import subprocess
import sys
import time

import pytest

import redis_fixture
from gosse import Broker, Event, UnknownClientError
from gosse.errors import BackplaneError
from redis_brokers import QUICK, BrokerGroup
from servers import ROOT, SSEReader, wait_until

# The shared fixtures, by assignment (an import would be shadowed by the
# test parameters of the same name).
redis_server = redis_fixture.redis_server
own_redis_server = redis_fixture.own_redis_server
redis_prefix = redis_fixture.redis_prefix


@pytest.fixture
def brokers(redis_prefix):
    """start(url, **backplane_kw) -> (broker, url): brokers sharing one
    Redis prefix, each on its own Werkzeug server; closed afterwards."""
    from gosse.backplane.redis import RedisBackplane
    group = BrokerGroup()

    def start(redis_url, broker_kw=None, **backplane_kw):
        bp = RedisBackplane(redis_url, prefix=redis_prefix, **{**QUICK, **backplane_kw})
        return group.add(bp, **(broker_kw or {}))

    yield start
    group.close()


def sse(url, client):
    return SSEReader(f"{url}/sse?client={client}")


def publish_works_again(broker, timeout=10.0):
    """Broadcast probes until one is accepted (Redis is back); bounded."""
    deadline = time.monotonic() + timeout
    for _ in range(1000):
        try:
            broker.broadcast(Event("probe"))
            return
        except BackplaneError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)   # retry pacing, not synchronisation
    raise AssertionError("publishing never worked again")


# -- defect 9: presence and metadata across a Redis restart -------------------------

def test_send_and_metadata_right_after_redis_restart(brokers, own_redis_server):
    a, ua = brokers(own_redis_server.url)
    b, _ = brokers(own_redis_server.url)
    x, y = sse(ua, "x"), sse(ua, "y")
    assert wait_until(lambda: a.has_local_client("x") and a.has_local_client("y"))
    assert wait_until(lambda: b.is_client_present("x") and b.is_client_present("y"))
    a.set_client_metadata("x", {"plan": "pro"})      # set where x is
    b.set_client_metadata("y", ["set", "by", "b"])   # set where y is not
    # A learns b's value for its client at its next heartbeat (1 s here);
    # (code without copies: nothing to wait for).
    assert wait_until(lambda: "y" in getattr(a.backplane._presence, "copies", {"y": 0}),
                      timeout=5)
    with pytest.raises(UnknownClientError):
        b.send("ghost", Event("nobody has it"))      # a fresh dataset: a sure "nobody"

    own_redis_server.restart()                       # back empty
    publish_works_again(b)
    problems = []   # every check, so that one failure does not hide the others
    # Right away, before a had any chance to re-register x:
    try:
        assert b.send("x", Event("after restart")) == 0
        got = x.next_event(lambda e: e.data == "after restart", timeout=10)
        assert got.data == "after restart"
    except UnknownClientError as exc:
        problems.append(f"send right after the restart: {exc}")
    if not (b.is_client_present("x") and b.is_client_present("y")):
        problems.append("x or y not present")
    for broker, client, expected in ((b, "x", {"plan": "pro"}), (a, "x", {"plan": "pro"}),
                                     (b, "y", ["set", "by", "b"])):
        try:
            value = broker.get_client_metadata(client)
        except UnknownClientError as exc:
            value = exc
        if value != expected:
            problems.append(f"metadata of {client}: {value!r}, not {expected!r}")
    assert not problems, problems
    # Once every process had the time to re-register, "nobody" is sure again.
    grace = b.backplane.rebuild_grace

    def ghost_unknown():
        try:
            b.send("ghost", Event("late"))
        except UnknownClientError:
            return True
        return False
    assert wait_until(ghost_unknown, timeout=grace + 5, interval=0.1)
    for r in (x, y):
        r.close()


def test_lookups_while_presence_is_rebuilt_wait_then_say_so(brokers, own_redis_server):
    """A lookup that finds nobody while presence is being rebuilt neither
    says "nobody" nor hangs: it waits at most socket_timeout for the client
    to reappear, then raises a BackplaneError that says why."""
    a, ua = brokers(own_redis_server.url)
    b, _ = brokers(own_redis_server.url, socket_timeout=0.4, presence_ttl=30.0,
                   max_backoff=3.0)
    x = sse(ua, "x")
    assert wait_until(lambda: b.is_client_present("x"))
    assert not b.is_client_present("ghost")          # sure: nothing was lost
    own_redis_server.restart()
    publish_works_again(b)                           # b finds the new dataset
    t0 = time.monotonic()
    with pytest.raises(BackplaneError, match="being rebuilt"):
        b.is_client_present("ghost")
    assert 0.3 < time.monotonic() - t0 < 3.0         # waited, bounded
    with pytest.raises(BackplaneError, match="being rebuilt"):
        b.get_client_metadata("ghost")

    def present(client):
        try:
            return b.is_client_present(client)
        except BackplaneError:
            return False
    assert wait_until(lambda: present("x"), timeout=5)   # a re-registered x
    assert b.send("ghost", Event("appended, harmless")) == 0
    x.close()


# -- defect 11: fork while backplane threads hold the broker's locks -------------------

def test_fork_while_the_listener_delivers_does_not_deadlock_the_child(redis_server,
                                                                        redis_prefix):
    """200 forks while another process publishes a storm that this
    process's listener delivers to 200 sessions (holding the broker's locks
    much of the time): every child takes both locks and exits at once."""
    from gosse.backplane.redis import RedisBackplane
    broker = Broker(queue_size=1_000_000, queue_bytes=1 << 30,
                    backplane=RedisBackplane(redis_server.url, prefix=redis_prefix,
                                             presence_ttl=3.0, batch=64))

    def open_sessions():
        # Not served: they expire after a few seconds, so they are renewed.
        return [broker.connect(f"c{i}", {"REQUEST_METHOD": "GET"}) for i in range(200)]

    conns, opened = open_sessions(), time.monotonic()
    code = ("import sys\nfrom gosse import Event\nfrom gosse.backplane.redis import Publisher\n"
            "p = Publisher(sys.argv[1], prefix=sys.argv[2], history=1000)\n"
            "for i in range(10 ** 6):\n    p.broadcast(Event('e%d' % i))\n")
    storm = subprocess.Popen([sys.executable, "-c", code, redis_server.url, redis_prefix],
                             cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})
    hung = forks = 0
    try:
        assert wait_until(lambda: broker.stats()["backplane_received"] > 500, timeout=30)
        deadline = time.monotonic() + 30
        while forks < 200 and hung < 3 and time.monotonic() < deadline:
            if time.monotonic() - opened > 2.0:
                for c in conns:
                    c.close(0)
                conns, opened = open_sessions(), time.monotonic()
            pid = os.fork()
            if pid == 0:   # the child: take both locks, then leave at once
                try:
                    broker.deliver_local([])
                    broker.local_count("all", None)
                finally:
                    os._exit(0)
            forks += 1
            end = time.monotonic() + 1.0
            while True:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    assert os.waitstatus_to_exitcode(status) == 0
                    break
                if time.monotonic() > end:
                    hung += 1
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    break
                time.sleep(0.002)   # polling a child process: nothing to wait on
        received = broker.stats()["backplane_received"]
    finally:
        storm.kill()
        storm.wait(10)
        for c in conns:
            c.close(0)
        broker.close()
    assert hung == 0, f"{hung} of {forks} forked children hung on a broker lock"
    assert forks == 200 and received > 1000


# -- defect 12b: what metadata may be ---------------------------------------------------

@pytest.mark.parametrize("value, why", [
    ((1, 2), "a tuple becomes a list"),
    ({1: "a"}, "int keys become str"),
    ({"n": float("nan")}, "NaN is not equal to itself"),
    ({"when": (2026, 12)}, "a nested tuple"),
])
def test_metadata_that_json_would_change_is_refused(brokers, redis_server, value, why):
    a, ua = brokers(redis_server.url)
    x = sse(ua, "x")
    assert wait_until(lambda: a.has_local_client("x"))
    a.set_client_metadata("x", "before")
    with pytest.raises(TypeError, match="come back from JSON equal"):
        a.set_client_metadata("x", value)
    assert a.get_client_metadata("x") == "before", why   # unchanged
    x.close()


def test_metadata_round_trips_and_is_bounded(brokers, redis_server):
    a, ua = brokers(redis_server.url, max_metadata_bytes=100)
    b, _ = brokers(redis_server.url, serializer=pickle)
    x = sse(ua, "x")
    assert wait_until(lambda: a.has_local_client("x"))
    for value in ({"name": "Ann", "roles": ["a", "b"], "n": 1, "f": 1.5, "ok": True},
                  [1, "two", None], "text", 7, None):
        a.set_client_metadata("x", value)
        assert a.get_client_metadata("x") == value
    exact = "x" * (100 - len(json.dumps("")))         # 100 bytes serialised
    a.set_client_metadata("x", exact)
    assert a.get_client_metadata("x") == exact
    with pytest.raises(ValueError, match="max_metadata_bytes=100"):
        a.set_client_metadata("x", exact + "y")
    assert a.get_client_metadata("x") == exact
    # The default bound is 64 KiB; pickle keeps types (and is not checked).
    with pytest.raises(ValueError, match="max_metadata_bytes=65536"):
        b.set_client_metadata("x", "z" * 65536)
    b.set_client_metadata("x", ("a", 1))
    assert b.get_client_metadata("x") == ("a", 1)
    from gosse.backplane.redis import RedisBackplane
    for bad in (0, -1, 1.5, "64k", True):
        with pytest.raises(ValueError, match="max_metadata_bytes"):
            RedisBackplane(redis_server.url, max_metadata_bytes=bad)
    x.close()
