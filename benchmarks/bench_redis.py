#!/usr/bin/env python3
"""Scale-out benchmark: the Redis backplane (3 gunicorn workers x 300
sessions) against the in-process broker (1 worker x 900 sessions), in one run.

Both setups run ``gunicorn -k gthread`` on 127.0.0.1 with the same WSGI app
(defined in this file, ``bench_redis:app``); the Redis one adds
``backplane=RedisBackplane(url)`` and a redis-server started by this script
on a free port (``--save '' --appendonly no``).  ``max_sessions`` per worker
(300 or 900) makes the sessions land exactly evenly: a worker that is full
answers 503 and the load process connects again.

The sessions are held by a separate *load process* over raw sockets and one
``selectors`` (epoll) loop: it opens them all, reports which worker holds
each (``X-Worker-Pid``), then reads and counts every event.  Each event's
data carries its sequence number and the ``time.monotonic()`` read in the
worker just before ``broker.broadcast()`` (CLOCK_MONOTONIC is system-wide),
so the load process computes broadcast-to-receipt latency per delivery.

Two phases per setup:

* latency: ``--latency-events`` broadcasts paced at ``--rate`` per second,
  each one an HTTP request to ``/broadcast`` (landing in any worker):
  p50/p99/max of broadcast-to-receipt over every delivery;
* throughput: one request to ``/burst`` broadcasts ``--burst-events`` events
  back to back inside a worker: delivered events/s = deliveries / (last
  receipt - first broadcast), and the latency percentiles of that phase.

Every delivery is counted: the table says whether each session got each
event exactly once.  The whole run is bounded (timeouts on every wait).

Run:  python3 benchmarks/bench_redis.py            (about 30-60 s)

Issue 15 ("Capacity, measured and made visible"): ``--capacity``,
``--listener-cpu``, ``--memory`` (or ``--issue15`` for all three) run only
these phases, against one redis-server started as above:

* **capacity**: ``Redis 3 workers x 100 streams`` and ``in-process 1 worker
  x 300 streams``, both ``Broker(auto_id=True)`` with default queue bounds
  and a replay history of ``--history`` (1000) events
  (``RedisBackplane(history=)`` / ``Broker(history=)``).  For each rate R
  (250, 500, 1000, ... up to ``--max-rate``, or ``--rates``), alternating
  the setups: a fresh load process opens the streams over HTTP/1.1 (so
  gunicorn's gthread streams take gosse's direct-write path), then one
  request to ``/pace`` makes a worker broadcast R events/s for
  ``--duration`` s (2 ms ticks; ``--publish-from driver`` publishes the
  Redis setup's events from this process instead).  The load process
  de-chunks every stream strictly and accounts every sequence number per
  session: *delivered*, *duplicated* (not above the last one received),
  *lost* (a gap not preceded by a ``gosse-reset`` event since the last
  event, plus what never arrived by the end), *covered* (a gap after a
  reset) and *resets*.  A cut stream reconnects with ``Last-Event-ID``
  (at most 50 times per step), as a browser would.  After the last
  broadcast the load waits until every session has the last event, or
  nothing arrived for ``--stall`` s, or ``--drain`` s.  A step is *clean*
  with 0 lost, 0 duplicated, 0 resets (every session got every event
  exactly once), no publish error, no worker restart, and the publisher
  reaching 95 % of R; above that rate the goal is lost = 0 and resets > 0.  One round per rate step (a step lasts
  the duration); each setup stops after ``--steps-above`` failing steps, and
  the whole phase after ``--budget`` s.  The table marks a step whose load
  process used > 90 % of a core (*load-bound*: the number is a floor) and
  one whose publisher fell short (*publisher-bound*: one thread, one Redis
  round trip per broadcast).
* **listener CPU per entry**: one gthread worker on the backplane, with 0
  and then 100 local streams (held and drained by a load process over
  sockets), receives ``--cpu-entries`` broadcasts published from this
  process at ``--cpu-rate``/s.  The worker's ``/threads`` view gives the
  Linux thread id (``threading.Thread.native_id``) of each Python thread
  by name (Python 3.11 does not name OS threads), and this process reads
  that thread's CPU time from ``/proc/PID/task/TID/schedstat`` (ns, the
  scheduler's own accounting, finer than ``stat``'s 10 ms ticks) before
  and after: listener thread, writer thread and the whole worker (all its
  threads), divided by the entries the worker's listener received
  (``stats()["backplane_received"]``).  The listener's share is its own:
  XREAD, decoding, taking the broker lock, and handing each entry to the
  writer; the writer's is the sending to 100 sockets.  The worker is
  otherwise idle (``/stats`` polled every 0.2 s to see the end).  If the
  backplane reports ``stats()["backplane_listener_cpu_us"]`` it is printed
  beside.  Median of ``--cpu-rounds`` (3) rounds.  At a paced rate the
  blocked XREAD returns with the few entries published since the last
  one, so this is the per-entry cost of a listener that keeps up, not of
  one reading full batches.
* **memory**: INFO ``used_memory`` before and after ``--mem-events``
  (10,000) broadcasts with 1,024 bytes of data into a fresh prefix
  (history 2x that, so nothing is trimmed), divided by the count; median
  of 3 rounds.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from array import array
from urllib.parse import parse_qs

from common import cpu_seconds, free_port, loadavg, machine_line, wait_port  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PAD = "x" * 64


# ---------------------------------------------------------------------------
# The WSGI app (imported by gunicorn in each worker: GOSSE_BENCH_APP=1)
# ---------------------------------------------------------------------------

def make_app():
    sys.path.insert(0, ROOT)
    from gosse import Broker, Event
    redis_url = os.environ.get("GOSSE_BENCH_REDIS")
    # capacity mode (--capacity, --listener-cpu): default queue bounds, auto
    # ids and a replay history, so a cut session resumes by Last-Event-ID.
    capacity = os.environ.get("GOSSE_BENCH_MODE") == "capacity"
    history = int(os.environ.get("GOSSE_BENCH_HISTORY", "10000"))
    backplane = None
    if redis_url:
        from gosse.backplane.redis import RedisBackplane
        backplane = RedisBackplane(redis_url, prefix=os.environ["GOSSE_BENCH_PREFIX"],
                                   history=history)
    pid = os.getpid()
    options = dict(heartbeat_interval=60, max_sessions=int(os.environ["GOSSE_BENCH_MAX_SESSIONS"]),
                   headers={"X-Worker-Pid": str(pid)}, backplane=backplane)
    if capacity:
        broker = Broker(auto_id=True, history=0 if redis_url else history, **options)
    else:
        broker = Broker(queue_size=1_000_000, **options)
    monotonic = time.monotonic

    def app(environ, start_response):
        path = environ["PATH_INFO"]
        if path == "/sse":
            q = parse_qs(environ.get("QUERY_STRING", ""))
            return broker.connect(q.get("client", ["c"])[0], environ)(environ, start_response)
        q = parse_qs(environ.get("QUERY_STRING", ""))
        if path == "/broadcast":
            seq = int(q["seq"][0])
            broker.broadcast(Event(f"{seq} {monotonic():.6f} {PAD}"))
            body = b"ok"
        elif path == "/burst":
            start, n = int(q["start"][0]), int(q["n"][0])
            for seq in range(start, start + n):
                broker.broadcast(Event(f"{seq} {monotonic():.6f} {PAD}"))
            body = b"ok"
        elif path == "/pace":
            body = json.dumps(_pace(broker, Event, int(q["start"][0]), float(q["rate"][0]),
                                    float(q["duration"][0]))).encode()
        elif path == "/start":      # starts a backplane's threads (first use) without a session
            broker.is_client_present("nobody")
            body = b"ok"
        elif path == "/threads":    # thread name -> Linux thread id, for /proc/PID/task/TID
            import threading
            body = json.dumps({"pid": pid, "threads": [[t.name, t.native_id] for t in
                                                       threading.enumerate()]}).encode()
        elif path == "/stats":
            body = json.dumps({**broker.stats(), "pid": pid}).encode()
        else:
            start_response("404 Not Found", [("Content-Length", "0")])
            return [b""]
        start_response("200 OK", [("Content-Type", "text/plain"),
                                  ("Content-Length", str(len(body)))])
        return [body]

    return app


def _pace(broker, event_cls, start, rate, duration):
    """Broadcast ``rate * duration`` events at ``rate`` per second (data:
    sequence number, monotonic time, padding), in 2 ms ticks, catching up
    when behind; gives up at twice the duration plus 10 s."""
    n = int(rate * duration)
    monotonic = time.monotonic
    t0 = monotonic()
    hard = t0 + 2 * duration + 10
    sent = errors = 0
    while sent < n and monotonic() < hard:
        due = min(n, int((monotonic() - t0) * rate) + 1)
        while sent < due:
            try:
                broker.broadcast(event_cls(f"{start + sent} {monotonic():.6f} {PAD}"))
            except Exception:          # BackplaneError: counted, the step is then not clean
                errors += 1
            sent += 1
        time.sleep(0.002)
    return {"sent": sent, "seconds": monotonic() - t0, "errors": errors}


app = make_app() if os.environ.get("GOSSE_BENCH_APP") else None


# ---------------------------------------------------------------------------
# The load process: raw sockets, one epoll loop
# ---------------------------------------------------------------------------

DATA = re.compile(rb"data: (\d+) (\d+\.\d+)")


class Session:
    __slots__ = ("sock", "buf", "ready", "pid", "count", "eof")

    def __init__(self, sock):
        self.sock = sock
        self.buf = bytearray()
        self.ready = False
        self.pid = None
        self.count = 0
        self.eof = False


def _open(port, i):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(f"GET /sse?client=c{i} HTTP/1.0\r\nHost: bench\r\n"
              f"Accept: text/event-stream\r\n\r\n".encode())
    s.setblocking(False)
    return Session(s)


def load_main(args):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    n, split = args.sessions, args.latency_events
    expect = args.latency_events + args.burst_events
    sel = selectors.DefaultSelector()
    pending = {}
    opened = retries = 0
    deadline = time.monotonic() + 60
    ready = []
    while len(ready) < n:                                   # handshake
        while opened < n and len(pending) < 200:
            s = _open(args.port, opened)
            opened += 1
            pending[s.sock] = s
            sel.register(s.sock, selectors.EVENT_READ, s)
        if time.monotonic() > deadline:
            raise SystemExit(f"only {len(ready)} of {n} sessions opened")
        for key, _ in sel.select(1.0):
            s = key.data
            chunk = s.sock.recv(65536)
            s.buf += chunk
            head_end = s.buf.find(b"\r\n\r\n")
            if head_end < 0:
                if not chunk:
                    raise SystemExit("server closed a stream during the handshake")
                continue
            head = bytes(s.buf[:head_end]).decode("latin-1")
            del s.buf[:head_end + 4]
            del pending[s.sock]
            if " 503 " in head.split("\r\n", 1)[0]:           # that worker is full: again
                sel.unregister(s.sock)
                s.sock.close()
                retries += 1
                opened -= 1 if retries < 100 * n else 0
                continue
            s.ready = True
            s.pid = int(re.search(r"(?i)x-worker-pid: (\d+)", head).group(1))
            ready.append(s)
    pids = {}
    for s in ready:
        pids[s.pid] = pids.get(s.pid, 0) + 1
    print(json.dumps({"ready": len(ready), "per_worker": sorted(pids.values()),
                      "retries": retries}), flush=True)

    lat_a, lat_b = array("d"), array("d")
    first_b_sent = None
    last_recv = 0.0
    received = 0
    total = n * expect
    deadline = time.monotonic() + args.timeout
    monotonic = time.monotonic
    while received < total and monotonic() < deadline:
        for key, _ in sel.select(1.0):
            s = key.data
            try:
                chunk = s.sock.recv(262144)
            except BlockingIOError:
                continue
            now = monotonic()
            if not chunk:
                s.eof = True
                sel.unregister(s.sock)
                continue
            buf = s.buf
            buf += chunk
            end = buf.rfind(b"\n\n")
            if end < 0:
                continue
            block = bytes(buf[:end + 2])
            del buf[:end + 2]
            for m in DATA.finditer(block):
                seq = int(m.group(1))
                sent = float(m.group(2))
                if seq < split:
                    lat_a.append(now - sent)
                else:
                    lat_b.append(now - sent)
                    if first_b_sent is None or sent < first_b_sent:
                        first_b_sent = sent
                s.count += 1
                received += 1
            last_recv = now
    counts = [s.count for s in ready]
    summary = {"received": received, "expected": total,
               "per_session_min": min(counts), "per_session_max": max(counts),
               "eof": sum(s.eof for s in ready),
               "latency": _pcts(lat_a), "burst_latency": _pcts(lat_b),
               "burst_deliveries": len(lat_b),
               "burst_seconds": (last_recv - first_b_sent) if first_b_sent else None}
    print(json.dumps(summary), flush=True)
    for s in ready:
        s.sock.close()


def _pcts(values):
    if not values:
        return None
    v = sorted(values)
    pick = lambda q: v[min(len(v) - 1, int(q * len(v)))] * 1000.0  # noqa: E731
    return {"p50": pick(0.50), "p99": pick(0.99), "max": v[-1] * 1000.0, "n": len(v)}


# ---------------------------------------------------------------------------
# The capacity load process: HTTP/1.1 streams, a strict chunk decoder, per
# session accounting of every sequence number, reconnects with Last-Event-ID
# ---------------------------------------------------------------------------

SEQ = re.compile(rb"data: (\d+) ")
HEX = re.compile(rb"[0-9a-fA-F]{1,8}")
RESET = b"event: gosse-reset\n"
MAX_RECONNECTS = 50          # per session and step


class CapSession:
    """One stream of the capacity load: its socket, undecoded bytes and
    counts.  Only the load process's loop touches it."""

    __slots__ = ("i", "sock", "raw", "text", "head", "pid", "last", "last_id",
                 "pending_reset", "delivered", "lost", "dup", "covered", "resets",
                 "reconnects", "eofs", "stale", "retry_at", "done")

    def __init__(self, i, start):
        self.i = i
        self.sock = None
        self.raw = bytearray()     # bytes received, not yet de-chunked
        self.text = bytearray()    # de-chunked bytes, not yet a whole event
        self.head = False          # response head received
        self.pid = None
        self.last = start - 1      # highest sequence number received
        self.last_id = None        # id of the last event received (for Last-Event-ID)
        self.pending_reset = False  # a gosse-reset came and no event since
        self.delivered = self.lost = self.dup = self.covered = 0
        self.resets = self.reconnects = self.eofs = self.stale = 0
        self.retry_at = None
        self.done = False          # the body ended (terminal chunk or EOF)

    def seq(self, q, start):
        """Account one received sequence number."""
        if q < start:
            self.stale += 1        # from an earlier step (a lagging listener)
        elif q <= self.last:
            self.dup += 1
        else:
            gap = q - self.last - 1
            if gap:
                if self.pending_reset:
                    self.covered += gap
                else:
                    self.lost += gap
            self.pending_reset = False
            self.delivered += 1
            self.last = q

    def events(self, block, start):
        """Account the whole events in ``block``."""
        if RESET not in block and not self.pending_reset:
            seqs = list(map(int, SEQ.findall(block)))
            if seqs:
                first = self.last + 1
                if seqs[0] == first and seqs == list(range(first, first + len(seqs))):
                    self.delivered += len(seqs)          # the common case, in C
                    self.last = seqs[-1]
                else:
                    for q in seqs:
                        self.seq(q, start)
        else:
            for ev in block.split(b"\n\n"):
                if RESET in ev:
                    self.resets += 1
                    self.pending_reset = True
                    continue
                m = SEQ.search(ev)
                if m:
                    self.seq(int(m.group(1)), start)
        i = block.rfind(b"id: ")
        if i >= 0 and (i == 0 or block[i - 1] == 10):
            self.last_id = bytes(block[i + 4:block.index(b"\n", i)]).decode()


