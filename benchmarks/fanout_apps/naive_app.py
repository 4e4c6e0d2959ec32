"""Fan-out reference: the naive design gosse improves on, in ~30 lines.
One ``queue.Queue`` per stream, a generator yielding one event per
iteration (one HTTP chunk and one write per event), broadcast = encode once
and ``put`` to every queue under a lock.  Run under gunicorn ``-k gthread``."""
import queue
import threading
import time

PAD = "x" * 70
subscribers = set()
lock = threading.Lock()
monotonic = time.monotonic
OK = [("Content-Type", "text/plain"), ("Content-Length", "2")]


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/sse":
        q = queue.Queue()
        with lock:
            subscribers.add(q)
        start_response("200 OK", [("Content-Type", "text/event-stream"),
                                  ("Cache-Control", "no-cache")])

        def stream():
            try:
                yield b":ok\n\n"
                while True:
                    try:
                        yield q.get(timeout=60)
                    except queue.Empty:
                        yield b":\n\n"
            finally:
                with lock:
                    subscribers.discard(q)
        return stream()
    if path == "/broadcast":
        seq = environ["QUERY_STRING"][4:]
        wire = f"data: {seq} {monotonic():.6f} {PAD}\n\n".encode()
        with lock:
            targets = list(subscribers)
        for q in targets:
            q.put(wire)
        start_response("200 OK", OK)
        return [b"ok"]
    start_response("404 Not Found", [("Content-Length", "0")])
    return [b""]
