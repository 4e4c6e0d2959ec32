"""The deployments of the matrix (tests/test_deploy_matrix.py) and of the
deployment defect tests (tests/test_deploy_defects.py): each a real server
process, or a proxy in front of one, on 127.0.0.1, serving
tests/deploy_app.py as the deployment guide (docs/guides/gunicorn.rst) says to run it.

A :class:`Deployment` starts with ``deployment.start(**env)`` (a context
manager yielding a :class:`Running`) and says what the docs promise for
it: whether the client sees chunked framing (a stream's clean end is its
last chunk) or a close-delimited body, whether the connection is reused
after a stream the server ended, how many streams a worker serves, and how
SIGTERM ends the streams.  Missing servers skip (fail under CI).
"""
import os
import signal
import sys
from contextlib import ExitStack, contextmanager

import pytest

from servers import (
    _has_module,
    django_runserver_command,
    free_port,
    gunicorn_server,
    nginx_proxy,
    nginx_uwsgi_proxy,
    require,
    require_nginx,
    require_uwsgi,
    require_waitress,
    server_process,
    uwsgi_command,
    waitress_command,
    werkzeug_command,
)

HOOKS = ("-c", "python:gosse.contrib.gunicorn")
# An interpreter whose gunicorn still has the eventlet worker (gunicorn 22;
# .ci/matrix.sh makes a venv for it): GOSSE_EVENTLET_PYTHON, else this one.
EVENTLET_PYTHON = os.environ.get("GOSSE_EVENTLET_PYTHON")


class Running:
    """A started deployment: ``url`` (what clients use), ``proc`` (the
    process SIGTERM goes to: the server, never the proxy)."""

    def __init__(self, url, proc, upstream=None):
        self.url = url
        self.proc = proc
        self.upstream = upstream or url   # the server itself, not the proxy

    def log(self):
        """What the server printed (read once it exited)."""
        return self.proc.stdout.read().decode("utf-8", "replace")


class Deployment:
    def __init__(self, name, start, *, chunked=True, reuse=True, per_worker="many",
                 term_clean=True, term_rc=(0,)):
        self.name = name
        self._start = start
        self.chunked = chunked        # HTTP/1.1 chunks to the client (clean end: the last chunk)
        self.reuse = reuse            # the connection carries a request after a server-ended stream
        self.per_worker = per_worker  # "many" streams per worker, or 1 (a stream holds the worker)
        self.term_clean = term_clean  # SIGTERM by the documented recipe ends streams cleanly
        self.term_rc = term_rc        # exit codes the server may have after SIGTERM

    @contextmanager
    def start(self, **env):
        env = {"GOSSE_T_HEARTBEAT": "1", **env}
        with self._start(env) as running:
            yield running

    def __repr__(self):
        return self.name


def _gunicorn(worker_class, app_ref="deploy_app:app", python=None, workers=1):
    @contextmanager
    def start(env):
        if worker_class in ("gevent", "eventlet"):
            require(worker_class, _has_module(worker_class), f"pip install {worker_class}")
        with gunicorn_server(app_ref, worker_class=worker_class, env=env, python=python,
                             workers=workers, threads=64,
                             extra=(*HOOKS, "--keep-alive", "30", "--graceful-timeout", "10")
                             ) as (url, proc):
            yield Running(url, proc)
    return start


