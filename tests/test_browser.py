"""The demo pages in a real browser: headless Chromium, driven through the
DevTools protocol (a minimal stdlib WebSocket client below), loads the pages
from ``gosse demo``; what is published over HTTP, and what the pages' own
controls do, must show up in their DOM as a user would see it.

Skipped when Chromium is not installed, except under CI (``CI`` set), where
``.ci/run`` installs it and a missing browser is a failure.

``GOSSE_SCREENSHOTS=DIR`` saves PNG screenshots of the pages into DIR (the
documentation's are made with ``GOSSE_SCREENSHOTS=docs/_static``).
"""
import base64
import hashlib
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import time
import urllib.request
from urllib.parse import urlsplit

import pytest
import requests

from test_demo import DemoProcess

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome")


def find_chromium():
    for name in CHROMIUM_CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


CHROMIUM = find_chromium()

if CHROMIUM is None:
    if os.environ.get("CI"):
        raise RuntimeError("Chromium is required under CI (Debian: apt-get install chromium)")
    pytest.skip("Chromium is not installed", allow_module_level=True)


class WebSocket:
    """Just enough of RFC 6455 for the DevTools protocol: text messages,
    client-side masking, fragmented and long frames, ping/pong, close."""

    GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

    def __init__(self, url, timeout=10.0):
        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout)
        key = base64.b64encode(os.urandom(16))
        self.sock.sendall(
            f"GET {parts.path} HTTP/1.1\r\nHost: {parts.hostname}:{parts.port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key.decode()}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            .encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        status = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status + b" ":
            raise ConnectionError(f"WebSocket handshake refused: {head!r}")
        accept = base64.b64encode(hashlib.sha1(key + self.GUID).digest())
        if accept not in head:
            raise ConnectionError("bad Sec-WebSocket-Accept")

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("WebSocket closed by the browser")
        self.buf += chunk

    def _take(self, n):
        while len(self.buf) < n:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def _send_frame(self, opcode, payload):
        header = bytes([0x80 | opcode])
        n = len(payload)
        if n < 126:
            header += bytes([0x80 | n])
        elif n < 1 << 16:
            header += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            header += bytes([0x80 | 127]) + struct.pack("!Q", n)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def send(self, text):
        self._send_frame(0x1, text.encode("utf-8"))

    def recv(self, timeout):
        """The next text message (TimeoutError if none within ``timeout``)."""
        self.sock.settimeout(timeout)
        message = b""
        try:
            while True:
                b0, b1 = self._take(2)
                opcode, n = b0 & 0x0F, b1 & 0x7F
                if n == 126:
                    n = struct.unpack("!H", self._take(2))[0]
                elif n == 127:
                    n = struct.unpack("!Q", self._take(8))[0]
                mask = self._take(4) if b1 & 0x80 else None
                payload = self._take(n)
                if mask:
                    payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
                if opcode == 0x8:
                    raise ConnectionError("WebSocket closed by the browser")
                if opcode == 0x9:
                    self._send_frame(0xA, payload)
                    continue
                if opcode in (0x0, 0x1, 0x2):
                    message += payload
                    if b0 & 0x80:
                        return message.decode("utf-8")
        except socket.timeout:
            raise TimeoutError("no DevTools message in time") from None

    def close(self):
        try:
            self._send_frame(0x8, b"")
        except OSError:
            pass
        self.sock.close()


class DevTools:
    """Commands to one page target over the DevTools protocol."""

    def __init__(self, ws_url):
        self.ws = WebSocket(ws_url)
        self.next_id = 0

    def call(self, method, timeout=10.0, **params):
        self.next_id += 1
        msg_id = self.next_id
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no answer to {method}")
            reply = json.loads(self.ws.recv(left))
            if reply.get("id") == msg_id:  # anything else is an event: ignored
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def evaluate(self, expression):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression, timeout=10.0, what=None):
        """Poll ``expression`` in the page until it is truthy; return its value."""
        deadline = time.monotonic() + timeout
        guarded = f"(() => {{ try {{ return ({expression}); }} catch (e) {{ return null; }} }})()"
        while True:
            value = self.evaluate(guarded)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for "
                                     f"{what or expression}; page state: {self.snapshot()}")
            time.sleep(0.05)

    def screenshot(self, name):
        """Save a PNG of the page as ``$GOSSE_SCREENSHOTS/name`` (if set) and
        return its bytes."""
        # The whole page and no more: clipped to the document's height.
        width, height = self.evaluate(
            "[window.innerWidth, Math.ceil(document.body.getBoundingClientRect().bottom)]")
        clip = {"x": 0, "y": 0, "width": width, "height": min(height, 3000), "scale": 1}
        png = base64.b64decode(self.call("Page.captureScreenshot", format="png", clip=clip,
                                         captureBeyondViewport=True)["data"])
        assert png.startswith(b"\x89PNG\r\n\x1a\n")
        folder = os.environ.get("GOSSE_SCREENSHOTS")
        if folder:
            os.makedirs(folder, exist_ok=True)
            with open(os.path.join(folder, name), "wb") as f:
                f.write(png)
        return png

    def snapshot(self):
        try:
            return self.evaluate(SNAPSHOT)
        except RuntimeError as exc:  # e.g. the page is not loaded yet
            return f"(no snapshot: {exc})"

    def close(self):
        self.ws.close()


