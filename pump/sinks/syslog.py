"""``syslog`` sink: RFC 5424 messages over UDP, TCP or a unix datagram socket.

One message per record::

    <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - MSG

``PRI`` = facility * 8 + severity; ``TIMESTAMP`` is the send time in UTC
with microseconds; no structured data (``-``); ``MSG`` is the record as a
JSON object with its id under ``id_key`` (UTF-8, with a BOM only when
``utf8_bom`` is set).

Transports: ``udp`` (one datagram per message, ``address`` ``host:port``;
a message longer than ``max_datagram_bytes`` is rejected alone:
``PermanentError.rejected`` names it after the others are sent),
``tcp`` (octet-counted framing of RFC 6587, ``LEN SP MSG``, one
``sendall`` per batch) and ``unix`` (a datagram socket such as
``/dev/log``; ``address`` is its path).

Deadline: the socket timeout is the time left before every send, so a
receiver that stops reading makes ``write`` raise ``RetryableError``. A TCP
connection that timed out in the middle of a batch is closed (its framing
can no longer be trusted) and reopened on the next write.

Syslog cannot deduplicate: a redelivered batch is sent again.
"""

from __future__ import annotations

import os
import socket
import time
from datetime import UTC, datetime
from typing import Literal

from pydantic import Field, model_validator

from ._base import Batch, PermanentError, RetryableError, Sink, SinkConfig, Verdict, register
from ._encode import dumps, encode_each, record_object

FACILITIES = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6,
    "news": 7, "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11,
    **{f"local{i}": 16 + i for i in range(8)},
}
SEVERITIES = {
    "emerg": 0, "alert": 1, "crit": 2, "err": 3, "warning": 4, "notice": 5, "info": 6,
    "debug": 7,
}
_BOM = b"\xef\xbb\xbf"


class SyslogConfig(SinkConfig):
    """``meta`` of a ``syslog`` sink."""

    transport: Literal["udp", "tcp", "unix"] = "udp"
    address: str = Field(default="127.0.0.1:514",
                         description="host:port for udp/tcp, a socket path for unix")
    facility: Literal[tuple(FACILITIES)] = "local0"  # type: ignore[valid-type]
    severity: Literal[tuple(SEVERITIES)] = "info"  # type: ignore[valid-type]
    app_name: str = Field(default="collector", min_length=1, max_length=48)
    hostname: str | None = Field(default=None, max_length=255,
                                 description="default: this machine's name")
    msgid: str = Field(default="analytics", min_length=1, max_length=32)
    id_key: str = Field(default="_id", min_length=1)
    utf8_bom: bool = False
    max_datagram_bytes: int = Field(default=65_000, ge=480, le=65_507)
    connect_timeout_s: float = Field(default=5.0, gt=0)

    @model_validator(mode="after")
    def _check_address(self) -> SyslogConfig:
        if self.transport != "unix":
            host, sep, port = self.address.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"address {self.address!r} must be host:port for "
                                 f"transport {self.transport!r}")
        for name in ("app_name", "msgid", "hostname"):
            value = getattr(self, name)
            if value is not None and (not value.isascii() or any(c.isspace() for c in value)):
                raise ValueError(f"{name} {value!r} must be printable ASCII without spaces")
        return self


