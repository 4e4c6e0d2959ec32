"""Redis high availability, with real processes: a master, a replica and a
Sentinel (tests/redis_ha_fixture.py) behind two brokers on Werkzeug servers;
SIGKILL the master, and check what the streams receive across the failover.
And Redis Cluster, refused at start-up with a BackplaneConfigError."""
import signal
import threading
import time

import pytest

import redis_ha_fixture
from broker_app import make_app
from gosse import BackplaneConfigError, BackplaneError, Broker, Event
from gosse.broker import RESET_EVENT
from gosse.errors import PublishOutcomeUnknownError
from redis_brokers import BrokerGroup
from redis_fixture import require_redis_package
from servers import SSEReader, wait_until, werkzeug_server

FAST = dict(block=0.3, socket_timeout=0.5, connect_timeout=0.5, max_backoff=0.2,
            presence_ttl=3.0)


@pytest.fixture
def sentinel_setup():
    yield from redis_ha_fixture.sentinel_setup()


@pytest.fixture
def cluster_node():
    yield from redis_ha_fixture.cluster_node()


@pytest.fixture
def ha_brokers(sentinel_setup, redis_prefix):
    """start(**backplane_kw) -> (broker, url): brokers on the Sentinel
    setup's master, each on its own Werkzeug server; closed afterwards."""
    from gosse.backplane.redis import RedisBackplane
    group = BrokerGroup()

    def start(**kw):
        bp = RedisBackplane(sentinels=sentinel_setup.sentinels,
                            service_name=sentinel_setup.service, prefix=redis_prefix,
                            **{**FAST, **kw})
        return group.add(bp)

    yield start
    group.close()


@pytest.fixture
def redis_prefix():
    import uuid
    return "ha" + uuid.uuid4().hex[:10]


def reader(url, client):
    return SSEReader(f"{url}/sse?client={client}")


def publish_until_accepted(broker, event, deadline):
    """Publish ``event``, again while Redis certainly did not take it (a
    plain BackplaneError); True once accepted, None if the outcome is
    unknown (not repeated: it may be delivered), False at the deadline."""
    while time.monotonic() < deadline:
        try:
            broker.broadcast(event)
            return True
        except PublishOutcomeUnknownError:
            return None
        except BackplaneError:
            time.sleep(0.05)   # rate of retries while Sentinel promotes the replica
    return False


def data_of(events):
    return [e.data for e in events if e.event != RESET_EVENT]


# -- Sentinel ------------------------------------------------------------------------

def two_streams(ha_brokers):
    """Two brokers on the Sentinel setup, one open stream on each."""
    a, ua = ha_brokers()
    b, ub = ha_brokers()
    readers = [reader(ua, "x"), reader(ub, "y")]
    assert wait_until(lambda: a.stats()["sessions"] == 1 and b.stats()["sessions"] == 1)
    return a, b, readers


def test_sentinel_failover_publishes_resume_and_streams_keep_receiving(ha_brokers,
                                                                       sentinel_setup):
    """SIGKILL the master: within a bounded time publishes through both
    brokers succeed on the promoted replica, and the streams of both (the
    listeners followed the master too) get every event once, in order, with
    no reset: everything was replicated before the kill."""
    setup = sentinel_setup
    a, b, readers = two_streams(ha_brokers)
    before = [f"before{i}" for i in range(6)]
    for i, text in enumerate(before):
        (a if i % 2 else b).broadcast(Event(text, id=text))
    for r in readers:
        assert data_of(r.wait_events(6, timeout=5)) == before
    assert setup.wait_replicated() == 1

    setup.master.kill()
    killed = time.monotonic()
    deadline = killed + 15
    outcome = publish_until_accepted(a, Event("after0", id="after0"), deadline)
    resumed = time.monotonic() - killed
    assert outcome is not False, f"no publish accepted in 15 s\n{setup.diagnostics()}"
    assert setup.sentinel.master_port() == setup.replica.port   # a failover, really
    after = ["after0"] if outcome else []
    for i in range(1, 7):
        text = f"after{i}"
        assert publish_until_accepted(b if i % 2 else a, Event(text, id=text),
                                      time.monotonic() + 5)
        after.append(text)
    for r in readers:
        r.next_event(lambda e: e.data == after[-1], timeout=10)
        got = [(e.event, e.data) for e in r.events]
        if [d for _, d in got] != before + after:   # once, in order, no reset
            pytest.fail(f"{got}\n{setup.diagnostics()}")
    for broker in (a, b):
        stats = broker.stats()
        assert stats["backplane_gaps"] == 0 and stats["backplane_up"] == 1, stats
    with setup.replica.client() as c:   # the events after the kill are on the new master
        assert c.xlen(f"{a.backplane.prefix}:events") == len(before) + len(after)
    assert resumed < 10, f"publishing resumed after {resumed:.1f} s"
    print(f"\npublishing resumed {resumed:.1f} s after the master was killed")
    for r in readers:
        r.close()


