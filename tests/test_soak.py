"""Nothing lost: the server broadcasts numbered events at 200 events/s while
clients (gosse feeds and raw http.client readers) disconnect at random and
resume with ``Last-Event-ID``; every client must end with the complete,
ordered, duplicate-free sequence ``0 .. N-1``, and never a ``gosse-reset``.

* gunicorn gthread, one worker, in-process broker with history; streams
  also end server-side at random ages (``max_connection_age``).
* gunicorn ``-w 3`` with the Redis backplane (events published by a
  backplane peer in this process); mid-run one worker gets SIGTERM (ended
  at once by the ``gosse.contrib.gunicorn`` hooks) and another SIGKILL: their
  clients resume on the surviving (or respawned) workers.

Client-side disconnects: raw readers close with FIN or reset with RST at
random moments (mean ``CHAOS_GAP`` seconds apart); feeds are closed and
reopened with ``last_event_id`` = the id of the last event consumed (a
closed feed drops what its subscription had queued, so resuming from the
feed's own ``last_event_id`` could skip those).  Server-side ends (max age,
worker stop) make the feeds reconnect by themselves.

The main suite runs each for ``SHORT_SECONDS``; the soak (``-m soak``) for
``GOSSE_SOAK_SECONDS`` (default 600)::

    GOSSE_SOAK_SECONDS=600 python3 -m pytest -m soak -s tests/test_soak.py

Each run prints its numbers (events checked, losses, duplicates, reconnects).
"""
import collections
import http.client
import os
import queue
import random
import signal
import socket
import struct
import threading
import time
import uuid

import pytest
import requests

from gosse import Broker, Event, EventStreamParser, FeedClosedError, SSEError
from gosse.broker import RESET_EVENT
from gosse.client import connect_with_sse_feed
from redis_fixture import RedisServer, require_redis_server
from servers import gunicorn_server

RATE = 200
SHORT_SECONDS = 8
SOAK_SECONDS = float(os.environ.get("GOSSE_SOAK_SECONDS", "600"))
CHAOS_GAP = 1.5          # mean seconds between a client's own disconnects
MAX_AGE = 3.0            # server-side max_connection_age (in-process run)


class Client(threading.Thread):
    """Common bookkeeping: what arrived, in order, and how it got there."""

    def __init__(self, name, url, count, seed):
        super().__init__(name=name, daemon=True)
        self.url = url
        self.count = count
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.connected = threading.Event()    # first stream open
        self.started = threading.Event()      # first event received
        self.done = threading.Event()         # event count-1 received
        self.received = []
        self.last_id = ""
        self.resets = 0
        self.connections = 0                  # streams opened (200 OK)
        self.client_cuts = 0                  # disconnects we made
        self.server_ends = 0                  # streams the server ended or broke
        self.refused = 0                      # non-200 answers, connect errors
        self.pid = None                       # worker of the current stream
        self.pids = []

    def on_event(self, event):
        if event.event == RESET_EVENT:
            self.resets += 1
            return
        self.received.append(int(event.data))
        self.last_id = event.id
        self.started.set()
        if int(event.data) == self.count - 1:
            self.done.set()

    def cut_time(self):
        """When to disconnect next: only once events flow (before the first
        event there is no id to resume from)."""
        if not self.started.is_set():
            return float("inf")
        return time.monotonic() + self.rng.expovariate(1 / CHAOS_GAP)

    @property
    def finished(self):
        return self.stop.is_set() or self.done.is_set()


class RawClient(Client):
    """http.client, our own Last-Event-ID bookkeeping, FIN or RST closes."""

    def run(self):
        host, port = self.url.split("//", 1)[1].split("/", 1)[0].split(":")
        while not self.finished:
            try:
                self.session(host, int(port))
            except (OSError, http.client.HTTPException):
                self.server_ends += 1
            if not self.finished:
                self.stop.wait(0.01)

    def session(self, host, port):
        conn = http.client.HTTPConnection(host, port, timeout=10)
        try:
            headers = {"Accept": "text/event-stream"}
            if self.last_id:
                headers["Last-Event-ID"] = self.last_id
            conn.request("GET", f"/sse?client={self.name}", headers=headers)
            sock = conn.sock
            response = conn.getresponse()
            if response.status != 200:
                self.refused += 1
                return
            self.connections += 1
            self.pid = response.getheader("X-Worker-Pid")
            self.pids.append(self.pid)
            self.connected.set()
            parser = EventStreamParser(last_event_id=self.last_id)
            cut = self.cut_time()
            while not self.finished:
                chunk = response.read1(65536)
                if not chunk:
                    self.server_ends += 1
                    return
                for event in parser.feed(chunk):
                    self.on_event(event)
                if cut == float("inf"):
                    cut = self.cut_time()
                elif time.monotonic() >= cut:
                    self.client_cuts += 1
                    if self.rng.random() < 0.5:   # RST instead of FIN
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                        struct.pack("ii", 1, 0))
                    sock.close()
                    return
        finally:
            conn.close()


