"""Real HTTP servers for the tests: Werkzeug's threaded server in a thread,
gunicorn's gthread worker in a subprocess, and a small stdlib SSE reader."""
import http.client
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from urllib.parse import urlsplit

from werkzeug.serving import make_server

from gosse import EventStreamParser

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def werkzeug_server(app):
    """Serve a WSGI app on Werkzeug's threaded server; yield its base URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def wait_until(predicate, timeout=5.0, interval=0.01):
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass (for
    state with nothing to wait on, e.g. another process's counters); return
    its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def wait_for_port(port, proc=None, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


@contextmanager
def gunicorn_server(app_ref, *, workers=1, threads=64, env=None, extra=(),
                    worker_class="gthread", python=None):
    """Run ``gunicorn -k WORKER_CLASS`` (gthread by default) on ``app_ref``
    (module:attr, importable from tests/) with ``python`` (this
    interpreter by default); yield (base_url, process)."""
    if shutil.which("gunicorn") is None and not _has_module("gunicorn"):
        raise RuntimeError("gunicorn is not installed (pip install -e '.[test]')")
    port = free_port()
    threading_args = ["--threads", str(threads)] if worker_class == "gthread" else []
    cmd = [python or sys.executable, "-m", "gunicorn", "-k", worker_class, *threading_args,
           "-w", str(workers), "-b", f"127.0.0.1:{port}", "--chdir", HERE,
           "--graceful-timeout", "3", "--timeout", "60", "--log-level", "warning",
           *extra, app_ref]
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": ROOT, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, proc)
        yield f"http://127.0.0.1:{port}", proc
    finally:
        stop_process(proc)


def stop_process(proc):
    """SIGTERM, then SIGKILL after 10 s; close its output pipe."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    if proc.stdout is not None:
        proc.stdout.close()


def _has_module(name):
    import importlib.util
    return importlib.util.find_spec(name) is not None


def sse_view(broker, environ, start_response):
    """The test apps' ``GET /sse?client=ID&topics=a,b``: a session of the
    broker for that client and those topics."""
    from werkzeug.wrappers import Request
    args = Request(environ).args
    topics = [t for t in args.get("topics", "").split(",") if t]
    conn = broker.connect(args.get("client", "anon"), environ, topics=topics)
    return conn(environ, start_response)


class SSEReader:
    """A minimal test-side SSE reader over http.client (independent of
    gosse.client): GET a stream, then read events with timeouts."""

    def __init__(self, url, headers=None, timeout=10.0):
        parts = urlsplit(url)
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
        path = parts.path + ("?" + parts.query if parts.query else "")
        self.conn.request("GET", path, headers={"Accept": "text/event-stream",
                                                **(headers or {})})
        self.sock = self.conn.sock  # http.client drops it on Connection: close
        self.response = self.conn.getresponse()
        self.status = self.response.status
        self.headers = self.response.headers
        self.parser = EventStreamParser()
        self.events = []
        self.raw = bytearray()
        self.eof = False
        self._matched = 0   # events up to here were passed by next_event()

    def read_some(self):
        chunk = self.response.read1(65536)
        if not chunk:
            self.eof = True
        self.raw += chunk
        self.events.extend(self.parser.feed(chunk))
        return chunk

    def _read_until(self, done, timeout, failure):
        """Read until ``done()`` is true; TimeoutError with ``failure()``
        after ``timeout`` seconds or at the end of the stream."""
        deadline = time.monotonic() + timeout
        while not done():
            left = deadline - time.monotonic()
            if left <= 0 or self.eof:
                raise TimeoutError(failure() + (" (EOF)" if self.eof else ""))
            self.sock.settimeout(left)
            self.read_some()

    def wait_events(self, n, timeout=10.0):
        """Read until ``n`` events in total have arrived; return them."""
        self._read_until(lambda: len(self.events) >= n, timeout,
                         lambda: f"got {len(self.events)} of {n} events")
        return self.events[:n]

    def next_event(self, predicate, timeout=10.0):
        """Read until an event after the last one this returned satisfies
        ``predicate``; return it."""
        start = self._matched
        found = []

        def done():
            for i in range(start, len(self.events)):
                if predicate(self.events[i]):
                    self._matched = i + 1
                    found.append(self.events[i])
                    return True
            return False

        self._read_until(done, timeout,
                         lambda: f"no matching event in {timeout} s; got {self.events!r}")
        return found[0]

    def read_until_eof(self, timeout=10.0):
        deadline = time.monotonic() + timeout
        while not self.eof:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("stream did not end")
            self.sock.settimeout(left)
            self.read_some()
        return self.events

    def close(self):
        self.response.close()
        self.conn.close()
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# The start of a test nginx's config: foreground, one worker, everything in
# the test's own folder ({user}, {dir} and the rest are filled in later).
NGINX_HEAD = """\
daemon off;
master_process off;
worker_processes 1;
{user}
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections CONNECTIONS; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
"""

