"""Issue 15, loss and duplication: every event is delivered once, in order,
or the stream is told (``gosse-reset``) -- never a silent hole.

Two brokers share a real redis-server; broker B reaches it through a TCP
proxy (tests/tcpproxy.py) so that B alone can be made to lag (``pause``),
lose Redis (``refuse``) or get late answers (``delay``) on time.  The
streams are real HTTP streams (Werkzeug servers, raw SSE readers).
"""
import threading
import time

import pytest

from gosse import Event
from gosse.event import RESET_EVENT
from redis_brokers import brokers, local, sse  # noqa: F401
from redis_fixture import own_redis_server, redis_prefix, redis_server  # noqa: F401
from servers import wait_until
from tcpproxy import TCPProxy


@pytest.fixture
def proxy(redis_server):
    with TCPProxy(redis_server.port) as p:
        yield p


@pytest.fixture
def own_proxy(own_redis_server):
    with TCPProxy(own_redis_server.port) as p:
        yield p


def numbers_or_resets(events):
    """The stream as ints (event data) and "R" for each reset."""
    return ["R" if e.event == RESET_EVENT else int(e.data) for e in events]


def assert_no_silent_hole(seq, expected):
    """``seq`` (numbers and "R") holds ``expected`` in order, exactly once,
    except that a number may be missing only where a reset stands before
    the next number delivered."""
    last = -1
    told = False
    seen = set()
    for item in seq:
        if item == "R":
            told = True
            continue
        assert item not in seen, f"{item} delivered twice: {seq}"
        seen.add(item)
        assert item > last, f"{item} after {last}: out of order"
        missing = [n for n in expected if last < n < item]
        assert not missing or told, (f"{len(missing)} events ({missing[0]}..{missing[-1]}) "
                                     f"missing before {item} without {RESET_EVENT}")
        last, told = item, False


def until(reader, data, timeout):
    """Every event the reader got, once one with ``data`` has arrived."""
    reader.next_event(lambda e: e.data == data, timeout)
    return reader.events


def publish(broker, numbers, **kw):
    for n in numbers:
        broker.broadcast(Event(str(n), **kw))


# -- defect 1: a listener behind by more than the stream's length ------------------

def test_a_listener_behind_the_trimmed_stream_resets_its_streams(brokers, proxy):
    a, ua = brokers(auto_id=True, backplane_kw={"history": 1000})
    b, ub = brokers(url=proxy.url, auto_id=True, queue_size=10_000,
                    backplane_kw={"history": 1000})
    r = sse(ub, "x")
    assert wait_until(local(b, "x"))
    publish(a, range(10))
    assert len(r.wait_events(10)) == 10
    proxy.pause()                      # B's listener stops reading
    publish(a, range(10, 3010))        # the stream keeps ~1000 of them
    proxy.resume()
    publish(a, [3010])
    got = numbers_or_resets(until(r, "3010", 20))
    assert_no_silent_hole(got, range(3011))
    assert "R" in got                  # nothing could give it 10..~2000
    stats = b.stats()
    assert stats["backplane_gaps"] >= 1 and stats["backplane_resets"] >= 1
    r.close()


# -- defect 2: Redis restarted empty, or flushed -------------------------------------

def test_a_restart_that_loses_unread_entries_is_told(own_redis_server, own_proxy, brokers):
    a, ua = brokers(url=own_redis_server.url, auto_id=True)
    b, ub = brokers(url=own_proxy.url, auto_id=True)
    r = sse(ub, "x")
    assert wait_until(local(b, "x"))
    publish(a, range(5))
    assert len(r.wait_events(5)) == 5
    own_proxy.pause()
    publish(a, range(5, 25))           # B never reads these ...
    own_redis_server.restart()         # ... and Redis forgets them
    own_proxy.resume()

    def published():
        try:
            publish(a, [25])
            return True
        except Exception:
            return False
    assert wait_until(published, timeout=10, interval=0.1)
    got = numbers_or_resets(until(r, "25", 15))
    assert_no_silent_hole(got, range(26))
    assert got[:5] == [0, 1, 2, 3, 4] and "R" in got
    r.close()


def test_a_flush_while_a_listener_lags_is_told(brokers, proxy, redis_server):
    a, ua = brokers(auto_id=True)
    b, ub = brokers(url=proxy.url, auto_id=True)
    r = sse(ub, "x")
    assert wait_until(local(b, "x"))
    publish(a, range(3))
    assert len(r.wait_events(3)) == 3
    proxy.pause()
    publish(a, range(3, 13))
    redis_server.client().flushall()   # (the connections stay up)
    publish(a, [13])
    proxy.resume()
    got = numbers_or_resets(until(r, "13", 15))
    assert_no_silent_hole(got, range(14))
    assert "R" in got
    r.close()