def dechunk(s):
    """The payload of the whole HTTP/1.1 chunks at the front of ``s.raw``
    (removed from it); sets ``s.done`` at the terminal chunk.  Strict: a
    size line that is not 1-8 hex digits, or a chunk not followed by CRLF,
    raises ValueError."""
    raw = s.raw
    pos, n, parts = 0, len(raw), []
    while True:
        nl = raw.find(b"\r\n", pos)
        if nl < 0:
            if n - pos > 10:
                raise ValueError(f"session {s.i}: bad chunk size line {bytes(raw[pos:pos + 20])!r}")
            break
        line = bytes(raw[pos:nl])
        if not HEX.fullmatch(line):
            raise ValueError(f"session {s.i}: bad chunk size line {line[:20]!r}")
        size = int(line, 16)
        if size == 0:
            s.done = True
            pos = n
            break
        end = nl + 2 + size
        if end + 2 > n:
            break
        if raw[end:end + 2] != b"\r\n":
            raise ValueError(f"session {s.i}: chunk of {size} bytes not followed by CRLF")
        parts.append(raw[nl + 2:end])
        pos = end + 2
    del raw[:pos]
    return b"".join(parts)


def capload_main(args):
    """Hold ``--sessions`` streams, report when all are open, account every
    event until the driver writes ``end FINAL`` on stdin and every session
    has reached FINAL - 1 (or ``--drain`` seconds pass), print the counts."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    start, n = args.start, args.sessions
    monotonic = time.monotonic
    sel = selectors.DefaultSelector()
    sel.register(0, selectors.EVENT_READ, None)
    sessions = [CapSession(i, start) for i in range(n)]
    lat = array("d")
    retry_queue = []             # sessions waiting to (re)connect
    refused = 0
    final = None
    hard_deadline = monotonic() + args.timeout
    drain_deadline = None
    ready_sent = False
    cpu_ready = 0.0
    last_progress = monotonic()

    def connect(s):
        s.raw.clear()
        s.text.clear()
        s.head = s.done = False
        try:
            sock = socket.create_connection(("127.0.0.1", args.port), timeout=10)
        except OSError:
            s.retry_at = monotonic() + 0.05
            retry_queue.append(s)
            return
        extra = f"Last-Event-ID: {s.last_id}\r\n" if s.last_id else ""
        sock.sendall(f"GET /sse?client=c{s.i} HTTP/1.1\r\nHost: bench\r\n"
                     f"Accept: text/event-stream\r\n{extra}\r\n".encode())
        sock.setblocking(False)
        s.sock = sock
        sel.register(sock, selectors.EVENT_READ, s)

    def lost_stream(s, now):
        sel.unregister(s.sock)
        s.sock.close()
        s.sock = None
        s.eofs += 1
        if args.reconnect and s.reconnects < MAX_RECONNECTS and now < hard_deadline:
            s.reconnects += 1
            s.retry_at = now + 0.02
            retry_queue.append(s)

    pending_open = list(sessions)
    while monotonic() < hard_deadline:
        now = monotonic()
        if pending_open:
            opening = sum(1 for s in sessions if s.sock is not None and not s.head)
            while pending_open and opening < 200:
                connect(pending_open.pop())
                opening += 1
        if retry_queue:
            due = [s for s in retry_queue if s.retry_at <= now]
            for s in due:
                retry_queue.remove(s)
                connect(s)
        if not ready_sent and not pending_open and not retry_queue \
                and all(s.head for s in sessions):
            per = {}
            for s in sessions:
                per[s.pid] = per.get(s.pid, 0) + 1
            print(json.dumps({"ready": n, "per_worker": sorted(per.values()),
                              "refused": refused}), flush=True)
            ready_sent = True
            ru = resource.getrusage(resource.RUSAGE_SELF)
            cpu_ready = ru.ru_utime + ru.ru_stime
        if final is not None:
            # Done when every session has the last event, when nothing has
            # arrived for --stall s (what is missing then is not coming), or
            # at the --drain cap.
            if (all(s.last >= final - 1 for s in sessions) or now > drain_deadline
                    or now - last_progress > args.stall):
                break
        for key, _ in sel.select(0.05):
            s = key.data
            if s is None:                                   # the driver's command
                line = os.read(0, 100)
                if not line:
                    raise SystemExit("the driver went away")
                final = int(line.split()[1])
                drain_deadline = monotonic() + args.drain
                continue
            try:
                chunk = s.sock.recv(262144)
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            now = last_progress = monotonic()
            if not chunk:
                lost_stream(s, now)
                continue
            if not s.head:
                s.raw += chunk
                end = s.raw.find(b"\r\n\r\n")
                if end < 0:
                    continue
                head = bytes(s.raw[:end]).decode("latin-1")
                del s.raw[:end + 4]
                status = head.split("\r\n", 1)[0]
                if " 503 " in status:                        # that worker is full: again
                    refused += 1
                    sel.unregister(s.sock)
                    s.sock.close()
                    s.sock = None
                    s.retry_at = now + 0.05
                    retry_queue.append(s)
                    continue
                if " 200 " not in status or not re.search(
                        r"(?i)\r\ntransfer-encoding: chunked", head):
                    raise SystemExit(f"session {s.i}: unexpected response head {head!r}")
                s.head = True
                s.pid = int(re.search(r"(?i)x-worker-pid: (\d+)", head).group(1))
                chunk = b""
            s.raw += chunk
            s.text += dechunk(s)
            end = s.text.rfind(b"\n\n")
            if end >= 0:
                block = bytes(s.text[:end + 2])
                del s.text[:end + 2]
                m = DATA.search(block)      # latency of the oldest event of this read
                if m and int(m.group(1)) >= start:
                    lat.append(now - float(m.group(2)))
                s.events(block, start)
            if s.done:
                lost_stream(s, now)
    if final is None:
        final = start
    tail_lost = tail_covered = 0
    for s in sessions:
        missing = max(0, final - 1 - s.last)
        if s.pending_reset:
            s.covered += missing
            tail_covered += missing
        else:
            s.lost += missing
            tail_lost += missing
    ru = resource.getrusage(resource.RUSAGE_SELF)
    total = lambda name: sum(getattr(s, name) for s in sessions)  # noqa: E731
    print(json.dumps({
        "ready": ready_sent, "start": start, "final": final, "sessions": n,
        "expected": n * (final - start), "delivered": total("delivered"),
        "lost": total("lost"), "dup": total("dup"), "covered": total("covered"),
        "resets": total("resets"), "reconnects": total("reconnects"), "eofs": total("eofs"),
        "stale": total("stale"), "tail_lost": tail_lost, "tail_covered": tail_covered,
        "sessions_lost": sum(1 for s in sessions if s.lost),
        "sessions_reset": sum(1 for s in sessions if s.resets),
        "refused": refused, "latency": _pcts(lat),
        "cpu": ru.ru_utime + ru.ru_stime - cpu_ready,
        "drain_ended": ("complete" if all(s.last >= final - 1 for s in sessions) else
                        "stalled" if monotonic() - last_progress > args.stall else "cap")}),
        flush=True)
    for s in sessions:
        if s.sock is not None:
            s.sock.close()


# ---------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------



def start_redis():
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    port = free_port()
    tmp = tempfile.mkdtemp(prefix="gosse-bench-redis-")
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", tmp, "--protected-mode", "yes"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, proc)
    return proc, f"redis://127.0.0.1:{port}/0", tmp


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def readline(proc, timeout):
    """A line of the load process's stdout within ``timeout`` seconds."""
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    if not sel.select(timeout):
        raise TimeoutError("the load process did not answer")
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"the load process exited ({proc.wait(5)})")
    return json.loads(line)


