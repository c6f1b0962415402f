"""Loopback peers for the sink tests: MongoDB wire protocol, syslog, a silent TCP server.

- :class:`MongoPeer`: MongoDB cannot be installed everywhere (it is not
  packaged for Debian), so the real pymongo driver talks to ``mockupdb``
  (an in-process server speaking the MongoDB wire protocol, OP_MSG; the
  ``test`` extra installs it). The peer answers the handshake, ``ping``,
  ``listCollections``, ``create`` and ``insert``, keeps inserted documents
  per collection and answers duplicate ``_id`` values with write errors code
  11000, as mongod does. ``stall`` makes it accept inserts and never answer.
- :class:`SyslogPeer`: UDP, TCP (octet counting) or unix datagram receiver
  that parses RFC 5424 messages (:func:`parse_rfc5424`).
- :class:`SilentTcpServer`: accepts connections and never reads nor answers.
"""

from __future__ import annotations

import json
import re
import socket
import threading
from collections import Counter
from pathlib import Path
from typing import Any

__all__ = ["MongoPeer", "SilentTcpServer", "SyslogPeer", "parse_rfc5424"]


class MongoPeer:
    """A MongoDB wire-protocol server (mockupdb) that stores what pymongo inserts
    (with ``keep_documents=False`` only the ids, each mapped to ``{}``: a benchmark's
    millions of documents would not fit in memory)."""

    def __init__(self, *, tls: bool = False, keep_documents: bool = True) -> None:
        from mockupdb import MockupDB

        self.server = MockupDB(auto_ismaster={"maxWireVersion": 21, "minWireVersion": 0},
                               verbose=False, ssl=tls)
        self.docs: dict[tuple[str, str], dict[Any, dict]] = {}
        self.options: dict[tuple[str, str], dict] = {}
        self.inserts = 0
        self.last_max_time_ms: int | None = None  # the deadline as the server sees it
        self.stall = threading.Event()
        self.fail_with: dict | None = None  # a reply for the next inserts, e.g. an error
        self.keep_documents = keep_documents
        self._lock = threading.Lock()
        self.server.autoresponds(self._dispatch)

    def _dispatch(self, request: Any) -> bool:
        name = getattr(request, "command_name", None)
        if name in ("ping", "endSessions"):
            return bool(request.ok())
        handler = {"insert": self._insert, "listCollections": self._list,
                   "create": self._create}.get(name or "")
        return handler(request) if handler else False

    def start(self) -> MongoPeer:
        self.server.run()
        return self

    @property
    def uri(self) -> str:
        return f"mongodb://localhost:{self.server.port}/?directConnection=true"

    def stop(self) -> None:
        self.stall.clear()
        self.server.stop()

    def _insert(self, request: Any) -> bool:
        if self.stall.is_set():
            return False  # left in the queue unanswered: the client waits
        if self.fail_with is not None:
            request.reply(self.fail_with)
            return True
        doc = request.doc
        self.last_max_time_ms = doc.get("maxTimeMS")
        key = (doc["$db"], doc["insert"])
        errors = []
        with self._lock:
            self.inserts += 1
            coll = self.docs.setdefault(key, {})
            for i, d in enumerate(doc.get("documents", [])):
                if d["_id"] in coll:
                    errors.append({"index": i, "code": 11000,
                                   "errmsg": f"E11000 duplicate key error _id: {d['_id']}"})
                else:
                    coll[d["_id"]] = dict(d) if self.keep_documents else {}
        reply: dict[str, Any] = {"ok": 1, "n": len(doc.get("documents", [])) - len(errors)}
        if errors:
            reply["writeErrors"] = errors
        request.reply(reply)
        return True

    def _list(self, request: Any) -> bool:
        db = request.doc["$db"]
        name = (request.doc.get("filter") or {}).get("name")
        batch = [{"name": c, "type": "collection", "options": self.options.get((d, c), {})}
                 for (d, c) in list(self.docs) + list(self.options)
                 if d == db and (name is None or c == name)]
        request.reply({"ok": 1, "cursor": {"id": 0, "ns": f"{db}.$cmd.listCollections",
                                           "firstBatch": batch}})
        return True

    def _create(self, request: Any) -> bool:
        doc = request.doc
        key = (doc["$db"], doc["create"])
        if key in self.options or key in self.docs:
            request.reply({"ok": 0, "code": 48, "errmsg": "collection already exists"})
            return True
        self.options[key] = {k: doc[k] for k in ("capped", "size", "max") if k in doc}
        self.docs.setdefault(key, {})
        request.reply({"ok": 1})
        return True

    def stored(self, db: str, coll: str) -> dict[Any, dict]:
        with self._lock:
            return dict(self.docs.get((db, coll), {}))


