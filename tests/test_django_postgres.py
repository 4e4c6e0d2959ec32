"""Django streams do not hold database connections (issue 12, defect 11):
a view that queries a real PostgreSQL (max_connections=20) and then returns
a gosse stream, under gunicorn gthread; 30 streams open at once."""
import contextlib

import pytest
import requests

pytest.importorskip("django")

from pg_fixture import postgres_server  # noqa: E402,F401
from servers import SSEReader, gunicorn_server, wait_until  # noqa: E402

STREAMS = 30   # more than the 17 ordinary connection slots of the server


def serve(postgres_server, atomic=False, max_age="0"):
    env = {"GOSSE_PG_PORT": str(postgres_server.port),
           "GOSSE_PG_ATOMIC": "1" if atomic else "0", "GOSSE_PG_CONN_MAX_AGE": max_age}
    return gunicorn_server("django_pg_app:application", threads=64, env=env,
                           extra=("-c", "python:gosse.contrib.gunicorn"))


@pytest.mark.parametrize("atomic,max_age", [(False, "0"), (True, "none")],
                         ids=["autocommit", "atomic-requests-persistent"])
def test_streams_release_their_database_connection(postgres_server, atomic, max_age):
    with serve(postgres_server, atomic, max_age) as (url, _):
        with contextlib.ExitStack() as stack:
            readers, pids = [], set()
            for i in range(STREAMS):
                r = stack.enter_context(SSEReader(f"{url}/events?client=c{i}"))
                assert r.status == 200, (
                    f"stream {i} answered {r.status}: {r.response.read(200)!r}; "
                    f"postgres log: {postgres_server.log_tail()[-300:]}")
                pids.add(int(r.headers["X-Backend-Pid"]))   # the view did query
                readers.append(r)
            assert requests.get(f"{url}/broadcast?data=hi", timeout=5).text == str(STREAMS)
            for r in readers:
                [event] = r.wait_events(1, timeout=5)
                assert event.data == "hi"
                assert r.raw.startswith(b":ok\n\n")
            assert len(pids) == STREAMS
            # Each stream's thread closed its connection before its first bytes;
            # the server may take a moment to drop the ended backends.  (The
            # broadcast thread may keep one: ATOMIC_REQUESTS opens it.)
            assert wait_until(lambda: not pids & postgres_server.client_pids()), (
                f"{len(pids & postgres_server.client_pids())} of the {STREAMS} streams' "
                "connections still open")
            assert len(postgres_server.client_pids()) <= 2


def test_connection_inside_an_open_transaction_is_kept(postgres_server):
    # Closing it would roll back work the view has not committed.
    with serve(postgres_server) as (url, _):
        with SSEReader(f"{url}/events?client=tx&open_transaction=1") as r:
            assert r.status == 200
            pid = int(r.headers["X-Backend-Pid"])
            assert requests.get(f"{url}/broadcast?data=hi", timeout=5).text == "1"
            assert r.wait_events(1, timeout=5)[0].data == "hi"
            assert pid in postgres_server.client_pids()
