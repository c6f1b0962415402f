"""Private runtime and rings directories, verified before use (issue 10, findings 3 and 4).

Another local user who creates the runtime directory first and runs a
``redis-server`` there must not receive (or forge) anybody's records: the
daemon and the pump refuse a directory or socket owned by someone else with
exit 2 and a message saying what to do. A shared 1777 directory is refused
and left exactly as it was (it used to be turned into ``drwx------``).
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
import redis

from collector.common.stream import encode_entry
from collector.testing import clean_environ, console_script, free_port, wait_until, write_config

FORGED = {"username": "admin", "effect": "allow"}


@pytest.fixture
def other_user() -> Iterator[pwd.struct_passwd]:
    """A second local user, made for this test and removed after it (needs root)."""
    name = f"cltsq{os.getpid() % 100000}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--user-group",
                    "--shell", "/usr/sbin/nologin", name], check=True)
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], check=False)


@pytest.fixture
def public_base() -> Iterator[Path]:
    """A directory under /tmp that the other user can traverse (0711, ours)."""
    base = Path(tempfile.mkdtemp(prefix="collector-squat-", dir="/tmp"))
    base.chmod(0o711)  # we created it
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _run_daemon(tmp_path: Path, **keys: object) -> subprocess.CompletedProcess[str]:
    cfg = write_config(tmp_path / "collector.yaml", {
        "health_address": f"127.0.0.1:{free_port()}", "startup_redis_wait_s": 2, **keys})
    return subprocess.run([*console_script("collector-daemon"), "--config", str(cfg)],
                          env=clean_environ(), capture_output=True, text=True, timeout=60)


def _run_pump(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    cfg = write_config(tmp_path / "pump.yaml", {
        "health_address": f"127.0.0.1:{free_port()}", "startup_redis_wait_s": 2,
        "pumps": {"file": {"meta": {"path": str(tmp_path / "out.jsonl")}}}})
    return subprocess.run([*console_script("collector-pump"), "--config", str(cfg)],
                          env=env, capture_output=True, text=True, timeout=60)


def test_squatted_runtime_directory_and_socket_are_refused(
        tmp_path: Path, other_user: pwd.struct_passwd, public_base: Path) -> None:
    """Needs root (a second user: useradd, chown); CI runs as root.

    The other user owns ``$XDG_RUNTIME_DIR/collector`` and serves a redis-server there
    with a forged record waiting: the pump on its default URL and the daemon with that
    runtime_dir both exit 2 naming the owner; nothing is read from that server.
    """
    xdg = public_base / "xdg"
    xdg.mkdir(mode=0o711)
    squat = xdg / "collector"
    squat.mkdir()
    os.chown(squat, other_user.pw_uid, other_user.pw_gid)  # as the other user made it
    sock = squat / "redis.sock"
    server = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", "0", "--unixsocket",
         str(sock), "--unixsocketperm", "777", "--dir", str(squat), "--save", "",
         "--appendonly", "no"],
        user=other_user.pw_uid, group=other_user.pw_gid, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    try:
        wait_until(sock.exists, 15, "the squatter's redis-server")
        squatter = redis.Redis(unix_socket_path=str(sock))
        wait_until(squatter.ping, 15, "the squatter's redis-server to answer")
        squatter.xadd("collector:analytics",
                      encode_entry("f" * 32, 0, [msgpack.packb(FORGED)]))  # type: ignore[arg-type]

        pump = _run_pump(tmp_path, clean_environ({"XDG_RUNTIME_DIR": str(xdg)}))
        print("\npump:", pump.stderr.strip().splitlines()[-1])
        assert pump.returncode == 2
        assert f"{squat} is owned by uid {other_user.pw_uid}" in pump.stderr
        assert not (tmp_path / "out.jsonl").exists()  # no forged record delivered
        assert squatter.xlen("collector:analytics") == 1
        assert squatter.xinfo_groups("collector:analytics") == []  # never even read

        rings = tmp_path / "rings"
        daemon = _run_daemon(tmp_path, rings_dir=str(rings), runtime_dir=str(squat))
        print("daemon:", daemon.stderr.strip().splitlines()[-1])
        assert daemon.returncode == 2
        assert f"runtime_dir {squat} is owned by uid {other_user.pw_uid}" in daemon.stderr
        daemon = _run_daemon(tmp_path, rings_dir=str(squat), runtime_dir=str(tmp_path / "r"))
        assert daemon.returncode == 2 and f"rings_dir {squat} is owned by uid" in daemon.stderr

        # Our own private directory, but a socket in it owned by the other user.
        ours = xdg / "mine"
        ours.mkdir(mode=0o700)
        (ours / "collector").mkdir(mode=0o700)
        server.kill()
        server.wait(10)
        os.rename(sock, ours / "collector" / "redis.sock")  # still owned by the other user
        pump = _run_pump(tmp_path, clean_environ({"XDG_RUNTIME_DIR": str(ours)}))
        assert pump.returncode == 2
        assert f"is owned by uid {other_user.pw_uid}" in pump.stderr and "socket" in pump.stderr
    finally:
        server.kill()
        server.wait(10)


def test_a_shared_1777_directory_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    before = os.stat(shared)
    daemon = _run_daemon(tmp_path, rings_dir=str(tmp_path / "rings"), runtime_dir=str(shared))
    print("\ndaemon:", daemon.stderr.strip().splitlines()[-1])
    assert daemon.returncode == 2
    assert "runtime_dir" in daemon.stderr and "has mode 1777" in daemon.stderr
    daemon = _run_daemon(tmp_path, rings_dir=str(shared), runtime_dir=str(tmp_path / "run"))
    assert daemon.returncode == 2 and "rings_dir" in daemon.stderr
    xdg = tmp_path / "xdg"
    xdg.mkdir()
    (xdg / "collector").symlink_to(shared)
    pump = _run_pump(tmp_path, clean_environ({"XDG_RUNTIME_DIR": str(xdg)}))
    assert pump.returncode == 2 and "has mode 1777" in pump.stderr
    after = os.stat(shared)
    assert stat.S_IMODE(after.st_mode) == 0o1777  # sticky bit and all left as they were
    assert (after.st_mode, after.st_uid, after.st_gid) == (
        before.st_mode, before.st_uid, before.st_gid)
    assert list(shared.iterdir()) == []  # nothing created in it either
