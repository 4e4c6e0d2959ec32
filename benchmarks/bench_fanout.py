#!/usr/bin/env python3
"""Server fan-out benchmark (issue 7 items 2 and 3): gosse against the Python
SSE servers, on the same machine, in the same run.

Contenders (apps in ``benchmarks/fanout_apps/``, each a separate server
process on 127.0.0.1, one worker process each):

* ``gosse``: ``gosse_app.py``, a ``Broker`` under gunicorn ``-k gthread``
  (``--threads N+20 --worker-connections N+200``: gunicorn's default of 1000
  connections silently refuses the broadcast request at N = 1000, and
  worker-connections must exceed threads, or gthread closes every keep-alive
  connection);
* ``gosse-gevent``: the same app, unchanged, under gunicorn ``-k gevent``
  (needs ``gevent`` and ``packaging`` in the venv; skipped otherwise);
* ``sse-starlette``: ``starlette_app.py`` under uvicorn ``--loop uvloop --http
  httptools``, one ``asyncio.Queue`` per stream;
* ``flask-sse``: ``flask_sse_app.py`` under gunicorn ``-k gthread`` (same
  flags), with a redis-server started here on a free port (``--save ''
  --appendonly no --client-output-buffer-limit 'pubsub 0 0 0'``, so Redis
  never drops a subscriber that falls behind);
* ``naive``: ``naive_app.py``, the 30-line "one ``queue.Queue`` per stream,
  a generator yielding each event" design, gunicorn ``-k gthread``;
* ``raw-floor``: ``raw_floor.py``, one thread and one epoll loop writing the
  pre-encoded event to every socket;
* (not in the default run) ``gosse-queue``: ``gosse_app.py`` with
  ``Broker(direct_write=False)``: every delivery goes through the stream's
  queue and wakes its thread (gosse before direct writes; what gosse does
  under servers other than gunicorn's sync and gthread workers).

Every event's data is ``"SEQ T PAD"``: T is ``time.monotonic()`` read by the
server when it handles the broadcast (CLOCK_MONOTONIC is one clock for every
process on Linux), PAD 70 bytes, ~100 bytes on the wire.

The streams are held by a separate *load process* (``--role load``): raw
sockets, one ``select.epoll`` loop, HTTP/1.1 requests.  Its framing work is
minimal: it checks the response status, then scans what arrives for
``data: SEQ T`` lines (a chunk-size line cannot look like one) with one
C-level ``re.findall`` per ``recv``, keeping any incomplete last line for
the next ``recv`` and noting a terminating ``0`` chunk; per event it records
T and the receipt time, so latency is send-to-receipt.  Broadcasts come from
a *poster* process forked by it: one keep-alive HTTP/1.1 connection posting
``POST /broadcast?seq=S``, the next request sent as soon as the answer to
the previous one has arrived (``--posters K`` for K connections).  It is a
separate process because as a thread it would wait up to the 5 ms GIL
switch interval behind the receiving loop for every answer, and by default
it may run on any CPU (``--poster-cpus``): pinned next to the receiving loop
it waits for the CPU instead.  The load process reports its CPU use
(posters included) per phase; a figure near 100 % of a core would make it
the bottleneck, and the table says "load-gen bound" above 85 %.
``RLIMIT_NOFILE`` is raised to its hard limit in the driver (inherited by
the servers) and in the load process.

Per contender and N (100, 1,000, 2,000 streams), a fresh server:

1. RSS of all server processes (gunicorn master + worker, uvicorn, plus
   redis-server for flask-sse) after one warm-up broadcast with no stream,
   and again ``--settle`` s after the N streams are open: RSS per idle
   stream = difference / N.
2. Paced phase, a light load: min(20, 2,000/N) broadcasts/s (``--rate``,
   ``--paced-load``: at most 2,000 deliveries/s, so that it stays light at
   every N for all but the slowest contender, which the table flags as
   "overloaded" when the offered deliveries/s exceed half what it delivered
   at saturation) for 2.5 s, at least 6 broadcasts: latency p50/p99 over
   every delivery.
3. Saturation phase: broadcasts posted back to back for ``--sat-secs`` (4)
   seconds (or ``--sat-deliveries``/N broadcasts), never more than
   ``--window`` (8) broadcasts' worth of events undelivered (without a bound
   a server that accepts broadcasts faster than it writes them would queue
   without limit and the drain would not end); then every delivery is
   awaited (at most ``--drain`` s).  The receiving loop reads each socket at
   most every ``--batch-us`` x N us (>= 1 ms) in this phase, so that one
   ``recv`` takes several events; this adds at most that much to the
   saturation latency.  Delivered events/s = deliveries / (last receipt -
   first post); latency p50/p99 over every delivery (a queueing delay at
   full load: it grows with the window); server CPU seconds (utime + stime
   from ``/proc/PID/stat`` of all the server processes, threads included)
   per million delivered events: the steadiest figure on a shared machine;
   context switches of the worker's threads per delivery; and the CPU the
   rest of the machine used meanwhile (``/proc/stat`` busy time minus the
   server's and the load process's: other work, and softirq time).

Each phase checks that every stream got every event exactly once.
Contenders alternate within each N and the order rotates between rounds
(``--rounds``, default 2); tables give the median over rounds.  By default
the servers (and redis-server) are pinned to CPU 0 and the load process to
CPU 1 (``taskset``; ``--no-pin`` to disable), so every server gets one core.
Note that Linux counts runnable threads in the load average: a gthread
worker with 2,000 streams drives it to hundreds by itself during a run.

``--only scale`` (part of the default run) is item 3: gosse with
``--scale-n`` (10,000; issue 7 asked for 5,000) idle streams in ONE gunicorn worker process: gthread
with default 8 MiB thread stacks, gthread with 256 KiB stacks
(``fanout_apps/gunicorn_conf.py``, ``FANOUT_STACK_KIB``), and ``-k gevent``
(same app, unchanged) when gevent is importable; RSS per idle stream,
threads, virtual size, and the latency of isolated broadcasts to all of
them (``--scale-count`` broadcasts at ``--scale-rate``/s).  ``--scale-setups``
picks among those and ``raw-floor`` (the same N held by ``raw_floor.py``: how
much of the latency is the load process reading N sockets one by one).
Issue 12's figure is one command, ``--only scale`` (~1 min); it first
checks ``RLIMIT_NOFILE`` (hard >= N + 100) and, for gthread, the
kernel's and the user's task limits (a thread per stream), and says which
one is short instead of failing half-way.

``--only lockprobe`` (part of the default run) is issue 12's lock-wait
probe: gosse under gthread at ``--probe-n`` (2,000) streams, with
``FANOUT_PROBE=1`` (``fanout_apps/gosse_app.py``).  In three phases (idle
for ``--probe-idle-secs``, then the paced and the saturation phases as
above) ``--probe-clients`` prober processes forked by the load process each
open a new stream, time it from before the TCP connect to its first body
byte, close it, wait ``--probe-interval`` and go on while broadcasts are
being posted (at most ``--probe-max`` per phase); in the server, a thread
calls ``broker.stats()`` every ``--stats-interval`` s, the view times each
probe's ``broker.connect()``, and the driver reads those samples from
``POST /probe/stop`` after each phase, keeping those between the first
post and the last receipt.  A "no-lock control" (the same thread doing
stats()'s per-session loop without the broker's lock) shows what the GIL
alone costs a call in that process.  The table puts p50/p99/max of each
beside the phase's delivered events/s.

``--profile`` runs a saturation phase of one contender (``--profile-contender``,
gosse) at ``--profile-n`` streams under ``py-spy record --gil --nonblocking``
(Python stacks of whichever thread holds the GIL; without ``--gil`` py-spy
cannot keep up with 1,000 threads) or, with ``--profile-tool perf``, under
``perf record -g`` (native and kernel: where the worker's CPU goes), and
prints a summary.

Run:  benchmarks/.venv/bin/python benchmarks/bench_fanout.py          (~10 min)
      ... --n 1000 --only gosse sse-starlette --rounds 1             (quick)
      ... --only scale
      ... --only scale --scale-setups gthread raw-floor            (N = 10,000, ~30 s)
      ... --only lockprobe
      ... --only gosse sse-starlette raw-floor --rounds 3           (issue 12 ratios)
      ... --only gosse gosse-queue --n 100 1000 2000 --rounds 1
      ... --profile --profile-n 1000 [--profile-tool perf]
"""
from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import re
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from array import array
from collections import Counter
from itertools import repeat
from operator import sub

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import cpu_seconds, free_port, wait_port  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
APPS = os.path.join(HERE, "fanout_apps")
PY = sys.executable
CONTENDERS = ["gosse", "gosse-gevent", "sse-starlette", "flask-sse", "naive", "raw-floor"]
# Not in the default run: gosse without direct writes (see the docstring).
EXTRA = ["gosse-queue"]


