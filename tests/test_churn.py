"""Connection churn against gunicorn gthread: connects and disconnects (clean
FIN closes and abrupt RST closes, the server finding out by its next
heartbeat write) leave threads, fds and RSS flat, sessions at zero, and the
disconnect callback called exactly once per session.

The main suite runs 1,000 cycles; the soak run (``python3 -m pytest -m soak
tests/test_churn.py``) runs 10,000."""
import os
import socket
import struct
import time

import pytest
import requests

from servers import gunicorn_server

HEARTBEAT = 0.1


def cycle(port, abrupt, keep=None):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"GET /sse?client=churn HTTP/1.1\r\nHost: x\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:  # headers and first bytes arrive at once
        chunk = s.recv(4096)
        assert chunk, "connection closed before headers"
        head += chunk
    assert head.startswith(b"HTTP/1.1 200")
    if abrupt:  # RST instead of FIN
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    if keep is None:
        s.close()
    else:
        keep.append(s)


def settle(url, timeout=20):
    """Wait until the server has noticed every closed stream; return the
    worker's process figures and the broker's stats."""
    deadline = time.monotonic() + timeout
    while True:
        stats = requests.get(f"{url}/stats", timeout=5).json()
        if stats["sessions"] == 0 or time.monotonic() > deadline:
            return requests.get(f"{url}/process", timeout=5).json(), stats
        time.sleep(HEARTBEAT)


def churn(cycles, batch, warm_cycles):
    env = {"GOSSE_TEST_HEARTBEAT": str(HEARTBEAT), "MALLOC_ARENA_MAX": "2"}
    threads = batch + 8
    with gunicorn_server("broker_app:app", threads=threads, env=env) as (url, _):
        port = int(url.rsplit(":", 1)[1])
        # Warm up: grow gthread's pool to its full size (streams held at once)
        # and let the allocator reach its working size.
        warm = 0
        for _ in range(3):
            held = []
            for i in range(threads - 4):
                cycle(port, i % 2, keep=held)
            for s in held:
                s.close()
            warm += len(held)
            settle(url)
        # Each pool thread's stack keeps the pages its deepest call touched
        # (error paths go deeper): run every thread through both kinds of close.
        for i in range(warm_cycles):
            cycle(port, i % 2)
            warm += 1
            if i % batch == batch - 1:
                settle(url)
        before, _ = settle(url)
        trend = []
        for i in range(cycles):
            cycle(port, i % 2)
            if i % batch == batch - 1:
                proc, _ = settle(url)  # keep at most `batch` streams waiting for a heartbeat
                trend.append((proc["threads"], proc["fds"], proc["rss_kib"]))
        print(trend)
        after, stats = settle(url)
        total = stats["sessions_total"]
        report = (f"{cycles} cycles: threads {before['threads']}->{after['threads']}, "
                  f"fds {before['fds']}->{after['fds']}, "
                  f"RSS {before['rss_kib']}->{after['rss_kib']} KiB")
        print(report)
        assert stats["sessions"] == 0 and stats["clients"] == 0, stats
        assert total == cycles + warm
        assert after["disconnects"] == after["distinct_disconnects"] == total, after
        assert after["threads"] <= before["threads"] * 1.05 + 1, report
        assert after["fds"] <= before["fds"] * 1.05 + 1, report
        assert after["rss_kib"] <= before["rss_kib"] * 1.05, report
        return report


def test_churn_1000_cycles():
    churn(int(os.environ.get("CHURN", "1000")), 50, 1000)


@pytest.mark.soak
@pytest.mark.timeout(900)
def test_churn_10000_cycles():
    churn(10_000, 100, 3000)