class Publishing(threading.Thread):
    """Broadcasts ``<tag><i>`` (id the same) through ``broker`` until
    stopped, recording each outcome with its time: ok, unknown, error."""

    def __init__(self, broker, tag):
        super().__init__(daemon=True)
        self.broker, self.tag = broker, tag
        self.stop = threading.Event()
        self.outcomes = []     # (i, outcome, monotonic time of the answer); this thread only
        self.lock = threading.Lock()

    def run(self):
        i = 0
        while not self.stop.is_set() and i < 100_000:
            text = f"{self.tag}{i}"
            try:
                self.broker.broadcast(Event(text, id=text))
                outcome = "ok"
            except PublishOutcomeUnknownError:
                outcome = "unknown"
            except BackplaneError:
                outcome = "error"
            with self.lock:
                self.outcomes.append((i, outcome, time.monotonic()))
            i += 1
            self.stop.wait(0.01)   # about 100 publishes/s per broker

    def accepted_after(self, t):
        with self.lock:
            return sum(1 for _, o, at in self.outcomes if o == "ok" and at > t)


def check_stream(events, publishers, lost_everywhere):
    """What a stream received: each event at most once, each publisher's in
    its order, and every acknowledged event that is missing preceded by a
    ``gosse-reset`` (a hole the stream was told about), except those no
    stream received at all (``lost_everywhere``: lost by Redis itself).
    Returns the number of resets and of events covered by them."""
    seen = data_of(events)
    assert len(seen) == len(set(seen)), f"duplicates: {seen}"
    resets, covered = sum(1 for e in events if e.event == RESET_EVENT), 0
    for p in publishers:
        ok = [f"{p.tag}{i}" for i, o, _ in p.outcomes if o == "ok"]
        ok_index = {text: n for n, text in enumerate(ok)}
        last, reset_since = -1, False
        for e in events + [None]:      # None: the end of the stream (after the fences)
            if e is not None and e.event == RESET_EVENT:
                reset_since = True
                continue
            if e is not None and not e.data.startswith(p.tag):
                continue
            if e is not None and e.data not in ok_index:
                continue               # an unknown outcome that was delivered
            n = len(ok) if e is None else ok_index[e.data]
            assert n > last, f"{p.tag}: {e.data} after {ok[last]} (out of order)"
            missing = [t for t in ok[last + 1:n] if t not in lost_everywhere]
            if missing:
                assert reset_since, (f"silent hole: {missing} missing before "
                                     f"{e.data if e else 'the end'}, no {RESET_EVENT}")
                covered += len(missing)
            last, reset_since = n, False
    return resets, covered


def test_check_stream_finds_a_silent_hole():
    """The checker above fails on a hole without gosse-reset, a duplicate
    and a reordering, and accepts a hole after a reset."""
    class E:
        def __init__(self, data, event=None):
            self.data, self.event = data, event

    class P:
        tag, outcomes = "A", [(i, "ok", 0.0) for i in range(4)]

    ok = [E("A0"), E("A1"), E("", RESET_EVENT), E("A3")]
    assert check_stream(ok, [P()], set()) == (1, 1)
    for bad in ([E("A0"), E("A1"), E("A3")], [E("A0"), E("A0")], [E("A1"), E("A0")],
                [E("A0"), E("A1"), E("A2")]):      # the last: A3 missing at the end
        with pytest.raises(AssertionError):
            check_stream(bad, [P()], set())
    assert check_stream([E("A0"), E("A1"), E("A2")], [P()], {"A3"}) == (0, 0)