# ---------------------------------------------------------------------------
# The load process: holds the streams and posts the broadcasts
# ---------------------------------------------------------------------------

TIMES = re.compile(rb"data: ?\d+ (\d+\.\d+) ").findall
CONTENT_LENGTH = re.compile(rb"(?i)\r\ncontent-length: *(\d+)")


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


class Stream:
    __slots__ = ("sock", "tail", "count", "eof")

    def __init__(self, sock, tail):
        self.sock = sock
        self.tail = tail
        self.count = 0
        self.eof = False


class Load:
    def __init__(self, port):
        self.port = port
        self.ep = select.epoll()
        self.streams = {}      # fd -> Stream
        self.seq = 0

    # -- streams -----------------------------------------------------------

    def open(self, n, secs=120.0):
        """Open n streams (at most 200 handshakes at a time); return once
        every response head (status 200) has arrived, within ``secs``."""
        t0 = time.monotonic()
        deadline = t0 + secs
        pending = {}
        opened = 0
        ep = self.ep
        while len(self.streams) < n:
            while opened < n and len(pending) < 200:
                sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
                sock.sendall(b"GET /sse?client=c%d HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                             b"Accept: text/event-stream\r\n\r\n" % opened)
                sock.setblocking(False)
                pending[sock.fileno()] = [sock, b""]
                ep.register(sock.fileno(), select.EPOLLIN)
                opened += 1
            if time.monotonic() > deadline:
                raise SystemExit(f"only {len(self.streams)} of {n} streams opened")
            for fd, _ in ep.poll(1.0):
                entry = pending.get(fd)
                if entry is None:                  # an open stream's first bytes
                    s = self.streams[fd]
                    try:
                        chunk = s.sock.recv(65536)
                    except BlockingIOError:
                        continue
                    if not chunk:
                        raise SystemExit("the server closed a stream after its handshake")
                    s.tail += chunk
                    continue
                try:
                    chunk = entry[0].recv(65536)
                except BlockingIOError:
                    continue
                if not chunk:
                    raise SystemExit(f"the server closed stream {len(self.streams)} "
                                     "during its handshake")
                entry[1] += chunk
                end = entry[1].find(b"\r\n\r\n")
                if end < 0:
                    continue
                head = entry[1][:end]
                if head[9:12] != b"200":
                    raise SystemExit("stream refused: " + head.split(b"\r\n", 1)[0].decode())
                del pending[fd]
                self.streams[fd] = Stream(entry[0], entry[1][end + 4:])
        return {"ready": len(self.streams), "open_secs": time.monotonic() - t0}

    def close(self):
        for fd, s in self.streams.items():
            try:
                self.ep.unregister(fd)
            except OSError:
                pass
            s.sock.close()
        self.streams.clear()

    # -- a phase: post broadcasts, receive and time every delivery ------------

    def phase(self, mode, rate=20.0, count=40, secs=5.0, max_posts=10_000, window=32,
              posters=1, batch_us=0.0, poster_cpus=None, drain=30.0, probe=None):
        """Post broadcasts from ``posters`` threads (one keep-alive connection
        each, a request sent when the previous answer has arrived) while this
        thread receives and timestamps every delivery.

        idle: no broadcast, ``secs`` seconds (for the probes).  ``probe``
        (``{"clients": K, "interval": s, "max": M}``): K prober processes
        each open a new stream, time it from before the TCP connect to its
        first body byte, close it, wait ``interval`` and repeat, while the
        broadcasts are being posted (idle: for ``secs``), M probes at most.

        paced: ``count`` broadcasts at ``rate``/s (one poster).  saturate:
        back to back for ``secs`` seconds or ``max_posts`` broadcasts, never
        more than ``window`` broadcasts' worth of events undelivered; the
        receiving loop then reads at most once per ``batch_us`` x N
        microseconds (>= 1 ms), so that each recv() takes several events
        (the load process's cost is per recv() call), which adds at most
        that much to the measured latency."""
        ep = self.ep
        streams = self.streams
        n = len(streams)
        for s in streams.values():
            s.count = 0
        monotonic = time.monotonic
        probe = probe or {"clients": 0, "max": 0, "interval": 0.0}
        st = _PostState(self.seq, probe["max"])
        k = {"saturate": posters, "idle": 0}.get(mode, 1)
        limit = max_posts if mode == "saturate" else count
        post_secs = secs if mode == "saturate" else float("inf")
        ctx = multiprocessing.get_context("fork")
        procs = [ctx.Process(target=_poster, daemon=True,
                             args=(st, self.port, mode, n, limit, post_secs, 1.0 / rate,
                                   window * n, poster_cpus))
                 for _ in range(k)]
        st.v[ACTIVE] = k
        st.v[PROBING] = probe["clients"]
        v = st.v
        received = 0
        sent_t = array("d")
        recv_t = array("d")
        sent_extend, recv_extend = sent_t.extend, recv_t.extend
        findall = TIMES
        interval = max(0.001, batch_us * 1e-6 * n) if mode == "saturate" and batch_us else 0.0
        ru0 = _cpu_self_and_children()
        v[T0] = t0 = monotonic()
        t_last = t0
        hard_deadline = t0 + (secs if mode in ("saturate", "idle") else count / rate) + drain
        probe_end = t0 + secs if mode == "idle" else hard_deadline
        procs += [ctx.Process(target=_prober, daemon=True,
                              args=(st, self.port, i, probe["interval"], probe["max"],
                                    probe_end, mode != "idle", poster_cpus))
                  for i in range(probe["clients"])]
        eofs = 0
        for p in procs:
            p.start()
        while True:
            if v[ACTIVE] == 0 and v[PROBING] == 0 and received >= v[POSTED] * n:
                break
            t_poll = monotonic()
            if t_poll > hard_deadline:
                break
            events = ep.poll(0.05)
            now = monotonic()
            for fd, _ in events:
                s = streams.get(fd)
                if s is None:
                    continue
                try:
                    chunk = s.sock.recv(65536)   # not more: a larger buffer is mmap()ed per call
                except BlockingIOError:
                    continue
                except OSError:
                    chunk = b""
                if not chunk:
                    s.eof = True
                    eofs += 1
                    ep.unregister(fd)
                    del streams[fd]
                    continue
                if s.tail:
                    chunk = s.tail + chunk
                cut = chunk.rfind(b"\n") + 1
                if cut < len(chunk):
                    s.tail = chunk[cut:]
                    chunk = chunk[:cut]
                else:
                    s.tail = b""
                found = findall(chunk)
                if found:
                    k = len(found)
                    sent_extend(map(float, found))
                    recv_extend(repeat(now, k))
                    s.count += k
                    received += k
                    t_last = now
                if b"\r\n0\r\n\r\n" in chunk:     # the last chunk: the server ended it
                    s.eof = True
            v[RECEIVED] = received
            if interval:
                rest = t_poll + interval - monotonic()
                if rest > 0:
                    time.sleep(rest)
        wall = monotonic() - t0
        v[STOP] = 1
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join(5)
        ru1 = _cpu_self_and_children()         # the posters have been waited for
        self.seq = int(v[SEQ])
        posted = int(v[POSTED])
        counts = [s.count for s in streams.values()]
        lat = array("d", map(sub, recv_t, sent_t))
        step = max(1, len(lat) // 400_000)         # percentiles from <= 400k samples
        lat = sorted(lat[::step]) if step > 1 else sorted(lat)
        pick = (lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1e3) if lat else (
            lambda q: None)
        span = (t_last - v[T_FIRST]) if v[T_FIRST] else 0.0
        probes = sorted(x * 1e3 for x in st.probe[:min(int(v[PROBED]), len(st.probe))]
                        if x >= 0)
        return {"mode": mode, "posted": posted, "received": received,
                "expected": posted * n, "streams": n,
                "per_stream_min": min(counts) if counts else 0,
                "per_stream_max": max(counts) if counts else 0,
                "eofs": eofs, "http_errors": int(v[ERRORS]),
                "poster_error": st.err.value.decode() or None, "posters": k,
                "first_http_error": st.bad.value.decode("latin-1") or None,
                "span": span, "rate": received / span if span > 0 else 0.0,
                "p50": pick(0.50), "p99": pick(0.99), "max": lat[-1] * 1e3 if lat else None,
                "read_interval_ms": interval * 1e3,
                "load_cpu": ru1 - ru0,
                "load_wall": wall,
                # CLOCK_MONOTONIC, one clock with the server's probe samples
                "t0": t0, "t_first": v[T_FIRST], "t_last": t_last,
                "probe": probes, "probe_errors": int(v[PROBE_ERRORS]),
                "probe_error": st.probe_err.value.decode() or None}


# Fields of the state the poster (and prober) processes share with the
# receiving loop.
POSTED, RECEIVED, T_FIRST, STOP, ACTIVE, ERRORS, SEQ, T0, PROBED, PROBING, PROBE_ERRORS = \
    range(11)


class _PostState:
    """Shared memory between the receiving loop and the poster processes
    (separate processes: a poster thread would wait up to the 5 ms GIL
    switch interval behind the receiving loop for every answer)."""

    def __init__(self, seq, probes=0):
        ctx = multiprocessing.get_context("fork")
        self.v = ctx.RawArray("d", 11)
        self.v[SEQ] = seq
        self.lock = ctx.Lock()
        self.err = ctx.RawArray("c", 512)
        self.bad = ctx.RawArray("c", 512)      # the first answer that was not 200
        # Probe k writes only probe[k] (k taken under the lock); -1 = failed.
        self.probe = ctx.RawArray("d", max(1, probes))
        self.probe_err = ctx.RawArray("c", 512)


def _cpu_self_and_children():
    me = resource.getrusage(resource.RUSAGE_SELF)
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + ch.ru_utime + ch.ru_stime


def _poster(st, port, mode, n, limit, secs, period, backlog, affinity):
    """One poster process: a keep-alive connection, one request at a time."""
    monotonic = time.monotonic
    v, lock = st.v, st.lock
    sock = None
    if affinity:
        os.sched_setaffinity(0, affinity)
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = b""
        saturate = mode == "saturate"
        t0 = v[T0]
        while not v[STOP]:
            with lock:
                now = monotonic()
                posted = v[POSTED]
                if posted >= limit or now >= t0 + secs:
                    break
                if saturate:
                    wait = 0.0002 if posted * n - v[RECEIVED] > backlog else 0.0
                else:
                    wait = max(0.0, t0 + posted * period - now)
                if not wait:
                    seq = int(v[SEQ])
                    v[SEQ] = seq + 1
                    v[POSTED] = posted + 1
                    if not v[T_FIRST]:
                        v[T_FIRST] = now
            if wait:
                time.sleep(wait)
                continue
            sock.sendall(b"POST /broadcast?seq=%d HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         b"Content-Length: 0\r\n\r\n" % seq)
            while True:
                end = buf.find(b"\r\n\r\n")
                if end >= 0:
                    m = CONTENT_LENGTH.search(buf, 0, end + 2)
                    size = end + 4 + (int(m.group(1)) if m else 0)
                    if len(buf) >= size:
                        if buf[9:12] != b"200":
                            with lock:
                                v[ERRORS] += 1
                                if not st.bad.value:
                                    st.bad.value = buf[:min(size, 300)]
                        buf = buf[size:]
                        break
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError("the server closed the broadcast connection")
                buf += data
    except Exception as exc:
        st.err.value = f"{type(exc).__name__}: {exc}".encode()[:500]
    finally:
        if sock is not None:
            sock.close()
        with lock:
            v[ACTIVE] -= 1


def _prober(st, port, ident, interval, limit, t_end, while_posting, affinity):
    """One prober process: new streams one after another, each timed from
    before its TCP connect to its first body byte (``connect()`` + first
    bytes as a new client sees them), then closed; while the posters run
    (``while_posting``) or until ``t_end``, at most ``limit`` probes in all."""
    monotonic = time.monotonic
    v, lock = st.v, st.lock
    if affinity:
        os.sched_setaffinity(0, affinity)
    try:
        while not v[STOP] and monotonic() < t_end and not (while_posting and not v[ACTIVE]):
            with lock:
                k = int(v[PROBED])
                if k >= limit:
                    break
                v[PROBED] = k + 1
            st.probe[k] = -1.0
            t0 = monotonic()
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(b"GET /sse?client=probe-%d-%d HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                             b"Accept: text/event-stream\r\n\r\n" % (ident, k))
                buf = b""
                for _ in range(1000):
                    end = buf.find(b"\r\n\r\n")
                    if end >= 0 and len(buf) > end + 4:
                        break
                    data = sock.recv(65536)
                    if not data:
                        raise ConnectionError("the server closed a probe stream")
                    buf += data
                t1 = monotonic()
            if buf[9:12] != b"200":
                raise ConnectionError("probe stream refused: "
                                      + buf.split(b"\r\n", 1)[0].decode("latin-1"))
            st.probe[k] = t1 - t0
            time.sleep(interval)
    except Exception as exc:
        with lock:
            v[PROBE_ERRORS] += 1
            st.probe_err.value = f"{type(exc).__name__}: {exc}".encode()[:500]
    finally:
        with lock:
            v[PROBING] -= 1


def load_main(args):
    raise_nofile()
    load = Load(args.port)
    out = sys.stdout
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd.pop("cmd")
        if op == "open":
            reply = load.open(**cmd)
        elif op == "phase":
            reply = load.phase(**cmd)
        elif op == "close":
            load.close()
            reply = {"closed": True}
        else:
            break
        out.write(json.dumps(reply) + "\n")
        out.flush()
    load.close()


# ---------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------



def proc_tree(pid):
    """pid and all its descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo.extend(int(x) for x in f.read().split())
        except OSError:
            pass
    return out


def machine_busy():
    """(busy, softirq) CPU seconds of the whole machine (all CPUs, /proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal ...
    tick = os.sysconf("SC_CLK_TCK")
    busy = fields[0] + fields[1] + fields[2] + fields[5] + fields[6] + fields[7]
    return busy / tick, fields[6] / tick


def ctx_switches(pids):
    """Voluntary + involuntary context switches of every thread of the processes."""
    total = 0
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/status") as f:
                    for line in f:
                        if "ctxt_switches" in line:
                            total += int(line.split()[1])
            except OSError:
                pass
    return total


def paced_plan(n, args):
    """The paced phase's (broadcasts/s, broadcasts): at most --rate/s and at
    most --paced-load deliveries/s (a light load for every contender at
    every N), for --paced-secs but at least --paced-min broadcasts."""
    rate = min(args.rate, args.paced_load / n)
    return rate, max(args.paced_min, int(round(rate * args.paced_secs)))


def proc_status(pids, key):
    """Sum of a /proc/PID/status field (VmRSS, VmSize in KiB; Threads)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith(key + ":"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def post(port, path, want_json=False, timeout=10):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", path)
        resp = conn.getresponse()
        body = resp.read()
        if want_json:
            if resp.status != 200:
                raise RuntimeError(f"POST {path}: {resp.status}")
            return json.loads(body)
        return resp.status
    finally:
        conn.close()


def pct(values_ms):
    """Count, p50, p99 and max of a list of milliseconds (None when empty)."""
    lat = sorted(values_ms)
    if not lat:
        return {"count": 0, "p50": None, "p99": None, "max": None}
    return {"count": len(lat), "p50": lat[int(0.50 * len(lat))],
            "p99": lat[min(len(lat) - 1, int(0.99 * len(lat)))], "max": lat[-1]}


def lock_summary(phase, server):
    """The lock-wait probe's figures for one phase: the new clients' connect
    + first byte (load side), and the server's ``stats()``, no-lock control
    and ``connect()`` timings, the latter taken from the first broadcast's
    post to the last receipt (the whole phase when idle)."""
    lo, hi = ((phase["t_first"], phase["t_last"]) if phase["mode"] != "idle" and phase["t_first"]
              else (float("-inf"), float("inf")))
    def window(samples):
        return pct([d * 1e3 for t, d in samples if lo <= t <= hi])
    return {"client": pct(phase["probe"]), "stats": window(server["stats"]),
            "control": window(server["control"]), "connect": window(server["connect"]),
            "probe_errors": phase["probe_errors"], "probe_error": phase["probe_error"]}


class LoadProc:
    def __init__(self, port, pin):
        self.proc = subprocess.Popen(
            pin + [PY, os.path.abspath(__file__), "--role", "load", "--port", str(port)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": ROOT})

    def call(self, timeout, **cmd):
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        r, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not r:
            raise TimeoutError(f"the load process did not answer {cmd['cmd']!r}")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the load process exited ({self.proc.wait(5)})")
        return json.loads(line)

    def stop(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.close()
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(5)


def stop(proc, timeout=10):
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        for pid in proc_tree(proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        proc.wait(5)


def start_redis(pin):
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    port = free_port()
    tmp = tempfile.mkdtemp(prefix="gosse-fanout-redis-")
    proc = subprocess.Popen(
        pin + [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--dir", tmp, "--protected-mode", "yes",
               "--maxclients", "20000", "--client-output-buffer-limit", "pubsub 0 0 0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, proc)
    return proc, f"redis://127.0.0.1:{port}/0", tmp


def gunicorn_cmd(app, port, n, worker="gthread", threads=None, conf=None):
    cmd = [PY, "-m", "gunicorn", "-k", worker, "-w", "1",
           "--worker-connections", str(n + 200),
           "-b", f"127.0.0.1:{port}", "--chdir", APPS, "--backlog", "4096",
           "--log-level", "warning", "--timeout", "300", "--graceful-timeout", "1",
           "--keep-alive", "30"]
    if worker == "gthread":
        cmd += ["--threads", str(threads or n + 20)]
    if conf:
        cmd += ["-c", os.path.join(APPS, conf)]
    return cmd + [app]


def server_cmd(name, port, n):
    if name == "gosse":
        return gunicorn_cmd("gosse_app:app", port, n)
    if name == "gosse-queue":
        cmd = gunicorn_cmd("gosse_app:app", port, n)
        return cmd[:-1] + ["--env", "FANOUT_DIRECT=0", cmd[-1]]
    if name == "gosse-gevent":
        return gunicorn_cmd("gosse_app:app", port, n, worker="gevent")
    if name == "naive":
        return gunicorn_cmd("naive_app:app", port, n)
    if name == "flask-sse":
        return gunicorn_cmd("flask_sse_app:app", port, n)
    if name == "sse-starlette":
        return [PY, "-m", "uvicorn", "starlette_app:app", "--app-dir", APPS,
                "--host", "127.0.0.1", "--port", str(port), "--loop", "uvloop",
                "--http", "httptools", "--no-access-log", "--log-level", "warning",
                "--backlog", "4096", "--timeout-keep-alive", "30",
                "--timeout-graceful-shutdown", "1"]
    if name == "raw-floor":
        return [PY, os.path.join(APPS, "raw_floor.py"), str(port)]
    raise ValueError(name)


def pins(args):
    if args.no_pin or not shutil.which("taskset") or (os.cpu_count() or 1) < 2:
        return [], []
    return ["taskset", "-c", "0"], ["taskset", "-c", "1"]


def poster_cpus(args):
    """CPUs the poster processes may run on: None = the load process's."""
    if args.poster_cpus == "load":
        return None
    if args.poster_cpus == "all":
        return sorted(os.sched_getaffinity(0))
    return [int(c) for c in args.poster_cpus.split(",")]


def wait_numsub(url, n, timeout=60):
    import redis
    r = redis.Redis.from_url(url)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if dict(r.pubsub_numsub("sse")).get(b"sse", 0) >= n:
                return
            time.sleep(0.1)
        raise TimeoutError(f"only {dict(r.pubsub_numsub('sse'))} Redis subscribers of {n}")
    finally:
        r.close()


def run_one(name, n, args, *, cmd=None, env_extra=None, label=None, sat=True,
            profile=None, paced=None, lockprobe=None):
    """One fresh server: RSS idle, paced latency, saturation.  Returns a dict.

    ``lockprobe`` (gosse_app with FANOUT_PROBE=1 only): a dict of ``clients``,
    ``interval``, ``max`` (per phase) and ``idle_secs``: adds an idle phase
    before the paced one, runs the probers and the server's stats() probe in
    all three, and puts ``lock_summary`` in each phase's ``"lock"``."""
    pin_server, pin_load = pins(args)
    port = free_port()
    redis_proc = tmp = None
    env = {**os.environ, "PYTHONPATH": ROOT, **(env_extra or {})}
    log = tempfile.TemporaryFile(mode="w+")
    server = load = None
    try:
        if name == "flask-sse":
            redis_proc, url, tmp = start_redis(pin_server)
            env["FANOUT_REDIS_URL"] = url
        server = subprocess.Popen(pin_server + (cmd(port) if cmd else server_cmd(name, port, n)),
                                  env=env,
                                  stdout=log, stderr=log)
        wait_port(port, server)
        assert post(port, "/broadcast?seq=999999999") == 200        # warm-up, no stream
        time.sleep(0.3)
        extra = [redis_proc.pid] if redis_proc else []
        pids = proc_tree(server.pid) + extra
        rss0 = proc_status(pids, "VmRSS")
        load = LoadProc(port, pin_load)
        open_timeout = max(120.0, 0.03 * n)          # 10,000 gthread streams: ~1 min here
        opened = load.call(open_timeout + 60, cmd="open", n=n, secs=open_timeout)
        if name == "flask-sse":
            wait_numsub(url, n)
        time.sleep(args.settle)
        pids = proc_tree(server.pid) + extra
        rss1 = proc_status(pids, "VmRSS")
        worker_pids = proc_tree(server.pid)[-1:]
        res = {"name": label or name, "n": n, "ready": opened["ready"],
               "open_secs": opened["open_secs"],
               "rss0_kib": rss0, "rss1_kib": rss1, "rss_per_stream_kib": (rss1 - rss0) / n,
               "threads": proc_status(worker_pids, "Threads"),
               "vmsize_mib": proc_status(worker_pids, "VmSize") / 1024}
        probe = None
        if lockprobe:
            probe = {k: lockprobe[k] for k in ("clients", "interval", "max")}
            post(port, "/probe/start", want_json=True)
            res["idle"] = load.call(lockprobe["idle_secs"] + args.drain + 60, cmd="phase",
                                    mode="idle", secs=lockprobe["idle_secs"],
                                    poster_cpus=poster_cpus(args), drain=args.drain,
                                    probe=probe)
            res["idle"]["lock"] = lock_summary(res["idle"],
                                               post(port, "/probe/stop", want_json=True))
            post(port, "/probe/start", want_json=True)
        rate, count = paced_plan(n, args) if paced is None else paced
        c0, m0 = cpu_seconds(pids), machine_busy()
        res["paced"] = load.call(count / rate + args.drain + 60, cmd="phase", mode="paced",
                                 rate=rate, count=count, poster_cpus=poster_cpus(args),
                                 drain=args.drain, probe=probe)
        c1, m1 = cpu_seconds(pids), machine_busy()
        res["paced"].update(server_cpu=c1 - c0, machine_cpu=m1[0] - m0[0],
                            softirq_cpu=m1[1] - m0[1], rate_per_s=rate)
        if lockprobe:
            res["paced"]["lock"] = lock_summary(res["paced"],
                                                post(port, "/probe/stop", want_json=True))
        if sat:
            secs = args.sat_secs if profile is None else max(args.sat_secs, 8.0)
            max_posts = max(20, int(args.sat_deliveries / n))
            spy = None
            if profile is not None:
                if args.profile_tool == "perf":
                    # Pinned: sample the server's whole CPU (cheap); per-process
                    # sampling switches perf's events at every context switch of
                    # every thread, which slows this worker down several times.
                    target = (["-a", "-C", pin_server[-1]] if pin_server
                              else ["-p", str(worker_pids[0])])
                    spy = subprocess.Popen(
                        ["perf", "record", "-e", "cpu-clock", "-F", "499", "-g", "-o", profile,
                         *target, "--", "sleep", "5"],
                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                else:
                    spy = subprocess.Popen(
                        [os.path.join(os.path.dirname(PY), "py-spy"), "record", "-o", profile,
                         "-f", "raw", "-d", "5", "-r", str(args.profile_rate),
                         "--pid", str(worker_pids[0]), "--nonblocking"]
                        + ([] if args.profile_all_threads else ["--gil"]),
                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            if lockprobe:
                post(port, "/probe/start", want_json=True)
            c1, m1 = cpu_seconds(pids), machine_busy()
            ctx1 = ctx_switches(worker_pids)
            res["sat"] = load.call(secs + args.drain + 60, cmd="phase", mode="saturate",
                                   secs=secs,
                                   max_posts=max_posts if profile is None else 10 ** 9,
                                   window=args.window, posters=args.posters,
                                   batch_us=args.batch_us, poster_cpus=poster_cpus(args),
                                   drain=args.drain, probe=probe)
            c2, m2 = cpu_seconds(pids), machine_busy()
            res["sat"].update(server_cpu=c2 - c1, machine_cpu=m2[0] - m1[0],
                              softirq_cpu=m2[1] - m1[1],
                              ctx_switches=ctx_switches(worker_pids) - ctx1)
            if lockprobe:
                res["sat"]["lock"] = lock_summary(res["sat"],
                                                  post(port, "/probe/stop", want_json=True))
            if spy is not None:
                try:
                    err = spy.communicate(timeout=60)[1]
                except subprocess.TimeoutExpired:
                    spy.kill()
                    err = spy.communicate()[1]
                res["profile_log"] = err[-2000:]
        if any(res[k]["http_errors"] for k in ("idle", "paced", "sat") if k in res):
            log.seek(0)
            res["server_log_tail"] = log.read()[-3000:]
        return res
    except BaseException:
        log.seek(0)
        sys.stderr.write(f"--- {label or name} N={n} server log ---\n{log.read()[-3000:]}\n")
        raise
    finally:
        if load is not None:
            load.stop()
        stop(server)
        if redis_proc is not None:
            stop(redis_proc)
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
        log.close()


def once(phase):
    return (phase["received"] == phase["expected"] and phase["eofs"] == 0
            and phase["per_stream_min"] == phase["per_stream_max"] == phase["posted"]
            and phase["http_errors"] == 0 and not phase.get("poster_error"))


def verdict(phase):
    if once(phase):
        return "yes"
    if (phase["eofs"] == 0 and phase["http_errors"] == 0 and not phase.get("poster_error")
            and phase["per_stream_max"] <= phase["posted"]):
        return f"not drained ({100 * phase['received'] / max(1, phase['expected']):.0f}%)"
    why = [f"{phase['received']:,} of {phase['expected']:,} deliveries"]
    if phase["eofs"]:
        why.append(f"{phase['eofs']} streams ended")
    if phase["http_errors"]:
        first = (phase.get("first_http_error") or "").split("\r\n", 1)[0]
        why.append(f"{phase['http_errors']} broadcast(s) answered {first!r}")
    if phase.get("poster_error"):
        why.append(phase["poster_error"])
    return "NO: " + ", ".join(why)


def median_of(runs):
    r0 = dict(runs[0])
    med = statistics.median
    verdicts = [verdict(r["paced"]) for r in runs] + [verdict(r["sat"]) for r in runs
                                                       if "sat" in r]
    out = {"name": r0["name"], "n": r0["n"],
           "rss_per_stream_kib": med(r["rss_per_stream_kib"] for r in runs),
           "threads": r0["threads"], "vmsize_mib": r0["vmsize_mib"],
           "once": all(v == "yes" for v in verdicts),
           "verdict": "yes" if all(v == "yes" for v in verdicts) else
           "; ".join(sorted(set(v for v in verdicts if v != "yes"))),
           "paced_rate": r0["paced"]["rate_per_s"], "paced_posted": r0["paced"]["posted"],
           "paced_p50": med(r["paced"]["p50"] for r in runs),
           "paced_p99": med(r["paced"]["p99"] for r in runs),
           "paced_max": med(r["paced"]["max"] for r in runs),
           "rounds": len(runs)}
    if "sat" in r0:
        out.update({
            "rate": med(r["sat"]["rate"] for r in runs),
            "sat_p50": med(r["sat"]["p50"] for r in runs),
            "sat_p99": med(r["sat"]["p99"] for r in runs),
            "cpu_per_m": med(r["sat"]["server_cpu"] / max(1, r["sat"]["received"]) * 1e6
                             for r in runs),
            "ctx_per_delivery": med(r["sat"].get("ctx_switches", 0) / max(1, r["sat"]["received"])
                                    for r in runs),
            "server_util": med(r["sat"]["server_cpu"] / r["sat"]["load_wall"] for r in runs),
            "load_util": med(r["sat"]["load_cpu"] / r["sat"]["load_wall"] for r in runs),
            "other_util": med(max(0.0, r["sat"]["machine_cpu"] - r["sat"]["server_cpu"]
                                  - r["sat"]["load_cpu"] - r["sat"]["softirq_cpu"])
                              / r["sat"]["load_wall"] for r in runs),
            "softirq_util": med(r["sat"]["softirq_cpu"] / r["sat"]["load_wall"] for r in runs),
            "sat_posted": med(r["sat"]["posted"] for r in runs),
            "sat_received": med(r["sat"]["received"] for r in runs)})
        out["paced_overloaded"] = out["paced_rate"] * out["n"] > 0.5 * out["rate"]
    return out


def fmt(x, spec=",.0f"):
    return "n/a" if x is None else format(x, spec)


def print_fanout(results, ns):
    for n in ns:
        rows = [r for r in results if r["n"] == n]
        if not rows:
            continue
        ref = {r["name"]: r for r in rows}
        g = ref.get("gosse")
        pr = rows[0]["paced_rate"]
        print(f"\n### N = {n:,} streams (paced: {pr:g} broadcasts/s = {pr * n:,.0f} "
              f"deliveries/s)\n")
        print("| contender | delivered events/s (saturation) | x gosse "
              "| server CPU s / M delivered | x gosse "
              "| latency p50 / p99 ms, paced | latency p50 / p99 ms, saturation "
              "| RSS KiB / idle stream | CPU % (sat.): server / load gen / softirq / rest "
              "| context switches / delivery | exactly once |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for r in rows:
            xr = f"{r['rate'] / g['rate']:.2f}" if g and g.get("rate") else "-"
            xc = f"{r['cpu_per_m'] / g['cpu_per_m']:.2f}" if g and g.get("cpu_per_m") else "-"
            lb = " (load-gen bound)" if r["load_util"] > 0.85 else ""
            ov = " (overloaded)" if r.get("paced_overloaded") else ""
            print(f"| {r['name']} | {fmt(r['rate'])}{lb} | {xr} | {fmt(r['cpu_per_m'], '.1f')} "
                  f"| {xc} | {fmt(r['paced_p50'], '.2f')} / {fmt(r['paced_p99'], '.2f')}{ov} "
                  f"| {fmt(r['sat_p50'], '.1f')} / {fmt(r['sat_p99'], '.1f')} "
                  f"| {fmt(r['rss_per_stream_kib'], '.1f')} "
                  f"| {100 * r['server_util']:.0f} / {100 * r['load_util']:.0f} / "
                  f"{100 * r['softirq_util']:.0f} / {100 * r['other_util']:.0f} "
                  f"| {r['ctx_per_delivery']:.1f} "
                  f"| {r['verdict']} |")
    print("\nTargets (issue 7 item 2), per N:")
    for n in ns:
        ref = {r["name"]: r for r in results if r["n"] == n}
        g = ref.get("gosse")
        if not g:
            continue
        checks = []
        if "sse-starlette" in ref:
            s = ref["sse-starlette"]
            checks.append(f"server CPU/M <= sse-starlette's: {g['cpu_per_m']:.1f} vs "
                          f"{s['cpu_per_m']:.1f} "
                          f"{'MET' if g['cpu_per_m'] <= s['cpu_per_m'] else 'MISSED'}")
        for peer in ("sse-starlette", "flask-sse"):
            if peer in ref:
                p = ref[peer]
                checks.append(f"events/s > {peer}'s: {g['rate']:,.0f} vs {p['rate']:,.0f} "
                              f"{'MET' if g['rate'] > p['rate'] else 'MISSED'}")
        if "raw-floor" in ref:
            f = ref["raw-floor"]
            ratio = f["rate"] / g["rate"] if g["rate"] else float("inf")
            checks.append(f"within 3x of the raw floor: floor/gosse = {ratio:.1f} "
                          f"{'MET' if ratio <= 3 else 'MISSED'}")
        print(f"  N={n:,}: " + "; ".join(checks))
    print_ratios(results, ns)


def print_ratios(results, ns):
    """Issue 12's ratios: gosse's delivered events/s and server CPU per
    million deliveries over sse-starlette's and the raw floor's (ratios of
    the medians), with the issue's targets."""
    rows = []
    for n in ns:
        ref = {r["name"]: r for r in results if r["n"] == n}
        g = ref.get("gosse")
        if g and ("sse-starlette" in ref or "raw-floor" in ref):
            rows.append((n, g, ref.get("sse-starlette"), ref.get("raw-floor")))
    if not rows:
        return
    print("\nRatios (issue 12): gosse / sse-starlette, target events/s >= 2x and CPU/M "
          "<= 0.5x at every N; gosse / raw-floor, target events/s >= 0.5x (within 2x of "
          "the floor) at N >= 1,000\n")
    print("| N | events/s gosse / sse-starlette | CPU s/M gosse / sse-starlette "
          "| events/s gosse / raw-floor | CPU s/M gosse / raw-floor |")
    print("|---:|---:|---:|---:|---:|")

    def ratio(a, b, key, target=None, ge=True):
        if a is None or b is None or not b.get(key):
            return "-"
        x = a[key] / b[key]
        if target is None:
            return f"{x:.2f}"
        ok = x >= target if ge else x <= target
        return f"{x:.2f} ({'>=' if ge else '<='} {target:g}: {'MET' if ok else 'MISSED'})"
    for n, g, st, fl in rows:
        bound = " (floor load-gen bound)" if fl and fl["load_util"] > 0.85 else ""
        print(f"| {n:,} | {ratio(g, st, 'rate', 2.0)} | {ratio(g, st, 'cpu_per_m', 0.5, False)} "
              f"| {ratio(g, fl, 'rate', 0.5 if n >= 1000 else None)}{bound} "
              f"| {ratio(g, fl, 'cpu_per_m')} |")


def gevent_available():
    return subprocess.run([PY, "-c", "import gevent, gunicorn.workers.ggevent"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0


SCALE_SETUPS = ["gthread", "gthread-small-stacks", "gevent", "raw-floor"]


def scale_limits(n, setups):
    """Why N streams cannot be held here (None if they can): the file
    descriptors (the driver raised its soft limit to the hard one; the
    servers inherit it, the load process raises its own) and, for gthread,
    one thread per stream under the kernel's and the user's task limits."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < n + 100:
        return (f"RLIMIT_NOFILE hard limit {hard} < N + 100 = {n + 100} (the server and "
                "the load process each hold N sockets): raise it (ulimit -Hn, limits.conf)")
    if any(s.startswith("gthread") for s in setups):
        limits = {}
        for name in ("pid_max", "threads-max"):
            try:
                with open(f"/proc/sys/kernel/{name}") as f:
                    limits[f"kernel.{name}"] = int(f.read())
            except (OSError, ValueError):
                pass
        nproc = resource.getrlimit(resource.RLIMIT_NPROC)[0]
        if nproc != resource.RLIM_INFINITY:
            limits["RLIMIT_NPROC"] = nproc
        low = {k: v for k, v in limits.items() if v < n + 2000}
        if low:
            return (f"gthread needs a thread per stream (N + 20 = {n + 20}) and headroom: "
                    + ", ".join(f"{k} = {v}" for k, v in low.items()))
    return None


def run_scale(args):
    n = args.scale_n
    setups = {
        "gthread": ("gthread, default 8 MiB thread stacks",
                    lambda port: gunicorn_cmd("gosse_app:app", port, n, conf="gunicorn_conf.py"),
                    {}),
        "gthread-small-stacks": (
            f"gthread, {args.stack_kib} KiB thread stacks",
            lambda port: gunicorn_cmd("gosse_app:app", port, n, conf="gunicorn_conf.py"),
            {"FANOUT_STACK_KIB": str(args.stack_kib)}),
        "gevent": ("gevent worker (same app, unchanged)",
                   lambda port: gunicorn_cmd("gosse_app:app", port, n, worker="gevent"), {}),
        # Not gosse: what the load process's own reading adds to the latency.
        "raw-floor": ("raw-floor (one epoll thread; not gosse: the measurement's floor)",
                      lambda port: server_cmd("raw-floor", port, n), {}),
    }
    wanted = [s for s in SCALE_SETUPS if s in args.scale_setups]
    why = scale_limits(n, wanted)
    if why:
        print(f"  scale: N={n:,} cannot run here: {why}", file=sys.stderr, flush=True)
        return [{"name": f"all setups at N = {n:,}", "n": n, "error": why}]
    configs = [setups[s] for s in wanted if s != "gevent" or gevent_available()]
    out = []
    for label, make, env in configs:
        try:
            res = run_one("gosse", n, args, cmd=make, env_extra=env, label=label,
                          sat=args.scale_sat, paced=(args.scale_rate, args.scale_count))
        except Exception as exc:             # report it, do not abort the run
            res = {"name": label, "n": n, "error": f"{type(exc).__name__}: {exc}"}
        out.append(res)
        print(f"  scale: {label}: " + (res.get("error") or
              f"{res['rss_per_stream_kib']:.1f} KiB/stream, paced p50/p99 "
              f"{res['paced']['p50']:.1f}/{res['paced']['p99']:.1f} ms, "
              f"{verdict(res['paced'])}"), file=sys.stderr, flush=True)
    if "gevent" in wanted and not gevent_available():
        out.append({"name": "gevent worker (same app)", "n": n,
                    "error": "gevent is not importable in this venv"})
    return out


def print_scale(results, args):
    sat = any("rate" in r for r in results)
    print(f"\n### Connection scale: idle streams held by ONE gunicorn worker process "
          f"(gosse; paced: {args.scale_count} broadcasts at {args.scale_rate:g}/s)\n")
    print("| setup | idle streams held | RSS KiB / idle stream | worker threads "
          "| worker virtual size MiB | broadcast latency p50 / p99 / max ms (paced) "
          + ("| delivered events/s (sat.) | server CPU s / M " if sat else "")
          + "| exactly once |")
    print("|---|---:|---:|---:|---:|---:|" + ("---:|---:|" if sat else "") + "---|")
    for r in results:
        if "error" in r:
            print(f"| {r['name']} | FAILED: {r['error']} |")
            continue
        extra = (f"| {fmt(r.get('rate'))} | {fmt(r.get('cpu_per_m'), '.1f')} " if sat else "")
        print(f"| {r['name']} | {r['n']:,} | {r['rss_per_stream_kib']:.1f} | {r['threads']:,} "
              f"| {r['vmsize_mib']:,.0f} | {r['paced_p50']:.1f} / {r['paced_p99']:.1f} / "
              f"{r['paced_max']:.1f} {extra}| {r['verdict']} |")
    checks = [r for r in results if "error" not in r and r["name"].startswith("gthread")]
    if checks:
        print(f"\nTargets (issue 12), N = {checks[0]['n']:,} open streams in one gthread "
              "worker: a broadcast reaches them all with p99 < 250 ms; RSS per idle "
              "stream <= 32 KiB")
    for r in checks:
        print(f"  {r['name']}: p99 {r['paced_p99']:.1f} ms "
              f"{'MET' if r['paced_p99'] < 250 else 'MISSED'}; "
              f"{r['rss_per_stream_kib']:.1f} KiB/stream "
              f"{'MET' if r['rss_per_stream_kib'] <= 32 else 'MISSED'}"
              + ("" if r["once"] else f"; exactly once: {r['verdict']}"))


def run_lockprobe(args):
    """Issue 12's lock-wait probe: gosse under gthread at --probe-n streams;
    idle, paced and burst phases with new clients and the server's stats()
    loop timed (gosse_app.py with FANOUT_PROBE=1)."""
    n = args.probe_n
    slack = 3 * args.probe_max       # a closed probe holds its thread until a write fails
    lp = {"clients": args.probe_clients, "interval": args.probe_interval,
          "max": args.probe_max, "idle_secs": args.probe_idle_secs}
    env = {"FANOUT_PROBE": "1", "FANOUT_PROBE_INTERVAL": str(args.stats_interval)}
    try:
        res = run_one("gosse", n, args, env_extra=env, label="gosse (gthread)", lockprobe=lp,
                      cmd=lambda port: gunicorn_cmd("gosse_app:app", port, n + slack))
    except Exception as exc:                 # report it, do not abort the run
        res = {"name": "gosse (gthread)", "n": n, "error": f"{type(exc).__name__}: {exc}"}
    if "error" in res:
        print(f"  lockprobe: {res['error']}", file=sys.stderr, flush=True)
    else:
        lk = res["sat"]["lock"]
        print(f"  lockprobe N={n}: burst {res['sat']['rate']:,.0f} ev/s; connect+first byte "
              f"p99 {fmt(lk['client']['p99'], '.1f')} ms, stats() p99 "
              f"{fmt(lk['stats']['p99'], '.1f')} ms", file=sys.stderr, flush=True)
    return res


def print_lockprobe(res, args):
    n = res["n"]
    print(f"\n### Lock-wait probe: gosse under gthread, N = {n:,} streams "
          f"({args.probe_clients} prober(s) opening a new stream every "
          f"{args.probe_interval * 1e3:g} ms after the last, <= {args.probe_max} per phase; "
          f"stats() every {args.stats_interval * 1e3:g} ms in a server thread)\n")
    if "error" in res:
        print(f"FAILED: {res['error']}")
        return
    print("| phase | delivered events/s | new client: connect + first byte ms p50 / p99 / max "
          "(count) | in the server: broker.connect() ms p50 / p99 / max "
          "| broker.stats() ms p50 / p99 / max (count) "
          "| no-lock control ms p50 / p99 / max | exactly once |")
    print("|---|---:|---:|---:|---:|---:|---|")

    def three(p, count=False):
        if not p["count"]:
            return "n/a"
        return (f"{p['p50']:.2f} / {p['p99']:.2f} / {p['max']:.2f}"
                + (f" ({p['count']:,})" if count else ""))
    labels = {"idle": f"idle ({args.probe_idle_secs:g} s, no broadcast)",
              "paced": f"paced ({res['paced']['rate_per_s']:g} broadcasts/s)",
              "sat": "burst (saturation)"}
    for key in ("idle", "paced", "sat"):
        ph = res.get(key)
        if not ph:
            continue
        lk = ph["lock"]
        rate = fmt(ph["rate"]) if key != "idle" else "-"
        errs = (f"; probe errors: {lk['probe_errors']} ({lk['probe_error']})"
                if lk["probe_errors"] else "")
        print(f"| {labels[key]} | {rate} | {three(lk['client'], True)} | {three(lk['connect'])} "
              f"| {three(lk['stats'], True)} | {three(lk['control'])} "
              f"| {verdict(ph) if key != 'idle' else '-'}{errs} |")
    lk = res["sat"]["lock"]
    print(f"\nTargets (issue 12), during the burst at N = {n:,}: p99 wait < 5 ms")
    for what, p in (("new client's connect + first byte", lk["client"]),
                    ("broker.connect() in the server", lk["connect"]),
                    ("broker.stats() in the server", lk["stats"])):
        if p["count"]:
            print(f"  {what}: p99 {p['p99']:.2f} ms, max {p['max']:.2f} ms "
                  f"({p['count']} samples) {'MET' if p['p99'] < 5 else 'MISSED'}")
        else:
            print(f"  {what}: no samples")


def summarize_perf(path, top=25):
    """Where the worker's CPU went: shares by binary, by symbol, and the
    futex/scheduler share (GIL and wake-up hand-offs between threads)."""
    def report(*extra):
        return subprocess.run(["perf", "report", "-i", path, "--stdio", "-g", "none",
                               "--percent-limit", "0.5", *extra],
                              capture_output=True, text=True).stdout
    print("\nperf: share of the CPU samples (the server's CPU when pinned) by binary")
    for line in report("--no-children", "--sort", "dso").splitlines():
        if line.strip() and not line.startswith("#"):
            print("  " + line.strip())
    print("\nby symbol (self):")
    lines = [ln for ln in report("--no-children", "--sort", "dso,sym").splitlines()
             if ln.strip() and not ln.startswith("#")]
    for line in lines[:top]:
        print("  " + line.strip())
    print("\ninclusive (children), selected:")
    keep = ("futex", "schedule", "sendto", "tcp_sendmsg", "_PyEval_EvalFrameDefault",
            "recvfrom", "epoll")
    for line in report("--children", "--sort", "sym").splitlines():
        if line.strip() and not line.startswith("#") and any(k in line for k in keep):
            print("  " + line.strip())


def summarize_profile(path, top=25):
    """Self and inclusive sample shares from py-spy's raw (collapsed) output."""
    self_c, incl_c, total = Counter(), Counter(), 0
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            count = int(count)
            total += count
            frames = stack.split(";")
            names = [re.sub(r":\d+\)$", ")", fr.strip()) for fr in frames]
            self_c[names[-1]] += count
            for name in set(names):
                incl_c[name] += count
    print(f"\npy-spy: {total} samples ({path})\n\nself (leaf frame):")
    for name, c in self_c.most_common(top):
        print(f"  {100 * c / total:5.1f}%  {name}")
    print("\ninclusive:")
    for name, c in incl_c.most_common(top):
        print(f"  {100 * c / total:5.1f}%  {name}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--role", default="driver", choices=["driver", "load"])
    ap.add_argument("--port", type=int)
    ap.add_argument("--n", type=int, nargs="+", default=[100, 1000, 2000],
                    help="stream counts (default 100 1000 2000)")
    ap.add_argument("--only", nargs="+", default=None,
                    help=f"contenders among {' '.join(CONTENDERS)} (and the experiment "
                         f"{' '.join(EXTRA)}) and/or 'scale', 'lockprobe' (default: all "
                         "but the experiment, scale and lockprobe)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--rate", type=float, default=20.0,
                    help="paced phase: at most this many broadcasts/s (default 20)")
    ap.add_argument("--paced-load", type=float, default=2000.0,
                    help="paced phase: and at most this many deliveries/s, i.e. "
                         "broadcasts/s = min(rate, paced-load / N) (default 2000)")
    ap.add_argument("--paced-secs", type=float, default=2.5)
    ap.add_argument("--paced-min", type=int, default=6, help="paced phase: at least this "
                    "many broadcasts")
    ap.add_argument("--settle", type=float, default=0.7,
                    help="seconds between the last stream opening and the idle RSS reading")
    ap.add_argument("--drain", type=float, default=15.0,
                    help="seconds to wait for the last deliveries after a phase's last post")
    ap.add_argument("--sat-secs", type=float, default=4.0, help="saturation: seconds posting")
    ap.add_argument("--sat-deliveries", type=float, default=3e6,
                    help="saturation: at most this many deliveries (broadcasts = this / N)")
    ap.add_argument("--window", type=int, default=8,
                    help="saturation: at most this many broadcasts' worth of events "
                         "posted but not yet delivered")
    ap.add_argument("--posters", type=int, default=1,
                    help="saturation: keep-alive connections posting broadcasts (default 1)")
    ap.add_argument("--batch-us", type=float, default=10.0,
                    help="saturation: the load process reads at most every batch-us x N "
                         "microseconds (>= 1 ms), so each recv() takes several events; 0: "
                         "read as soon as data arrives")
    ap.add_argument("--poster-cpus", default="all",
                    help="CPUs the poster processes run on: 'all' (default: wherever the "
                         "scheduler finds room), 'load' (the load process's CPU) or a list "
                         "like 0,1")
    ap.add_argument("--scale-n", type=int, default=10000,
                    help="scale: idle streams in one worker (default 10000, issue 12's "
                         "figure; issue 7's was 5000)")
    ap.add_argument("--scale-setups", nargs="+", choices=SCALE_SETUPS,
                    default=["gthread", "gthread-small-stacks", "gevent"],
                    help="scale: servers to run (default: gthread gthread-small-stacks "
                         "gevent; raw-floor shows the load process's own share of the "
                         "latency)")
    ap.add_argument("--stack-kib", type=int, default=256)
    ap.add_argument("--scale-rate", type=float, default=0.5,
                    help="scale: paced broadcasts/s (default 0.5)")
    ap.add_argument("--scale-count", type=int, default=4, help="scale: paced broadcasts")
    ap.add_argument("--scale-sat", action="store_true",
                    help="also run a saturation phase at --scale-n streams")
    ap.add_argument("--probe-n", type=int, default=2000,
                    help="lockprobe: streams held while probing (default 2000)")
    ap.add_argument("--probe-clients", type=int, default=2,
                    help="lockprobe: prober processes, each opening one new stream at a time")
    ap.add_argument("--probe-interval", type=float, default=0.01,
                    help="lockprobe: seconds a prober waits between two new streams")
    ap.add_argument("--probe-max", type=int, default=600,
                    help="lockprobe: at most this many new streams per phase")
    ap.add_argument("--probe-idle-secs", type=float, default=2.0,
                    help="lockprobe: length of the idle phase (no broadcast)")
    ap.add_argument("--stats-interval", type=float, default=0.001,
                    help="lockprobe: seconds between two stats() calls in the server")
    ap.add_argument("--no-pin", action="store_true", help="do not use taskset")
    ap.add_argument("--profile", action="store_true",
                    help="only: py-spy the gosse worker during saturation at --profile-n")
    ap.add_argument("--profile-n", type=int, default=1000)
    ap.add_argument("--profile-rate", type=int, default=100, help="py-spy samples/s")
    ap.add_argument("--profile-tool", choices=["py-spy", "perf"], default="py-spy",
                    help="py-spy record --gil --nonblocking (Python stacks of the thread "
                         "holding the GIL), or perf record -g (kernel + native: where the "
                         "worker's CPU time goes, GIL hand-offs and context switches included)")
    ap.add_argument("--profile-all-threads", action="store_true",
                    help="py-spy without --gil (slow: py-spy falls behind with 1000 threads)")
    ap.add_argument("--profile-out", default=None,
                    help="default: $TMPDIR/gosse-fanout-py-spy.txt or gosse-fanout-perf.data")
    ap.add_argument("--profile-contender", default="gosse", choices=CONTENDERS + EXTRA)
    ap.add_argument("--json", metavar="PATH", help="also write the raw results there")
    args = ap.parse_args()
    if args.role == "load":
        return load_main(args)

    hard = raise_nofile()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))     # run the cleanups
    load_before = os.getloadavg()
    t_start = time.monotonic()
    pin_server, pin_load = pins(args)
    print(f"# bench_fanout: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
          f"RLIMIT_NOFILE {hard}, pinning: "
          f"{'server CPU 0, load process CPU 1' if pin_server else 'none'}; "
          f"load average {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}",
          flush=True)

    if args.profile:
        out = args.profile_out or os.path.join(
            tempfile.gettempdir(), "gosse-fanout-" + ("perf.data" if args.profile_tool == "perf"
                                                      else "py-spy.txt"))
        res = run_one(args.profile_contender, args.profile_n, args, profile=out)
        s = res["sat"]
        print(f"{args.profile_contender} N={args.profile_n} under {args.profile_tool}: "
              f"{s['rate']:,.0f} delivered events/s, "
              f"{s['server_cpu'] / max(1, s['received']) * 1e6:.1f} server CPU s/M, "
              f"{s['ctx_switches'] / max(1, s['received']):.1f} context switches/delivery, "
              f"posted {s['posted']}, {verdict(s)}")
        print(f"{args.profile_tool}:", (res.get("profile_log") or "").strip()[-800:])
        if os.path.exists(out):
            if args.profile_tool == "perf":
                summarize_perf(out)
            else:
                summarize_profile(out)
        return

    only = args.only or CONTENDERS + ["scale", "lockprobe"]
    unknown = set(only) - set(CONTENDERS) - set(EXTRA) - {"scale", "lockprobe"}
    if unknown:
        ap.error(f"unknown contender(s): {', '.join(sorted(unknown))}")
    contenders = [c for c in CONTENDERS + EXTRA if c in only]
    if "gosse-gevent" in contenders and not gevent_available():
        print("gosse-gevent skipped: gevent (and packaging, for gunicorn's gevent worker) "
              "is not importable in this venv", flush=True)
        contenders.remove("gosse-gevent")
    raw = {"args": vars(args), "load_before": load_before, "runs": [], "scale": [],
           "lockprobe": None}
    for rnd in range(args.rounds if contenders else 0):
        for n in args.n:
            k = rnd % len(contenders)
            for name in contenders[k:] + contenders[:k]:
                res = run_one(name, n, args)
                res["round"] = rnd
                raw["runs"].append(res)
                s, p = res["sat"], res["paced"]
                print(f"  round {rnd + 1} N={n} {name}: {s['rate']:,.0f} ev/s, "
                      f"{s['server_cpu'] / max(1, s['received']) * 1e6:.1f} CPU s/M, "
                      f"paced p50 {p['p50']:.2f} ms, sat p50 {s['p50']:.1f} ms, "
                      f"{res['rss_per_stream_kib']:.1f} KiB/stream, load-gen "
                      f"{100 * s['load_cpu'] / s['load_wall']:.0f}% CPU, "
                      f"once {once(p) and once(s)}", file=sys.stderr, flush=True)
    if "scale" in only:
        raw["scale"] = run_scale(args)
    if "lockprobe" in only:
        raw["lockprobe"] = run_lockprobe(args)
    load_after = os.getloadavg()
    raw["load_after"] = load_after
    if args.json:
        with open(args.json, "w") as f:
            json.dump(raw, f, indent=1)

    print(f"\n{os.cpu_count()} CPUs, Python {sys.version.split()[0]}; "
          f"median of {args.rounds} round(s); paced: min({args.rate:g}, "
          f"{args.paced_load:g}/N) broadcasts/s for {args.paced_secs:g} s (>= {args.paced_min}); "
          f"saturation: {args.sat_secs:g} s (or {args.sat_deliveries:,.0f} "
          f"deliveries), window {args.window} broadcasts; ~100-byte events; "
          f"load average before/after: {load_before[0]:.2f} / {load_after[0]:.2f}; "
          f"total {time.monotonic() - t_start:.0f} s")
    if raw["runs"]:
        results = []
        for n in args.n:
            for name in contenders:
                runs = [r for r in raw["runs"] if r["n"] == n and r["name"] == name]
                if runs:
                    results.append(median_of(runs))
        print_fanout(results, args.n)
    if raw["scale"]:
        print_scale([r if "error" in r else median_of([r]) for r in raw["scale"]], args)
    if raw["lockprobe"]:
        print_lockprobe(raw["lockprobe"], args)


if __name__ == "__main__":
    main()
