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

from common import cpu_seconds, free_port, wait_port  # noqa: E402

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
    backplane = None
    if redis_url:
        from gosse.backplane.redis import RedisBackplane
        backplane = RedisBackplane(redis_url, prefix=os.environ["GOSSE_BENCH_PREFIX"],
                                   history=10_000)
    pid = os.getpid()
    broker = Broker(queue_size=1_000_000, heartbeat_interval=60,
                    max_sessions=int(os.environ["GOSSE_BENCH_MAX_SESSIONS"]),
                    headers={"X-Worker-Pid": str(pid)}, backplane=backplane)
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
        elif path == "/stats":
            body = json.dumps({**broker.stats(), "pid": pid}).encode()
        else:
            start_response("404 Not Found", [("Content-Length", "0")])
            return [b""]
        start_response("200 OK", [("Content-Type", "text/plain"),
                                  ("Content-Length", str(len(body)))])
        return [body]

    return app


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


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--role", default="driver", choices=["driver", "load"])
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
    args = ap.parse_args()
    if args.role == "load":
        return load_main(args)

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


if __name__ == "__main__":
    main()