def settle_and_check(brokers, readers, pubs, since=None):
    """After the publishers stopped: a fence event from each broker, read
    by every stream; then check every stream (check_stream).  With
    ``since`` (the time of the fault), only what was acknowledged before it
    may be lost everywhere.  Returns check_stream's results and the events
    lost everywhere."""
    fences = []
    for broker, tag in zip(brokers, ("fenceA", "fenceB")):
        assert publish_until_accepted(broker, Event(tag, id=tag), time.monotonic() + 5)
        fences.append(tag)
    for r in readers:
        for tag in fences:
            r.next_event(lambda e, tag=tag: e.data == tag, timeout=10)
    received = [set(data_of(r.events)) for r in readers]
    lost_everywhere = {f"{p.tag}{i}" for p in pubs for i, o, at in p.outcomes
                       if o == "ok" and not any(f"{p.tag}{i}" in s for s in received)}
    late = [f"{p.tag}{i}" for p in pubs for i, o, at in p.outcomes
            if o == "ok" and since is not None and at > since
            and f"{p.tag}{i}" in lost_everywhere]
    assert not late, f"acknowledged after the fault and lost: {late}"
    results = [check_stream(r.events, pubs, lost_everywhere) for r in readers]
    for r in readers:
        r.close()
    return results, lost_everywhere


@pytest.mark.parametrize("restart", ["at_once", "after_failover", "paused"])
def test_sentinel_split_brain_old_master_restarted_empty(ha_brokers, sentinel_setup,
                                                          restart):
    """Publishing continuously through two brokers, SIGKILL the master and
    start it again empty (no persistence):

    * ``at_once``: back before Sentinel notices (down-after 1 s): no
      failover; the replica resyncs from the empty master, the dataset is
      wiped everywhere;
    * ``after_failover``: back after Sentinel promoted the replica, while it
      is still an empty master that Sentinel has not reconfigured yet (about
      10 s): nobody must write there.
    * ``paused``: not killed but stopped (SIGSTOP, like a partition) until
      the failover, then resumed with its data, still believing it is the
      master until Sentinel demotes it: nobody must write there either.

    Every stream must receive each event at most once, in order, and any
    acknowledged event it misses must be preceded by ``gosse-reset``."""
    setup = sentinel_setup
    a, b, readers = two_streams(ha_brokers)
    pubs = [Publishing(a, "A"), Publishing(b, "B")]
    for p in pubs:
        p.start()
    try:
        for r in readers:
            r.wait_events(10, timeout=5)
        if restart == "paused":
            setup.master.proc.send_signal(signal.SIGSTOP)
        else:
            setup.master.kill()
        killed = time.monotonic()
        if restart == "at_once":
            setup.master.start()
        else:
            assert wait_until(lambda: setup.sentinel.master_port() == setup.replica.port,
                              10, interval=0.05), setup.diagnostics()
            back_ms = int(time.time() * 1000)
            if restart == "paused":
                setup.master.proc.send_signal(signal.SIGCONT)
            else:
                setup.master.start()
        restarted = time.monotonic()
        assert wait_until(lambda: all(p.accepted_after(restarted) >= 20 for p in pubs), 15,
                          interval=0.05), f"publishing did not resume\n{setup.diagnostics()}"
        if restart != "at_once":
            with setup.master.client() as old:
                # What the old master took since it came back (it may have been
                # demoted and resynced meanwhile: then this is the new data).
                role = old.info("replication")["role"]
                since = old.xrange(f"{a.backplane.prefix}:events", f"{back_ms}-0")
            still_new = setup.sentinel.master_port() == setup.replica.port
            if role == "master" and still_new:
                # In the window before Sentinel demotes it, nothing was written
                # there but commands sent before the pause whose answer was lost
                # (PublishOutcomeUnknownError: it ran them on resuming).
                unknown = {f"{p.tag}{i}" for p in pubs for i, o, _ in p.outcomes
                           if o == "unknown"}
                wrote = {f[b"u"].decode() for _, f in since}
                assert wrote <= unknown, (wrote - unknown, setup.diagnostics())
                if restart == "after_failover":
                    assert not wrote
    finally:
        for p in pubs:
            p.stop.set()
        for p in pubs:
            p.join(10)
    results, lost_everywhere = settle_and_check((a, b), readers, pubs, killed)
    if restart == "at_once":
        # The dataset was wiped: every stream was told.
        assert all(resets >= 1 for resets, _ in results), results
        assert all(x.stats()["backplane_gaps"] >= 1 for x in (a, b))
    print(f"\n{restart}: resets, covered per stream {results}; "
          f"lost everywhere {len(lost_everywhere)}; outcomes "
          f"{[sum(1 for _, o, _ in p.outcomes if o != 'ok') for p in pubs]} not ok")


