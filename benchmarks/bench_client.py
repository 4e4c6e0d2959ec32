#!/usr/bin/env python3
"""Client parse-and-delivery benchmark: gosse's feed vs the Python SSE clients.

A raw-socket HTTP/1.1 server (a separate process, 127.0.0.1 only) streams M
pre-generated events with chunked framing as fast as the socket takes them,
then closes. Each contender consumes it over a real socket, in a fresh
subprocess of its own (so its CPU time is its own), and counts events until M:

* gosse          ``gosse.client.connect_with_sse_feed(url, reconnect=False)``,
                 one ``feed.subscribe()``, iterate the subscription: events are
                 parsed on the feed's reader thread and delivered through the
                 subscription's queue to the consuming thread
* httpx-sse      ``httpx.Client`` + ``httpx_sse.connect_sse`` + ``iter_sse()``
* sseclient-py   ``sseclient.SSEClient(requests.get(url, stream=True)).events()``
                 (its documented usage; iterating a requests response reads
                 128-byte chunks)
* requests-sse   ``requests_sse.EventSource(url)`` iterated
* floor          ``requests.get(url, stream=True).iter_content(65536)``
                 counting ``b"\\n\\n"`` separators: HTTP + socket cost with no
                 parsing, what any requests-based client cannot beat
* floor-read     the same without counting: it stops after M x event-size
                 bytes. ``bytes.count(b"\n\n")`` is CPython's slow path for a
                 2-byte needle (~0.8 ns/byte here, ~3 us per 4 KiB event), so
                 this row is the bare transport cost of requests/urllib3

Workloads: ``small`` = 100-byte events (``id``, ``event``, one ``data`` line);
``large`` = 4 KiB events with 8 ``data`` lines. The server frames these in
HTTP chunks of whole events up to --chunk-bytes (default 16 KiB: a server
that writes what it has queued in one go). ``small1`` = the 100-byte events
with one HTTP chunk per event, the framing of servers that write each event
as it comes (sse-starlette, a WSGI app yielding one event per iteration):
there the per-chunk cost of the HTTP layer dominates. It sends the response head at once and the body
--start-delay seconds later, so that every client is connected (and gosse's
subscription exists) before the first event; timing runs from the first event
received to the M-th, and each worker checks it saw ids 0 .. M-1.

Per contender: events/s (wall) and client CPU us/event (``time.process_time``
of the client process, all its threads). Contenders alternate within a round
(A B C D E, A B C D E, ...), each ratio is taken within one round, and the
table shows medians over --rounds rounds. Ratios: "speed" = events/s relative
to the reference (above 1 = faster), "CPU" = CPU per event relative to the
reference (below 1 = cheaper).

Run:  benchmarks/.venv/bin/python benchmarks/bench_client.py
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import loadavg, machine_line  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

CONTENDERS = ["gosse", "httpx-sse", "sseclient-py", "requests-sse", "floor", "floor-read"]
DEFAULT_M = {"small": 500_000, "large": 50_000, "small1": 200_000}
WORKLOAD_LABEL = {"small": "100-byte events", "large": "4 KiB events, 8 data lines",
                  "small1": "100-byte events, one HTTP chunk per event"}
WORKLOAD_SIZE = {"small": 100, "large": 4096, "small1": 100}


# --------------------------------------------------------------------------
# Server (runs in its own process: --serve)
# --------------------------------------------------------------------------

def build_body(workload: str, m: int, chunk_bytes: int) -> bytes:
    sys.path.insert(0, HERE)
    import bench_parser
    if workload == "small1":
        workload, chunk_bytes = "small", 0
    if workload == "small":
        stream, n = bench_parser.make_small(m * 100)
        size = 100
    else:
        stream, n = bench_parser.make_large(m * 4096)
        size = 4096
    assert n == m and len(stream) == m * size
    per_chunk = max(1, chunk_bytes // size) if chunk_bytes > 0 else 1
    step = per_chunk * size
    out = []
    for i in range(0, len(stream), step):
        piece = stream[i:i + step]
        out.append(b"%x\r\n" % len(piece))
        out.append(piece)
        out.append(b"\r\n")
    out.append(b"0\r\n\r\n")
    return b"".join(out)


HEAD = (b"HTTP/1.1 200 OK\r\n"
        b"Content-Type: text/event-stream; charset=utf-8\r\n"
        b"Cache-Control: no-cache\r\n"
        b"Transfer-Encoding: chunked\r\n"
        b"Connection: close\r\n"
        b"\r\n")


def _handle(conn: socket.socket, bodies: dict, start_delay: float) -> None:
    try:
        conn.settimeout(30)
        req = b""
        while b"\r\n\r\n" not in req and len(req) < 65536:
            data = conn.recv(65536)
            if not data:
                return
            req += data
        try:
            path = req.split(b" ", 2)[1].decode("ascii").split("?")[0].strip("/")
        except (IndexError, UnicodeDecodeError):
            path = ""
        body = bodies.get(path)
        if body is None:
            conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n"
                         b"Connection: close\r\n\r\n")
            return
        conn.sendall(HEAD)
        time.sleep(start_delay)
        conn.settimeout(120)
        conn.sendall(body)
        conn.shutdown(socket.SHUT_WR)
        # Let the client read to the end (or close first) before we close.
        while conn.recv(65536):
            pass
    except OSError:
        pass  # client went away after reading what it needed
    finally:
        conn.close()


def serve(args) -> None:
    bodies = {}
    for wl in args.workloads:
        bodies[wl] = build_body(wl, args.m[wl], args.chunk_bytes)
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    srv.settimeout(1.0)
    sys.stdout.write(f"{srv.getsockname()[1]}\n")
    sys.stdout.flush()

    stop = threading.Event()

    def watch_parent():  # stdin closes when the driver exits or dies
        try:
            sys.stdin.read()
        finally:
            stop.set()
    threading.Thread(target=watch_parent, daemon=True).start()

    deadline = time.monotonic() + args.max_seconds
    while not stop.is_set() and time.monotonic() < deadline:
        try:
            conn, _ = srv.accept()
        except socket.timeout:
            continue
        threading.Thread(target=_handle, args=(conn, bodies, args.start_delay),
                         daemon=True).start()
    srv.close()


# --------------------------------------------------------------------------
# Clients (each run in a fresh process: --worker NAME)
# --------------------------------------------------------------------------

def _timed(it, m):
    """Consume the event iterator: clock starts at the first event, stops at
    the m-th. Returns (n, wall, cpu, first, last)."""
    first = next(it)
    c0 = time.process_time()
    t0 = time.perf_counter()
    n = 1
    last = first
    if n < m:
        for last in it:  # noqa: B007 - the item the loop stops at is returned
            n += 1
            if n == m:
                break
    t1 = time.perf_counter()
    c1 = time.process_time()
    return n, t1 - t0, c1 - c0, first, last


def worker_gosse(url, m):
    try:
        from gosse.client import connect_with_sse_feed
    except ImportError as exc:
        return {"unavailable": f"{type(exc).__name__}: {exc}"}
    try:
        feed = connect_with_sse_feed(url, reconnect=False)
    except TypeError:  # older signature: no reconnect= keyword
        feed = connect_with_sse_feed(url, max_retries=0)
    try:
        sub = feed.subscribe()
        n, wall, cpu, first, last = _timed(iter(sub), m)
    finally:
        feed.close()
    return {"n": n, "wall": wall, "cpu": cpu, "first_id": first.id, "last_id": last.id}


def worker_httpx_sse(url, m):
    import httpx
    from httpx_sse import connect_sse
    with httpx.Client(timeout=60) as client:
        with connect_sse(client, "GET", url) as es:
            n, wall, cpu, first, last = _timed(es.iter_sse(), m)
    return {"n": n, "wall": wall, "cpu": cpu, "first_id": first.id, "last_id": last.id}


def worker_sseclient(url, m):
    import logging

    import requests
    import sseclient
    logging.getLogger("sseclient").setLevel(logging.WARNING)
    resp = requests.get(url, stream=True, timeout=60,
                        headers={"Accept": "text/event-stream"})
    try:
        client = sseclient.SSEClient(resp)
        n, wall, cpu, first, last = _timed(client.events(), m)
    finally:
        resp.close()
    return {"n": n, "wall": wall, "cpu": cpu, "first_id": first.id, "last_id": last.id}


def worker_requests_sse(url, m):
    from requests_sse import EventSource
    es = EventSource(url, timeout=60, max_connect_retry=0)
    es.connect(0)
    try:
        n, wall, cpu, first, last = _timed(iter(es), m)
    finally:
        es.close()
    return {"n": n, "wall": wall, "cpu": cpu,
            "first_id": first.last_event_id, "last_id": last.last_event_id}


def worker_floor(url, m):
    import requests
    resp = requests.get(url, stream=True, timeout=60,
                        headers={"Accept": "text/event-stream"})
    try:
        it = resp.iter_content(65536)
        chunk = next(it)
        c0 = time.process_time()
        t0 = time.perf_counter()
        n = chunk.count(b"\n\n")
        prev_lf = chunk.endswith(b"\n")
        # The clock starts after the first chunk: count events from there.
        n0 = n
        if n < m:
            for chunk in it:
                n += chunk.count(b"\n\n")
                if prev_lf and chunk[:1] == b"\n":
                    n += 1  # a separator split between two reads
                prev_lf = chunk.endswith(b"\n")
                if n >= m:
                    break
        t1 = time.perf_counter()
        c1 = time.process_time()
    finally:
        resp.close()
    # Report per event counted after the first chunk, like the others do
    # after the first event.
    return {"n": n, "wall": t1 - t0, "cpu": c1 - c0, "n_timed": n - n0,
            "first_id": "0", "last_id": str(m - 1) if n == m else f"(count {n})"}


def worker_floor_read(url, m, size):
    import requests
    resp = requests.get(url, stream=True, timeout=60,
                        headers={"Accept": "text/event-stream"})
    want = m * size
    try:
        it = resp.iter_content(65536)
        chunk = next(it)
        c0 = time.process_time()
        t0 = time.perf_counter()
        got = len(chunk)
        got0 = got
        if got < want:
            for chunk in it:
                got += len(chunk)
                if got >= want:
                    break
        t1 = time.perf_counter()
        c1 = time.process_time()
    finally:
        resp.close()
    n = got // size
    return {"n": n, "wall": t1 - t0, "cpu": c1 - c0, "n_timed": (got - got0) / size,
            "first_id": "0", "last_id": str(m - 1) if n == m else f"(bytes {got})"}


WORKERS = {
    "gosse": worker_gosse,
    "httpx-sse": worker_httpx_sse,
    "sseclient-py": worker_sseclient,
    "requests-sse": worker_requests_sse,
    "floor": worker_floor,
    "floor-read": worker_floor_read,
}


def worker_main(args) -> None:
    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
    try:
        if args.worker == "floor-read":
            res = worker_floor_read(args.url, args.count, args.event_size)
        else:
            res = WORKERS[args.worker](args.url, args.count)
    except Exception as exc:  # report, don't hide: the driver prints it
        res = {"error": f"{type(exc).__name__}: {exc}"}
    sys.stdout.write(json.dumps(res) + "\n")
    sys.stdout.flush()


# --------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------

def run_worker(name, url, m, timeout, event_size):
    env = dict(os.environ)
    env["NO_PROXY"] = "127.0.0.1,localhost"
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    try:
        cp = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--worker", name,
             "--url", url, "--count", str(m), "--event-size", str(event_size)],
            capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    lines = cp.stdout.strip().splitlines()
    if not lines:
        return {"error": f"exit {cp.returncode}: {cp.stderr.strip()[-500:]}"}
    res = json.loads(lines[-1])
    if "n" in res:
        if res["n"] != m:
            res["error"] = f"got {res['n']} events, expected {m}"
        elif str(res["first_id"]) != "0" or str(res["last_id"]) != str(m - 1):
            res["error"] = (f"ids {res['first_id']!r}..{res['last_id']!r}, "
                            f"expected '0'..'{m - 1}' (events lost?)")
    return res


def versions():
    from importlib.metadata import version
    out = []
    for dist in ("gosse", "httpx-sse", "httpx", "sseclient-py", "requests-sse",
                 "requests", "urllib3"):
        try:
            out.append(f"{dist} {version(dist)}")
        except Exception:
            out.append(f"{dist} -")
    return ", ".join(out)


def bench_workload(wl, m, port, contenders, rounds, timeout, out):
    url = f"http://127.0.0.1:{port}/{wl}"
    out(f"\n## {WORKLOAD_LABEL[wl]}: M = {m:,} events per run "
        f"({m * WORKLOAD_SIZE[wl] / 1e6:.0f} MB)")
    results = {name: [] for name in contenders}
    unavailable = {}
    errors = {}
    for r in range(rounds):
        for name in contenders:
            if name in unavailable:
                continue
            res = run_worker(name, url, m, timeout, WORKLOAD_SIZE[wl])
            if "unavailable" in res:
                unavailable[name] = res["unavailable"]
                continue
            if "error" in res:
                errors.setdefault(name, []).append(res["error"])
                results[name].append(None)
                continue
            n_timed = res.get("n_timed", res["n"] - 1)
            results[name].append({"eps": n_timed / res["wall"],
                                  "cpu_us": res["cpu"] / n_timed * 1e6,
                                  "wall": res["wall"]})
            print(f"#   round {r + 1} {name:<13} {n_timed / res['wall']:>10,.0f} ev/s "
                  f"{res['cpu'] / n_timed * 1e6:7.2f} CPU us/ev  ({res['wall']:.2f} s)",
                  file=sys.stderr, flush=True)

    def ratio(name, ref, key):
        vals = []
        for a, b in zip(results.get(name, []), results.get(ref, [])):
            if a and b:
                vals.append(a[key] / b[key])
        return statistics.median(vals) if vals else None

    def fmt(x, width=8, spec=".2f"):
        return f"{x:{width}{spec}}" if x is not None else f"{'-':>{width}}"

    hdr = (f"{'client':<13} {'events/s':>10} {'CPU us/ev':>9} {'run s':>6} | "
           f"{'vs httpx-sse':^17} | {'vs floor':^17}")
    sub = (f"{'':<13} {'':>10} {'':>9} {'':>6} | {'speed':>8} {'CPU':>8} | {'speed':>8} {'CPU':>8}")
    out(hdr)
    out(sub)
    out("-" * len(hdr))
    for name in contenders:
        if name in unavailable:
            out(f"{name:<13} not available yet ({unavailable[name]})")
            continue
        ok = [x for x in results[name] if x]
        if not ok:
            out(f"{name:<13} FAILED: {'; '.join(errors.get(name, ['no result']))}")
            continue
        eps = statistics.median(x["eps"] for x in ok)
        cpu = statistics.median(x["cpu_us"] for x in ok)
        wall = statistics.median(x["wall"] for x in ok)
        out(f"{name:<13} {eps:10,.0f} {cpu:9.2f} {wall:6.2f} | "
            f"{fmt(ratio(name, 'httpx-sse', 'eps'))} {fmt(ratio(name, 'httpx-sse', 'cpu_us'))} | "
            f"{fmt(ratio(name, 'floor', 'eps'))} {fmt(ratio(name, 'floor', 'cpu_us'))}")
        if errors.get(name):
            out(f"{'':<13} ({len(errors[name])} failed run(s): {errors[name][0]})")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workload", choices=["small", "large", "small1", "all"], default="all")
    ap.add_argument("--m-small", type=int, default=DEFAULT_M["small"],
                    help="events per run, 100-byte workload")
    ap.add_argument("--m-large", type=int, default=DEFAULT_M["large"],
                    help="events per run, 4 KiB workload")
    ap.add_argument("--m-small1", type=int, default=DEFAULT_M["small1"],
                    help="events per run, 100-byte workload with one HTTP chunk per event")
    ap.add_argument("--chunk-bytes", type=int, default=16384,
                    help="HTTP chunk size of the small and large workloads, in whole "
                         "events (0: one chunk per event)")
    ap.add_argument("--start-delay", type=float, default=0.3,
                    help="seconds between the response head and the first event")
    ap.add_argument("--only", nargs="*", choices=CONTENDERS, help="contenders to run")
    ap.add_argument("--timeout", type=float, default=60.0, help="per client run, seconds")
    # internal modes
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--workloads", nargs="*", help=argparse.SUPPRESS)
    ap.add_argument("--max-seconds", type=float, default=900, help=argparse.SUPPRESS)
    ap.add_argument("--worker", choices=CONTENDERS, help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--count", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--event-size", type=int, default=100, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.m = {"small": args.m_small, "large": args.m_large, "small1": args.m_small1}

    if args.worker:
        return worker_main(args)
    if args.serve:
        return serve(args)

    workloads = ["small", "large", "small1"] if args.workload == "all" else [args.workload]
    contenders = [c for c in CONTENDERS if not args.only or c in args.only]

    out = print
    out(machine_line() + f"; load average at start {loadavg()}")
    out("# versions: " + versions())
    out("# server: raw socket, separate process, HTTP/1.1 chunked, "
        + (f"chunks of whole events up to {args.chunk_bytes} bytes" if args.chunk_bytes > 0
           else "one chunk per event") + " (small1: one chunk per event)"
        + f"; {args.rounds} rounds, contenders alternate, each client in a fresh process; "
        "medians; ratios taken within a round")
    out("# speed = events/s / reference's (>1 faster); CPU = client CPU per event / "
        "reference's (<1 cheaper)")

    server = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--serve",
         "--workloads", *workloads, "--m-small", str(args.m_small),
         "--m-large", str(args.m_large), "--m-small1", str(args.m_small1),
         "--chunk-bytes", str(args.chunk_bytes),
         "--start-delay", str(args.start_delay)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
        if not line.strip():
            sys.exit("benchmark server failed to start")
        port = int(line)
        for wl in workloads:
            bench_workload(wl, args.m[wl], port, contenders, args.rounds, args.timeout, out)
        out(f"\n# load average at end {loadavg()} (2 cores: above ~1.5 something else "
            "was running too; CPU per event is the figure least disturbed by that)")
    finally:
        server.stdin.close()
        try:
            server.wait(timeout=5)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


if __name__ == "__main__":
    main()