# ---------------------------------------------------------------- syslog

RFC5424 = re.compile(
    rb"^<(?P<pri>\d{1,3})>1 (?P<ts>\S+) (?P<host>\S+) (?P<app>\S+) (?P<procid>\S+) "
    rb"(?P<msgid>\S+) (?P<sd>-|\[.*?\]) (?P<msg>.*)$", re.S)


def parse_rfc5424(message: bytes) -> dict[str, Any]:
    m = RFC5424.match(message)
    if not m:
        raise AssertionError(f"not an RFC 5424 message: {message[:120]!r}")
    out: dict[str, Any] = {k: v.decode() for k, v in m.groupdict().items() if k != "msg"}
    msg = m.group("msg")
    if msg.startswith(b"\xef\xbb\xbf"):
        msg = msg[3:]
    out["msg"] = json.loads(msg)
    out["pri"] = int(out["pri"])
    return out


class SyslogPeer:
    """Receives syslog messages over ``transport`` and keeps them parsed."""

    def __init__(self, transport: str, tmp: Path | None = None) -> None:
        self.transport = transport
        self.messages: list[dict[str, Any]] = []
        self._stop = threading.Event()
        if transport == "udp":
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.bind(("127.0.0.1", 0))
            self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        elif transport == "tcp":
            self.sock = socket.socket()
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.bind(("127.0.0.1", 0))
            self.sock.listen()
            self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        else:
            assert tmp is not None
            self.address = str(tmp / "syslog.sock")
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.sock.bind(self.address)
        self.sock.settimeout(0.2)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> SyslogPeer:
        self.thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self.transport == "tcp":
                    conn, _ = self.sock.accept()
                    threading.Thread(target=self._read_tcp, args=(conn,), daemon=True).start()
                else:
                    self.messages.append(parse_rfc5424(self.sock.recv(70_000)))
            except TimeoutError:
                continue
            except OSError:
                return

    def _read_tcp(self, conn: socket.socket) -> None:
        buf = b""
        conn.settimeout(0.2)
        with conn:
            while not self._stop.is_set():
                try:
                    chunk = conn.recv(65536)
                except TimeoutError:
                    continue
                if not chunk:
                    return
                buf += chunk
                while True:  # RFC 6587 octet counting: "LEN SP MSG"
                    space = buf.find(b" ")
                    if space < 0:
                        break
                    length = int(buf[:space])
                    if len(buf) < space + 1 + length:
                        break
                    self.messages.append(parse_rfc5424(buf[space + 1:space + 1 + length]))
                    buf = buf[space + 1 + length:]

    def ids(self, id_key: str = "_id") -> Counter[str]:
        return Counter(m["msg"][id_key] for m in list(self.messages))

    def stop(self) -> None:
        self._stop.set()
        self.sock.close()
        self.thread.join(5)


# ---------------------------------------------------------------- stalled TCP


class SilentTcpServer:
    """Accepts TCP connections and never reads from them nor answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.conns.append(self.sock.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    def stop(self) -> None:
        self._stop.set()
        self.sock.close()
        self.thread.join(5)
        for c in self.conns:
            c.close()
