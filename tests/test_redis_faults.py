"""Issue 15, defects 4, 8 and 10, and the connection setups (TLS, an ACL user,
a unix socket), against real redis-server processes started here.

* An unknown outcome (the answer of a sent publish lost) is reported as
  such and the event is delivered once, never a second time locally; a
  publish certainly not sent (nothing listening, a connection refused by
  Redis) is a plain BackplaneError and ``fallback="local"`` delivers it.
* Refusals (READONLY, OOM, NOPERM) are not outages: the backplane stays up.
  A wrong configuration fails at construction (BackplaneConfigError).
* The connection pool blocks (bounded) instead of failing past 100.
"""
import logging
import os
import shutil
import subprocess
import threading
import time

import pytest

import redis_fixture
from broker_app import make_app
from gosse import Broker, Event
from gosse.errors import BackplaneConfigError, BackplaneError, PublishOutcomeUnknownError
from redis_fixture import RedisServer, require_redis_server
from servers import ROOT, SSEReader, free_port, wait_until, werkzeug_server

own_redis_server = redis_fixture.own_redis_server
redis_prefix = redis_fixture.redis_prefix
FAST = {"presence_ttl": 3.0, "max_backoff": 0.2}


class CustomRedis(RedisServer):
    """A redis-server with extra arguments (a replica, TLS, a unix socket)."""

    def __init__(self, *extra, port=None, url=None):
        super().__init__(require_redis_server(), port=port)
        self.extra = list(extra)
        self._url = url

    @property
    def url(self):
        return self._url or f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout=10.0):
        cmd = [self.binary, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
               "--dir", self.dir, "--daemonize", "no",
               "--logfile", os.path.join(self.dir, "redis.log"), *self.extra]
        if "--port" not in self.extra:
            cmd += ["--port", str(self.port)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return self

    def admin(self, **kw):
        import redis
        return redis.Redis.from_url(self.url, socket_timeout=5, **kw)


@pytest.fixture
def servers():
    made = []

    def start(*extra, **kw):
        server = CustomRedis(*extra, **kw)
        made.append(server)
        return server.start()
    yield start
    for s in made:
        s.stop()


@pytest.fixture
def brokers(redis_prefix):
    """start(url, **backplane_kw) -> (broker, base url), each on its own
    Werkzeug server; all closed afterwards."""
    from gosse.backplane.redis import RedisBackplane
    made, servers_ = [], []

    def start(url, broker_kw=None, **kw):
        bp = RedisBackplane(url, **{"prefix": redis_prefix, **FAST, **kw})
        broker = Broker(heartbeat_interval=0.2, **(broker_kw or {}), backplane=bp)
        made.append(broker)
        cm = werkzeug_server(make_app(broker))
        servers_.append(cm)
        return broker, cm.__enter__()
    yield start
    for b in made:
        b.close()
    for cm in servers_:
        cm.__exit__(None, None, None)


def sse(base, client, last_id=None):
    headers = {"Last-Event-ID": last_id} if last_id is not None else None
    return SSEReader(f"{base}/sse?client={client}", headers=headers)


def nothing_more(reader, wait=0.3):
    """True if no further event arrives within ``wait`` seconds."""
    before = len(reader.events)
    reader.sock.settimeout(wait)
    try:
        reader.read_some()
    except OSError:
        pass
    return len(reader.events) == before


def warm_up(broker, *readers):
    """Publish once and wait for every reader to get it: the listeners of
    every broker are then reading from a known position."""
    broker.broadcast(Event("warm"))
    for r in readers:
        assert r.wait_events(len(r.events) + 1)[-1].data == "warm"


def paused(admin, ms):
    """CLIENT PAUSE ms WRITE (Redis 6.2+): write commands and scripts wait."""
    admin.execute_command("CLIENT", "PAUSE", ms, "WRITE")


# Keeps Redis busy (a script that loops for `seconds`): it reads no command
# meanwhile, and runs what it then finds in its sockets.
_BUSY = """
local s = redis.call('TIME')
repeat
  local t = redis.call('TIME')
until (t[1] - s[1]) * 1000000 + (t[2] - s[2]) >= tonumber(ARGV[1])
return 1
"""


class busy:
    """Within the block Redis is busy running a script (checked: a PING
    gets no answer)."""

    def __init__(self, server, seconds):
        self.server, self.seconds = server, seconds

    def __enter__(self):
        client = self.server.client()
        self.thread = threading.Thread(
            target=client.eval, args=(_BUSY, 0, int(self.seconds * 1e6)), daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 5
        while self._answers_ping():
            assert time.monotonic() < deadline, "Redis did not become busy"
        return self

    def _answers_ping(self):
        import socket
        with socket.create_connection(("127.0.0.1", self.server.port), timeout=1) as s:
            s.settimeout(0.1)
            s.sendall(b"PING\r\n")
            try:
                return s.recv(16).startswith(b"+PONG")
            except socket.timeout:
                return False

    def __exit__(self, *exc):
        self.thread.join(self.seconds + 5)


# -- defect 4: unknown outcomes, and what is certainly not sent ---------------------------

def test_a_lost_answer_is_an_unknown_outcome_and_the_event_is_delivered_once(
        own_redis_server, brokers, caplog):
    """Before: the caller got "Redis unavailable ... could not broadcast"
    (a plain BackplaneError, "not published"), and with fallback="local"
    the event was delivered here twice (once locally, once by the listener)."""
    a, ua = brokers(own_redis_server.url, fallback="local", socket_timeout=0.3)
    b, ub = brokers(own_redis_server.url)
    ra, rb = sse(ua, "ra"), sse(ub, "rb")
    assert wait_until(lambda: a.sessions("ra") and b.sessions("rb"))
    warm_up(a, ra, rb)
    with busy(own_redis_server, 1.2):   # the APPEND script is sent; its answer comes too late
        t0 = time.monotonic()
        with pytest.raises(PublishOutcomeUnknownError, match="may or may not") as info:
            a.broadcast(Event("x", id="x1"))
        assert isinstance(info.value, BackplaneError) and time.monotonic() - t0 < 1.0
    # Redis runs it once free (it read the whole command): every session gets it, once.
    assert ra.wait_events(2)[1].data == "x" and rb.wait_events(2)[1].data == "x"
    assert wait_until(lambda: a.backplane.available, timeout=5)
    a.broadcast(Event("after"))
    assert [e.data for e in ra.wait_events(3)] == ["warm", "x", "after"]
    assert [e.data for e in rb.wait_events(3)] == ["warm", "x", "after"]
    assert nothing_more(ra) and nothing_more(rb)
    assert a.stats()["backplane_publish_unknown"] == 1
    ra.close()
    rb.close()


def test_a_connection_refused_by_redis_was_not_sent_and_falls_back_locally(
        own_redis_server, brokers):
    """Redis at maxclients accepts the TCP connection, says "max number of
    clients reached" and closes it: nothing was sent.  Before: taken for a
    lost answer (PublishOutcomeUnknownError), so fallback="local" did not
    deliver at all."""
    a, ua = brokers(own_redis_server.url, fallback="local",
                    redis_options={"client_name": "pub-a"})
    ra = sse(ua, "ra")
    assert wait_until(lambda: a.sessions("ra"))
    warm_up(a, ra)
    admin = own_redis_server.client()
    admin.ping()
    # Close a's pooled connections (the listener's keeps reading), and admit
    # no new one.
    for c in admin.client_list():
        if c.get("name") == "pub-a" and c.get("cmd") != "xread":
            admin.client_kill_filter(_id=c["id"])
    admin.config_set("maxclients", len(admin.client_list()))
    try:
        assert a.broadcast(Event("local only")) == 1     # delivered here, not raised
        assert [e.data for e in ra.wait_events(2)] == ["warm", "local only"]
        from gosse.backplane.redis import Publisher
        with Publisher(own_redis_server.url, prefix="p") as pub:
            with pytest.raises(BackplaneError, match="unavailable") as info:
                pub.broadcast(Event("y"))
            assert type(info.value) is BackplaneError
    finally:
        admin.config_set("maxclients", 10000)
    assert nothing_more(ra)
    ra.close()


def test_nothing_listening_is_unavailable_not_unknown(brokers):
    port = free_port()     # nothing listens there
    a, ua = brokers(f"redis://127.0.0.1:{port}/0", fallback="local", connect_timeout=0.5)
    from gosse.backplane.redis import Publisher
    with Publisher(f"redis://127.0.0.1:{port}/0", connect_timeout=0.5) as pub:
        with pytest.raises(BackplaneError, match="unavailable") as info:
            pub.broadcast(Event("y"))
        assert type(info.value) is BackplaneError
    with sse(ua, "r") as r:
        assert wait_until(lambda: a.sessions("r"))
        assert a.broadcast(Event("here")) == 1
        assert r.wait_events(1)[0].data == "here"
    assert a.stats()["backplane_publish_unknown"] == 0


# -- defect 8: refusals are not outages; configuration errors fail fast -------------------

def test_refusals_do_not_mark_the_backplane_down(servers, brokers, caplog):
    """READONLY (the server became a replica), OOM (maxmemory), NOPERM (an
    ACL change): the caller gets "refused" and why; the state stays up and
    no "unavailable" line is logged.  Before: ``available`` went False and
    the listener flipped it back, with a log line each time."""
    master = servers()
    other = servers()
    assert wait_until(master.ping) and wait_until(other.ping)
    admin = master.admin()
    admin.execute_command("ACL", "SETUSER", "app", "on", ">pw", "~*", "+@all")
    url = f"redis://app:pw@127.0.0.1:{master.port}/0"
    a, ua = brokers(url)
    r = sse(ua, "r")
    assert wait_until(lambda: a.sessions("r"))
    warm_up(a, r)
    caplog.set_level(logging.INFO, logger="gosse.backplane")
    caplog.clear()
    admin.config_set("maxmemory", 1)
    with pytest.raises(BackplaneError, match="refused to broadcast.*(OutOfMemory|OOM)"):
        a.broadcast(Event("x"))
    admin.config_set("maxmemory", 0)
    admin.execute_command("ACL", "SETUSER", "app", "-xadd")
    for _ in range(3):
        with pytest.raises(BackplaneError, match="refused to broadcast.*can't run this command"):
            a.broadcast(Event("x"))
    admin.execute_command("ACL", "SETUSER", "app", "+xadd")
    admin.execute_command("REPLICAOF", "127.0.0.1", other.port)
    with pytest.raises(BackplaneError, match="refused to broadcast.*ReadOnly"):
        a.broadcast(Event("x"))
    assert a.backplane.available and a.stats()["backplane_up"] == 1
    admin.execute_command("REPLICAOF", "NO", "ONE")
    a.broadcast(Event("back"))
    r.next_event(lambda e: e.data == "back")
    # The replica's resync emptied the dataset: at most a reset before it.
    assert {(e.event, e.data) for e in r.events[1:-1]} <= {("gosse-reset", "")}
    messages = [rec.getMessage() for rec in caplog.records]
    assert not [m for m in messages if "unavailable" in m or "available again" in m
                or "error" in m], messages
    assert len([m for m in messages if "refused" in m]) == 1, messages   # once a minute
    assert "pw" not in caplog.text.replace("pwd", "")
    r.close()


def test_configuration_errors_fail_at_construction(servers, redis_prefix):
    from gosse.backplane.redis import Publisher, RedisBackplane
    master = servers()
    assert wait_until(master.ping)
    admin = master.admin()
    admin.execute_command("ACL", "SETUSER", "alice", "on", ">right", "~*", "+@all")
    admin.execute_command("ACL", "SETUSER", "bob", "on", ">pw", "~*", "+@all", "-xadd")
    replica = servers("--replicaof", "127.0.0.1", str(master.port))
    assert wait_until(replica.ping)
    port = master.port
    cases = [
        (f"redis://alice:wrong@127.0.0.1:{port}/0", "rejected the credentials.*'alice'"),
        (f"redis://bob:pw@127.0.0.1:{port}/0", "'bob' may not run XADD.*ACL SETUSER bob"),
        (replica.url, "read-only replica.*master"),
    ]
    for url, message in cases:
        for make in (RedisBackplane, Publisher):
            t0 = time.monotonic()
            with pytest.raises(BackplaneConfigError, match=message) as info:
                make(url, prefix=redis_prefix)
            assert time.monotonic() - t0 < 2
            assert isinstance(info.value, ValueError) and "wrong" not in str(info.value)
    # Nothing was written by the checks.
    assert admin.keys("*") == []


def test_unreachable_at_start_up_is_not_a_configuration_error(brokers, caplog):
    port = free_port()
    caplog.set_level(logging.WARNING, logger="gosse.backplane")
    a, ua = brokers(f"redis://127.0.0.1:{port}/0", connect_timeout=0.5)
    b, ub = brokers(f"redis://127.0.0.1:{port}/0", connect_timeout=0.5)
    assert "unreachable at start-up" in caplog.text
    ra, rb = sse(ua, "ra"), sse(ub, "rb")
    assert wait_until(lambda: a.sessions("ra") and b.sessions("rb"))
    server = RedisServer(require_redis_server(), port=port).start()
    try:
        def delivered():
            try:
                a.broadcast(Event("hello"))
            except BackplaneError:
                return False
            return True
        assert wait_until(delivered, timeout=5, interval=0.1)
        assert rb.wait_events(1)[0].data == "hello"
        ra.close()
        rb.close()
    finally:
        server.stop()


# -- the documented least-privilege ACL --------------------------------------------------

def documented_acl():
    """The ``ACL SETUSER`` line of docs/guides/redis.rst."""
    with open(os.path.join(ROOT, "docs", "guides", "redis.rst")) as f:
        lines = [line.strip() for line in f if line.strip().startswith("ACL SETUSER gosse on")]
    assert len(lines) == 1, lines
    return lines[0]


def test_the_documented_acl_works_end_to_end_and_less_fails_fast(own_redis_server, brokers):
    from gosse.backplane.redis import RedisBackplane
    from gosse.backplane.redis.connection import acl_rule
    line = documented_acl()
    assert line == acl_rule("gosse", "gosse")
    with open(os.path.join(ROOT, "docs", "guides", "redis.rst")) as f:
        assert acl_rule("gosse", "publisher", publisher_only=True) in f.read()
    admin = own_redis_server.client()
    admin.execute_command(*line.replace(">PASSWORD", ">s3cret").split())
    url = f"redis://gosse:s3cret@127.0.0.1:{own_redis_server.port}/0"
    a, ua = brokers(url, prefix="gosse", broker_kw={"auto_id": True})
    b, ub = brokers(url, prefix="gosse", broker_kw={"auto_id": True})
    ra, rb = sse(ua, "ra"), sse(ub, "rb")
    assert wait_until(lambda: a.sessions("ra") and b.sessions("rb"))
    warm_up(a, ra, rb)
    b.broadcast(Event("one"))
    a.send("rb", Event("to rb"))
    assert [e.data for e in rb.wait_events(3)] == ["warm", "one", "to rb"]
    assert a.is_client_present("rb") and not a.is_client_present("nobody")
    a.set_client_metadata("rb", {"n": 1})
    assert b.get_client_metadata("rb") == {"n": 1}
    last = ra.wait_events(2)[1].id
    ra.close()
    b.broadcast(Event("missed"))
    with sse(ub, "ra", last_id=last) as again:          # replay on the other broker
        assert [e.data for e in again.wait_events(1)] == ["missed"]
    # A Publisher with the documented publisher line.
    from gosse.backplane.redis import Publisher
    admin.execute_command(*acl_rule("gosse", "publisher", publisher_only=True)
                          .replace(">PASSWORD", ">pub").split())
    with Publisher(f"redis://publisher:pub@127.0.0.1:{own_redis_server.port}/0",
                   prefix="gosse") as pub:
        pub.broadcast(Event("from a script"))
        pub.send("rb", Event("to rb again"))
    assert [e.data for e in rb.wait_events(6)][-2:] == ["from a script", "to rb again"]
    rb.close()
    # The same line without +xadd fails at construction.
    admin.execute_command("ACL", "SETUSER", "lesser", *line.replace(">PASSWORD", ">pw")
                          .replace(" +xadd", "").split()[3:])
    with pytest.raises(BackplaneConfigError, match="XADD"):
        RedisBackplane(f"redis://lesser:pw@127.0.0.1:{own_redis_server.port}/0",
                       prefix="gosse")


# -- defect 10: the connection pool -----------------------------------------------------

def test_300_concurrent_publishers_wait_for_a_connection(own_redis_server, brokers):
    """Before: the 101st concurrent caller got "Too many connections",
    reported as Redis unavailable."""
    a, ua = brokers(own_redis_server.url)
    r = sse(ua, "r")
    assert wait_until(lambda: a.sessions("r"))
    warm_up(a, r)
    errors, done = [], []
    admin = own_redis_server.client()
    paused(admin, 800)              # every publisher holds its connection meanwhile

    def publish(i):
        try:
            a.broadcast(Event(f"p{i}"))
            done.append(i)
        except Exception as exc:     # noqa: BLE001 - collected and asserted
            errors.append(repr(exc))
    threads = [threading.Thread(target=publish, args=(i,)) for i in range(300)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.1, 15 - (time.monotonic() - t0)))
    assert not errors, errors[:3]
    assert len(done) == 300 and time.monotonic() - t0 < 15
    got = [e.data for e in r.wait_events(301, timeout=15)][1:]
    assert sorted(got) == sorted(f"p{i}" for i in range(300))
    assert nothing_more(r)
    assert int(admin.info("clients")["connected_clients"]) <= 256 + 5
    r.close()


def test_a_busy_pool_names_its_size_and_is_not_an_outage(own_redis_server, redis_prefix):
    from gosse.backplane.redis import RedisBackplane
    bp = RedisBackplane(own_redis_server.url, prefix=redis_prefix, max_connections=2,
                        socket_timeout=0.3)
    broker = Broker(backplane=bp)
    try:
        # Two threads of the app hold both connections (taken as redis-py does).
        pool = bp._connection.client.connection_pool
        args = bp._connection._checkout_args        # a command name for redis-py < 5.3
        held = [pool.get_connection(*args), pool.get_connection(*args)]
        t0 = time.monotonic()
        with pytest.raises(BackplaneError, match="all 2 connections.*max_connections") as info:
            broker.broadcast(Event("x"))
        assert 0.25 < time.monotonic() - t0 < 2
        assert type(info.value) is BackplaneError and bp.available
        with pytest.raises(BackplaneError, match="max_connections"):
            broker.is_client_present("c")
        assert bp.available
        for c in held:
            pool.release(c)
        broker.broadcast(Event("fine"))
    finally:
        broker.close()
    with pytest.raises(ValueError, match="max_connections"):
        RedisBackplane(own_redis_server.url, max_connections=0)


# -- connection setups: TLS, unix socket (an ACL user: above) ---------------------------

def two_brokers_and_replay(brokers, url, **kw):
    """Broadcast through two brokers, then resume on the other one."""
    a, ua = brokers(url, broker_kw={"auto_id": True}, **kw)
    b, ub = brokers(url, broker_kw={"auto_id": True}, **kw)
    ra, rb = sse(ua, "ra"), sse(ub, "rb")
    assert wait_until(lambda: a.sessions("ra") and b.sessions("rb"))
    warm_up(a, ra, rb)
    b.broadcast(Event("from b"))
    assert [e.data for e in ra.wait_events(2)] == ["warm", "from b"]
    assert [e.data for e in rb.wait_events(2)] == ["warm", "from b"]
    last = ra.events[1].id
    ra.close()
    a.broadcast(Event("missed"))
    with sse(ub, "ra", last_id=last) as again:
        assert [e.data for e in again.wait_events(1)] == ["missed"]
    rb.close()


def make_tls_files(folder):
    openssl = shutil.which("openssl")
    if openssl is None:
        if os.environ.get("CI"):
            pytest.fail("openssl is needed for the TLS test")
        pytest.skip("no openssl CLI to make a test CA")

    def run(*args):
        subprocess.run([openssl, *args], check=True, capture_output=True, timeout=30)
    ca_key, ca = os.path.join(folder, "ca.key"), os.path.join(folder, "ca.pem")
    key, csr, cert = (os.path.join(folder, n) for n in ("server.key", "server.csr", "server.pem"))
    ext = os.path.join(folder, "ext.cnf")
    # The extensions Python 3.13's default context (VERIFY_X509_STRICT)
    # requires of a CA and of the server's certificate.
    with open(ext, "w") as f:
        f.write("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                "keyUsage=critical,digitalSignature,keyEncipherment\n"
                "extendedKeyUsage=serverAuth\nsubjectKeyIdentifier=hash\n"
                "authorityKeyIdentifier=keyid,issuer\n")
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca,
        "-days", "2", "-subj", "/CN=gosse test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-addext", "subjectKeyIdentifier=hash")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr,
        "-subj", "/CN=127.0.0.1")
    run("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
        "-out", cert, "-days", "2", "-extfile", ext)
    return ca, cert, key