def run_setup(name, workers, per_worker, redis_url, args, redis_pid=None):
    import requests
    port = free_port()
    env = {**os.environ, "GOSSE_BENCH_APP": "1", "PYTHONPATH": ROOT,
           "GOSSE_BENCH_MAX_SESSIONS": str(per_worker),
           "GOSSE_BENCH_PREFIX": f"bench{os.getpid()}{name}",
           "GOSSE_BENCH_REDIS": redis_url or ""}
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-k", "gthread", "-w", str(workers),
         "--threads", str(per_worker + 16), "--worker-connections", str(per_worker + 100),
         "-b", f"127.0.0.1:{port}", "--chdir", HERE, "--log-level", "warning",
         "--graceful-timeout", "1", "--timeout", "120", "bench_redis:app"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    load = None
    try:
        wait_port(port, server)
        base = f"http://127.0.0.1:{port}"
        http = requests.Session()
        pids, deadline = set(), time.monotonic() + 20
        while len(pids) < workers and time.monotonic() < deadline:  # all workers booted
            pids.add(http.get(base + "/stats", timeout=5).json()["pid"])
        n = workers * per_worker
        load = subprocess.Popen(
            [sys.executable, __file__, "--role", "load", "--port", str(port),
             "--sessions", str(n), "--latency-events", str(args.latency_events),
             "--burst-events", str(args.burst_events), "--timeout", str(args.timeout)],
            stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": ROOT})
        ready = readline(load, 90)
        time.sleep(0.5)
        groups = {"workers": children(server.pid) + [server.pid], "load": [load.pid],
                  "redis": [redis_pid] if redis_url and redis_pid else []}
        cpu0 = {k: cpu_seconds(v) for k, v in groups.items()}
        period = 1.0 / args.rate
        t_next = time.monotonic()
        for seq in range(args.latency_events):                  # latency phase
            http.get(f"{base}/broadcast?seq={seq}", timeout=10).raise_for_status()
            t_next += period
            time.sleep(max(0.0, t_next - time.monotonic()))
        time.sleep(0.5)
        http.get(f"{base}/burst?start={args.latency_events}&n={args.burst_events}",
                 timeout=args.timeout).raise_for_status()          # throughput phase
        summary = readline(load, args.timeout + 30)
        cpu = {k: cpu_seconds(v) - cpu0[k] for k, v in groups.items()}
        return {"name": name, "workers": workers, "per_worker": per_worker, **ready, **summary,
                "cpu": cpu}
    finally:
        for proc in (load, server):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)


