"""No secret in any output (issue 10, finding 5).

Known secrets go into every place a credential can be configured (URL
userinfo, URL query, config keys of the wrong type, a sink's meta from the
environment, ``auth_env``); the real ``collector-daemon`` and
``collector-pump`` then run their error paths and a working pipeline, and
every exit message, log line and HTTP body is searched for the secrets.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from collector.testing import (
    Daemon,
    Producers,
    Pump,
    RedisServer,
    account,
    clean_environ,
    console_script,
    free_port,
    jsonl_records,
    producer_ids,
    record_key,
    wait_until,
    write_config,
)

PW = "redispw-Q7mv2"  # the Redis requirepass, given in the daemon's URL query
WRONG = "wrongpw-K4t8z"  # refused by Redis
SECRETS = ["urlpw-7Qm2a", "typedpw-Lp44x", "metapw-Rt58c", "dsnpw-Hz61q", "token-Wd93e",
           "querytok-Ub27m", "hdr-Nf55k"]


def _leaks(text: str) -> list[str]:
    return [s for s in [PW, WRONG, *SECRETS] if s in text]


def _cli(name: str, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    res = subprocess.run([*console_script(name), *args], capture_output=True, text=True,
                         timeout=60, env=clean_environ(env))
    return res.returncode, res.stdout + res.stderr


def test_config_errors_never_print_a_secret(tmp_path: Path) -> None:
    urlpw, typed, meta, dsnpw, token, querytok, hdr = SECRETS
    daemon_cases: list[tuple[list[str], dict[str, object]]] = [
        (["--redis-url", f"http://u:{urlpw}@127.0.0.1/"], {}),  # wrong scheme
        (["--redis-url", f"redis://u:{urlpw}@127.0.0.1:99999/0"], {}),  # port out of range
        (["--redis-url", f"redis://u:{urlpw}@[127.0.0.1/0"], {}),  # not a URL
        (["--redis-url", f"ftp://h/?password={querytok}&username={token}"], {}),
        ([], {"redis_password": [typed, "x"]}),  # a list where a string belongs
        ([], {"redis_password": {"x": typed}}),
        ([], {"redis_url": [f"redis://:{urlpw}@h/"]}),
    ]
    for i, (args, keys) in enumerate(daemon_cases):
        cfg = write_config(tmp_path / f"d{i}.yaml", {"health_address": "127.0.0.1:0", **keys})
        code, out = _cli("collector-daemon", "--config", str(cfg), "--check", *args)
        assert code == 2 and "invalid configuration" in out, (args, keys, out)
        assert _leaks(out) == [], out

    pump_cases: list[tuple[dict[str, object], dict[str, str]]] = [
        ({"pg": {"type": "postgres", "meta": {"password": [typed, "x"]}}}, {}),
        ({"pg": {"type": "postgres", "meta": {"password": {"a": typed}}}}, {}),
        ({"pg": {"type": "postgres", "meta": f"password={typed}"}}, {}),
        ({"pg": ["password", typed]}, {}),
        ({"h": {"type": "http", "meta": {"url": f"ftp://u:{urlpw}@h/?token={querytok}"}}}, {}),
        ({"h": {"type": "http", "meta": {"url": "http://127.0.0.1:1/",
                                         "headers": {"X-Key": [hdr]}}}}, {}),
        # the case: the env value is a string; an error elsewhere makes the load fail
        ({"pg": {"type": "postgres", "workers": 0}},
         {"COLLECTOR_PUMP_PG_META_PASSWORD": f"[{meta}, x]",
          "COLLECTOR_PUMP_PG_META_DSN": f"postgresql://u:{dsnpw}@127.0.0.1:1/db"}),
        ({"pg": {"type": "postgres"}}, {"COLLECTOR_PUMP_PG_META_PASSWORD": f"[{meta}, x]",
                                        "COLLECTOR_PUMP_PG_META_BOGUS": meta}),
    ]
    for i, (pumps, env) in enumerate(pump_cases):
        cfg = write_config(tmp_path / f"p{i}.yaml", {"pumps": pumps})
        code, out = _cli("collector-pump", "--config", str(cfg), "--check", env=env)
        assert code == 2 and "bad configuration" in out, (pumps, env, out)
        assert _leaks(out) == [], out
    # valid: --check passes and still shows nothing
    cfg = write_config(tmp_path / "ok.yaml", {"pumps": {"pg": {"type": "postgres"}}})
    code, out = _cli("collector-pump", "--config", str(cfg), "--check",
                     env={"COLLECTOR_PUMP_PG_META_PASSWORD": f"[{meta}, x]"})
    assert code == 0 and _leaks(out) == [], out


def test_running_services_never_show_a_secret(tmp_path: Path) -> None:
    """The daemon's password in its URL query, the pump's in its URL userinfo, a
    postgres sink (unreachable on purpose: its errors reach the log and /readyz)
    with a password in its DSN and one from the environment, an http sink with a
    token in its URL's user name and query and an ``auth_env`` value."""
    urlpw, _typed, meta, dsnpw, token, querytok, hdr = SECRETS
    with RedisServer(tmp_path / "redis", password=PW) as redis_server:
        port = redis_server.port
        daemon = Daemon.write(tmp_path, f"redis://127.0.0.1:{port}/0?password={PW}",
                              log_level="debug")
        out = tmp_path / "out.jsonl"
        dead = free_port()  # nothing listens here
        pumps = {
            "file": {"type": "file", "meta": {"path": str(out), "format": "jsonl"}},
            "pg": {"type": "postgres", "meta": {
                "dsn": f"postgresql://collector:{dsnpw}@127.0.0.1:{dead}/db?connect_timeout=2",
                "connect_timeout_s": 2}},
            "web": {"type": "http", "meta": {
                "url": f"http://{token}@127.0.0.1:{dead}/in?api_key={querytok}",
                "auth_env": "N10_TEST_AUTH", "headers": {"X-Extra": hdr}}},
        }
        pump = Pump.write(tmp_path, f"redis://:{PW}@127.0.0.1:{port}/0", pumps,
                          log_level="debug",
                          env={"COLLECTOR_PUMP_PG_META_PASSWORD": meta,
                               "N10_TEST_AUTH": f"Bearer {urlpw}"})
        bodies: list[str] = []
        try:
            daemon.start()
            pump.start()
            Producers.ring(tmp_path / "rings", 1, 500).start().join()
            def file_ids() -> list[tuple[int, int]]:
                return [record_key(r) for r in jsonl_records(out)] if out.exists() else []

            wait_until(lambda: len(file_ids()) >= 500, 60, "500 records in the file")
            assert account(file_ids(), producer_ids(1, 500)).ok
            wait_until(lambda: "pg" in str(pump.readyz()[1]) and pump.readyz()[0] == 503,
                       30, "the pump unready for its postgres sink")
            for svc in (daemon, pump):
                for path in ("/readyz", "/metrics", "/healthz"):
                    bodies.append(svc.get(path)[1].decode())
            assert daemon.stop() == 0
            assert pump.stop() == 0
        finally:
            daemon.close()
            pump.close()
        texts = [daemon.log_text(), pump.log_text(), *bodies]
        assert "Redis is reachable" in texts[0] and "Redis is reachable" in texts[1]
        assert "pg" in bodies[3] and "redis" in bodies[0]
        for text in texts:
            assert _leaks(text) == [], text

        # refused credentials: both exit 3 at once, naming the keys, not the password
        bad_daemon = Daemon.write(tmp_path / "bad", f"redis://127.0.0.1:{port}/0?password={WRONG}")
        bad_pump = Pump.write(tmp_path / "bad", f"redis://u:{WRONG}@127.0.0.1:{port}/0",
                              {"file": pumps["file"]})
        for svc in (bad_daemon, bad_pump):
            svc.start(wait=False)
            try:
                assert svc.wait(30) == 3
                text = svc.log_text()
                assert "redis_password" in text and _leaks(text) == [], text
            finally:
                svc.close()