def test_tls(servers, brokers, tmp_path):
    ca, cert, key = make_tls_files(str(tmp_path))
    port = free_port()
    server = servers("--port", "0", "--tls-port", str(port), "--tls-cert-file", cert,
                     "--tls-key-file", key, "--tls-ca-cert-file", ca,
                     "--tls-auth-clients", "no", port=port,
                     url=f"rediss://127.0.0.1:{port}/0")
    import redis
    assert wait_until(lambda: _answers(lambda: server.admin(ssl_ca_certs=ca).ping()),
                      timeout=10)
    two_brokers_and_replay(brokers, server.url, redis_options={"ssl_ca_certs": ca})
    # Without the CA the certificate is not trusted: an outage, logged, not hidden.
    with pytest.raises(redis.ConnectionError):
        server.admin().ping()


def _answers(call):
    try:
        return bool(call())
    except Exception:    # noqa: BLE001 - not up yet
        return False


def test_unix_socket(servers, brokers, tmp_path):
    path = str(tmp_path / "redis.sock")
    server = servers("--port", "0", "--unixsocket", path, "--unixsocketperm", "700",
                     url=f"unix://{path}?db=0")
    assert wait_until(lambda: _answers(lambda: server.admin().ping()), timeout=10)
    two_brokers_and_replay(brokers, server.url)