def _median_result(runs):
    """One result whose numbers are the medians over ``runs`` (and whose
    exactly-once verdict holds only if it held in every run)."""
    import statistics
    out = dict(runs[0])
    rates = [r["burst_deliveries"] / r["burst_seconds"] for r in runs if r["burst_seconds"]]
    out["burst_rate"] = statistics.median(rates) if rates else 0
    for key in ("latency", "burst_latency"):
        out[key] = {q: statistics.median(r[key][q] for r in runs) for q in ("p50", "p99", "max")}
    out["cpu"] = {k: statistics.median(r["cpu"][k] for r in runs) for k in runs[0]["cpu"]}
    out["once"] = all(r["received"] == r["expected"] and r["per_session_min"]
                      == r["per_session_max"] for r in runs)
    out["received"] = min(r["received"] for r in runs)
    return out


# ---------------------------------------------------------------------------
# Issue 15: capacity, listener CPU per entry, Redis memory per event
# ---------------------------------------------------------------------------

class Server:
    """A gunicorn gthread server running this file's app in capacity mode."""

    def __init__(self, name, workers, per_worker, redis_url, history):
        import requests
        self.name, self.workers, self.per_worker = name, workers, per_worker
        self.redis_url = redis_url
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.prefix = f"bench{os.getpid()}{name}{workers}"
        env = {**os.environ, "GOSSE_BENCH_APP": "1", "PYTHONPATH": ROOT,
               "GOSSE_BENCH_MODE": "capacity", "GOSSE_BENCH_HISTORY": str(history),
               "GOSSE_BENCH_MAX_SESSIONS": str(per_worker),
               "GOSSE_BENCH_PREFIX": self.prefix, "GOSSE_BENCH_REDIS": redis_url or ""}
        # Threads: a stream each, with room for reconnects (a cut stream's
        # thread may still be finishing) and the /pace and /stats requests.
        threads = 2 * per_worker + 16
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-k", "gthread", "-w", str(workers),
             "--threads", str(threads), "--worker-connections", str(threads + 100),
             "-b", f"127.0.0.1:{self.port}", "--chdir", HERE, "--log-level", "warning",
             "--graceful-timeout", "1", "--timeout", "300", "bench_redis:app"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_port(self.port, self.proc)
            self.http = requests.Session()
            pids, deadline = set(), time.monotonic() + 20
            while len(pids) < workers and time.monotonic() < deadline:  # all workers booted
                pids.add(self.http.get(self.base + "/stats", timeout=5,
                                       headers={"Connection": "close"}).json()["pid"])
            if len(pids) < workers:
                raise RuntimeError(f"{name}: only {len(pids)} of {workers} workers answered")
        except BaseException:
            self.close()
            raise

    def pids(self):
        return children(self.proc.pid) + [self.proc.pid]

    def get(self, path, timeout=10):
        r = self.http.get(self.base + path, timeout=timeout)
        r.raise_for_status()
        return r

    def close(self):
        stop(self.proc)


