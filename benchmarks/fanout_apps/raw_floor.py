"""Fan-out floor: one thread, one epoll loop, raw sockets, no framework.

GET /sse holds the socket (HTTP/1.1 chunked, ``:ok`` first); POST
/broadcast?seq=S encodes one event (data ``"S <time.monotonic()> <pad>"``)
and its chunk frame once, and writes it to every stream with a non-blocking
``send`` (what does not fit waits in a per-stream buffer flushed on
EPOLLOUT), then answers ``200 ok`` on the keep-alive connection.  The
cheapest a CPython server can fan an event out: the syscalls plus a loop.

    python raw_floor.py PORT
"""
import select
import socket
import sys
import time

PAD = b"x" * 70
HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
        b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n:ok\n\n\r\n")
OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"
IN, OUT = select.EPOLLIN, select.EPOLLOUT


def main(port):
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", port))
    ls.listen(4096)
    ls.setblocking(False)
    ep = select.epoll()
    ep.register(ls.fileno(), IN)
    requests = {}     # fd -> [sock, bytearray] connections not (yet) streams
    streams = {}      # fd -> sock
    pending = {}      # fd -> bytearray not yet written to that stream
    monotonic = time.monotonic

    def drop(fd):
        sock = streams.pop(fd, None) or requests.pop(fd, [None])[0]
        pending.pop(fd, None)
        if sock is not None:
            ep.unregister(fd)
            sock.close()

    def broadcast(seq):
        data = b"data: %s %.6f %s\n\n" % (seq, monotonic(), PAD)
        frame = b"%x\r\n%s\r\n" % (len(data), data)
        dead = []
        for fd, sock in streams.items():
            buf = pending.get(fd)
            if buf is not None:
                buf += frame
                continue
            try:
                n = sock.send(frame)
            except BlockingIOError:
                n = 0
            except OSError:
                dead.append(fd)
                continue
            if n < len(frame):
                pending[fd] = bytearray(frame[n:])
                ep.modify(fd, IN | OUT)
        for fd in dead:
            drop(fd)

    while True:
        for fd, ev in ep.poll():
            if fd == ls.fileno():
                while True:
                    try:
                        sock, _ = ls.accept()
                    except BlockingIOError:
                        break
                    sock.setblocking(False)
                    requests[sock.fileno()] = [sock, bytearray()]
                    ep.register(sock.fileno(), IN)
                continue
            sock = streams.get(fd)
            if sock is not None:
                if ev & OUT and fd in pending:
                    buf = pending[fd]
                    try:
                        n = sock.send(buf)
                    except BlockingIOError:
                        n = 0
                    except OSError:
                        drop(fd)
                        continue
                    del buf[:n]
                    if not buf:
                        del pending[fd]
                        ep.modify(fd, IN)
                if ev & ~OUT:                      # readable / hang-up: the client left
                    try:
                        gone = not sock.recv(4096)
                    except BlockingIOError:
                        gone = False
                    except OSError:
                        gone = True
                    if gone:
                        drop(fd)
                continue
            entry = requests.get(fd)
            if entry is None:
                continue
            sock, buf = entry
            try:
                chunk = sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            if not chunk:
                drop(fd)
                continue
            buf += chunk
            while True:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    break
                line = bytes(buf[:buf.find(b"\r\n")])
                del buf[:end + 4]                  # requests here carry no body
                target = line.split(b" ")[1]
                if target.startswith(b"/sse"):
                    del requests[fd]
                    streams[fd] = sock
                    sock.sendall(HEAD)             # small: fits an empty socket buffer
                    break
                if target.startswith(b"/broadcast?seq="):
                    broadcast(target[15:])
                    sock.sendall(OK)
                else:
                    sock.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")


if __name__ == "__main__":
    main(int(sys.argv[1]))
