"""Real Redis high-availability setups for the tests: a master, a replica
(``--replicaof``) and a Sentinel (``redis-server <conf> --sentinel``; no
redis-sentinel binary needed) with short timeouts, so a failover takes about
a second or two; and a one-node Redis Cluster (``--cluster-enabled yes``).

Every process listens on 127.0.0.1 only, keeps no data on disk, and is
stopped at the end of the test.  ``sentinel_setup()`` and ``cluster_node()``
are fixture bodies: wrap them in a test module::

    @pytest.fixture
    def sentinel_setup():
        yield from redis_ha_fixture.sentinel_setup()
"""
import os
import socket

from redis_fixture import RedisServer, require_redis_server
from servers import free_port

SERVICE = "gossemaster"
DOWN_AFTER_MS = 1000   # 500 ms made Sentinel fail over twice on a loaded machine
FAILOVER_TIMEOUT_MS = 3000


class RedisNode(RedisServer):
    """A RedisServer with extra command-line arguments (``--replicaof``,
    ``--cluster-enabled``...), restartable on the same port, empty."""

    def __init__(self, binary, extra=(), port=None):
        super().__init__(binary, port, extra=extra)


class SentinelNode(RedisServer):
    """One sentinel monitoring ``SERVICE`` at ``master_port`` (quorum 1)."""

    log_name = "sentinel.log"

    def __init__(self, binary, master_port):
        super().__init__(binary)
        self.conf = os.path.join(self.dir, "sentinel.conf")
        with open(self.conf, "w") as f:   # sentinel rewrites its config: a file of its own
            f.write(f"port {self.port}\nbind 127.0.0.1\ndaemonize no\n"
                    f"dir {self.dir}\nlogfile {self.dir}/{self.log_name}\n"
                    f"sentinel monitor {SERVICE} 127.0.0.1 {master_port} 1\n"
                    f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
                    f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}\n"
                    f"sentinel parallel-syncs {SERVICE} 1\n")

    def command(self):
        return [self.binary, self.conf, "--sentinel"]

    def client(self):
        import redis
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2,
                           socket_connect_timeout=2)

    def master_port(self):
        """The port the sentinel currently gives for the master."""
        with self.client() as c:
            # (The raw command: redis-py 7.0 breaks sentinel_get_master_addr_by_name
            # on a plain client.)
            addr = c.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
        return int(addr[1]) if addr else None

    def knows_replica(self, port):
        """Whether the sentinel sees a healthy replica on ``port`` (a
        failover needs one)."""
        with self.client() as c:
            replicas = c.sentinel_slaves(SERVICE)
        return any(int(r["port"]) == port and not r["is_sdown"]
                   and r.get("master-link-status", "ok") == "ok" for r in replicas)


class SentinelSetup:
    """master + replica + sentinel, ready: the replica in sync and known to
    the sentinel, so a failover can start as soon as the master dies."""

    def __init__(self, binary):
        # No 5 s wait before a full sync (Redis 7's default for diskless sync).
        fast = ["--repl-diskless-sync-delay", "0"]
        self.master = RedisNode(binary, fast)
        self.replica = RedisNode(binary, fast + ["--replicaof", "127.0.0.1",
                                                 str(self.master.port)])
        self.sentinel = SentinelNode(binary, self.master.port)
        self.service = SERVICE

    @property
    def sentinels(self):
        return [("127.0.0.1", self.sentinel.port)]

    def start(self, timeout=15.0):
        from servers import wait_until
        self.master.start()
        self.replica.start()
        assert wait_until(lambda: self._link_up(self.replica), timeout), "replica not in sync"
        self.sentinel.start()
        assert wait_until(lambda: self.sentinel.knows_replica(self.replica.port), timeout,
                          interval=0.1), "sentinel did not discover the replica: " \
            + self.sentinel.log_tail()
        return self

    @staticmethod
    def _link_up(node):
        try:
            with node.client() as c:
                return c.info("replication").get("master_link_status") == "up"
        except Exception:
            return False

    def wait_replicated(self, timeout_ms=2000):
        """Until the replica has everything the master acknowledged: the
        number of replicas that do (WAIT counts the writes of its own
        connection only, so it writes once first: after all the others)."""
        with self.master.client() as c:
            c.set("gosse-test:replicated", "1")
            return c.execute_command("WAIT", 1, timeout_ms)

    def stop(self):
        for node in (self.sentinel, self.replica, self.master):
            node.stop()

    def diagnostics(self):
        return ("sentinel log:\n" + self.sentinel.log_tail()
                + "\nreplica log:\n" + self.replica.log_tail()[-1500:]
                + "\nmaster log:\n" + self.master.log_tail()[-1500:])


# Fixture bodies (the test module wraps them in @pytest.fixture).

def sentinel_setup():
    """master + replica + sentinel, started; stopped afterwards."""
    setup = SentinelSetup(require_redis_server())
    try:
        yield setup.start()
    finally:
        setup.stop()


def cluster_node():
    """A redis-server in cluster mode (one node, no slots assigned)."""
    binary = require_redis_server()
    node = RedisNode(binary)
    node.extra = ["--cluster-enabled", "yes",
                  "--cluster-config-file", os.path.join(node.dir, "nodes.conf"),
                  "--cluster-node-timeout", "2000",
                  # The bus port defaults to port + 10000, past 65535 for a high free port.
                  "--cluster-port", str(free_port())]
    try:
        yield node.start()
    finally:
        node.stop()


class SlowProxy:
    """A TCP proxy on 127.0.0.1 to ``port`` that holds the first bytes the
    server sends on each connection for ``delay`` seconds (a slow network
    hop: e.g. a listener slow to learn its position)."""

    def __init__(self, port, delay):
        import threading
        self.target, self.delay = port, delay
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.stopped = threading.Event()
        self.conns = []          # every socket opened; the accept thread appends
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        import threading
        while not self.stopped.is_set():
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            self.conns += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, 0), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, self.delay),
                             daemon=True).start()

    def _pump(self, src, dst, delay):
        first = True
        while not self.stopped.is_set():
            try:
                src.settimeout(None)
                data = src.recv(65536)
                if not data:
                    break
                if first and delay:
                    self.stopped.wait(delay)   # the latency under test
                first = False
                dst.sendall(data)
            except OSError:
                break
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self):
        self.stopped.set()
        self.sock.close()
        for s in self.conns:
            s.close()