NGINX_UWSGI_CONF = NGINX_HEAD.replace("CONNECTIONS", "64") + """\
    server {{
        listen 127.0.0.1:{port};
        location / {{
            uwsgi_param QUERY_STRING $query_string;
            uwsgi_param REQUEST_METHOD $request_method;
            uwsgi_param CONTENT_TYPE $content_type;
            uwsgi_param CONTENT_LENGTH $content_length;
            uwsgi_param REQUEST_URI $request_uri;
            uwsgi_param PATH_INFO $document_uri;
            uwsgi_param SERVER_PROTOCOL $server_protocol;
            uwsgi_param REQUEST_SCHEME $scheme;
            uwsgi_param REMOTE_ADDR $remote_addr;
            uwsgi_param REMOTE_PORT $remote_port;
            uwsgi_param SERVER_PORT $server_port;
            uwsgi_param SERVER_NAME $server_name;
            uwsgi_pass 127.0.0.1:{upstream};
            uwsgi_buffering off;
            uwsgi_read_timeout 60s;
        }}
    }}
}}
"""


@contextmanager
def nginx_uwsgi_proxy(upstream_port):
    """Run nginx (its own temp config, pid, log and temp dirs) in front of
    a uwsgi-protocol server on ``upstream_port`` (``uwsgi_pass``, response
    buffering off, as for event streams); yield nginx's base URL."""
    import tempfile
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx")
                                      else None)
    if nginx is None:
        raise RuntimeError("nginx is not installed (apt-get install -y nginx)")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="gosse-nginx-") as tmp:
        user = "user root;" if os.geteuid() == 0 else ""
        conf = os.path.join(tmp, "nginx.conf")
        with open(conf, "w") as f:
            f.write(NGINX_UWSGI_CONF.format(user=user, dir=tmp, port=port,
                                            upstream=upstream_port))
        proc = subprocess.Popen([nginx, "-p", tmp, "-c", conf, "-e", f"{tmp}/error.log"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            wait_for_port(port, proc)
            yield f"http://127.0.0.1:{port}"
        finally:
            stop_process(proc)


# -- more servers and proxies (the deployment matrix, tests/test_deploy_*.py) ----------

def require(what, found, install):
    """Skip the test when ``found`` is false ("``what`` is not installed
    (``install``)"); under CI (env ``CI`` set) fail instead: .ci/run and
    .ci/matrix.sh install it."""
    if found:
        return
    import pytest
    message = f"{what} is not installed ({install})"
    if os.environ.get("CI"):
        pytest.fail(message + "; CI should have installed it")
    pytest.skip(message)


def nginx_binary():
    return shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx")
                                     else None)


def require_nginx():
    found = nginx_binary()
    require("nginx", found, "apt-get install -y nginx")
    return found


@contextmanager
def server_process(cmd, port, *, env=None, cwd=HERE, timeout=20.0):
    """Run a server command line that listens on 127.0.0.1:``port``; yield
    (base_url, process) once it accepts connections; SIGTERM it (then
    SIGKILL after 10 s) at the end unless the test stopped it already.
    stdout and stderr go to ``process.stdout``."""
    proc = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, "PYTHONPATH": f"{HERE}:{ROOT}",
                                                **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, proc, timeout)
        yield f"http://127.0.0.1:{port}", proc
    finally:
        stop_process(proc)


