"""A TCP proxy on 127.0.0.1 between a process's Redis clients and a real
redis-server, for the faults that cannot be made to happen on time
otherwise: a process whose Redis connections stall (``pause()``), whose
Redis is unreachable while others reach it (``refuse()``), or whose
answers come late (``delay``).

Ownership: ``_paused``/``_open`` are Events (thread-safe); ``_conns`` is
written under ``_lock`` by the accept thread and ``refuse()``/``close()``.
"""
import socket
import threading
import time

__all__ = ["TCPProxy"]


class TCPProxy:
    def __init__(self, target_port, host="127.0.0.1"):
        self.target = (host, target_port)
        self._listener = socket.create_server((host, 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._conns = []
        self._open = threading.Event()      # cleared: connections are refused
        self._open.set()
        self._running = threading.Event()   # cleared: data is held (paused)
        self._running.set()
        self._closed = False
        self.delay = 0.0                    # seconds before each answer is forwarded
        self.connections = 0
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}/0"

    def pause(self):
        """Hold every byte in both directions (connections stay open)."""
        self._running.clear()

    def resume(self):
        self._running.set()
        self._open.set()

    def refuse(self):
        """Cut every connection and close new ones at once: Redis is
        unreachable through this proxy."""
        self._open.clear()
        self._cut_all()

    def _cut_all(self):
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def _accept(self):
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if not self._open.is_set() or self._closed:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._conns += [client, upstream]
                self.connections += 1
            for src, dst, answers in ((client, upstream, False), (upstream, client, True)):
                t = threading.Thread(target=self._pump, args=(src, dst, answers), daemon=True)
                t.start()

    def _pump(self, src, dst, answers):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                while not self._running.wait(0.05):
                    if self._closed or not self._open.is_set():
                        return
                if answers and self.delay:
                    time.sleep(self.delay)   # the injected latency itself
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self._closed = True
        self._running.set()
        self._listener.close()
        self._cut_all()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