def test_an_auto_id_of_another_dataset_is_never_resumed(own_redis_server, brokers):
    """After a restart, an entry with the same stream id as an old one (a
    new server whose clock is behind) must not be taken for it."""
    a, ua = brokers(url=own_redis_server.url, auto_id=True)
    r = sse(ua, "x")
    assert wait_until(local(a, "x"))
    publish(a, range(3))
    old = r.wait_events(3)
    r.close()
    own_redis_server.restart()
    sid = old[0].id.split("-", 1)[-1] if old[0].id.count("-") == 2 else old[0].id

    def published():
        try:
            publish(a, ["3"])
            return True
        except Exception:
            return False
    assert wait_until(published, timeout=10, interval=0.1)
    # The same stream id as the first old event, in the new dataset, then more.
    client = own_redis_server.client()
    client.delete(f"{a.backplane.prefix}:events")
    client.xadd(f"{a.backplane.prefix}:events",
                {"e": "zzzzzzzz", "s": "1", "k": "a", "a": "1", "w": b"data: forged\n\n"},
                id=sid)
    publish(a, ["4"])
    with sse(ua, "x", last_id=old[0].id) as again:
        [first] = again.wait_events(1)
        assert first.event == RESET_EVENT, f"resumed from a colliding id: {first.data!r}"


# -- defect 3: streams opened while Redis was unreachable ------------------------------

def test_streams_opened_during_an_outage_get_what_follows(brokers, proxy):
    a, ua = brokers(auto_id=True)
    proxy.refuse()                     # B cannot reach Redis when it starts
    b, ub = brokers(url=proxy.url, auto_id=True,
                    backplane_kw={"max_backoff": 0.5, "connect_timeout": 0.5})
    readers = [sse(ub, f"x{i}") for i in range(3)]
    assert wait_until(lambda: b.stats()["sessions"] == 3)
    assert not b.backplane.available
    publish(a, range(60))              # A can: B's streams were open meanwhile
    proxy.resume()
    publish(a, [60])
    for r in readers:
        got = numbers_or_resets(until(r, "60", 15))
        assert got == list(range(61)), got
        r.close()


# -- defect 5: replay pages its reads and is bounded by the session's queue ---------

def test_a_replay_beyond_the_queue_bound_is_a_reset(brokers):
    a, ua = brokers(queue_size=100, backplane_kw={"history": 5000})
    watcher = sse(ua, "w")
    assert wait_until(local(a, "w"))
    a.broadcast(Event("x", id="start"))
    publish(a, range(300))                         # no ids: not replayed
    for n in range(150):
        a.broadcast(Event(f"r{n}", id=f"i{n}"))
    until(watcher, "r149", 10)                     # all delivered: a replay, not live
    with sse(ua, "big", last_id="start") as r:     # 150 missed > queue_size 100
        [first] = r.wait_events(1)
        assert first.event == RESET_EVENT and first.data == "start"
    with sse(ua, "small", last_id="i60") as r:     # 89 missed: replayed in order
        got = r.wait_events(89)
        assert [e.data for e in got] == [f"r{n}" for n in range(61, 150)]
    watcher.close()


# -- defect 6: no Redis round trip under the broker's lock ---------------------------

def test_a_resume_never_holds_the_broker_lock_across_a_redis_call(brokers, proxy):
    a, ua = brokers(auto_id=True)
    b, ub = brokers(url=proxy.url, auto_id=True, backplane_kw={"socket_timeout": 10})
    watcher = sse(ub, "w")
    assert wait_until(local(b, "w"))
    publish(a, range(20))
    seen = watcher.wait_events(20)
    proxy.delay = 0.4                  # every answer from Redis to B is late
    stop = threading.Event()
    worst = [0.0]

    def probe():                       # something that needs B's registry lock
        while not stop.is_set():
            t0 = time.monotonic()
            b.local_count("all", None)
            worst[0] = max(worst[0], time.monotonic() - t0)
            time.sleep(0.005)

    def storm():                       # B's listener moves on during the resume
        for n in range(20, 400):
            if stop.is_set():
                return
            a.broadcast(Event(str(n)))
            time.sleep(0.002)

    threads = [threading.Thread(target=probe), threading.Thread(target=storm)]
    for t in threads:
        t.start()
    try:
        for k in range(3):
            with sse(ub, f"r{k}", last_id=seen[5].id) as r:
                got = numbers_or_resets(r.wait_events(5, timeout=20))
                assert got[0] in (6, "R")
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert worst[0] < 0.3, f"B's lock was held {worst[0]:.2f} s (a Redis answer takes 0.4 s)"
    watcher.close()
