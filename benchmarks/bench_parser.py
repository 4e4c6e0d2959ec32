#!/usr/bin/env python3
"""Event-stream parser throughput: gosse vs the parsers of the Python peers.

Builds a ~50 MB event stream in memory and feeds it, in 64 KiB chunks, to

* gosse          ``gosse.parser.EventStreamParser.feed``
* httpx-sse      ``httpx_sse.EventSource(response).iter_sse()`` over a real
                 ``httpx.Response`` streaming the chunks: the exact code path of
                 the library (httpx ``iter_text`` -> ``TextDecoder``,
                 httpx-sse ``SSELineDecoder`` via ``_iter_sse_lines``,
                 ``line.rstrip("\\n")``, ``SSEDecoder.decode``)
* httpx-sse/dec  the same three decoders called in one flat loop, without
                 httpx's response machinery and the two generator layers (the
                 cheapest way anyone could drive httpx-sse's parser)
* sseclient-py   ``sseclient.SSEClient(iter(chunks)).events()`` (it accepts any
                 iterable of byte chunks)
* requests-sse   ``requests_sse.EventSource.__next__`` (its parser lives there)
                 over ``requests.Response.iter_lines(65536)`` of a
                 ``requests.Response`` whose raw stream yields the chunks

Workloads: ``small`` = ~100-byte events (``id``, ``event``, one ``data`` line);
``large`` = 4 KiB events with 8 ``data`` lines.

The 4 KiB workload parses so fast that one pass would be mostly noise: each
timed run repeats the stream until gosse's run lasts at least --min-time
(the header says how many passes). Each contender first runs once untimed to check that it decodes exactly the
same events (count, total data length, last id, last data). Then the
contenders alternate (A B C D E, A B C D E, ...) for --rounds rounds; the table
shows medians of MB/s, events/s, wall us/event and CPU us/event
(``time.process_time``), and "gosse x": the median over rounds of
(contender's time / gosse's time in the same round), i.e. gosse's speedup,
from wall time and, more robust on a shared machine, from CPU time.

Run:  benchmarks/.venv/bin/python benchmarks/bench_parser.py
"""
from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import loadavg, machine_line  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:  # run from a checkout without installing gosse
    sys.path.insert(0, ROOT)

CHUNK = 64 * 1024


# --------------------------------------------------------------------------
# Workloads
# --------------------------------------------------------------------------

def _filler(n: int, seed: int) -> str:
    """Deterministic printable ASCII of length n (no ':' '\\r' '\\n')."""
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 _-.,"
    a = len(alphabet)
    return "".join(alphabet[(seed * 31 + i * 7 + (i * i) % 13) % a] for i in range(n))


def make_small(total_bytes: int):
    """~100-byte events: ``id: N\\nevent: tick\\ndata: {...}\\n\\n``, each exactly
    100 bytes."""
    parts = []
    size = 0
    i = 0
    pad = _filler(100, 1)
    while size < total_bytes:
        head = f'id: {i}\nevent: tick\ndata: {{"seq":{i},"msg":"'
        tail = '"}\n\n'
        n = 100 - len(head) - len(tail)
        ev = head + pad[:n] + tail
        parts.append(ev)
        size += 100
        i += 1
    return "".join(parts).encode("ascii"), i


def make_large(total_bytes: int):
    """4 KiB events: id, event and 8 data lines of ~500 bytes, exactly 4096
    bytes each."""
    # Values do not start with a space: requests-sse strips every leading space
    # (the spec removes one), which would make it decode different data.
    lines = ["x" + _filler(600, k) for k in range(8)]
    parts = []
    size = 0
    i = 0
    while size < total_bytes:
        head = f"id: {i}\nevent: tick\n"
        # 8 x "data: " + value + "\n", then "\n"
        budget = 4096 - len(head) - 1 - 8 * len("data: \n")
        per, extra = divmod(budget, 8)
        body = "".join(
            "data: " + lines[k][: per + (1 if k < extra else 0)] + "\n" for k in range(8))
        ev = head + body + "\n"
        assert len(ev) == 4096, len(ev)
        parts.append(ev)
        size += 4096
        i += 1
    return "".join(parts).encode("ascii"), i


def chunked(stream: bytes, size: int = CHUNK):
    return [stream[i:i + size] for i in range(0, len(stream), size)]


# --------------------------------------------------------------------------
# Contenders. Each takes the list of chunks and returns
# (count, total data length, last id, last data) when verify=True, else count.
# The timed loops do nothing per event but count.
# --------------------------------------------------------------------------

