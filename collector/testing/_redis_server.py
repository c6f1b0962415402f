"""A real ``redis-server`` on a free loopback port, optionally TLS-only with a password
(clusters and sentinels of them: ``_redis_topologies.py``)."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import redis
import redis.cluster

from ._spawned import SpawnedPeer

__all__ = ["RedisServer", "TlsFiles", "make_ca", "make_tls_files"]


@dataclass(frozen=True)
class TlsFiles:
    """A throw-away CA and a server certificate for 127.0.0.1 it signed."""

    ca: Path
    cert: Path
    key: Path


def _openssl(*args: str, cwd: Path) -> None:
    if shutil.which("openssl") is None:
        raise RuntimeError("openssl is not on PATH: run `sh .ci/setup` first")
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(directory: Path, name: str = "ca") -> Path:
    """A self-signed CA in ``directory`` (``NAME.crt``, ``NAME.key``); its certificate."""
    directory.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
             "-out", f"{name}.crt", "-days", "2", "-subj", f"/CN={name}", cwd=directory)
    return directory / f"{name}.crt"


def make_tls_files(directory: Path) -> TlsFiles:
    """A CA and a server certificate for ``IP:127.0.0.1`` signed by it, made with openssl."""
    ca = make_ca(directory, "ca")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key",
             "-out", "server.csr", "-subj", "/CN=127.0.0.1", cwd=directory)
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "san.ext",
             cwd=directory)
    return TlsFiles(ca, directory / "server.crt", directory / "server.key")


class RedisServer(SpawnedPeer):
    """A ``redis-server`` of its own on a free loopback port, in ``workdir``.

    ``appendonly`` keeps an append-only file (fsync policy ``appendfsync``)
    so that a restart keeps the data; without it (and with RDB snapshots
    always off) a restart empties Redis. ``tls`` makes it listen on a TLS
    port only; ``password`` sets ``requirepass``. :attr:`url` and
    :meth:`client` carry what a client needs (the CA, the password is given
    to :meth:`client` only, never put in the URL).

    ``kill()`` is a ``kill -9`` (what the append-only file had not yet got
    is lost), ``stop()`` a graceful ``SHUTDOWN``, ``restart()`` both steps
    of a graceful restart on the same port and files, ``pause()``/``resume()``
    SIGSTOP/SIGCONT.
    """

    program = "redis-server"
    log_name = "redis.log"

    def __init__(self, workdir: Path, *, appendonly: bool = True,
                 appendfsync: Literal["always", "everysec", "no"] = "everysec",
                 port: int | None = None, password: str | None = None,
                 tls: TlsFiles | None = None, extra: list[str] | None = None,
                 host: str = "127.0.0.1", prefix: list[str] | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not on PATH: run `sh .ci/setup` first")
        super().__init__(workdir, port)
        self.binary = binary
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.password = password
        self.tls = tls
        self.extra = list(extra or [])
        self.host = host  # where it listens (also 127.0.0.1); a NetnsLink's inner address
        self.prefix = list(prefix or [])  # e.g. NetnsLink.prefix: run it in a namespace
        self.starts = 0

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``, or with TLS ``rediss://`` naming the CA."""
        return self.url_with_ca()

    def url_with_ca(self, ca: Path | None = None) -> str:
        """:attr:`url`; with TLS, verifying the server against ``ca`` (default its own)."""
        if self.tls is None:
            return f"redis://{self.host}:{self.port}/0"
        return (f"rediss://{self.host}:{self.port}/0?ssl_ca_certs={ca or self.tls.ca}"
                "&ssl_cert_reqs=required")

    def args(self) -> list[str]:
        listen = ["--port", str(self.port)]
        if self.tls is not None:
            listen = ["--port", "0", "--tls-port", str(self.port),
                      "--tls-cert-file", str(self.tls.cert), "--tls-key-file", str(self.tls.key),
                      "--tls-ca-cert-file", str(self.tls.ca), "--tls-auth-clients", "no"]
        auth = ["--requirepass", self.password] if self.password else []
        if self.host != "127.0.0.1" and not self.password:
            # a NetnsLink's address is not loopback: protected mode would refuse it
            auth += ["--protected-mode", "no"]
        return [
            *self.prefix, self.binary, *listen, "--bind", *dict.fromkeys(["127.0.0.1", self.host]),
            *auth,
            "--dir", str(self.workdir), "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync,
            "--logfile", str(self.log),
            *self.extra,
        ]

    def start(self, timeout: float = 30.0) -> RedisServer:
        """Start it and wait until it answers PING."""
        self.starts += 1
        self.spawn(self.args(), self.ping, timeout, to_log=False, new_session=False,
                   interval=0.02)  # it writes its own log (--logfile)
        return self

    def client(self, **kw: Any) -> redis.Redis:
        """A redis-py client for this server (TLS and password included)."""
        if self.password is not None:
            kw.setdefault("password", self.password)
        return redis.Redis.from_url(self.url, **kw)

    def ping(self) -> bool:
        try:
            return bool(self.client(socket_timeout=0.5).ping())
        except redis.RedisError:
            return False

    def kill(self) -> None:
        """SIGKILL the server (what was not yet in the append-only file is lost)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        """Graceful shutdown (resumed first): the append-only file is flushed."""
        if self.proc is not None and self.proc.poll() is None:
            self.resume()
            try:
                self.client(socket_timeout=2).shutdown(nosave=not self.appendonly)
            except redis.RedisError:
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self) -> None:
        """Graceful stop, then start again on the same port and files."""
        self.stop()
        self.start()

    def __enter__(self) -> RedisServer:
        return self.start() if not self.is_running() else self

    def __exit__(self, *exc: object) -> None:
        self.kill()
