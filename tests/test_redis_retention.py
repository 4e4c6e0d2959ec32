"""Issue 15, retention: the replay window by count (``history``, MAXLEN)
and by age (``max_age``, MINID), and what ``stats()`` says about the
listener."""
import pytest

from gosse import Event
from gosse.event import RESET_EVENT
from redis_brokers import brokers, local, sse  # noqa: F401
from redis_fixture import redis_prefix, redis_server  # noqa: F401
from servers import wait_until


def test_max_age_trims_by_time_and_an_aged_id_resets(brokers, redis_server, redis_prefix):
    a, ua = brokers(backplane_kw={"history": 100_000, "max_age": 0.5})
    for n in range(600):
        a.broadcast(Event(str(n), id=f"i{n}"))
    client = redis_server.client()
    key = f"{redis_prefix}:events"
    assert client.xlen(key) == 600            # history alone would keep them all

    def trimmed():
        a.broadcast(Event("probe", id="probe"))
        return client.xlen(key) < 200         # MINID ~ trims whole stream nodes
    assert wait_until(trimmed, timeout=10, interval=0.2)
    with sse(ua, "x", last_id="i3") as r:
        [first] = r.wait_events(1)
        assert (first.event, first.data) == (RESET_EVENT, "i3")


@pytest.mark.parametrize("bad", [0, -1, "5", True])
def test_max_age_must_be_a_positive_number(bad):
    from gosse.backplane.redis import Publisher, RedisBackplane
    with pytest.raises(ValueError, match="max_age"):
        RedisBackplane("redis://127.0.0.1:1/0", max_age=bad)
    with pytest.raises(ValueError, match="max_age"):
        Publisher("redis://127.0.0.1:1/0", max_age=bad)


def test_stats_report_the_listener(brokers):
    a, ua = brokers()
    b, ub = brokers()
    r = sse(ub, "x")
    assert wait_until(local(b, "x"))
    for n in range(50):
        a.broadcast(Event(str(n)))
    r.wait_events(50)
    stats = b.stats()
    assert stats["backplane_received"] >= 50
    assert stats["backplane_gaps"] == 0 and stats["backplane_resets"] == 0
    assert stats["backplane_listener_cpu_us"] > 0
    assert 0 <= stats["backplane_lag_ms"] < 60_000
    r.close()


def test_a_publisher_trims_as_the_brokers_do(brokers, redis_server, redis_prefix):
    """A Publisher (or ``gosse publish --redis``) left with its defaults
    must not cut the brokers' replay window to its own idea of it."""
    from gosse.backplane.redis import Publisher
    a, ua = brokers(backplane_kw={"history": 12_000})
    a.broadcast(Event("from the broker", id="b0"))    # records history=3000 in Redis
    key = f"{redis_prefix}:events"
    with Publisher(redis_server.url, prefix=redis_prefix) as publisher:
        for n in range(11_000):
            publisher.broadcast(Event(str(n), id=f"p{n}"))
    assert redis_server.client().xlen(key) == 11_001  # not cut to the 10,000 default
    with sse(ua, "x", last_id="p10900") as r:        # resumable (within queue_size)
        assert r.wait_events(1)[0].data == "10901"
    with Publisher(redis_server.url, prefix=redis_prefix, history=1000) as publisher:
        for n in range(300):
            publisher.broadcast(Event(str(n)))
    assert redis_server.client().xlen(key) < 2000     # given: it applies
