"""The ``gosse`` command line: ``gosse demo``, ``gosse listen``, ``gosse publish``.

Also runnable as ``python -m gosse``.  Exit status: 0 success, 1 a fatal
error (one line on stderr), 2 a usage error, 130 interrupted by Ctrl-C;
``gosse listen --count N --timeout S`` exits 124 when fewer than N events
arrived in S seconds; ``gosse publish --redis`` exits 3 when Redis cannot be
reached (not published), 4 when its answer was lost (maybe published) and 5
when ``--client`` is connected to no broker.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import re
import shlex
import signal
import socket
import sys
import time
from typing import Any, List, Optional, Tuple
from urllib.parse import urlsplit

__all__ = ["main", "build_parser"]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 124      # as timeout(1): --count not reached within --timeout
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl-C
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: whoever read our output went away
# gosse publish --redis: what a script needs to tell apart (retry or not).
EXIT_UNREACHABLE = 3    # Redis unreachable: certainly not published, safe to retry
EXIT_UNKNOWN = 4        # sent, answer lost: maybe published, a retry may duplicate
EXIT_NO_CLIENT = 5      # --client is connected to no broker: nothing published

REDIS_URL_ENV = "GOSSE_REDIS_URL"

DEFAULT_THREADS = 100


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``gosse`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        code: int = args.run(args)
        return code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="gosse",
        description="Server-Sent Events for synchronous, thread-based Python.",
        epilog="Run 'gosse COMMAND --help' for the options of a command.  "
               "Start here: 'gosse demo', then open http://127.0.0.1:8080/.")
    parser.add_argument("--version", action="version", version=f"gosse {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = commands.add_parser(
        "demo", help="serve a live demo page (clock, publish, stats)",
        description="Serve a page that shows a live event stream: a clock event every "
                    "second and whatever anyone publishes.  Routes: / (the page), /sse "
                    "(the stream), POST /publish (form or JSON fields data, event, id), "
                    "/stats (broker counters).  Ctrl-C or SIGTERM ends the streams and "
                    "stops the server.",
        epilog="Without --gunicorn it runs on Werkzeug's threaded server (one thread "
               "per connection).  --gunicorn runs 'python -m gunicorn -k gthread' with "
               "one worker: the broker lives in one process.")
    demo.add_argument("--host", default="127.0.0.1",
                      help="address to listen on (default: %(default)s; 0.0.0.0 exposes "
                           "the demo to your network)")
    demo.add_argument("--port", type=_port, default=8080,
                      help="port to listen on (default: %(default)s; 0: any free port)")
    demo.add_argument("--gunicorn", action="store_true",
                      help="serve with gunicorn's gthread worker instead of Werkzeug")
    demo.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                      help="gunicorn threads, i.e. how many streams and requests at "
                           f"once (default: {DEFAULT_THREADS}; needs --gunicorn)")
    demo.add_argument("-q", "--quiet", action="store_true",
                      help="do not log each request (Werkzeug)")
    demo.set_defaults(run=_run_demo)

    listen = commands.add_parser(
        "listen", help="print the events of an SSE stream",
        description="Connect to an event stream and print each event as it arrives, "
                    "one line each: '[type] id=ID data' (lines of multi-line data "
                    "follow, indented), or with --json one JSON object per line with "
                    "the keys event, data, id and retry.  Reconnects like a browser "
                    "(resuming with Last-Event-ID) when the stream ends or breaks.",
        epilog="Exit status: 0 after --count events, when --timeout ran out without "
               "--count, or when the server answered 204 No Content (the way to tell "
               "EventSource clients to stop); 124 when --timeout ran out before --count "
               "events arrived; 1 on a fatal error (the first connection is refused, or "
               "the server answers, also on a reconnect, with a status other than 200 "
               "(429, 502, 503 and 504 are retried) or a content type other than "
               "text/event-stream); 130 on Ctrl-C.  Once the stream has started, a "
               "refused or broken connection is retried without limit: bound the wait "
               "with --timeout.")
    listen.add_argument("url", metavar="URL", help="the event stream, e.g. "
                                                   "http://127.0.0.1:8080/sse")
    listen.add_argument("-e", "--event", action="append", default=[], metavar="TYPE",
                        help="print only events of this type (repeatable; events without "
                             "an 'event:' field are of type 'message')")
    listen.add_argument("-H", "--header", action="append", default=[], type=_header,
                        metavar="'NAME: VALUE'",
                        help="extra request header, sent on every (re)connect (repeatable)")
    listen.add_argument("--json", action="store_true",
                        help="print one JSON object per event")
    listen.add_argument("--last-event-id", default="", metavar="ID",
                        help="resume after this event id (sent as Last-Event-ID)")
    listen.add_argument("--count", type=_positive_int, default=None, metavar="N",
                        help="exit after N (matching) events")
    listen.add_argument("--timeout", type=_positive_float, default=None, metavar="S",
                        help="stop after S seconds (see the exit status below)")
    listen.add_argument("-v", "--verbose", action="store_true",
                        help="report connections and reconnections on stderr")
    listen.set_defaults(run=_run_listen)

    publish = commands.add_parser(
        "publish", help="publish an event (through an HTTP endpoint, or straight to Redis)",
        description="POST form fields data, event and id to a publish endpoint (the "
                    "demo's /publish, or any endpoint taking those fields) and report "
                    "how many streams the event reached.  With --redis, append the "
                    "event to the Redis stream of the brokers' RedisBackplane instead: "
                    "every broker of that prefix delivers it (no HTTP endpoint, no "
                    "session), and print its id.",
        epilog="Exit status: 0 published; 1 a fatal error (the server or Redis refused, "
               "e.g. a wrong password or a read-only replica); 2 a usage error; with "
               "--redis also 3 when Redis cannot be reached (not published: safe to "
               "retry), 4 when Redis did not answer in time (it may have published: a "
               "retry may duplicate the event), 5 when --client is connected to no "
               "broker (nothing published).  Passwords are masked in every message.")
    publish.add_argument("url", metavar="URL", nargs="?", default=None,
                         help="the publish endpoint, e.g. http://127.0.0.1:8080/publish "
                              "(a URL without a path gets /publish); not with --redis")
    publish.add_argument("--redis", nargs="?", const="", default=None, metavar="REDIS_URL",
                         help="publish through this Redis (redis://[:password@]host:port/db, "
                              "rediss://, unix://); without a value, the URL in the "
                              f"environment variable {REDIS_URL_ENV}, which keeps a password "
                              "out of the process list")
    publish.add_argument("--prefix", default=None,
                         help="with --redis: the brokers' RedisBackplane prefix "
                              "(default: gosse)")
    publish.add_argument("--history", type=_non_negative_int, default=None, metavar="N",
                         help="with --redis: the brokers' RedisBackplane history, which "
                              "every append trims the stream to (default: what the brokers"
                              " last recorded)")
    target = publish.add_mutually_exclusive_group()
    target.add_argument("--client", default=None, metavar="CLIENT_ID",
                        help="with --redis: send to this client's sessions only")
    target.add_argument("--topic", default=None,
                        help="with --redis: publish to the sessions that joined this topic")
    publish.add_argument("-d", "--data", required=True, help="the event's data (text)")
    publish.add_argument("-e", "--event", default=None, metavar="TYPE",
                         help="the event type (default: none, i.e. 'message')")
    publish.add_argument("--id", default=None,
                         help="the event id (without one, the demo numbers the event, "
                              "and with --redis it gets the group's auto id)")
    publish.add_argument("--timeout", type=_positive_float, default=10.0, metavar="S",
                         help="seconds to wait for the server or Redis "
                              "(default: %(default)s)")
    publish.set_defaults(run=_run_publish)
    return parser


# -- argument types -------------------------------------------------------------

def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0: {text}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"not a port number (0-65535): {text}")
    return value


def _header(text: str) -> Tuple[str, str]:
    name, colon, value = text.partition(":")
    name = name.strip()
    if not colon or not name or not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name):
        raise argparse.ArgumentTypeError(f"expected 'Name: value', not {text!r}")
    return name, value.strip()


# -- helpers --------------------------------------------------------------------

def _say(command: str, message: object) -> None:
    """One line on stderr, e.g. ``gosse listen: cannot connect to ...``."""
    message = " ".join(str(message).split())  # one line, whatever the message holds
    print(f"gosse {command}: {message}", file=sys.stderr, flush=True)


_ERRNO = re.compile(r"\[Errno -?\d+\] [^'\")\]]+")


def _describe(exc: BaseException) -> str:
    """A client error in one short line: the requests/urllib3 wrapping of a
    connection error ("HTTPConnectionPool(...): Max retries exceeded ...
    (Caused by NewConnectionError(...))") is reduced to its errno text."""
    text = str(exc)
    prefix = "cannot connect to "
    if text.startswith(prefix):
        url = text[len(prefix):].split(": ", 1)[0]
        return _connect_error(url, exc.__cause__ or text)
    return text


def _connect_error(url: str, exc: Any) -> str:
    match = _ERRNO.search(str(exc))
    reason = match.group(0).strip() if match else str(exc)
    return f"cannot connect to {url}: {reason}"


def _base_url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("", "0.0.0.0") else host
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/"


# -- gosse demo -----------------------------------------------------------------

def _run_demo(args: argparse.Namespace) -> int:
    if args.threads is not None and not args.gunicorn:
        _say("demo", "--threads needs --gunicorn (Werkzeug starts a thread per connection)")
        return EXIT_USAGE
    if args.gunicorn:
        return _demo_gunicorn(args)
    return _demo_werkzeug(args)


def _banner(base: str, server: str) -> None:
    print(f"gosse demo: serving {base} on {server} (Ctrl-C to stop)\n"
          f"  page:     {base}\n"
          f"  stream:   gosse listen {base}sse\n"
          f"  publish:  gosse publish {base}publish --data 'hello'\n"
          f"            curl -d data='hello' {base}publish\n"
          f"  stats:    {base}stats", flush=True)


def _demo_werkzeug(args: argparse.Namespace) -> int:
    from werkzeug.serving import make_server

    from .demo import create_app

    if args.quiet:
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
    app = create_app()
    try:
        server = make_server(args.host, args.port, app, threaded=True)
    except SystemExit:  # Werkzeug printed why (e.g. the port is in use)
        _say("demo", f"cannot listen on {args.host}:{args.port}")
        return EXIT_ERROR

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        app.start()
        _banner(_base_url(args.host, server.port), "Werkzeug's threaded server")
        # Returns on Ctrl-C (KeyboardInterrupt) or SIGTERM, having closed the
        # listening socket.
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        # A second Ctrl-C must not interrupt the (bounded) shutdown.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("gosse demo: stopping: ending the streams", file=sys.stderr, flush=True)
        app.close(timeout=1.0)   # clock stopped, every stream ended
        server.server_close()
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    print("gosse demo: stopped", file=sys.stderr, flush=True)
    return EXIT_OK


def gunicorn_command(host: str, port: int, threads: int = DEFAULT_THREADS) -> List[str]:
    """The gunicorn command line ``gosse demo --gunicorn`` runs."""
    return [sys.executable, "-m", "gunicorn",
            "-k", "gthread", "--threads", str(threads),
            "-w", "1",   # one broker per process: more workers need a backplane
            "--worker-connections", str(max(1000, 2 * threads)),
            "--graceful-timeout", "5",
            "-b", f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
            "-c", "python:gosse.demo",   # hooks that end the streams on shutdown
            "gosse.demo:app"]


def _demo_gunicorn(args: argparse.Namespace) -> int:
    import importlib.util

    if importlib.util.find_spec("gunicorn") is None:
        _say("demo", "gunicorn is not installed: python3 -m pip install gunicorn")
        return EXIT_ERROR
    port = args.port
    if port == 0:  # gunicorn would pick one; we want to print it
        with socket.socket() as s:
            s.bind(("127.0.0.1" if ":" not in args.host else "::1", 0))
            port = s.getsockname()[1]
    threads = args.threads or DEFAULT_THREADS
    cmd = gunicorn_command(args.host, port, threads)
    _banner(_base_url(args.host, port), f"gunicorn (gthread, 1 worker, {threads} threads)")
    print("  running:  " + shlex.join(["python3"] + cmd[1:]), flush=True)
    sys.stderr.flush()
    # gunicorn takes over this process: its master handles Ctrl-C and SIGTERM.
    os.execv(sys.executable, cmd)
    return EXIT_ERROR  # pragma: no cover  (execv does not return)


# -- gosse listen ---------------------------------------------------------------

class _Printer:
    """Writes one event per line (flushed), human-readable or as JSON."""

    def __init__(self, as_json: bool):
        self.as_json = as_json
        self.encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
        self.utf8 = self.encoding.lower().replace("-", "").replace("_", "") == "utf8"

    def __call__(self, event: Any) -> None:
        if self.as_json:
            line = json.dumps({"event": event.event, "data": event.data, "id": event.id,
                               "retry": event.retry}, ensure_ascii=not self.utf8)
        else:
            head = f"[{event.event}] " + (f"id={event.id} " if event.id else "")
            line = head + ("\n" + " " * len(head)).join(event.data.split("\n"))
            if not self.utf8:  # a terminal that cannot show every character
                line = line.encode(self.encoding, "backslashreplace").decode(self.encoding)
        print(line, flush=True)


def _run_listen(args: argparse.Namespace) -> int:
    logger = logging.getLogger("gosse")
    saved_level = logger.level
    handler = None
    if args.verbose:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("gosse listen: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    else:
        # Fatal errors are reported once, by us.
        logger.setLevel(logging.ERROR)
    try:
        return _listen(args)
    finally:
        logger.setLevel(saved_level)
        if handler is not None:
            logger.removeHandler(handler)


def _listen(args: argparse.Namespace) -> int:
    import requests

    from ._redact import Redactor, redact_url
    from .client import connect_with_sse_feed
    from .errors import FeedClosedError, FeedConnectionError, SSEError

    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    wanted = set(args.event) or None
    show = _Printer(args.json)
    headers = dict(args.header) or None
    connect_timeout = 10.0 if args.timeout is None else min(10.0, args.timeout)
    # A server may send its response head only with its first event (go-sse
    # does, after its first heartbeat): wait for it as long as --timeout lets.
    head_timeout = None if args.timeout is None else args.timeout
    safe_url = redact_url(args.url)
    try:
        feed = connect_with_sse_feed(args.url, headers, timeout=(connect_timeout, head_timeout),
                                     last_event_id=args.last_event_id)
    except FeedConnectionError as exc:
        if deadline is not None and time.monotonic() >= deadline - 0.05 and \
                isinstance(exc.__cause__, requests.Timeout):
            if args.verbose:
                _say("listen", f"no response head from {safe_url} within --timeout")
            return EXIT_OK if args.count is None else EXIT_TIMEOUT
        return _listen_error(exc, args.verbose)
    except SSEError as exc:
        return _listen_error(exc, args.verbose)
    except (ValueError, requests.RequestException) as exc:  # "Invalid URL", ...
        _say("listen", Redactor(args.url)(exc))
        return EXIT_ERROR
    if args.verbose:
        _say("listen", f"connected to {safe_url}")
    with feed:
        sub = feed.subscribe(None)  # one queue keeps the order across types
        printed = 0
        try:
            while args.count is None or printed < args.count:
                wait = 1.0
                if deadline is not None:
                    wait = deadline - time.monotonic()
                    if wait <= 0:
                        return EXIT_OK if args.count is None else EXIT_TIMEOUT
                try:
                    event = sub.get(timeout=min(wait, 1.0))
                except queue.Empty:
                    continue
                except FeedClosedError:  # the stream ended for good, quietly
                    return EXIT_OK
                except SSEError as exc:
                    return _listen_error(exc, args.verbose)
                if wanted is None or event.event in wanted:
                    show(event)
                    printed += 1
        except BrokenPipeError:
            # e.g. "gosse listen URL | head -1": stop writing, quietly.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
            return EXIT_BROKEN_PIPE
    return EXIT_OK


def _listen_error(exc: BaseException, verbose: bool) -> int:
    from .errors import ResponseError

    if isinstance(exc, ResponseError) and exc.status_code == 204:
        # "204 No Content" is how a server tells EventSource clients to stop
        # reconnecting: the stream is over, not broken.
        if verbose:
            _say("listen", _describe(exc))
        return EXIT_OK
    _say("listen", _describe(exc))
    return EXIT_ERROR


# -- gosse publish --------------------------------------------------------------

def _run_publish(args: argparse.Namespace) -> int:
    if args.redis is not None:
        return _publish_redis(args)
    for option in ("prefix", "history", "client", "topic"):
        if getattr(args, option) is not None:
            _say("publish", f"--{option} needs --redis")
            return EXIT_USAGE
    if args.url is None:
        _say("publish", "give the publish endpoint's URL, or --redis REDIS_URL")
        return EXIT_USAGE
    return _publish_http(args)


def _publish_http(args: argparse.Namespace) -> int:
    import requests

    url = args.url
    parts = urlsplit(url)
    if parts.scheme in ("http", "https") and parts.path in ("", "/"):
        url = url.rstrip("/") + "/publish"
    fields = {"data": args.data}
    if args.event is not None:
        fields["event"] = args.event
    if args.id is not None:
        fields["id"] = args.id
    try:
        response = requests.post(url, data=fields, timeout=args.timeout)
    except requests.ConnectionError as exc:
        _say("publish", _connect_error(url, exc))
        return EXIT_ERROR
    except (requests.RequestException, ValueError) as exc:
        _say("publish", f"{url}: {exc}")
        return EXIT_ERROR
    body = response.text.strip()
    if not response.ok:
        _say("publish", f"{url} answered {response.status_code} {response.reason}"
                        + (f": {body}" if body else ""))
        return EXIT_ERROR
    try:
        delivered = int(response.json()["delivered"])
    except (ValueError, KeyError, TypeError):
        print(body or f"{response.status_code} {response.reason}", flush=True)
    else:
        print(f"published to {delivered} stream{'' if delivered == 1 else 's'}", flush=True)
    return EXIT_OK


def _publish_redis(args: argparse.Namespace) -> int:
    from ._redact import redact_url
    from .errors import (
        BackplaneConfigError,
        BackplaneError,
        EventError,
        PublishOutcomeUnknownError,
        UnknownClientError,
    )
    from .event import Event

    if args.url is not None:
        _say("publish", f"give either a publish endpoint ({redact_url(args.url)}) "
                        "or --redis, not both")
        return EXIT_USAGE
    url = args.redis or os.environ.get(REDIS_URL_ENV, "")
    if not url:
        _say("publish", f"--redis without a URL reads {REDIS_URL_ENV}, which is not set")
        return EXIT_USAGE
    try:
        event = Event(args.data, event=args.event, id=args.id)
    except EventError as exc:
        _say("publish", exc)
        return EXIT_USAGE
    try:
        from .backplane.redis import Publisher
        from .backplane.redis.connection import OUTAGES, is_refusal
    except ImportError as exc:   # the redis package is missing
        _say("publish", exc)
        return EXIT_ERROR
    options = {} if args.history is None else {"history": args.history}
    try:
        publisher = Publisher(url, prefix="gosse" if args.prefix is None else args.prefix,
                              socket_timeout=args.timeout,
                              connect_timeout=min(args.timeout, 10.0), **options)
    except BackplaneConfigError as exc:
        _say("publish", exc)
        # Redis refused (a wrong password, a permission, a replica), or the
        # URL itself is wrong.
        return EXIT_ERROR if exc.__cause__ is not None else EXIT_USAGE
    except (BackplaneError, ValueError) as exc:   # a bad URL or prefix
        _say("publish", exc)
        return EXIT_USAGE
    with publisher:
        try:
            if args.client is not None:
                what = f"client {args.client!r}"
                event_id = publisher.send(args.client, event)
            elif args.topic is not None:
                what = f"topic {args.topic!r}"
                event_id = publisher.publish(args.topic, event)
            else:
                what = "every stream"
                event_id = publisher.broadcast(event)
        except UnknownClientError as exc:
            _say("publish", f"not published: {exc} (prefix {publisher.prefix!r} on "
                            f"{publisher.url})")
            return EXIT_NO_CLIENT
        except PublishOutcomeUnknownError as exc:
            _say("publish", exc)
            return EXIT_UNKNOWN
        except BackplaneError as exc:
            _say("publish", exc)
            cause = exc.__cause__
            if isinstance(cause, OUTAGES) and not is_refusal(cause):
                return EXIT_UNREACHABLE
            return EXIT_ERROR
        except ValueError as exc:   # a client id or topic that is not text
            _say("publish", exc)
            return EXIT_USAGE
    shown = "no id" if event_id is None else f"id {event_id}"
    print(f"published to {what} (prefix {publisher.prefix!r} on {publisher.url}), {shown}",
          flush=True)
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
