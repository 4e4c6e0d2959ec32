"""Backplanes: the in-process default, and RedisBackplane with two brokers in
one process sharing a real redis-server (each broker on its own Werkzeug
server, so sessions are real HTTP streams)."""
import logging
import subprocess
import sys
import threading
import time

import pytest

from broker_app import make_app
from gosse import Broker, Event, UnknownClientError
from gosse.backplane import Backplane, BackplaneError, InProcessBackplane
from gosse.broker import RESET_EVENT
from redis_brokers import brokers, local, redis_threads, sse  # noqa: F401
from redis_fixture import own_redis_server, redis_prefix, redis_server, require_redis_package  # noqa: F401
from servers import ROOT, free_port, wait_until, werkzeug_server

# -- the interface and the default ------------------------------------------------

def test_default_backplane_is_in_process():
    broker = Broker()
    assert isinstance(broker.backplane, InProcessBackplane)
    assert not broker.backplane.shared and broker.backplane.broker is broker
    explicit = Broker(backplane=InProcessBackplane(), history=5)
    conn = explicit.connect("a", {"REQUEST_METHOD": "GET"})
    assert explicit.broadcast(Event("x", id="1")) == 1
    assert explicit.send("a", Event("y")) == 1
    with pytest.raises(UnknownClientError):
        explicit.send("b", Event("z"))
    conn.close()
    assert "redis" not in explicit.stats() and "backplane_up" not in explicit.stats()
    with pytest.raises(TypeError, match="Backplane"):
        Broker(backplane="redis://localhost")
    shared = InProcessBackplane()
    Broker(backplane=shared)
    with pytest.raises(ValueError, match="another Broker"):
        Broker(backplane=shared)
    assert issubclass(InProcessBackplane, Backplane)


