"""Deriving client ids from the application's own authentication.

The client id decides who receives ``broker.send(client_id, ...)``: never take
it from the request (a query parameter or header anyone can set). Here it is
the user name stored in Flask's signed session cookie at login, so a visitor
can only ever open their own stream, and topics are checked against what the
user may read.

    python examples/signed_cookie_auth.py
    curl -c jar 'localhost:8080/login?user=alice'       # sets the signed cookie
    curl -b jar -N 'localhost:8080/sse?topics=news'
    curl -X POST localhost:8080/notify/alice -d data=hi  # reaches alice only
"""
import os

from flask import Flask, abort, request, session

from gosse import Broker, Event, UnknownClientError

app = Flask(__name__)
app.secret_key = os.environ.get("SECRET_KEY") or os.urandom(32)
broker = Broker(history=500, auto_id=True)

USERS = {"alice": {"news", "staff"}, "bob": {"news"}}  # user -> topics allowed


@app.route("/login")
def login():
    user = request.args.get("user")
    if user not in USERS:  # a real app checks a password or an SSO assertion
        abort(403)
    session["user"] = user
    return f"logged in as {user}\n"


@app.route("/sse")
def sse():
    user = session.get("user")
    if user is None:
        abort(401, "log in first")
    wanted = {t for t in request.args.get("topics", "").split(",") if t}
    if not wanted <= USERS[user]:
        abort(403, f"topics not allowed: {sorted(wanted - USERS[user])}")
    return broker.connect(user, request.environ, topics=wanted)


@app.route("/notify/<user>", methods=["POST"])
def notify(user):
    # In a real app this endpoint is itself authenticated (internal only).
    try:
        broker.send(user, Event(request.form["data"], event="private"))
    except UnknownClientError:
        abort(404)
    return "sent\n"


@app.route("/news", methods=["POST"])
def news():
    return f"{broker.publish('news', Event(request.form['data'], event='news'))}\n"


if __name__ == "__main__":
    try:
        app.run(host="127.0.0.1", port=int(os.environ.get("PORT", "8080")), threaded=True)
    finally:
        broker.close()