def eventlet_python():
    """The interpreter for gunicorn -k eventlet, or skip: eventlet and a
    gunicorn that still has the worker (<= 22) must be installed there."""
    python = EVENTLET_PYTHON or sys.executable
    import subprocess
    probe = subprocess.run([python, "-c", "import eventlet, gunicorn.workers.geventlet"],
                           capture_output=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if probe.returncode != 0:
        message = ("gunicorn -k eventlet needs eventlet and gunicorn <= 22 (its last release "
                   "with the worker); .ci/matrix.sh makes a venv and sets GOSSE_EVENTLET_PYTHON")
        if os.environ.get("GOSSE_REQUIRE_EVENTLET"):
            pytest.fail(message)
        pytest.skip(message)
    return python


def _gunicorn_eventlet():
    @contextmanager
    def start(env):
        with _gunicorn("eventlet", python=eventlet_python())(env) as running:
            yield running
    return start


def _process(command, recipe=True):
    """A server started by ``command(port)``, with the documented SIGTERM recipe
    (gosse.contrib.signals.close_on_sigterm, GOSSE_T_RECIPE=signal) if
    ``recipe``."""
    @contextmanager
    def start(env):
        port = free_port()
        with server_process(command(port), port,
                            env={**({"GOSSE_T_RECIPE": "signal"} if recipe else {}), **env}
                            ) as (url, proc):
            yield Running(url, proc)
    return start


def _waitress(env_threads=16):
    def command(port):
        require_waitress()
        return waitress_command("deploy_app:app", port, threads=env_threads)
    return _process(command)


def _uwsgi(mode):
    def command(port):
        require_uwsgi()
        return uwsgi_command("deploy_app:app", port, mode)
    return _process(command, recipe=False)


@contextmanager
def _uwsgi_nginx(env):
    require_uwsgi()
    require_nginx()
    port = free_port()
    with server_process(uwsgi_command("deploy_app:app", port, "socket"), port, env=env) as (
            _, proc):
        with nginx_uwsgi_proxy(port) as url:
            yield Running(url, proc)


def _nginx_gunicorn(http11):
    @contextmanager
    def start(env):
        require_nginx()
        with ExitStack() as stack:
            upstream = stack.enter_context(_gunicorn("gthread")(env))
            url = stack.enter_context(nginx_proxy(int(upstream.url.rsplit(":", 1)[1]),
                                                  http11=http11))
            yield Running(url, upstream.proc, upstream.url)
    return start


def _runserver(port):
    require("Django", _has_module("django"), "pip install django")
    return django_runserver_command("deploy_app", port)


# uWSGI's --die-on-term stops its workers at once: the streams are cut (see
# docs/guides/gunicorn.rst); its body is close-delimited under --http-socket and
# --http, so no byte-level difference is visible: the test checks the events
# that arrived are whole.
DEPLOYMENTS = [
    Deployment("gunicorn-gthread", _gunicorn("gthread")),
    Deployment("gunicorn-sync", _gunicorn("sync"), per_worker=1),
    Deployment("gunicorn-gevent", _gunicorn("gevent")),
    Deployment("gunicorn-eventlet", _gunicorn_eventlet()),
    Deployment("uwsgi-http", _uwsgi("http"), chunked=False, reuse=False, term_clean=False),
    Deployment("uwsgi-http-socket", _uwsgi("http-socket"), chunked=False, reuse=False,
               term_clean=False),
    Deployment("uwsgi-nginx", _uwsgi_nginx, term_clean=False),
    Deployment("waitress", _waitress(), reuse=False),
    Deployment("werkzeug", _process(lambda port: werkzeug_command("deploy_app:app", port)),
               reuse=False),
    Deployment("django-runserver", _process(_runserver), chunked=False, reuse=False),
    Deployment("django-gunicorn", _gunicorn("gthread", app_ref="deploy_app:django_app")),
    Deployment("nginx-http11-gunicorn", _nginx_gunicorn(True)),
    Deployment("nginx-http10-gunicorn", _nginx_gunicorn(False)),
]
BY_NAME = {d.name: d for d in DEPLOYMENTS}


def sigterm(running):
    running.proc.send_signal(signal.SIGTERM)


def past_hand_over(stream):
    """Wait for the stream's first heartbeat (1 s): by then it is past the
    point where it may hand its socket to the writer.  (A SIGTERM landing
    right at that point leaves the stream open until --graceful-timeout:
    reported to the lead, gosse/broker.py ``_end_session``.)"""
    assert stream._read_chunk(65536) == b":\n\n"