@register
class SyslogSink(Sink):
    name = "syslog"
    Config = SyslogConfig
    deduplicates = False

    def __init__(self, config: SyslogConfig) -> None:  # type: ignore[override]
        super().__init__(config)
        self.cfg = config
        self._sock: socket.socket | None = None
        pri = FACILITIES[config.facility] * 8 + SEVERITIES[config.severity]
        self._prefix = f"<{pri}>1 ".encode()
        self._pid = 0
        self._suffix = b""

    def _header_tail(self) -> bytes:
        """`` HOSTNAME APP-NAME PROCID MSGID SD ``: PROCID is the writing process."""
        if self._pid != os.getpid():
            cfg = self.cfg
            self._pid = os.getpid()
            host = cfg.hostname or socket.gethostname() or "-"
            self._suffix = f" {host} {cfg.app_name} {self._pid} {cfg.msgid} - ".encode()
            if cfg.utf8_bom:
                self._suffix += _BOM
        return self._suffix

    # connection
    def _connect(self, deadline: float) -> socket.socket:
        if self._sock is not None:
            return self._sock
        cfg = self.cfg
        left = min(self.time_left(deadline), cfg.connect_timeout_s)
        try:
            if cfg.transport == "unix":
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                sock.settimeout(left)
                try:
                    sock.connect(cfg.address)
                except OSError:
                    sock.close()
                    raise
            else:
                host, _, port = cfg.address.rpartition(":")
                host = host.strip("[]")
                if cfg.transport == "tcp":
                    sock = socket.create_connection((host, int(port)), timeout=left)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                else:
                    family, kind, proto, _, addr = socket.getaddrinfo(
                        host, int(port), type=socket.SOCK_DGRAM)[0]
                    sock = socket.socket(family, kind, proto)
                    sock.connect(addr)
        except OSError as exc:
            raise RetryableError(f"syslog sink cannot connect to {cfg.transport} "
                                 f"{cfg.address!r}: {exc}") from exc
        self._sock = sock
        return sock

    def open(self) -> None:
        self._connect(time.monotonic() + self.cfg.connect_timeout_s)

    def close(self, timeout_s: float = 5.0) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    # writing
    def _message(self, now: bytes, tail: bytes, obj: dict) -> bytes:
        return b"".join((self._prefix, now, tail, dumps(obj)))

    def write(self, batch: Batch, *, deadline: float) -> Verdict:
        self.time_left(deadline)
        if not len(batch):
            return Verdict.OK
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ").encode()
        tail = self._header_tail()
        id_key = self.cfg.id_key
        messages, rejected = encode_each(
            batch.records, lambda r: self._message(now, tail, record_object(r, id_key)))
        if self.cfg.transport != "tcp":  # a datagram too large for the socket: that record
            limit = self.cfg.max_datagram_bytes
            ids = [r.id for r in batch.records if r.id not in rejected]
            for rid, m in zip(ids, messages, strict=True):
                if len(m) > limit:
                    rejected[rid] = (f"a message of {len(m)} bytes exceeds "
                                     f"max_datagram_bytes={limit}")
            messages = [m for m in messages if len(m) <= limit]
        if messages:
            self._send(messages, deadline)
        if rejected:
            raise PermanentError.for_records("syslog", rejected, "sent")
        return Verdict.OK

    def _send(self, messages: list[bytes], deadline: float) -> None:
        sock = self._connect(deadline)
        try:
            if self.cfg.transport == "tcp":
                frames = b"".join(b"%d %s" % (len(m), m) for m in messages)
                sock.settimeout(self.time_left(deadline))
                sock.sendall(frames)
            else:
                for m in messages:
                    sock.settimeout(self.time_left(deadline))
                    sock.send(m)
        except (OSError, RetryableError) as exc:
            self.close()  # a half-sent TCP frame: start a fresh connection next time
            if isinstance(exc, RetryableError):
                raise
            what = "timed out" if isinstance(exc, TimeoutError) else "failed"
            raise RetryableError(f"syslog sink send over {self.cfg.transport} {what}: "
                                 f"{exc}") from exc

    def health_check(self, *, deadline: float) -> None:
        sock = self._connect(deadline)
        if self.cfg.transport != "tcp":
            return
        # The peer closed the connection if the socket reads as EOF.
        try:
            sock.setblocking(False)
            try:
                if sock.recv(1, socket.MSG_PEEK) == b"":
                    raise OSError("the syslog server closed the connection")
            except BlockingIOError:
                pass
        except OSError as exc:
            self.close()
            raise RetryableError(f"syslog sink health check failed: {exc}") from exc
        finally:
            if self._sock is not None:
                self._sock.settimeout(None)
