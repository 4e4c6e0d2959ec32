"""The feed over TLS: through an https:// proxy to an https:// URL (TLS
inside TLS), and the session's TLS settings against the environment's
(issue 13: defects 6 and 10).  A throwaway self-signed certificate for
127.0.0.1 is made with the openssl command line."""
import select
import shutil
import socket
import ssl
import subprocess
import threading
import time

import certifi
import pytest
import requests

from gosse import FeedConnectionError
from gosse.client import connect_with_sse_feed
from rawhttp import read_head_from
from rawserver import RawServer, sse

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")]


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    """(server SSLContext, path of the certificate that signs it)."""
    where = tmp_path_factory.mktemp("tls")
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=30)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert), str(key))
    return context, str(cert)


class TLSRawServer(RawServer):
    """The raw server behind TLS (the handshake runs in the connection's thread)."""

    def __init__(self, handler, context):
        self._context = context
        super().__init__(handler)

    def url(self, path="/sse"):
        return f"https://127.0.0.1:{self.port}{path}"

    def _serve(self, conn):
        try:
            conn.sock.settimeout(10)
            conn.sock = self._context.wrap_socket(conn.sock, server_side=True)
            conn.sock.settimeout(None)
        except (ssl.SSLError, OSError):
            conn.sock.close()
            return
        super()._serve(conn)


class TLSProxy:
    """An https:// forward proxy: TLS to the client, CONNECT tunnels inside."""

    def __init__(self, context):
        self._context = context
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.port = self._listener.getsockname()[1]
        self.url = f"https://127.0.0.1:{self.port}"
        self.tunnels = 0
        self._threads = []
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._tunnel, args=(client,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _tunnel(self, client):
        upstream = None
        try:
            client.settimeout(10)
            tls = self._context.wrap_socket(client, server_side=True)
            head = read_head_from(tls)
            if b"\r\n\r\n" not in head:
                return
            method, target, _ = head.split(b"\r\n", 1)[0].split(b" ", 2)
            assert method == b"CONNECT", method
            host, port = target.decode().rsplit(":", 1)
            upstream = socket.create_connection((host, int(port)), timeout=10)
            tls.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            self.tunnels += 1
            tls.settimeout(None)
            upstream.settimeout(None)
            for _ in range(1000000):      # until either side closes
                ready = [tls] if tls.pending() else \
                    select.select([tls, upstream], [], [], 0.5)[0]
                if self._stop.is_set():
                    return
                for source in ready:
                    data = source.recv(65536)
                    if not data:
                        return
                    (upstream if source is tls else tls).sendall(data)
        except (OSError, ssl.SSLError, ValueError):
            return
        finally:
            client.close()
            if upstream is not None:
                upstream.close()

    def close(self):
        self._stop.set()
        self._listener.close()
        for thread in self._threads:
            thread.join(3)


@pytest.fixture
def no_ca_env(monkeypatch):
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def proxied(tls, no_ca_env):
    """(context, proxy, session): a requests session that trusts the test CA
    and goes through an https:// proxy (TLS inside TLS)."""
    context, cert = tls
    proxy = TLSProxy(context)
    session = requests.Session()
    session.verify = cert
    session.proxies = {"https": proxy.url}
    try:
        yield context, proxy, session
    finally:
        proxy.close()
        session.close()


def test_close_through_an_https_proxy_is_prompt_and_leaves_no_reader(proxied):
    context, proxy, session = proxied
    with TLSRawServer(sse(b"data: hello\n\n"), context) as server:
        feed = connect_with_sse_feed(server.url(), session=session)
        assert feed.subscribe().get(timeout=5).data == "hello"
        assert proxy.tunnels == 1                  # really through the proxy
        started = time.monotonic()
        feed.close()
        assert time.monotonic() - started < 0.5, "close() waited for the reader"
        assert not feed._thread.is_alive(), "the reader outlived close()"
        assert server.wait_idle(3)                 # the tunnel was torn down


def test_read_timeout_through_an_https_proxy(proxied):
    context, proxy, session = proxied
    silent = sse(b"data: once\n\n")            # then nothing, no heartbeat
    with TLSRawServer(silent, context) as server:
        with connect_with_sse_feed(server.url(), session=session, read_timeout=0.5,
                                   retry=10) as feed:
            sub = feed.subscribe()
            assert [sub.get(timeout=5).data for _ in range(2)] == ["once", "once"]


@pytest.mark.parametrize("variable", ["REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"])
def test_the_session_verify_wins_over_the_environment(tls, monkeypatch, variable):
    context, cert = tls
    monkeypatch.setenv(variable, certifi.where())     # a bundle without our CA
    session = requests.Session()
    session.verify = cert
    with TLSRawServer(sse(b"data: trusted\n\n"), context) as server:
        with connect_with_sse_feed(server.url(), session=session) as feed:
            assert feed.subscribe().get(timeout=5).data == "trusted"
        # The environment still applies to a session that sets nothing.
        with pytest.raises(FeedConnectionError):
            connect_with_sse_feed(server.url())
    session.close()
