"""A real ``redis-server`` for the tests: on a free port of 127.0.0.1, no
persistence (``--save '' --appendonly no``), in a temporary directory, ready
when PING answers.  It can be killed and restarted on the same port (fault
tests).  Without a redis-server binary the tests are skipped, except under
CI (env ``CI`` set), where that is a failure: ``.ci/run`` installs it.

Use the fixtures by importing them into a test module::

    from redis_fixture import redis_server, RedisServer  # noqa: F401
"""
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid

import pytest

from servers import free_port


def redis_server_binary():
    found = shutil.which("redis-server")
    if found is None and os.path.exists("/usr/bin/redis-server"):
        found = "/usr/bin/redis-server"
    return found


def require_redis_package():
    """Skip the test without the redis package (fail under CI)."""
    try:
        import redis  # noqa: F401
    except ImportError:
        message = "the redis package is not installed (pip install -e '.[test]')"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def require_redis_server():
    """The redis-server path; skip the test without one (fail under CI)."""
    binary = redis_server_binary()
    if binary is None:
        message = "redis-server is not installed (apt-get install redis-server)"
        if os.environ.get("CI"):
            pytest.fail(message + "; .ci/run should have installed it")
        pytest.skip(message)
    require_redis_package()
    return binary


class RedisServer:
    """One redis-server process; ``kill()`` and ``start()`` again keep the
    port, so clients see the same server go away and come back (empty)."""

    #: The process's log file, in ``dir``.
    log_name = "redis.log"

    def __init__(self, binary, port=None, extra=()):
        self.binary = binary
        self.port = port or free_port()
        # (realpath: a sentinel rewrites its config with the directory's path.)
        self.dir = os.path.realpath(tempfile.mkdtemp(prefix="gosse-redis-"))
        self.extra = list(extra)     # more command-line arguments (--replicaof ...)
        self.proc = None

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self):
        return [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", self.dir,
                "--daemonize", "no", "--protected-mode", "yes",
                "--logfile", os.path.join(self.dir, self.log_name), *self.extra]

    def start(self, timeout=10.0):
        assert self.proc is None or self.proc.poll() is not None, "already running"
        cmd = self.command()
        deadline = time.monotonic() + timeout
        while True:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)
            try:
                self._wait_ping(deadline)
                return self
            except RuntimeError:
                # The port may still be held for a moment after a kill.
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.1)

    def _wait_ping(self, deadline):
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: "
                                   + self.log_tail())
            if self.ping():
                return
            time.sleep(0.02)
        raise TimeoutError(f"redis-server on port {self.port} did not answer PING")

    def ping(self):
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.settimeout(0.5)
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self):
        """SIGKILL: the server vanishes without a word, losing its data."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def restart(self, timeout=10.0):
        self.kill()
        return self.start(timeout)

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)

    def log_tail(self):
        try:
            with open(os.path.join(self.dir, self.log_name)) as f:
                return f.read()[-3000:]
        except OSError:
            return ""

    def client(self):
        import redis
        return redis.Redis.from_url(self.url, socket_timeout=5, socket_connect_timeout=2)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


@pytest.fixture(scope="session")
def redis_server():
    """A redis-server shared by the tests of a session (use a unique
    ``prefix`` per test: see ``redis_prefix``)."""
    server = RedisServer(require_redis_server())
    with server:
        yield server


@pytest.fixture
def own_redis_server():
    """A redis-server of this test alone (fault tests kill it)."""
    server = RedisServer(require_redis_server())
    with server:
        yield server


@pytest.fixture
def redis_prefix():
    return "t" + uuid.uuid4().hex[:10]