class FeedClient(Client):
    """gosse feeds: reconnect by themselves when the server ends a stream;
    closed and reopened (resuming from the last consumed id) at random."""

    def __init__(self, *args):
        super().__init__(*args)
        self.feeds = 0
        self.streams = 0          # 200 answers: the feeds' first and their reconnects
        self.feed_errors = 0

    def on_response(self, response, *args, **kwargs):
        if response.status_code == 200:
            self.streams += 1
            self.pid = response.headers.get("X-Worker-Pid")
            self.pids.append(self.pid)

    def run(self):
        while not self.finished:
            session = requests.Session()
            session.hooks["response"].append(self.on_response)
            try:
                feed = connect_with_sse_feed(f"{self.url}/sse?client={self.name}",
                                             session=session, last_event_id=self.last_id,
                                             retry=50, max_backoff=0.5, timeout=5)
            except SSEError:
                self.refused += 1
                session.close()
                self.stop.wait(0.05)
                continue
            self.feeds += 1
            self.connected.set()
            try:
                self.consume(feed)
            finally:
                feed.close()
                session.close()

    def consume(self, feed):
        sub = feed.subscribe()
        cut = self.cut_time()
        while not self.finished:
            try:
                event = sub.get(timeout=0.1)
            except queue.Empty:
                event = None
            except FeedClosedError:
                return
            except SSEError:             # e.g. a refused reconnect: open a new feed
                self.feed_errors += 1
                return
            if event is not None:
                self.on_event(event)
            if cut == float("inf"):
                cut = self.cut_time()
            elif time.monotonic() >= cut:
                self.client_cuts += 1
                return

    @property
    def reconnects_by_feed(self):
        """Reconnections the feeds made on their own (server-side ends)."""
        return self.streams - self.feeds


def run_clients(url, *, count, feeds, raws, start_pump, pump_progress, during=None,
                seed=0):
    """Start the clients, then the pump; call ``during(clients)`` while it
    runs; wait until every client has the last event; return the clients."""
    clients = ([FeedClient(f"feed{i}", url, count, seed * 100 + i) for i in range(feeds)]
               + [RawClient(f"raw{i}", url, count, seed * 100 + 50 + i) for i in range(raws)])
    for c in clients:
        c.start()
    try:
        for c in clients:
            assert c.connected.wait(20), f"{c.name} never connected"
        t0 = time.monotonic()
        start_pump()
        for c in clients:
            assert c.started.wait(15), f"{c.name} received nothing"
        if during is not None:
            during(clients)
        duration = count / RATE
        deadline = t0 + duration * 1.5 + 60
        while pump_progress() < count:
            assert time.monotonic() < deadline, f"the pump is stuck at {pump_progress()}"
            time.sleep(0.2)
        for c in clients:
            assert c.done.wait(max(1, deadline - time.monotonic())), (
                f"{c.name} has {len(c.received)} events, last {c.received[-1:]}")
    finally:
        for c in clients:
            c.stop.set()
        for c in clients:
            c.join(15)
    assert not any(c.is_alive() for c in clients)
    return clients


def verify(clients, count, label):
    """Every client has exactly 0 .. count-1, in order; print the numbers."""
    expected = list(range(count))
    totals = collections.Counter()
    for c in clients:
        got = c.received
        distinct = set(got)
        totals["events checked"] += len(got)
        totals["lost"] += count - len(distinct & set(expected))
        totals["duplicates"] += len(got) - len(distinct)
        totals["out of order"] += sum(1 for a, b in zip(got, got[1:]) if b < a)
        totals["resets"] += c.resets
        totals["client disconnects"] += c.client_cuts
        totals["server-side ends"] += c.server_ends
        totals["streams opened"] += c.connections
        totals["refused attempts"] += c.refused
        if isinstance(c, FeedClient):
            totals["streams opened"] += c.streams
            totals["feed self-reconnects"] += c.reconnects_by_feed
            totals["feed errors"] += c.feed_errors
    print(f"\n{label}: {len(clients)} clients x {count} events: "
          + ", ".join(f"{k} {v}" for k, v in totals.items()))
    for c in clients:
        assert c.resets == 0, f"{c.name} got {c.resets} {RESET_EVENT} event(s)"
        if c.received != expected:
            missing = sorted(set(expected) - set(c.received))[:10]
            raise AssertionError(f"{c.name}: {len(c.received)} events, missing {missing}, "
                                 f"duplicates {len(c.received) - len(set(c.received))}")
    assert totals["lost"] == totals["duplicates"] == totals["out of order"] == 0
    return totals


# -- gunicorn gthread, in-process broker -------------------------------------------

