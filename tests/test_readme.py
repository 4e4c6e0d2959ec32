"""The README's claims, checked: its examples run (``python -m doctest
README.rst``), the extras it tells users to install exist, and ``gosse
listen`` does what its exit-status paragraph says about a refused reconnect."""
import configparser
import doctest
import os
import re
import subprocess
import sys
import threading

import pytest
from werkzeug.serving import make_server

from servers import ROOT, free_port

README = os.path.join(ROOT, "README.rst")


def test_readme_doctests_pass():
    result = doctest.testfile(README, module_relative=False, report=True,
                              optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 8
    assert result.failed == 0, f"{result.failed} README example(s) failed (output above)"


def _docs_with_examples():
    found = []
    for folder, _, files in os.walk(os.path.join(ROOT, "docs")):
        if "_build" in folder:
            continue
        for name in sorted(files):
            path = os.path.join(folder, name)
            if name.endswith(".rst"):
                with open(path, encoding="utf-8") as f:
                    if ">>>" in f.read():
                        found.append(os.path.relpath(path, ROOT))
    return found


@pytest.mark.parametrize("page", _docs_with_examples())
def test_docs_examples_pass(page):
    """The documentation's examples also run in the suite (``.ci/docs.sh``
    runs them through Sphinx; this needs no Sphinx)."""
    result = doctest.testfile(os.path.join(ROOT, page), module_relative=False,
                              report=True, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0, f"{result.failed} example(s) of {page} failed (output above)"


def test_the_docs_have_runnable_examples():
    pages = _docs_with_examples()
    assert "docs/getting-started.rst" in pages and "docs/guides/wire.rst" in pages


def test_readme_install_extras_exist():
    """Every ``gosse[...]`` the README names is an extra of setup.cfg, and the
    Flask quickstart says how to get Flask and gunicorn."""
    with open(README, encoding="utf-8") as f:
        text = f.read()
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    extras = set(cfg["options.extras_require"])
    named = {extra.strip() for group in re.findall(r"gosse\[([^\]]+)\]", text)
             for extra in group.split(",")}
    named |= {extra.strip() for group in re.findall(r'"\.\[([^\]]+)\]"', text)
              for extra in group.split(",")}
    assert {"flask", "gunicorn"} <= named
    assert named <= extras, named - extras
    quickstart = text[text.index("Quickstart (Flask)"):text.index("Limits you should set")]
    assert re.search(r'pip install "gosse\[[^\]]*flask[^\]]*gunicorn', quickstart)


class _OneEventServer:
    """Serves one event, then keeps the stream open until stopped."""

    def __init__(self, port, data):
        self.stop = threading.Event()

        def app(environ, start_response):
            start_response("200 OK", [("Content-Type", "text/event-stream")])
            yield f"retry: 20\nid: {data}\ndata: {data}\n\n".encode()
            self.stop.wait(15)

        self.server = make_server("127.0.0.1", port, app, threaded=True)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def _lines(stream, into, seen):
    for line in stream:
        into.append(line)
        seen.set()


def test_listen_retries_a_refused_reconnect():
    """README: exit status 1 is for a refused *first* connection; once the
    stream has started, a refused reconnect is retried (here until the
    server is back) and ``--count`` is reached with status 0."""
    port = free_port()
    first = _OneEventServer(port, "first")
    env = {**os.environ, "PYTHONPATH": ROOT}
    proc = subprocess.Popen([sys.executable, "-m", "gosse", "listen", "-v", "--count", "2",
                             "--timeout", "30", f"http://127.0.0.1:{port}/sse"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    out, err, seen_out, seen_err = [], [], threading.Event(), threading.Event()
    readers = [threading.Thread(target=_lines, args=(proc.stdout, out, seen_out), daemon=True),
               threading.Thread(target=_lines, args=(proc.stderr, err, seen_err), daemon=True)]
    for t in readers:
        t.start()
    second = None
    try:
        assert seen_out.wait(15), f"no first event; stderr: {err}"
        first.close()   # the stream ends and nothing listens on the port any more

        def refused():
            return any("failed" in line and "next attempt" in line for line in err)
        for _ in range(200):   # bounded: about 20 s
            if refused() or proc.poll() is not None:
                break
            seen_err.wait(0.1)
            seen_err.clear()
        assert refused(), f"no refused reconnect reported; exit {proc.poll()}; {err}"
        assert proc.poll() is None, f"gosse listen exited {proc.returncode}: {err}"
        second = _OneEventServer(port, "second")
        code = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        for t in readers:
            t.join(5)
        if second is not None:
            second.close()
    assert code == 0, err
    assert out == ["[message] id=first first\n", "[message] id=second second\n"], (out, err)


def test_listen_help_states_the_reconnect_rule():
    """``gosse listen --help`` tells the same story as the README."""
    proc = subprocess.run([sys.executable, "-m", "gosse", "listen", "--help"], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True,
                          text=True, timeout=20)
    text = " ".join(proc.stdout.split())
    assert proc.returncode == 0
    assert "also on a reconnect)" not in text
    assert "refused" in text and "retried" in text
