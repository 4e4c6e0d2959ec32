"""Issue 15, the backplane interface: a backplane written from the
documentation of ``gosse.backplane.Backplane`` alone -- an in-memory "bus"
shared by two brokers of one process, with one delivery thread per broker
-- gives cross-broker broadcast, send, presence, metadata and replay.  If the
broker's public interface were not enough, this would need its privates."""
import threading
from collections import defaultdict

from gosse import Broker, Event, UnknownClientError
from gosse.backplane import Backplane
from gosse.event import reset_event
from gosse.registry import entitled
from servers import wait_until


class Bus:
    """What the brokers share: an append-only log, presence, metadata."""

    def __init__(self):
        self.lock = threading.Condition()
        self.log = []                          # (kind, name, wire, id)
        self.present = defaultdict(set)        # client -> backplanes holding it
        self.metadata = {}


class BusBackplane(Backplane):
    shared = True

    def __init__(self, bus):
        super().__init__()
        self.bus = bus
        self.delivered = 0                     # log entries handed to the broker
        self.stop = False
        self.thread = threading.Thread(target=self._listen, daemon=True)
        self.thread.start()

    def _listen(self):
        bus = self.bus
        while True:
            with bus.lock:
                bus.lock.wait_for(lambda: self.stop or len(bus.log) > self.delivered, 5)
                if self.stop:
                    return
                start, entries = self.delivered, bus.log[self.delivered:]
            if self.broker is None:
                continue
            end = start + len(entries)

            def commit(end=end):
                self.delivered = end           # under the broker's registry lock
            self.broker.deliver_local([(start + i, kind, name, wire)
                                       for i, (kind, name, wire, _id) in enumerate(entries)],
                                      commit=commit)

    def publish(self, target, event):
        kind, name = target
        if kind == "client" and not self.is_client_present(name):
            raise UnknownClientError(name)
        event_id = event.id
        with self.bus.lock:
            if event_id is None and self.broker.auto_id:
                event_id = f"bus-{len(self.bus.log)}"
                event = event.replace(id=event_id)
            self.bus.log.append((kind, name, event.encode(), event_id))
            self.bus.lock.notify_all()
        return self.broker.local_count(kind, name)

    def client_joined(self, client_id):
        self._sync(client_id)

    def client_left(self, client_id):
        self._sync(client_id)

    def _sync(self, client_id):
        with self.bus.lock:
            if self.broker.has_local_client(client_id):
                self.bus.present[client_id].add(self)
            else:
                self.bus.present[client_id].discard(self)

    def is_client_present(self, client_id):
        with self.bus.lock:
            return bool(self.bus.present[client_id])

    def set_client_metadata(self, client_id, metadata):
        if not self.is_client_present(client_id):
            raise UnknownClientError(client_id)
        self.bus.metadata[client_id] = metadata

    def get_client_metadata(self, client_id):
        if not self.is_client_present(client_id):
            raise UnknownClientError(client_id)
        return self.bus.metadata.get(client_id)

    def prepare_replay(self, last_id, client_id, topics):
        if last_id is None:
            return None
        with self.bus.lock:
            ids = [entry[3] for entry in self.bus.log]
        return (last_id, ids.index(last_id) if last_id in ids else None, client_id, topics)

    def complete_replay(self, conn, token):
        last_id, found, client_id, topics = token
        if found is None:
            conn.session.preload([reset_event(last_id).encode()])
            return
        # Under the broker's lock: up to what this broker delivered, no more
        # (the rest arrives live), no I/O.
        missed = self.bus.log[found + 1:self.delivered]
        conn.session.preload([wire for kind, name, wire, event_id in missed
                              if event_id is not None
                              and entitled(kind, name, client_id, topics)])

    def close(self):
        with self.bus.lock:
            self.stop = True
            self.bus.lock.notify_all()
        self.thread.join(5)


def chunks(conn, n, timeout=5.0):
    """The data lines of the first ``n`` events of a session's body."""
    out = []
    body = iter(conn.stream)
    done = threading.Event()

    def read():
        for chunk in body:
            out.extend(line for line in chunk.split(b"\n") if line.startswith(b"data:"))
            if len(out) >= n:
                done.set()
                return
    threading.Thread(target=read, daemon=True).start()
    assert done.wait(timeout), out
    return [line[6:].decode() for line in out[:n]]


def test_a_backplane_from_the_documented_interface_alone():
    bus = Bus()
    a = Broker(auto_id=True, backplane=BusBackplane(bus))
    b = Broker(auto_id=True, backplane=BusBackplane(bus))
    try:
        ca = a.connect("alice", {"QUERY_STRING": ""})
        cb = b.connect("bob", {"QUERY_STRING": ""})
        assert a.is_client_present("bob") and b.is_client_present("alice")
        a.broadcast(Event("one"))
        b.send("alice", Event("two"))                 # alice is on a
        b.set_client_metadata("alice", {"plan": "pro"})
        assert a.get_client_metadata("alice") == {"plan": "pro"}
        assert chunks(ca, 2) == ["one", "two"]
        assert chunks(cb, 1) == ["one"]
        assert wait_until(lambda: a.backplane.delivered == b.backplane.delivered == 2)
        # Resume on the other broker from the first id.
        again = b.connect("alice", {"QUERY_STRING": "", "HTTP_LAST_EVENT_ID": "bus-0"})
        assert chunks(again, 1) == ["two"]
        lost = b.connect("carol", {"QUERY_STRING": "", "HTTP_LAST_EVENT_ID": "nope"})
        assert b"gosse-reset" in next(iter(lost.stream))
        for conn in (ca, cb, again, lost):
            conn.close()
    finally:
        a.close()
        b.close()