def run_gosse(chunks, verify=False):
    from gosse.parser import EventStreamParser
    p = EventStreamParser()
    feed = p.feed
    n = 0
    if not verify:
        for c in chunks:
            n += len(feed(c))
        return n
    total = 0
    last = None
    for c in chunks:
        evs = feed(c)
        for e in evs:
            n += 1
            total += len(e.data)
            last = e
    return n, total, last.id, last.data


def run_httpx_sse(chunks, verify=False):
    """httpx-sse's own iter_sse over a streaming httpx.Response."""
    import httpx
    from httpx_sse import EventSource
    resp = httpx.Response(200, headers={"content-type": "text/event-stream"},
                          content=iter(chunks))
    n = 0
    if not verify:
        for _ in EventSource(resp).iter_sse():
            n += 1
        return n
    total = 0
    last = None
    for e in EventSource(resp).iter_sse():
        n += 1
        total += len(e.data)
        last = e
    return n, total, last.id, last.data


def run_httpx_sse_decoders(chunks, verify=False):
    """httpx-sse's decoders driven directly: httpx TextDecoder (what
    Response.iter_text uses), httpx_sse SSELineDecoder (what _iter_sse_lines
    uses), then iter_sse's rstrip + SSEDecoder.decode."""
    from httpx._decoders import TextDecoder
    from httpx_sse._decoders import SSEDecoder, SSELineDecoder
    text_decoder = TextDecoder("utf-8")
    lines_decoder = SSELineDecoder()
    sse = SSEDecoder()
    tdecode = text_decoder.decode
    ldecode = lines_decoder.decode
    sdecode = sse.decode
    n = 0
    total = 0
    last = None

    def take(lines):   # called once per chunk, not per line
        nonlocal n, total, last
        for line in lines:
            e = sdecode(line.rstrip("\n"))
            if e is not None:
                n += 1
                if verify:
                    total += len(e.data)
                    last = e

    for c in chunks:
        text = tdecode(c)
        if text:
            take(ldecode(text))
    tail = text_decoder.flush()
    take((ldecode(tail) if tail else []) + lines_decoder.flush())
    if not verify:
        return n
    return n, total, last.id, last.data


def run_sseclient(chunks, verify=False):
    import logging

    import sseclient
    # sseclient logs every event at DEBUG level; make sure that is as cheap as
    # it is in an application with default logging (WARNING).
    logging.getLogger("sseclient").setLevel(logging.WARNING)
    client = sseclient.SSEClient(iter(chunks))
    n = 0
    if not verify:
        for _ in client.events():
            n += 1
        return n
    total = 0
    last = None
    for e in client.events():
        n += 1
        total += len(e.data)
        last = e
    return n, total, last.id, last.data


class _EndOfStream(Exception):
    pass


class _FakeRaw:
    """Stands in for urllib3's response: requests' iter_content calls
    raw.stream(chunk_size, decode_content=True)."""

    def __init__(self, chunks):
        self._chunks = chunks

    def stream(self, chunk_size, decode_content=True):
        return iter(self._chunks)


def run_requests_sse(chunks, verify=False):
    """requests-sse's parser (EventSource.__next__) over requests'
    Response.iter_lines, the generator EventSource.connect() installs (here
    with 64 KiB reads instead of its 512-byte default)."""
    import requests
    from requests_sse import EventSource

    resp = requests.Response()
    resp.status_code = 200
    resp.raw = _FakeRaw(chunks)

    def lines():
        yield from resp.iter_lines(chunk_size=CHUNK)
        raise _EndOfStream  # not StopIteration: that would make it reconnect

    es = EventSource("http://127.0.0.1:9/unused")
    es._response = resp
    es._data_generator = lines()
    es._origin = "http://127.0.0.1:9"
    n = 0
    total = 0
    last = None
    nxt = es.__next__
    try:
        if not verify:
            while True:
                nxt()
                n += 1
        while True:
            e = nxt()
            n += 1
            total += len(e.data)
            last = e
    except _EndOfStream:
        pass
    if not verify:
        return n
    return n, total, last.last_event_id, last.data


CONTENDERS = [
    ("gosse", run_gosse),
    ("httpx-sse", run_httpx_sse),
    ("httpx-sse/dec", run_httpx_sse_decoders),
    ("sseclient-py", run_sseclient),
    ("requests-sse", run_requests_sse),
]


def available(names):
    out = []
    for name, fn in CONTENDERS:
        if names and name not in names:
            continue
        try:
            fn([b"data: x\n\n"], verify=True)
        except ImportError as exc:
            print(f"# {name}: not available ({exc}); "
                  "run benchmarks/setup_venv.sh and use benchmarks/.venv/bin/python",
                  file=sys.stderr)
            continue
        out.append((name, fn))
    return out