def uwsgi_command(app_ref, port, mode="http", *, threads=16, die_on_term=True, extra=()):
    """uWSGI (the ``pyuwsgi`` wheel's ``uwsgi``) with the flags streams need:
    a master, ``--enable-threads --threads N`` (one stream per thread),
    ``--die-on-term`` (SIGTERM stops it; without it SIGTERM reloads).
    ``mode``: ``http`` (uWSGI's HTTP router process in front of the
    worker), ``http-socket`` (the worker speaks HTTP itself) or ``socket``
    (the uwsgi protocol, for nginx ``uwsgi_pass``)."""
    binary = shutil.which("uwsgi") or os.path.join(os.path.dirname(sys.executable), "uwsgi")
    module, _, attr = app_ref.partition(":")
    return [binary, f"--{mode}", f"127.0.0.1:{port}", "--module", f"{module}:{attr or 'app'}",
            "--chdir", HERE, "--master", "--processes", "1", "--enable-threads",
            "--threads", str(threads), *(["--die-on-term"] if die_on_term else []), "--need-app",
            "--disable-logging", *extra]


def require_uwsgi():
    require("uWSGI", _has_module("pyuwsgi") or shutil.which("uwsgi"),
            "pip install pyuwsgi (setup.cfg extra: deploy)")


def waitress_command(app_ref, port, *, threads=16, extra=()):
    """waitress-serve with ``threads`` (more than the open streams + 4) and
    ``--channel-request-lookahead=1`` (so it notices a client that left
    while its stream waits)."""
    return [sys.executable, "-m", "waitress", f"--listen=127.0.0.1:{port}",
            f"--threads={threads}", "--channel-request-lookahead=1", *extra, app_ref]


def require_waitress():
    require("waitress", _has_module("waitress"), "pip install waitress (setup.cfg extra: deploy)")


def werkzeug_command(app_ref, port):
    """Werkzeug's threaded development server in its own process."""
    module, _, attr = app_ref.partition(":")
    code = ("import sys; from werkzeug.serving import run_simple; import importlib; "
            f"app = getattr(importlib.import_module({module!r}), {attr or 'app'!r}); "
            f"run_simple('127.0.0.1', {port}, app, threaded=True)")
    return [sys.executable, "-c", code]


def django_runserver_command(settings_module, port):
    """``django-admin runserver`` (threaded, no autoreloader)."""
    return [sys.executable, "-m", "django", "runserver", "--noreload",
            f"--settings={settings_module}", f"127.0.0.1:{port}"]


NGINX_PROXY_CONF = NGINX_HEAD.replace("CONNECTIONS", "256") + """\
    upstream app {{
        server 127.0.0.1:{upstream};
{keepalive}
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://app;
{http11}
            proxy_buffering off;
            proxy_cache off;
            proxy_read_timeout 60s;
            gzip off;
        }}
    }}
}}
"""

# What the deployment guide's nginx block adds to nginx's defaults.
NGINX_HTTP11 = """\
            proxy_http_version 1.1;
            proxy_set_header Connection "";"""


@contextmanager
def nginx_proxy(upstream_port, *, http11=True):
    """nginx (own config, pid, logs, temp dirs) ``proxy_pass`` to an HTTP
    server on ``upstream_port``, response buffering off.  ``http11``: the
    documented block (HTTP/1.1 upstream, ``Connection ""``, upstream
    keepalive); otherwise nginx's default (HTTP/1.0, a connection per
    request).  Yield nginx's base URL."""
    import tempfile
    nginx = require_nginx()
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="gosse-nginx-") as tmp:
        user = "user root;" if os.geteuid() == 0 else ""
        conf = os.path.join(tmp, "nginx.conf")
        with open(conf, "w") as f:
            f.write(NGINX_PROXY_CONF.format(
                user=user, dir=tmp, port=port, upstream=upstream_port,
                keepalive="        keepalive 16;" if http11 else "",
                http11=NGINX_HTTP11 if http11 else ""))
        with server_process([nginx, "-p", tmp, "-c", conf, "-e", f"{tmp}/error.log"],
                            port) as (url, proc):
            yield url