def nothing_lost_gthread(seconds, feeds, raws, seed):
    count = int(seconds * RATE)
    env = {"GOSSE_TEST_MAX_AGE": str(MAX_AGE), "GOSSE_TEST_HISTORY": "20000",
           "GOSSE_TEST_HEARTBEAT": "5"}
    with gunicorn_server("soak_app:app", threads=64, env=env) as (url, proc):
        def start_pump():
            r = requests.post(f"{url}/pump", params={"count": count, "rate": RATE}, timeout=5)
            assert r.status_code == 200, r.text

        def progress():
            return requests.get(f"{url}/pump", timeout=5).json()["sent"]

        clients = run_clients(url, count=count, feeds=feeds, raws=raws,
                              start_pump=start_pump, pump_progress=progress, seed=seed)
        totals = verify(clients, count, f"gthread {seconds:.0f} s")
        assert totals["client disconnects"] > len(clients)          # chaos happened
        assert totals["server-side ends"] + totals["feed self-reconnects"] > 0   # max age
        stats = requests.get(f"{url}/stats", timeout=5).json()
        assert stats["sessions_dropped_slow"] == 0
        assert_clean_exit(proc)


def assert_clean_exit(proc):
    """Stop the server and check its log holds no traceback."""
    proc.terminate()
    proc.wait(15)
    log = proc.stdout.read().decode("utf-8", "replace")
    assert "Traceback" not in log, log


def test_nothing_lost_gthread_short():
    nothing_lost_gthread(SHORT_SECONDS, feeds=3, raws=5, seed=1)


@pytest.mark.soak
@pytest.mark.timeout(SOAK_SECONDS * 2 + 300)
def test_nothing_lost_gthread_soak():
    nothing_lost_gthread(SOAK_SECONDS, feeds=6, raws=8, seed=2)


# -- gunicorn -w 3, Redis backplane, a worker stopped and one killed ----------------

WORKERS = 3


def nothing_lost_redis(seconds, feeds, raws, seed):
    from gosse.backplane.redis import RedisBackplane

    count = int(seconds * RATE)
    prefix = "soak" + uuid.uuid4().hex[:8]
    with RedisServer(require_redis_server()) as redis_server:
        env = {"GOSSE_REDIS_URL": redis_server.url, "GOSSE_REDIS_PREFIX": prefix,
               "GOSSE_TEST_HEARTBEAT": "5"}
        extra = ["-c", "python:gosse.contrib.gunicorn", "--graceful-timeout", "10"]
        with gunicorn_server("soak_app:app", workers=WORKERS, threads=64, env=env,
                             extra=extra) as (url, proc):
            publisher = Broker(auto_id=True, backplane=RedisBackplane(
                redis_server.url, prefix=prefix, presence_ttl=3.0))
            stop = threading.Event()
            sent = [0]
            # A third and two thirds of the way: a worker is stopped, then one killed.
            milestones = {count // 3: threading.Event(), 2 * count // 3: threading.Event()}

            def pump():
                start = time.monotonic()
                for i in range(count):
                    if stop.wait(max(0.0, start + i / RATE - time.monotonic())):
                        return
                    publisher.broadcast(Event(str(i)))
                    sent[0] = i + 1
                    if i + 1 in milestones:
                        milestones[i + 1].set()

            pumper = threading.Thread(target=pump, daemon=True)
            signalled = {}

            def during(clients):
                # A third of the way: SIGTERM the busiest worker; two thirds:
                # SIGKILL the busiest of the others.
                for milestone, sig in zip(sorted(milestones), (signal.SIGTERM, signal.SIGKILL)):
                    assert milestones[milestone].wait(count / RATE + 30)
                    busy = collections.Counter(c.pid for c in clients if c.pid)
                    for pid in signalled:
                        busy.pop(str(pid), None)
                    victim, n = busy.most_common(1)[0]
                    signalled[int(victim)] = (sig, n, [c for c in clients if c.pid == victim])
                    os.kill(int(victim), sig)

            try:
                clients = run_clients(url, count=count, feeds=feeds, raws=raws,
                                      start_pump=pumper.start, pump_progress=lambda: sent[0],
                                      during=during, seed=seed)
            finally:
                stop.set()
                pumper.join(5)
                publisher.close()
            totals = verify(clients, count, f"redis -w {WORKERS} {seconds:.0f} s")
            moved = 0
            for pid, (_sig, n, victims) in signalled.items():
                assert n >= 1
                for c in victims:   # resumed elsewhere after the worker went
                    assert c.pids[-1] != str(pid), c.name
                    moved += 1
            print("workers signalled: "
                  + ", ".join(f"{pid} {signal.Signals(sig).name} ({n} streams)"
                              for pid, (sig, n, _) in signalled.items())
                  + f"; {moved} clients resumed on other workers")
            assert totals["client disconnects"] > len(clients)
            assert_clean_exit(proc)


def test_nothing_lost_redis_worker_stopped_and_killed_short():
    nothing_lost_redis(SHORT_SECONDS, feeds=3, raws=5, seed=3)


@pytest.mark.soak
@pytest.mark.timeout(SOAK_SECONDS * 2 + 300)
def test_nothing_lost_redis_worker_stopped_and_killed_soak():
    nothing_lost_redis(SOAK_SECONDS, feeds=6, raws=8, seed=4)