def stop(proc):
    """SIGTERM, then SIGKILL after 10 s; a process already gone is fine."""
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def settle(pids, limit=20.0, idle=0.1):
    """Wait (at most ``limit`` s) until ``pids`` use under ``idle`` of a core
    over half a second: the previous step's backlog is delivered."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        c0 = cpu_seconds(pids)
        time.sleep(0.5)
        if cpu_seconds(pids) - c0 < idle * 0.5:
            return True
    return False


def start_load(port, sessions, start, args, reconnect=True, timeout=None):
    cmd = [sys.executable, __file__, "--role", "capload", "--port", str(port),
           "--sessions", str(sessions), "--start", str(start), "--drain", str(args.drain),
           "--stall", str(args.stall),
           "--timeout", str(timeout or (2 * args.duration + args.drain + 90))]
    if not reconnect:
        cmd.append("--no-reconnect")
    load = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": ROOT})
    try:
        ready = readline(load, 90)
    except BaseException:
        stop(load)
        raise
    return load, ready


def finish_load(load, final, timeout):
    load.stdin.write(f"end {final}\n".encode())
    load.stdin.flush()
    try:
        return readline(load, timeout)
    finally:
        stop(load)


def capacity_step(server, rate, start, args, redis_pid):
    """One rate step: fresh sessions, ``rate`` events/s for ``--duration`` s."""
    n = server.workers * server.per_worker
    load, ready = start_load(server.port, n, start, args)
    try:
        pids = server.pids()
        groups = {"workers": pids, "redis": [redis_pid] if server.name == "redis" else []}
        cpu0 = {k: cpu_seconds(v) for k, v in groups.items()}
        t0 = time.monotonic()
        if server.name == "redis" and args.publish_from == "driver":
            pub = publisher(server.redis_url, server.prefix, args.history)
            try:
                sent, secs = publish_paced(pub, start, int(rate * args.duration), rate, PAD,
                                           tick=0.002)
            finally:
                pub.close()
            pace = {"sent": sent, "seconds": secs, "errors": 0}
        else:
            pace = server.get(f"/pace?start={start}&rate={rate:g}&duration={args.duration:g}",
                              timeout=2 * args.duration + 30).json()
        summary = finish_load(load, start + pace["sent"], args.drain + 60)
        wall = time.monotonic() - t0
        cpu = {k: (cpu_seconds(v) - cpu0[k]) / wall for k, v in groups.items()}
        cpu["load"] = summary["cpu"] / wall
        restarted = server.pids() != pids      # a worker died (and gunicorn forked another)
    finally:
        stop(load)
    achieved = pace["sent"] / pace["seconds"] if pace["seconds"] else 0.0
    # Clean: every session got every event exactly once.  A step with
    # resets (and 0 lost) is above capacity too, but fails the right way.
    clean = (summary["lost"] == 0 and summary["dup"] == 0 and summary["resets"] == 0
             and summary["covered"] == 0 and pace["errors"] == 0
             and pace["sent"] == int(rate * args.duration) and achieved >= 0.95 * rate)
    return {"setup": server.name, "workers": server.workers, "per_worker": ready["per_worker"],
            "rate": rate, "achieved": achieved, "pace": pace, **summary, "cpu": cpu,
            "clean": clean and not restarted, "restarted": restarted, "wall": wall,
            "once": summary["delivered"] == summary["expected"]}


def capacity_rates(args):
    if args.rates:
        return [r for r in args.rates if r <= args.max_rate]
    rates, r = [], 250.0
    while r <= args.max_rate and len(rates) < 20:
        rates.append(r)
        r *= 2
    return rates


def run_capacity(args, redis_proc, redis_url):
    """Step the rate up for both setups, alternating, until a setup has
    failed ``--steps-above`` steps, the rates end, or the budget is spent."""
    budget_end = time.monotonic() + args.budget
    servers = [Server("redis", 3, 100, redis_url, args.history),
               Server("in-process", 1, 300, None, args.history)]
    steps, failed, start = [], {s.name: 0 for s in servers}, 0
    note = ""
    try:
        for rate in capacity_rates(args):
            for server in servers:
                if failed[server.name] >= args.steps_above:
                    continue
                if time.monotonic() + args.duration + 30 > budget_end:
                    note = f"budget of {args.budget:g} s spent before rate {rate:g}"
                    break
                settle(server.pids() + ([redis_proc.pid] if server.name == "redis" else []))
                step = capacity_step(server, rate, start, args, redis_proc.pid)
                start = step["final"] + 1000
                steps.append(step)
                if not step["clean"]:
                    failed[server.name] += 1
                print(f"capacity {server.name} {rate:g}/s: {'clean' if step['clean'] else 'NOT clean'}"
                      f" (lost {step['lost']}, dup {step['dup']}, resets {step['resets']})",
                      file=sys.stderr, flush=True)
            if note or all(f >= args.steps_above for f in failed.values()):
                break
    finally:
        for server in servers:
            server.close()
    return steps, note


def print_capacity(steps, note, args):
    print(f"\n## Capacity: {args.duration:g} s per rate step, 1 round per step, history "
          f"{args.history}, sessions reconnect with Last-Event-ID when cut; CPU % over the "
          f"step's publishing and drain"
          + (f"; {note}" if note else "") + "\n")
    print("| setup | rate R/s (achieved) | sessions (per worker) | deliveries/s | delivered / "
          "expected | lost | dup | resets (sessions) | gap covered by reset | reconnects "
          "| latency p50 / p99 ms | CPU % of a core: workers / redis / load "
          "| workers CPU us / delivery | clean |")
    print("|" + "---|" * 14)
    for r in steps:
        lat = r["latency"] or {"p50": float("nan"), "p99": float("nan")}
        print(f"| {r['setup']}, {r['workers']} worker{'s' if r['workers'] > 1 else ''} "
              f"| {r['rate']:,.0f} ({r['achieved']:,.0f}) "
              f"| {r['sessions']} ({'/'.join(map(str, r['per_worker']))}) "
              f"| {r['delivered'] / max(1e-9, r['pace']['seconds']):,.0f} "
              f"| {r['delivered']:,} / {r['expected']:,} | {r['lost']:,} | {r['dup']:,} "
              f"| {r['resets']} ({r['sessions_reset']}) | {r['covered']:,} | {r['reconnects']} "
              f"| {lat['p50']:.1f} / {lat['p99']:.1f} "
              f"| {100 * r['cpu']['workers']:.0f} / {100 * r['cpu']['redis']:.0f} / "
              f"{100 * r['cpu']['load']:.0f}{' (load-bound)' if r['cpu']['load'] > 0.9 else ''} "
              f"| {1e6 * r['cpu']['workers'] * r['wall'] / max(1, r['delivered']):.2f} "
              f"| {'yes' if r['clean'] else 'NO'}"
              f"{' (publisher-bound)' if r['achieved'] < 0.95 * r['rate'] else ''} |")
    best = {}
    for name in ("redis", "in-process"):
        mine = [r for r in steps if r["setup"] == name]
        ok = [r["rate"] for r in mine if r["clean"]]
        # The highest clean rate below the first failing one.
        first_bad = min((r["rate"] for r in mine if not r["clean"]), default=None)
        ok = [x for x in ok if first_bad is None or x < first_bad]
        best[name] = max(ok) if ok else None
        tail = "" if first_bad is not None else " (no step failed: the capacity is higher)"
        print(f"\n{name}: highest rate with every event delivered once to every session "
              f"(0 lost, 0 duplicated, 0 resets) for {args.duration:g} s: "
              f"{'none' if best[name] is None else f'{best[name]:,.0f} events/s'}{tail}")
        for r in mine:
            if not r["clean"]:
                print(f"  at {r['rate']:,.0f}/s: lost {r['lost']:,} (in {r['sessions_lost']} "
                      f"sessions; {r['lost'] - r['tail_lost']:,} in gaps followed by later "
                      f"events, {r['tail_lost']:,} at the end: never arrived, drain ended "
                      f"{r['drain_ended']}), resets {r['resets']} ({r['covered']:,} events "
                      f"covered by a reset), duplicated {r['dup']:,}, reconnects "
                      f"{r['reconnects']}, publish errors {r['pace']['errors']}, achieved "
                      f"{r['achieved']:,.0f}/s"
                      + (" (publisher-bound)" if r["achieved"] < 0.95 * r["rate"] else "")
                      + (", a worker RESTARTED" if r["restarted"] else "")
                      + ("  <- SILENT LOSS" if r["lost"] else ""))
    if best["redis"] and best["in-process"]:
        print(f"\nratio redis / in-process: {best['redis'] / best['in-process']:.2f}")


def thread_cpu_ns(pid, tid):
    """CPU time of one thread, in ns (/proc/PID/task/TID/schedstat, first field)."""
    try:
        with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def process_cpu_ns(pid):
    """CPU time of all the live threads of ``pid``, in ns."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    return sum(thread_cpu_ns(pid, t) for t in tids)