def test_redis_package_imported_only_by_the_redis_backplane():
    require_redis_package()
    code = ("import sys, gosse, gosse.backplane, gosse.broker\n"
            "assert 'redis' not in sys.modules, 'redis imported eagerly'\n"
            "from gosse.backplane.redis import RedisBackplane\n"
            "assert 'redis' in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=30)


def test_argument_checks():
    require_redis_package()
    from gosse.backplane.redis import RedisBackplane
    for bad in ({"history": -1}, {"presence_ttl": 0}, {"block": -1}, {"fallback": "retry"}):
        with pytest.raises(ValueError):
            RedisBackplane("redis://127.0.0.1:1/0", **bad)
    with pytest.raises(TypeError):
        RedisBackplane("redis://127.0.0.1:1/0", serializer=object())


# -- two brokers, one Redis ----------------------------------------------------------

def test_broadcast_across_brokers_in_one_order(brokers):
    a, ua = brokers()
    b, ub = brokers()
    readers = [sse(ua, f"a{i}") for i in range(3)] + [sse(ub, f"b{i}") for i in range(3)]
    assert wait_until(lambda: a.stats()["sessions"] == 3 and b.stats()["sessions"] == 3)

    def publish(broker, tag):
        for i in range(40):
            broker.broadcast(Event(f"{tag}{i}", id=f"{tag}{i}"))

    threads = [threading.Thread(target=publish, args=(x, tag)) for x, tag in ((a, "A"), (b, "B"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    orders = [[e.data for e in r.wait_events(80)] for r in readers]
    for order in orders:
        assert order == orders[0]           # one order everywhere
        assert sorted(order) == sorted([f"A{i}" for i in range(40)] + [f"B{i}" for i in range(40)])
        a_part = [x for x in order if x[0] == "A"]
        assert a_part == [f"A{i}" for i in range(40)]   # each publisher's order kept
    time.sleep(0.2)
    for r in readers:                        # exactly once: nothing more arrives
        r.sock.settimeout(0.3)
        try:
            r.read_some()
        except OSError:
            pass
        assert len(r.events) == 80
        r.close()


def test_send_across_brokers(brokers, redis_server, redis_prefix):
    a, ua = brokers()
    b, ub = brokers()
    x_a, x_b, y_b = sse(ua, "x"), sse(ub, "x"), sse(ub, "y")
    assert wait_until(lambda: local(a, "x")() and local(b, "x")() and local(b, "y")())
    assert a.send("y", Event("for y")) == 0      # none of y's sessions is in a's process
    assert a.send("x", Event("for x")) == 1      # one of x's is
    a.broadcast(Event("all"))
    assert [e.data for e in y_b.wait_events(2)] == ["for y", "all"]
    assert [e.data for e in x_a.wait_events(2)] == ["for x", "all"]
    assert [e.data for e in x_b.wait_events(2)] == ["for x", "all"]
    stream = f"{redis_prefix}:events"
    before = redis_server.client().xlen(stream)
    with pytest.raises(UnknownClientError, match="nobody"):
        a.send("nobody", Event("lost"))
    with pytest.raises(UnknownClientError):
        b.send("nobody", Event("lost"))
    assert redis_server.client().xlen(stream) == before   # nothing appended
    for r in (x_a, x_b, y_b):
        r.close()


def test_publish_topic_across_brokers(brokers):
    a, ua = brokers()
    b, ub = brokers()
    news_b = sse(ub, "n", topics=["news"])
    plain_a = sse(ua, "p")
    news_a = sse(ua, "m", topics=["news", "sport"])
    assert wait_until(lambda: a.stats()["sessions"] == 2 and b.stats()["sessions"] == 1)
    a.publish("news", Event("n1"))
    b.publish("sport", Event("s1"))
    b.publish("weather", Event("w1"))
    a.broadcast(Event("end"))
    assert [e.data for e in news_b.wait_events(2)] == ["n1", "end"]
    assert [e.data for e in news_a.wait_events(3)] == ["n1", "s1", "end"]
    assert [e.data for e in plain_a.wait_events(1)] == ["end"]
    for r in (news_b, plain_a, news_a):
        r.close()


def test_presence_and_metadata_shared_and_cleaned(brokers, redis_server, redis_prefix):
    a, ua = brokers()
    b, ub = brokers()
    y = sse(ub, "y")
    x_a, x_b = sse(ua, "x"), sse(ub, "x")
    assert wait_until(lambda: local(b, "y")() and local(a, "x")() and local(b, "x")())
    assert a.is_client_present("y") and b.is_client_present("y")
    assert not a.is_client_present("ghost")
    with pytest.raises(UnknownClientError):
        a.set_client_metadata("ghost", 1)
    with pytest.raises(UnknownClientError):
        b.get_client_metadata("ghost")
    assert a.get_client_metadata("y") is None
    a.set_client_metadata("y", {"name": "Yves", "n": [1, 2]})      # set where y is not
    assert b.get_client_metadata("y") == {"name": "Yves", "n": [1, 2]}
    assert a.get_client_metadata("y") == {"name": "Yves", "n": [1, 2]}
    with pytest.raises(TypeError, match="serialisable"):
        b.set_client_metadata("y", object())
    b.set_client_metadata("x", "both")
    # x leaves a, stays on b: still present, metadata kept.
    [conn] = a.sessions("x")
    conn.close()
    assert conn.wait(5)
    assert a.is_client_present("x") and a.get_client_metadata("x") == "both"
    # y's only session ends: absent everywhere, metadata gone, keys gone.
    [conn] = b.sessions("y")
    conn.close()
    assert conn.wait(5)
    assert not a.is_client_present("y") and not b.is_client_present("y")
    with pytest.raises(UnknownClientError):
        a.get_client_metadata("y")
    r = redis_server.client()
    assert not r.exists(f"{redis_prefix}:p:y") and not r.exists(f"{redis_prefix}:m:y")
    # A returning client does not inherit the old metadata.
    y2 = sse(ua, "y")
    assert wait_until(local(a, "y"))
    assert b.get_client_metadata("y") is None
    for reader in (y, x_a, x_b, y2):
        reader.close()


def test_presence_follows_disconnects_detected_by_heartbeat(brokers):
    a, ua = brokers()
    b, ub = brokers()
    r = sse(ua, "gone")
    assert wait_until(local(a, "gone")) and b.is_client_present("gone")
    r.close()     # a notices at its next heartbeat write (0.2 s)
    assert wait_until(lambda: not b.is_client_present("gone"), timeout=5)


def test_replay_across_brokers_with_user_ids(brokers):
    a, ua = brokers()
    b, ub = brokers()
    r = sse(ua, "r", topics=["t1"])
    other = sse(ub, "o")
    assert wait_until(lambda: local(a, "r")() and local(b, "o")())
    for i in range(3):
        b.broadcast(Event(f"e{i}", id=f"e{i}"))
    last = r.wait_events(3)[2].id
    assert last == "e2"
    r.close()
    assert wait_until(lambda: not b.is_client_present("r"))
    b.broadcast(Event("e3", id="e3"))
    a.send("o", Event("not for r", id="o1"))
    b.publish("t1", Event("topic t1", id="t1"))
    b.publish("t2", Event("topic t2", id="t2"))
    a.broadcast(Event("no id: not resumable"))
    b.broadcast(Event("e4", id="e4"))
    assert [e.data for e in other.wait_events(7)][-1] == "e4"
    # Reconnect to the *other* broker.
    r2 = sse(ub, "r", topics=["t1"], last_id=last)
    assert [e.data for e in r2.wait_events(3)] == ["e3", "topic t1", "e4"]
    b.send("r", Event("live", id="l1"))
    assert [e.data for e in r2.wait_events(4)][3] == "live"
    # And back to the first broker, resuming from a send's id.
    r2.close()
    assert wait_until(lambda: not a.is_client_present("r"))
    a.broadcast(Event("e5", id="e5"))
    with sse(ua, "r", last_id="l1") as r3:
        assert [e.data for e in r3.wait_events(1)] == ["e5"]
    other.close()


def test_replay_with_auto_ids_from_the_stream(brokers):
    a, ua = brokers(auto_id=True)
    b, ub = brokers(auto_id=True)
    r = sse(ua, "q")
    assert wait_until(local(a, "q"))
    for i in range(4):
        (a if i % 2 else b).broadcast(Event(f"m{i}"))
    ids = [e.id for e in r.wait_events(4)]
    # "<dataset epoch>-<stream id>": one epoch, stream ids in order.
    assert len({i.split("-")[0] for i in ids}) == 1
    parsed = [tuple(map(int, i.split("-")[1:])) for i in ids]
    assert parsed == sorted(parsed) and len(set(ids)) == 4
    r.close()
    a.broadcast(Event("m4"))
    with sse(ub, "q", last_id=ids[1]) as r2:
        got = r2.wait_events(3)
        assert [e.data for e in got] == ["m2", "m3", "m4"]
        assert [e.id for e in got[:2]] == ids[2:]


def test_replay_id_unknown_to_the_process_is_found_in_the_stream(brokers):
    a, ua = brokers()
    r = sse(ua, "late")
    assert wait_until(local(a, "late"))
    for i in range(5):
        a.broadcast(Event(f"e{i}", id=f"k{i}"))
    r.wait_events(5)
    r.close()
    # A broker started after those events never delivered them: its id map
    # is filled from the stream.
    b, ub = brokers()
    with sse(ub, "late", last_id="k1") as r2:
        assert [e.data for e in r2.wait_events(3)] == ["e2", "e3", "e4"]
    with sse(ub, "late", last_id="k9") as r3:
        [e] = r3.wait_events(1)
        assert (e.event, e.data) == (RESET_EVENT, "k9")
    with sse(ub, "late", last_id="z" * 3000) as r4:     # not echoed back when long
        [e] = r4.wait_events(1)
        assert (e.event, e.data) == (RESET_EVENT, "")


@pytest.mark.parametrize("crafted", ["99999999999999999999-0", "1-99999999999999999999",
                                     "18446744073709551616-0"])
def test_a_crafted_last_event_id_never_marks_the_backplane_down(brokers, crafted):
    """Issue 15, defect 7: an id shaped like a stream id but out of Redis's
    range made XRANGE fail, which marked the backplane down (half of the
    legitimate resumes then got gosse-reset).  It is refused before Redis."""
    a, ua = brokers(auto_id=True)
    r = sse(ua, "h")
    assert wait_until(local(a, "h"))
    a.broadcast(Event("one"))
    a.broadcast(Event("two"))
    first = r.wait_events(2)[0]
    r.close()
    for _ in range(3):
        with sse(ua, "h", last_id=crafted) as bad:
            [e] = bad.wait_events(1)
            assert e.event == RESET_EVENT
    assert a.backplane.available and a.stats()["backplane_up"] == 1
    with sse(ua, "h", last_id=first.id) as good:
        assert [e.data for e in good.wait_events(1)] == ["two"]


def test_reconnects_between_brokers_during_a_publish_storm(brokers):
    """Resume exactly (no duplicate, no gap) whichever broker a client lands
    on, while events keep coming from both, including when the client has
    seen events that the broker it reconnects to has not delivered yet."""
    a, ua = brokers()
    b, ub = brokers()
    total = 400
    stop = threading.Event()

    def storm():
        for i in range(total):
            if stop.is_set():
                return
            (a if i % 2 else b).broadcast(Event(f"v{i}", id=f"v{i}"))
            if i % 20 == 0:
                time.sleep(0.002)

    got = []
    reader = sse(ua, "hopper")
    assert wait_until(local(a, "hopper"))
    publisher = threading.Thread(target=storm)
    publisher.start()
    urls = [ua, ub]
    hop = 0
    deadline = time.monotonic() + 30
    try:
        while len(got) < total and time.monotonic() < deadline:
            reader.wait_events(min(25, total - len(got)), timeout=10)
            got += [e.data for e in reader.events]   # all complete events read so far
            last = reader.events[-1].id
            reader.close()
            hop += 1
            reader = sse(urls[hop % 2], "hopper", last_id=last)
    finally:
        stop.set()
        publisher.join(20)
        reader.close()
    assert got == [f"v{i}" for i in range(len(got))], "gap or duplicate"
    assert len(got) == total and hop >= 5


@pytest.mark.parametrize("auto_id", [False, True])
def test_resume_on_a_broker_whose_listener_is_behind(brokers, auto_id):
    """The client saw events (from a) that b has not delivered yet: b must
    not replay them, nor deliver them live to that session when its
    listener catches up."""
    a, ua = brokers(auto_id=auto_id)
    b, ub = brokers(auto_id=auto_id)
    gate = threading.Event()
    watcher = sse(ub, "w")                   # a session of b without Last-Event-ID
    r = sse(ua, "r")
    assert wait_until(lambda: local(a, "r")() and local(b, "w")())
    listener = b.backplane._listener
    deliver = listener._deliver

    def held(entries):
        assert gate.wait(10)
        deliver(entries)
    listener._deliver = held                 # b's listener stalls before delivering
    for i in range(5):
        a.broadcast(Event(f"e{i}", id=None if auto_id else f"e{i}"))
    seen = r.wait_events(5)
    r.close()
    with sse(ub, "r", last_id=seen[3].id) as r2:
        assert wait_until(local(b, "r"))
        gate.set()                           # b's listener catches up: e0..e4
        a.broadcast(Event("e5", id=None if auto_id else "e5"))
        assert [e.data for e in r2.wait_events(2)] == ["e4", "e5"]
        assert [e.data for e in watcher.wait_events(6)] == [f"e{i}" for i in range(6)]
        time.sleep(0.2)
        r2.sock.settimeout(0.3)
        try:
            r2.read_some()
        except OSError:
            pass
        assert [e.data for e in r2.events] == ["e4", "e5"]
    assert not listener.floors               # cleaned once passed
    watcher.close()


def test_stream_is_bounded_and_a_trimmed_id_resets(brokers, redis_server, redis_prefix):
    a, ua = brokers(backplane_kw={"history": 1000})
    for i in range(1300):
        a.broadcast(Event(f"e{i}", id=f"h{i}"))
    length = redis_server.client().xlen(f"{redis_prefix}:events")
    assert 1000 <= length < 1300                  # MAXLEN ~ 1000
    with sse(ua, "x", last_id="h0") as r:        # trimmed away: say so
        [e] = r.wait_events(1)
        assert (e.event, e.data) == (RESET_EVENT, "h0")
    with sse(ua, "y", last_id="h1297") as r:
        assert [e.data for e in r.wait_events(2)] == ["e1298", "e1299"]


def test_session_send_and_comment_stay_local(brokers):
    a, ua = brokers()
    r = sse(ua, "s")
    assert wait_until(local(a, "s"))
    [conn] = a.sessions("s")
    assert conn.send(Event("just this session"))
    assert a.comment("hello") == 1
    assert [e.data for e in r.wait_events(1)] == ["just this session"]
    r.close()


def test_close_stops_threads_and_withdraws_presence(brokers, redis_server, redis_prefix):
    from gosse.backplane.redis import RedisBackplane  # after the fixture checked it is there
    observer, _ = brokers()
    assert not observer.is_client_present("c3")       # its threads are started
    before = len(redis_threads())
    broker = Broker(backplane=RedisBackplane(redis_server.url, prefix=redis_prefix, block=5.0))
    with werkzeug_server(make_app(broker)) as url:
        readers = [sse(url, f"c{i}") for i in range(5)]
        assert wait_until(lambda: broker.stats()["sessions"] == 5)
        assert len(redis_threads()) == before + 2     # one listener, one heartbeat
        assert observer.is_client_present("c3")
        t0 = time.monotonic()
        broker.close()
        assert time.monotonic() - t0 < 1.5            # the blocked XREAD is interrupted
        assert wait_until(lambda: len(redis_threads()) == before, timeout=3)
        assert not any(observer.is_client_present(f"c{i}") for i in range(5))
        for r in readers:
            r.read_until_eof(5)
            r.close()
    broker.backplane.close()                          # idempotent
    assert broker.backplane.closed


# -- faults ------------------------------------------------------------------------------

def test_redis_killed_and_restarted(own_redis_server, brokers, caplog):
    caplog.set_level(logging.INFO, logger="gosse.backplane")
    a, ua = brokers(url=own_redis_server.url, auto_id=True)
    b, ub = brokers(url=own_redis_server.url, auto_id=True)
    ra, rb = sse(ua, "ca"), sse(ub, "cb")
    assert wait_until(lambda: local(a, "ca")() and local(b, "cb")())
    a.broadcast(Event("before"))
    assert [e.data for e in rb.wait_events(1)] == ["before"]
    threads_before = len(redis_threads())
    own_redis_server.kill()
    # Publishing callers get a clear gosse error ...
    with pytest.raises(BackplaneError, match="unavailable"):
        a.broadcast(Event("lost"))
    with pytest.raises(BackplaneError):
        b.is_client_present("ca")
    assert wait_until(lambda: not a.backplane.available and not b.backplane.available)
    # ... while open streams keep working: session sends, heartbeats.
    [conn] = a.sessions("ca")
    assert conn.send(Event("local still works"))
    assert [e.data for e in ra.wait_events(2)] == ["before", "local still works"]
    rb.sock.settimeout(2)
    assert rb.read_some() == b":\n\n"
    # New sessions are accepted; an id that cannot be resolved says so.
    with sse(ub, "late", last_id="whatever") as late:
        assert late.status == 200
        assert late.wait_events(1)[0].event == RESET_EVENT
    with pytest.raises(BackplaneError):
        for _ in range(3):
            b.send("cb", Event("lost"))
    own_redis_server.start()

    def publish_ok():
        try:
            b.broadcast(Event("after"))
            return True
        except BackplaneError:
            return False
    assert wait_until(publish_ok, timeout=10, interval=0.1)
    # Redis came back empty: what it held is gone, which every stream is
    # told before the next event (issue 15, defect 2).
    assert [(e.event, e.data) for e in ra.wait_events(4)][2:] == [
        (RESET_EVENT, ""), ("message", "after")]
    assert [(e.event, e.data) for e in rb.wait_events(3)][1:] == [
        (RESET_EVENT, ""), ("message", "after")]
    # Presence was re-registered in the new (empty) Redis by the heartbeats.
    assert wait_until(lambda: a.is_client_present("cb") and b.is_client_present("ca"), timeout=5)
    # Replay works from post-restart ids.
    last = rb.events[2].id
    rb.close()
    a.broadcast(Event("after 2"))
    with sse(ua, "cb", last_id=last) as again:
        assert [e.data for e in again.wait_events(1)] == ["after 2"]
    # Each transition logged once per backplane; no thread leaked.
    down = [r for r in caplog.records if "unavailable" in r.getMessage()]
    up = [r for r in caplog.records if "available again" in r.getMessage()]
    assert len(down) == 2 and len(up) == 2, [r.getMessage() for r in caplog.records]
    assert len(redis_threads()) == threads_before
    ra.close()


def test_local_fallback_while_redis_is_down(own_redis_server, brokers):
    a, ua = brokers(url=own_redis_server.url, backplane_kw={"fallback": "local"})
    r = sse(ua, "f")
    assert wait_until(local(a, "f"))
    own_redis_server.kill()
    assert a.broadcast(Event("delivered here only")) == 1
    assert [e.data for e in r.wait_events(1)] == ["delivered here only"]
    assert a.stats()["backplane_up"] == 0 and a.stats()["backplane_publish_errors"] >= 1
    r.close()


def test_a_redis_password_never_reaches_logs_errors_or_repr(brokers, caplog):
    """Issue 15, defect 12: ``redis://:pw@`` was masked, ``?password=`` was
    not (in the BackplaneError, the warning log line and repr)."""
    port = free_port()    # nothing listens there: every call fails
    url = f"redis://user:pw-in-userinfo@127.0.0.1:{port}/0?password=pw-in-query&db=0"
    a, _ = brokers(url=url, backplane_kw={"connect_timeout": 0.5})
    with caplog.at_level("DEBUG"):
        with pytest.raises(BackplaneError) as info:
            a.broadcast(Event("x"))
    seen = [str(info.value), repr(a.backplane), caplog.text]
    assert all("pw-in-" not in text for text in seen), seen
    assert "password=***" in str(info.value) and "user:***@" in repr(a.backplane)


def test_redis_unreachable_from_the_start(brokers):
    port = free_port()    # nothing listens there
    a, ua = brokers(url=f"redis://127.0.0.1:{port}/0", backplane_kw={"connect_timeout": 0.5})
    t0 = time.monotonic()
    with sse(ua, "early") as r:
        assert r.status == 200
        assert wait_until(local(a, "early"))
        with pytest.raises(BackplaneError):
            a.broadcast(Event("x"))
        [conn] = a.sessions("early")
        assert conn.send(Event("local"))
        assert r.wait_events(1)[0].data == "local"
    assert time.monotonic() - t0 < 5