PAGE_LOADED = ('document.readyState === "complete" && '
               'document.getElementById("state") !== null')
STREAM_OPEN = 'document.getElementById("state").textContent === "open"'
# The one time format of the pages: 24-hour HH:MM:SS.
HMS = re.compile(r"\d\d:\d\d:\d\d")


@pytest.fixture
def browser(tmp_path):
    """Start headless Chromium on a page; yield open(url) -> DevTools."""
    procs = []
    tools = []

    def open_page(url, size=(1100, 900)):
        profile = tmp_path / f"profile{len(procs)}"
        profile.mkdir()
        proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--no-default-browser-check",
             "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--disable-extensions", "--mute-audio",
             "--hide-scrollbars", "--force-device-scale-factor=1",
             f"--window-size={size[0]},{size[1]}",
             f"--user-data-dir={profile}", "--remote-debugging-address=127.0.0.1",
             "--remote-debugging-port=0", url],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        procs.append(proc)
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while True:
            if port_file.exists():
                lines = port_file.read_text().split("\n")
                if lines and lines[0].strip().isdigit():
                    port = int(lines[0])
                    break
            if proc.poll() is not None:
                raise RuntimeError(f"chromium exited with {proc.returncode}: "
                                   f"{proc.stderr.read()[-2000:]!r}")
            if time.monotonic() > deadline:
                raise TimeoutError("chromium wrote no DevToolsActivePort in 30 s")
            time.sleep(0.05)
        page = None
        while page is None:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list",
                                        timeout=10) as r:
                targets = json.load(r)
            page = next((t for t in targets if t.get("type") == "page"
                         and t.get("url", "").startswith(url.split("?")[0])), None)
            if page is None:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no page target for {url}: {targets}")
                time.sleep(0.05)
        devtools = DevTools(page["webSocketDebuggerUrl"])
        tools.append(devtools)
        return devtools

    yield open_page
    for devtools in tools:
        devtools.close()
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)  # its own session: only the browser we started
            proc.wait(5)
        proc.stderr.close()


@pytest.fixture
def demo():
    d = DemoProcess("--port", "0", "--quiet")
    yield d
    d.kill()



# The page's state as plain data: connection state, clock, empty state and
# the list rows (whichever of them the page has), and its visible text.
SNAPSHOT = """JSON.stringify((() => {
  const $ = (id) => document.getElementById(id);
  const text = (id) => $(id) ? $(id).textContent : null;
  return {
    state: text("state"),
    clock: text("clock"),
    clockIso: $("clock") ? $("clock").dateTime : null,
    lastId: text("last-id"),
    empty: $("empty") ? !$("empty").hidden && $("empty").offsetHeight > 0 : null,
    emptyText: text("empty"),
    rows: Array.from(document.querySelectorAll("#events li")).map(li => ({
      type: li.dataset.type, id: li.dataset.id,
      time: li.querySelector(".time").textContent,
      data: li.querySelector(".data").textContent,
      elements: li.querySelector(".data").children.length})),
    images: document.images.length,
    pwned: window.__pwned === true,
    visible: document.body.innerText.slice(0, 3000),
  };
})())"""


def open_demo_page(browser, url, **kw):
    page = browser(url, **kw)
    page.wait_for(PAGE_LOADED, what="the page to load")
    page.wait_for(STREAM_OPEN, timeout=15, what="the EventSource to open")
    return page


