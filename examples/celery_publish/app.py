"""The web side of the Celery example: a Flask app whose broker shares its
events through Redis, a page that starts a job and shows its progress.

    REDIS_URL=redis://127.0.0.1:6379/0 gunicorn -k gthread -w 2 --threads 50 app:app

Open http://127.0.0.1:8000/?user=alice and press "Export".  See README.md.
"""
import os
import uuid
from html import escape

from flask import Flask, jsonify, request
from tasks import PREFIX, REDIS_URL, export

from gosse import Broker
from gosse.backplane.redis import RedisBackplane

app = Flask(__name__)

broker = Broker(
    auto_id=True,   # ids from the Redis stream: a page resumes on any worker
    headers={"X-Worker-Pid": str(os.getpid())},   # only to show which worker serves it
    backplane=RedisBackplane(REDIS_URL, prefix=PREFIX),
)

PAGE = """<!doctype html>
<meta charset="utf-8"><title>Export</title>
<p>Signed in as <b>%s</b>. <button id="go">Export</button></p>
<ul id="log"></ul>
<script>
const user = new URLSearchParams(location.search).get("user") || "alice";
const log = document.getElementById("log");
const say = (text) => { const li = document.createElement("li"); li.textContent = text;
                        log.prepend(li); };
const events = new EventSource("/sse?user=" + encodeURIComponent(user));
events.addEventListener("progress", (e) => {
  const p = JSON.parse(e.data); say(`job ${p.job}: ${p.done} / ${p.total}`);
});
events.addEventListener("done", (e) => {
  const p = JSON.parse(e.data); say(`job ${p.job} done: ${p.result}`);
});
document.getElementById("go").onclick = () =>
  fetch("/export", {method: "POST", body: new URLSearchParams({user})});
</script>
"""


def _user():
    # A real app takes the user from its login session, not from the request.
    return request.values.get("user", "alice")[:64]


@app.route("/")
def page():
    return PAGE % escape(_user())


@app.route("/sse")
def sse():
    return broker.connect(_user(), request.environ)


@app.route("/export", methods=["POST"])
def start_export():
    job_id = uuid.uuid4().hex[:8]
    try:
        steps = min(max(int(request.values.get("steps", 5)), 1), 100)
    except ValueError:
        return jsonify(error="steps must be an integer"), 400
    export.delay(job_id, _user(), steps)
    return jsonify(job=job_id, steps=steps), 202