def test_sentinel_manual_failover_while_publishing(ha_brokers, sentinel_setup):
    """``SENTINEL FAILOVER`` (maintenance) while both brokers publish: the
    old master stays a master, with clients connected, until Sentinel
    demotes it.  Every stream: each event at most once, in order, any
    acknowledged event it misses preceded by ``gosse-reset``."""
    setup = sentinel_setup
    a, b, readers = two_streams(ha_brokers)
    pubs = [Publishing(a, "A"), Publishing(b, "B")]
    for p in pubs:
        p.start()
    try:
        for r in readers:
            r.wait_events(10, timeout=5)
        started = time.monotonic()
        with setup.sentinel.client() as c:
            assert c.execute_command("SENTINEL", "FAILOVER", setup.service)

        def demoted():
            from redis.exceptions import ConnectionError as Lost
            from redis.exceptions import TimeoutError as Slow
            # A Redis changing role drops its clients: not demoted yet.
            try:
                with setup.master.client() as old:
                    return old.info("replication")["role"] == "slave"
            except (Lost, Slow):
                return False
        assert wait_until(lambda: setup.sentinel.master_port() == setup.replica.port
                          and demoted(), 15, interval=0.05), setup.diagnostics()
        done = time.monotonic()
        assert wait_until(lambda: all(p.accepted_after(done) >= 20 for p in pubs), 10,
                          interval=0.05), f"publishing did not resume\n{setup.diagnostics()}"
    finally:
        for p in pubs:
            p.stop.set()
        for p in pubs:
            p.join(10)
    # Acknowledged by the old master after the replica's promotion and lost
    # with it when demoted, seen by no stream: the backplane asks Sentinel
    # again every 0.5 s, so only in the first moments (without that: for
    # the 10 s until the demotion, hundreds of events).
    results, lost = settle_and_check((a, b), readers, pubs, since=started + 2.0)
    times = sorted(at for p in pubs for i, o, at in p.outcomes if f"{p.tag}{i}" in lost)
    window = f"{times[0] - started:.2f}..{times[-1] - started:.2f} s" if times else "-"
    print(f"\nmanual failover: resets, covered per stream {results}; lost everywhere "
          f"{len(lost)} (acknowledged {window} after the command); outcomes "
          f"{[sum(1 for _, o, _ in p.outcomes if o != 'ok') for p in pubs]} not ok")


# -- Cluster ---------------------------------------------------------------------------

def test_cluster_refused_at_start_up(cluster_node, redis_prefix):
    """A server with cluster-enabled yes: RedisBackplane and Publisher
    refuse at construction with a BackplaneConfigError saying why and what
    to use instead; nothing half-works."""
    from gosse.backplane.redis import Publisher, RedisBackplane
    for make in (lambda: RedisBackplane(cluster_node.url, prefix=redis_prefix, **FAST),
                 lambda: Publisher(cluster_node.url, prefix=redis_prefix)):
        with pytest.raises(BackplaneConfigError) as info:
            make()
        text = str(info.value)
        assert "Redis Cluster is not supported" in text
        assert "one stream" in text and "Sentinel" in text and "standalone" in text
        assert isinstance(info.value, BackplaneError) and isinstance(info.value, ValueError)


def test_cluster_refused_when_it_answers_after_start_up(cluster_node, redis_prefix):
    """Constructed while the cluster node is down (not a configuration
    error: Redis may come back), the first publish once it answers raises
    BackplaneConfigError; nothing was appended."""
    from gosse.backplane.redis import Publisher, RedisBackplane
    cluster_node.kill()
    bp = RedisBackplane(cluster_node.url, prefix=redis_prefix, **FAST)
    broker = Broker(backplane=bp)
    publisher = Publisher(cluster_node.url, prefix=redis_prefix, connect_timeout=0.5)
    try:
        cluster_node.start()
        with pytest.raises(BackplaneConfigError, match="Redis Cluster is not supported"):
            broker.broadcast(Event("x"))
        with pytest.raises(BackplaneConfigError, match="Redis Cluster is not supported"):
            publisher.broadcast(Event("x"))
        with cluster_node.client() as c:
            assert c.keys(f"{redis_prefix}:*") == []
    finally:
        publisher.close()
        broker.close()