def state_of(page):
    return json.loads(page.snapshot())


def test_events_page_empty_state_clock_and_published_events(browser, demo):
    page = open_demo_page(browser, demo.url + "?types=news")
    # The server clock ticks, shown as HH:MM:SS (the full time in datetime).
    page.wait_for(r'/^\d\d:\d\d:\d\d$/.test(document.getElementById("clock").textContent)',
                  what="a clock tick")
    state = state_of(page)
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", state["clockIso"]), state
    # Nothing published yet: the empty state says what to do, with this
    # server's own URL, and clock ticks are not listed.
    assert state["empty"] is True and state["rows"] == [], state
    assert f"gosse publish {demo.url}publish --data 'hello'" in state["emptyText"]
    assert f"curl -d data='hello' {demo.url}publish" in state["emptyText"]
    assert f"gosse publish {demo.url}publish --data 'hello'" in state["visible"]
    page.screenshot("demo-empty.png")

    token = f"t{time.monotonic_ns()}"
    hostile = f'<img src=x onerror="window.__pwned=true"><b>{token}</b> & "quotes"'
    r = requests.post(demo.url + "publish", data={"data": hostile}, timeout=5)
    assert r.status_code == 200 and r.json()["delivered"] >= 1
    r = requests.post(demo.url + "publish",
                      json={"data": f"{token} news\nsecond line", "event": "news",
                            "id": f"{token}-id"}, timeout=5)
    assert r.status_code == 200

    page.wait_for(f'document.getElementById("events").textContent.includes("{token} news")',
                  what="the published events in the list")
    state = state_of(page)
    assert state["empty"] is False, state  # the empty state is gone
    rows = {row["data"]: row for row in state["rows"]}
    # Shown as text, exactly as published: no markup was interpreted.
    assert hostile in rows, state
    assert rows[hostile]["type"] == "message"
    assert re.fullmatch(r"[0-9a-z]+-\d+", rows[hostile]["id"])  # numbered by the broker
    assert rows[hostile]["elements"] == 0
    assert state["images"] == 0 and not state["pwned"]
    news = rows[f"{token} news\nsecond line"]
    assert (news["type"], news["id"]) == ("news", f"{token}-id")
    assert state["lastId"] and state["state"] == "open"
    # Newest first; every time on the page in the clock's format.
    assert state["rows"][0]["id"] == f"{token}-id"
    assert all(HMS.fullmatch(row["time"]) for row in state["rows"]), state
    assert HMS.fullmatch(state["clock"]), state


def test_page_publish_form_round_trip(browser, demo):
    """The page's own publish form posts to /publish; the event comes back
    over the stream into the list."""
    page = open_demo_page(browser, demo.url)
    token = f"form{time.monotonic_ns()}"
    page.evaluate(f"""(() => {{
        document.getElementById("publish-data").value = "{token}";
        document.getElementById("publish-event").value = "chat";
        document.querySelector("#publish button").click();
    }})()""")
    page.wait_for(f'Array.from(document.querySelectorAll("#events li"))'
                  f'.some(li => li.dataset.type === "chat" && '
                  f'li.querySelector(".data").textContent === "{token}")',
                  what="the event published by the page's form")
    result = page.wait_for('document.getElementById("publish-result").textContent',
                           what="the form's result line")
    assert re.fullmatch(r"sent to [1-9]\d* streams?", result), result


JOB_ROW = """(() => {{
  const li = document.querySelector('#jobs li[data-job="{job}"]');
  return li && JSON.stringify({{
    state: li.dataset.state, value: li.querySelector("progress").value,
    max: li.querySelector("progress").max,
    percent: li.querySelector(".job-percent").textContent,
    label: li.querySelector(".job-state").textContent,
    name: li.querySelector(".job-name").textContent}});
}})()"""


def job_row(page, job):
    found = page.evaluate(JOB_ROW.format(job=job))
    return json.loads(found) if found else None