def versions():
    out = {}
    try:
        from importlib.metadata import version
    except ImportError:  # pragma: no cover
        return out
    for dist in ("gosse", "httpx-sse", "httpx", "sseclient-py", "requests-sse", "requests"):
        try:
            out[dist] = version(dist)
        except Exception:
            out[dist] = "-"
    return out


# --------------------------------------------------------------------------

def bench_workload(label, stream, n_events, contenders, rounds, out, min_time=0.4):
    chunks = chunked(stream)
    mb = len(stream) / 1e6
    out(f"\n## {label}: {len(stream) / 1e6:.1f} MB, {n_events} events of "
        f"{len(stream) // n_events} bytes, {len(chunks)} chunks of {CHUNK // 1024} KiB")

    # Untimed correctness pass (also warms up imports and caches).
    ref = None
    reps = 1
    for name, fn in contenders:
        t0 = time.perf_counter()
        got = fn(chunks, verify=True)
        if ref is None and min_time > 0:
            # Repeat the whole stream so that gosse's timed run lasts at least
            # min_time: a 0.05 s run is mostly noise.
            reps = max(1, int(min_time / (time.perf_counter() - t0) + 0.999))
        if ref is None:
            ref = got
        assert got[0] == n_events, f"{name} decoded {got[0]} events, expected {n_events}"
        assert got == ref, f"{name} decoded {got[:3]}..., gosse/first decoded {ref[:3]}..."

    wall = {name: [] for name, _ in contenders}
    cpu = {name: [] for name, _ in contenders}
    for _round in range(rounds):
        for name, fn in contenders:  # A B C D E in every round
            gc.collect()
            c0 = time.process_time()
            t0 = time.perf_counter()
            for _ in range(reps):
                n = fn(chunks)
            t1 = time.perf_counter()
            c1 = time.process_time()
            assert n == n_events, f"{name}: {n} != {n_events}"
            wall[name].append(t1 - t0)
            cpu[name].append(c1 - c0)

    if reps > 1:
        out(f"(each timed run parses the stream {reps} times: {reps * len(stream) / 1e6:.0f} MB, "
            f"{reps * n_events} events)")
    mb *= reps
    n_events *= reps
    base = contenders[0][0]
    hdr = (f"{'parser':<14} {'MB/s':>8} {'events/s':>11} {'us/event':>9} "
           f"{'CPU us/ev':>9} {base + ' x':>8} {'(CPU)':>6}   wall s per round")
    out(hdr)
    out("-" * len(hdr))
    for name, _ in contenders:
        w = statistics.median(wall[name])
        c = statistics.median(cpu[name])
        ratio = statistics.median(wall[name][i] / wall[base][i] for i in range(rounds))
        cratio = statistics.median(cpu[name][i] / cpu[base][i] for i in range(rounds))
        rounds_s = " ".join(f"{x:.2f}" for x in wall[name])
        out(f"{name:<14} {mb / w:8.1f} {n_events / w:11,.0f} {w / n_events * 1e6:9.2f} "
            f"{c / n_events * 1e6:9.2f} {ratio:8.2f} {cratio:6.2f}   {rounds_s}")
    return wall


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=float, default=50.0, help="stream size in MB (default 50)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--min-time", type=float, default=0.4,
                    help="repeat the stream so gosse's timed run lasts at least this (s)")
    ap.add_argument("--workload", choices=["small", "large", "both"], default="both")
    ap.add_argument("--only", nargs="*", help="contender names to run (gosse is always first)")
    args = ap.parse_args(argv)

    names = set(args.only or ())
    if names:
        names.add("gosse")
    contenders = available(names)
    if not contenders or contenders[0][0] != "gosse":
        sys.exit("gosse's parser is not importable")

    out = print
    out(machine_line() + f"; load average at start {loadavg()}")
    out("# versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()))
    out(f"# {args.rounds} rounds, contenders alternate in each round; medians; "
        "'gosse x' = median of per-round (contender wall time / gosse wall time), "
        "'(CPU)' the same with process_time")
    total = int(args.mb * 1e6)
    if args.workload in ("small", "both"):
        stream, n = make_small(total)
        bench_workload("100-byte events", stream, n, contenders, args.rounds, out, args.min_time)
        del stream
    if args.workload in ("large", "both"):
        stream, n = make_large(total)
        bench_workload("4 KiB events, 8 data lines", stream, n, contenders, args.rounds, out,
                       args.min_time)
    out(f"\n# load average at end {loadavg()} (above ~1 something else was running too: "
        "trust the CPU columns more than the wall ones)")


if __name__ == "__main__":
    main()