def publisher(redis_url, prefix, history):
    """A Broker on the backplane in this (the driver's) process: what
    publishes for --listener-cpu and --memory."""
    sys.path.insert(0, ROOT)
    from gosse import Broker
    from gosse.backplane.redis import RedisBackplane
    return Broker(auto_id=True, backplane=RedisBackplane(redis_url, prefix=prefix,
                                                         history=history))


def publish_paced(broker, start, n, rate, pad=PAD, tick=0.01):
    """Broadcast ``n`` events at ``rate``/s in ``tick`` s ticks (bounded: 3x the
    planned time plus 10 s)."""
    from gosse import Event
    t0 = time.monotonic()
    hard = t0 + 3 * n / rate + 10
    sent = 0
    while sent < n and time.monotonic() < hard:
        due = min(n, int((time.monotonic() - t0) * rate) + 1)
        while sent < due:
            broker.broadcast(Event(f"{start + sent} {time.monotonic():.6f} {pad}"))
            sent += 1
        time.sleep(tick)
    return sent, time.monotonic() - t0


def run_listener_cpu(args, redis_url):
    """Listener CPU per stream entry with 0 and 100 local streams (see the
    module docstring for the method)."""
    import statistics
    server = Server("redis", 1, 100, redis_url, args.history)
    pub = publisher(redis_url, server.prefix, args.history)
    rows = []
    start = 0
    try:
        server.get("/start")
        info = server.get("/threads").json()
        wpid = info["pid"]
        # "gosse-redis-listener" today; any thread named like a listener counts
        # (summed), so a renamed or split listener still measures.
        listener = [tid for name, tid in info["threads"] if "listener" in name]
        if not listener:
            raise RuntimeError(f"no listener thread among {info['threads']}")
        for streams in (0, 100):
            per = {"listener": [], "writer": [], "process": [], "reported": []}
            checks = []
            for _ in range(args.cpu_rounds):
                load = None
                if streams:
                    load, _ready = start_load(server.port, streams, start, args,
                                              reconnect=False, timeout=120)
                threads = dict((name, tid) for name, tid in server.get("/threads").json()["threads"])
                writer = threads.get("gosse-writer")
                settle([wpid], limit=10, idle=0.05)
                received0 = server.get("/stats").json().get("backplane_received", 0)
                c0 = (sum(thread_cpu_ns(wpid, t) for t in listener),
                      thread_cpu_ns(wpid, writer) if writer else 0, process_cpu_ns(wpid))
                sent, _secs = publish_paced(pub, start, args.cpu_entries, args.cpu_rate)
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    st = server.get("/stats").json()
                    if st.get("backplane_received", 0) >= received0 + sent:
                        break
                    time.sleep(0.2)
                c1 = (sum(thread_cpu_ns(wpid, t) for t in listener),
                      thread_cpu_ns(wpid, writer) if writer else 0, process_cpu_ns(wpid))
                got = st.get("backplane_received", 0) - received0
                if load is not None:
                    summary = finish_load(load, start + sent, 60)
                    checks.append(summary["delivered"] == summary["expected"] == streams * sent)
                else:
                    checks.append(got == sent)
                start += sent + 1000
                per["listener"].append((c1[0] - c0[0]) / 1e3 / got)
                per["writer"].append((c1[1] - c0[1]) / 1e3 / got)
                per["process"].append((c1[2] - c0[2]) / 1e3 / got)
                reported = st.get("backplane_listener_cpu_us")
                if reported is not None:
                    per["reported"].append(float(reported))
            rows.append({"streams": streams, "entries": args.cpu_entries, "all": all(checks),
                         **{k: statistics.median(v) if v else None for k, v in per.items()}})
    finally:
        pub.close()
        server.close()
    print(f"\n## Listener CPU per stream entry: 1 gunicorn gthread worker, {args.cpu_entries:,} "
          f"entries published at {args.cpu_rate:g}/s from the driver process, median of "
          f"{args.cpu_rounds} rounds\n")
    print("| local streams | listener thread us/entry | writer thread us/entry "
          "| whole worker us/entry | stats() backplane_listener_cpu_us | every event delivered |")
    print("|" + "---|" * 6)
    for r in rows:
        rep = "not reported" if r["reported"] is None else f"{r['reported']:.1f}"
        print(f"| {r['streams']} | {r['listener']:.1f} | {r['writer']:.1f} | {r['process']:.1f} "
              f"| {rep} | {'yes' if r['all'] else 'NO'} |")
    return rows