def test_live_page_job_progress_bar(browser, demo):
    """The button starts a job on the server (POST /jobs); its thread's
    progress events, on topic "jobs", move the page's bar to 100 %."""
    page = open_demo_page(browser, demo.url + "live")
    assert page.evaluate('!document.getElementById("jobs-empty").hidden')
    assert f"curl -d steps=20 {demo.url}jobs" in page.evaluate(
        'document.getElementById("jobs-empty").textContent')
    # Every value the bars take, as the page renders each event.
    page.evaluate("""(() => {
        window.__seen = [];
        new MutationObserver(() => document.querySelectorAll("#jobs progress")
            .forEach(bar => window.__seen.push(bar.value)))
          .observe(document.getElementById("jobs"),
                   {subtree: true, childList: true, attributes: true});
        document.getElementById("job-steps").value = "5";
        document.querySelector("#job-form button").click();
    })()""")
    result = page.wait_for('document.getElementById("job-result").textContent',
                           what="the job's start line")
    match = re.fullmatch(r"job (\d+) started", result)
    assert match, result
    job = match.group(1)
    page.wait_for(f'(() => {{ const r = {JOB_ROW.format(job=job)}; '
                  f'return r && JSON.parse(r).state === "done"; }})()',
                  what=f"job {job} to finish")
    row = job_row(page, job)
    assert row == {"state": "done", "value": 5, "max": 5, "percent": "100 %",
                   "label": "done", "name": f"Job {job}"}, row
    seen = page.evaluate("window.__seen")
    assert {1, 2, 3, 4, 5} <= set(seen), seen  # it moved step by step, not at the end
    assert seen == sorted(seen), seen  # and never back
    assert page.evaluate('document.getElementById("jobs-empty").hidden')
    jobs = requests.get(demo.url + "jobs", timeout=5).json()["jobs"]
    assert {"job": job, "done": 5, "total": 5, "state": "done"} in jobs

    # A job started by someone else (here over HTTP) shows up as well.
    r = requests.post(demo.url + "jobs", data={"steps": "40"}, timeout=5)
    assert r.status_code == 202
    other = r.json()["job"]
    page.wait_for(f'(() => {{ const r = {JOB_ROW.format(job=other)}; '
                  f'return r && JSON.parse(r).value >= 14; }})()',
                  what="the second job's progress")
    row = job_row(page, other)
    assert row["state"] == "running" and row["max"] == 40
    assert row["label"] == f"{row['value']} / 40 steps", row
    if os.environ.get("GOSSE_SCREENSHOTS"):
        for name, text in (("ada", "the nightly import is running"),
                           ("grace", "thanks, watching the bar")):
            requests.post(demo.url + "chat", data={"name": name, "text": text},
                          timeout=5).raise_for_status()
        page.wait_for('document.querySelectorAll("#messages li").length >= 2',
                      what="the chat messages")
        page.wait_for(r'/^\d\d:/.test(document.getElementById("clock").textContent)',
                      what="a clock tick")
        page.screenshot("demo-live.png")


def test_live_page_chat(browser, demo):
    """The chat form posts to /chat, which broadcasts: the message comes back
    into the page, and one sent by someone else (over HTTP) appears too,
    as text."""
    page = open_demo_page(browser, demo.url + "live")
    assert page.evaluate('!document.getElementById("chat-empty").hidden')
    token = f"hi{time.monotonic_ns()}"
    page.evaluate(f"""(() => {{
        document.getElementById("chat-name").value = "ada";
        document.getElementById("chat-text").value = "{token}";
        document.querySelector("#chat-form button").click();
    }})()""")
    messages = """JSON.stringify(Array.from(document.querySelectorAll("#messages li"))
        .map(li => [li.querySelector(".time").textContent,
                    li.querySelector(".name").textContent,
                    li.querySelector(".text").textContent,
                    li.querySelector(".text").children.length]))"""
    page.wait_for(f'document.getElementById("messages").textContent.includes("{token}")',
                  what="the page's own chat message")
    hostile = '<img src=x onerror="window.__pwned=true"> & "hi"'
    r = requests.post(demo.url + "chat", json={"name": "<b>grace</b>", "text": hostile},
                      timeout=5)
    assert r.status_code == 200 and r.json()["delivered"] >= 1
    page.wait_for('document.querySelectorAll("#messages li").length >= 2',
                  what="the message sent over HTTP")
    got = json.loads(page.evaluate(messages))
    assert [m[1:] for m in got] == [["ada", token, 0], ["<b>grace</b>", hostile, 0]], got
    assert all(HMS.fullmatch(m[0]) for m in got), got
    assert page.evaluate('document.getElementById("chat-text").value') == ""
    assert page.evaluate('document.getElementById("chat-empty").hidden')
    assert page.evaluate("document.images.length") == 0
    assert page.evaluate("window.__pwned === true") is False
