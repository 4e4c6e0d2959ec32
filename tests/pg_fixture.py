"""A real PostgreSQL server for the tests: ``initdb`` into a temporary
directory, ``postgres`` on a free port of 127.0.0.1 with its unix socket in
that directory, ``max_connections=20``, no durability (fsync off).  initdb
and postgres refuse to run as root, so under root both run as ``nobody``.
Without the binaries (or psycopg2) the tests are skipped, except under CI
(env ``CI`` set), where that is a failure.

The binaries are looked up in ``$GOSSE_PG_BINDIR``, then beside ``initdb``
on ``PATH``, then in ``/usr/lib/postgresql/*/bin`` (Debian's
``postgresql-15`` package puts them there).

Use the fixture by importing it into a test module::

    from pg_fixture import postgres_server  # noqa: F401
"""
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

from servers import free_port

#: The role the app under test logs in as: not a superuser, so that the
#: test's own superuser connection still finds one of the reserved slots
#: when the app has used up every ordinary one.
APP_USER = "gosse_app"
MAX_CONNECTIONS = 20


def _skip_or_fail(message):
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def postgres_bindir():
    """The directory holding initdb and postgres, or None."""
    candidates = [os.environ.get("GOSSE_PG_BINDIR")]
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(os.path.dirname(os.path.realpath(initdb)))
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for bindir in candidates:
        if bindir and all(os.access(os.path.join(bindir, b), os.X_OK)
                          for b in ("initdb", "postgres")):
            return bindir
    return None


class PostgresServer:
    """One throwaway PostgreSQL cluster and its postmaster."""

    def __init__(self, bindir):
        self.bindir = bindir
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="gosse-pg-")
        self.data = os.path.join(self.dir, "data")
        self.log = os.path.join(self.dir, "postgres.log")
        self.proc = None
        self._as = {}
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            self._as = {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}
            os.chown(self.dir, nobody.pw_uid, nobody.pw_gid)

    def _run(self, *args, **kwargs):
        return subprocess.Popen([os.path.join(self.bindir, args[0]), *args[1:]],
                                cwd=self.dir, **self._as, **kwargs)

    def start(self, timeout=30.0):
        init = self._run("initdb", "-D", self.data, "-U", "postgres", "--auth=trust",
                         "--no-sync", "-E", "UTF8", "--locale=C",
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        out, _ = init.communicate(timeout=timeout)
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed: {out.decode(errors='replace')[-2000:]}")
        with open(self.log, "wb") as log:
            self.proc = self._run(
                "postgres", "-D", self.data, "-p", str(self.port), "-k", self.dir,
                "-c", "listen_addresses=127.0.0.1",
                "-c", f"max_connections={MAX_CONNECTIONS}",
                "-c", "fsync=off", "-c", "synchronous_commit=off",
                "-c", "full_page_writes=off", "-c", "shared_buffers=16MB",
                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.proc.returncode}: "
                                   + self.log_tail())
            try:
                with self.connect() as conn:
                    break
            except Exception as exc:
                if time.monotonic() >= deadline:
                    raise TimeoutError("postgres did not accept connections: "
                                       + self.log_tail()) from exc
                time.sleep(0.05)
        with self.connect() as conn:
            with conn.cursor() as cur:
                cur.execute(f"CREATE ROLE {APP_USER} LOGIN")
        return self

    def connect(self):
        """A psycopg2 connection as the superuser, in autocommit mode;
        closed when leaving ``with``."""
        import psycopg2
        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres",
                                dbname="postgres", connect_timeout=2)
        conn.autocommit = True
        return _Closing(conn)

    def client_pids(self, user=APP_USER):
        """The server pids of the client connections ``user`` has open now."""
        with self.connect() as conn:
            with conn.cursor() as cur:
                cur.execute("SELECT pid FROM pg_stat_activity "
                            "WHERE backend_type = 'client backend' AND usename = %s",
                            (user,))
                return {pid for (pid,) in cur.fetchall()}

    def log_tail(self):
        try:
            with open(self.log, errors="replace") as f:
                return f.read()[-2000:]
        except OSError:
            return ""

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)   # "fast" shutdown: ends sessions
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)


class _Closing:
    """``with`` for a psycopg2 connection that closes it (psycopg2's own
    ``with`` only ends the transaction)."""

    def __init__(self, conn):
        self.conn = conn

    def __enter__(self):
        return self.conn

    def __exit__(self, *exc):
        self.conn.close()


@pytest.fixture(scope="module")
def postgres_server():
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        _skip_or_fail("psycopg2 is not installed (pip install -e '.[test]')")
    bindir = postgres_bindir()
    if bindir is None:
        _skip_or_fail("PostgreSQL's initdb/postgres are not installed "
                      "(apt-get install postgresql-15, or set GOSSE_PG_BINDIR)")
    server = PostgresServer(bindir)
    try:
        yield server.start()
    finally:
        server.stop()