def run_memory(args, redis_url):
    """used_memory per 1 KiB event in the stream, median of 3 rounds."""
    import statistics

    import redis
    r = redis.Redis.from_url(redis_url)
    per, xlens = [], []
    data_pad = "x" * 1000
    for round_ in range(3):
        prefix = f"benchmem{os.getpid()}r{round_}"
        pub = publisher(redis_url, prefix, 2 * args.mem_events)
        try:
            pub.is_client_present("nobody")          # the backplane's threads start here
            time.sleep(0.2)
            before = r.info("memory")["used_memory"]
            from gosse import Event
            for seq in range(args.mem_events):
                pub.broadcast(Event(f"{seq:023d} {data_pad}"))   # 1,024 bytes of data
            deadline = time.monotonic() + 30   # until its listener read them all
            while (pub.stats().get("backplane_received", 0) < args.mem_events
                   and time.monotonic() < deadline):
                time.sleep(0.1)
            time.sleep(0.2)
            after = r.info("memory")["used_memory"]
            xlen = sum(r.xlen(k) for k in r.scan_iter(match=prefix + ":*", _type="STREAM"))
        finally:
            pub.close()
        for k in r.scan_iter(match=prefix + ":*"):
            r.delete(k)
        per.append((after - before) / args.mem_events)
        xlens.append(xlen)
    print(f"\n## Redis memory per event: {args.mem_events:,} events with 1,024 bytes of data "
          f"(auto id), INFO used_memory after - before, median of 3 rounds\n")
    print(f"bytes per event: {statistics.median(per):,.0f} (rounds: "
          f"{', '.join(f'{x:,.0f}' for x in per)}); entries in the stream: {xlens}")
    return statistics.median(per)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--role", default="driver", choices=["driver", "load", "capload"])
    ap.add_argument("--port", type=int)
    ap.add_argument("--sessions", type=int, default=900)
    ap.add_argument("--latency-events", type=int, default=200)
    ap.add_argument("--rate", type=float, default=50.0, help="latency phase: broadcasts/s")
    ap.add_argument("--burst-events", type=int, default=1000)
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--rounds", type=int, default=1,
                    help="repeat the setups, alternating; the table shows medians")
    ap.add_argument("--json", action="store_true", help="print the raw results too")
    ap.add_argument("--no-redis-one-worker", action="store_true",
                    help="skip the extra row: Redis backplane with 1 worker x 900 sessions "
                         "(separates the backplane's cost from the process count's)")
    g = ap.add_argument_group("issue 15 (any of these runs only the issue 15 phases named)")
    g.add_argument("--capacity", action="store_true",
                   help="step a fixed publish rate up: Redis 3 workers x 100 streams "
                        "against the in-process broker 1 worker x 300")
    g.add_argument("--listener-cpu", action="store_true",
                   help="listener CPU per stream entry, 0 and 100 local streams")
    g.add_argument("--memory", action="store_true", help="Redis used_memory per 1 KiB event")
    g.add_argument("--issue15", action="store_true", help="all three")
    g.add_argument("--duration", type=float, default=60.0, help="seconds per rate step")
    g.add_argument("--rates", type=float, nargs="+",
                   help="rate steps (events/s); default 250, 500, 1000, ... up to --max-rate")
    g.add_argument("--max-rate", type=float, default=16000.0)
    g.add_argument("--budget", type=float, default=1800.0,
                   help="seconds the capacity phase may take in all")
    g.add_argument("--steps-above", type=int, default=2,
                   help="failing steps after which a setup stops stepping up")
    g.add_argument("--history", type=int, default=1000,
                   help="replay history (RedisBackplane(history=), Broker(history=))")
    g.add_argument("--drain", type=float, default=60.0,
                   help="at most this many seconds after the last publish for every "
                        "session to catch up")
    g.add_argument("--stall", type=float, default=3.0,
                   help="the drain also ends when no byte arrived for this many seconds")
    g.add_argument("--publish-from", choices=["worker", "driver"], default="worker",
                   help="Redis setup: publish from inside a worker (/pace, as the "
                        "in-process setup must) or from the driver process")
    g.add_argument("--cpu-entries", type=int, default=10000)
    g.add_argument("--cpu-rate", type=float, default=2000.0)
    g.add_argument("--cpu-rounds", type=int, default=3)
    g.add_argument("--mem-events", type=int, default=10000)
    ap.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--no-reconnect", dest="reconnect", action="store_false",
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role == "load":
        return load_main(args)
    if args.role == "capload":
        return capload_main(args)
    if args.issue15:
        args.capacity = args.listener_cpu = args.memory = True
    if args.capacity or args.listener_cpu or args.memory:
        return issue15_main(args)

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # run the cleanups
    redis_proc, redis_url, tmp = start_redis()
    setups = [("in-process", 1, 900, None), ("redis", 3, 300, redis_url)]
    if not args.no_redis_one_worker:
        setups.append(("redis", 1, 900, redis_url))
    rounds = []
    load_before = os.getloadavg()
    try:
        for i in range(args.rounds):
            rounds.append([run_setup(name, w, per, url, args, redis_proc.pid)
                           for name, w, per, url in setups])
            print(f"round {i + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    finally:
        redis_proc.terminate()
        redis_proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(rounds, indent=1))
    results = [_median_result([r[k] for r in rounds]) for k in range(len(setups))]
    print(f"\n{os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
          f"latency phase {args.latency_events} broadcasts at {args.rate:g}/s, "
          f"burst {args.burst_events} broadcasts, median of {args.rounds} round(s); "
          f"load average before/after: {load_before[0]:.1f} / {os.getloadavg()[0]:.1f}\n")
    head = ("| setup | sessions (per worker) | exactly once | burst delivered events/s "
            "| latency p50 / p99 ms (paced) | latency p50 / p99 ms (burst) "
            "| CPU s: workers / redis / load |")
    print(head)
    print("|" + "---|" * 7)
    for r in results:
        once = r["once"]
        rate = r["burst_rate"]
        lat, blat = r["latency"], r["burst_latency"]
        print(f"| {r['name']}, {r['workers']} worker{'s' if r['workers'] > 1 else ''} "
              f"| {r['ready']} ({'/'.join(map(str, r['per_worker']))}) "
              f"| {'yes' if once else 'NO: {} of {}'.format(r['received'], r['expected'])} "
              f"| {rate:,.0f} "
              f"| {lat['p50']:.2f} / {lat['p99']:.2f} "
              f"| {blat['p50']:.1f} / {blat['p99']:.1f} "
              f"| {r['cpu']['workers']:.1f} / {r['cpu']['redis']:.1f} / {r['cpu']['load']:.1f} |")


def issue15_main(args):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # run the cleanups
    print(machine_line() + f"; load average at start {loadavg()}", flush=True)
    t0 = time.monotonic()
    redis_proc, redis_url, tmp = start_redis()
    out = {}
    try:
        if args.capacity:
            steps, note = run_capacity(args, redis_proc, redis_url)
            print_capacity(steps, note, args)
            out["capacity"] = steps
        if args.listener_cpu:
            out["listener_cpu"] = run_listener_cpu(args, redis_url)
        if args.memory:
            out["memory_bytes_per_event"] = run_memory(args, redis_url)
    finally:
        redis_proc.terminate()
        redis_proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(out, indent=1))
    print(f"\n# {time.monotonic() - t0:.0f} s; load average at end {loadavg()} "
          f"(2 cores shared with other jobs: above ~2 the rates are low-confidence)")


if __name__ == "__main__":
    main()
