"""Print the "message" events of an SSE feed (Go example: connect_with_sse).

    python examples/client_feed.py                       # http://localhost:8080/sse
    python examples/client_feed.py URL [EVENT_TYPE]
    python examples/client_feed.py --demo                # against a built-in server

The feed reconnects by itself (with Last-Event-ID) when the stream drops; the
loop ends with an error only if the server turns the client away (HTTP 204,
another status, or not an event stream).  Ctrl-C to stop.
"""
import sys
import threading
import time

from gosse import SSEError
from gosse.client import connect_with_sse_feed


def main(argv):
    demo = "--demo" in argv
    args = [a for a in argv if a != "--demo"]
    url = args[0] if args else "http://localhost:8080/sse"
    event_type = args[1] if len(args) > 1 else "message"
    server = None
    if demo:
        server, url = start_demo_server()

    try:
        with connect_with_sse_feed(url) as feed, feed.subscribe(event_type) as sub:
            print(f"connected to {url}, waiting for {event_type!r} events", file=sys.stderr)
            for event in sub:   # Go: select on sub.feed / sub.err_feed
                print(f"id={event.id!r} event={event.event!r} data={event.data!r}")
                if demo and event.data == "5":
                    break
    except SSEError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    finally:
        if server is not None:
            server.shutdown()
    return 0


def start_demo_server():
    """A tiny Werkzeug app streaming a numbered event every 0.2 s."""
    from werkzeug.serving import make_server
    from werkzeug.wrappers import Request, Response

    @Request.application
    def app(request):
        def stream():
            n = int(request.headers.get("Last-Event-ID") or 0)
            yield b"retry: 1000\n\n"
            while True:
                n += 1
                yield f"id: {n}\ndata: {n}\n\n".encode()
                time.sleep(0.2)
        return Response(stream(), content_type="text/event-stream")

    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.port}/sse"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