def test_cluster_client_from_factory_refused(cluster_node, redis_prefix):
    """A redis.cluster.RedisCluster from client_factory is refused (here on
    a one-node cluster holding every slot, where commands would work until
    the cluster grows)."""
    require_redis_package()
    from redis.cluster import RedisCluster

    from gosse.backplane.redis import Publisher, RedisBackplane
    def state():
        with cluster_node.client() as c:
            return c.execute_command("CLUSTER", "INFO")

    with cluster_node.client() as c:
        c.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
    assert wait_until(lambda: b"cluster_state:ok" in state(), 10, interval=0.05), state()
    made = []

    def factory(**kw):
        client = RedisCluster(host="127.0.0.1", port=cluster_node.port,
                              socket_timeout=kw["socket_timeout"])
        made.append(client)
        return client

    for make in (lambda: RedisBackplane(client_factory=factory, prefix=redis_prefix),
                 lambda: Publisher(client_factory=factory, prefix=redis_prefix)):
        with pytest.raises(BackplaneConfigError, match="RedisCluster"):
            make()
    assert made   # the factory was used
    for client in made:
        client.close()


# -- the listener's start, through a client_factory ---------------------------------------

def test_first_session_gets_an_event_published_right_after_it_registered(redis_prefix):
    """The listener's own connection goes through a proxy that delays the
    server's first answer by 0.5 s: the first session of the process is
    registered before the listener knows where it starts.  An event
    broadcast as soon as the session exists must still reach it (the
    session waits for the listener's position)."""
    import redis

    from gosse.backplane.redis import RedisBackplane
    from redis_fixture import RedisServer, require_redis_server
    with RedisServer(require_redis_server()) as server:
        proxy = redis_ha_fixture.SlowProxy(server.port, 0.5)
        calls = []

        def factory(**kw):
            calls.append(kw)
            listener = len(calls) == 2        # the second client: the listener's own
            return redis.Redis(host="127.0.0.1",
                               port=proxy.port if listener else server.port, **kw)

        # The wait is bounded by socket_timeout: well above the delay here.
        broker = Broker(backplane=RedisBackplane(client_factory=factory, prefix=redis_prefix,
                                                 **{**FAST, "socket_timeout": 3.0}))
        try:
            # The listener's read timeout outlasts its XREAD BLOCK.
            assert len(calls) == 2 and calls[1]["socket_timeout"] > calls[0]["socket_timeout"]
            with werkzeug_server(make_app(broker)) as url:
                r = reader(url, "x")
                assert wait_until(lambda: broker.stats()["sessions"] == 1)
                broker.broadcast(Event("first", id="1"))
                assert [e.data for e in r.wait_events(1, timeout=5)] == ["first"]
                r.close()
        finally:
            broker.close()
            proxy.close()


def test_sentinel_passwords_stay_out_of_messages(redis_prefix):
    """The master's and the sentinels' passwords appear in no repr, error
    or log line, with no sentinel reachable; bad Sentinel arguments are
    BackplaneConfigErrors."""
    import logging

    from gosse.backplane.redis import Publisher, RedisBackplane
    from servers import free_port
    port = free_port()    # nothing listens there
    kw = dict(sentinels=[("127.0.0.1", port)], service_name="svc", prefix=redis_prefix,
              redis_options={"password": "m4ster-pw"},
              sentinel_options={"password": "s3ntinel-pw"})
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("gosse").addHandler(handler)
    try:
        broker = Broker(backplane=RedisBackplane(**kw, **FAST))
        publisher = Publisher(**kw, connect_timeout=0.5)
        with pytest.raises(BackplaneError) as one:
            broker.broadcast(Event("x"))
        with pytest.raises(BackplaneError) as two:
            publisher.broadcast(Event("x"))
        broker.close()
        publisher.close()
    finally:
        logging.getLogger("gosse").removeHandler(handler)
    texts = [str(one.value), str(two.value), repr(broker.backplane), repr(publisher)]
    texts += [r.getMessage() for r in records]
    assert f"sentinel://127.0.0.1:{port}/svc" in texts[0]
    for text in texts:
        assert "m4ster-pw" not in text and "s3ntinel-pw" not in text, text
    for bad in (dict(sentinels=[("127.0.0.1", port)]),                 # no service_name
                dict(sentinels=["127.0.0.1:26379"], service_name="svc"),
                dict(url="redis://127.0.0.1:1/0", sentinels=[("h", 1)], service_name="s"),
                dict(service_name="svc"), dict(client_factory="redis://x")):
        with pytest.raises(BackplaneConfigError):
            RedisBackplane(**bad)
