"""Bad input gets a 4xx JSON error, never a 500: real agents over HTTPS (anonymous and trusted) and the
unix socket, the real CLI, a real container for exec; and exec's scratch files are private."""

from __future__ import annotations

import gzip
import json
import os
import re
import socket
import ssl
import stat
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from hostagent.api.exec import MAX_ARG_BYTES, _parse
from hostagent.api.responses import MAX_UNTRUSTED_JSON_BODY
from hostagent.jsoninput import MAX_DEPTH, parse_json
from hostagent.runtimes.runc import Runc
from orchapi import certs
from orchapi.client import AgentClient
from orchapi.errors import BadRequest, InternalError
from tests.procs import AgentProcess, Orch, as_nobody

UNIX_BASE = "http://orch-agent"  # what AgentClient mounts its unix socket adapter on


class Clients:
    """The three kinds of caller of one agent: anonymous and trusted over HTTPS, admin on the socket."""

    def __init__(self, agent: AgentProcess, orch: Orch) -> None:
        self.agent = agent
        fingerprint = certs.fingerprint_pem((agent.data_dir / "server.crt").read_bytes())
        cfg = orch.config_home / "orch"
        self.anonymous = AgentClient(agent.url, fingerprint=fingerprint)
        self.trusted = AgentClient(
            agent.url, fingerprint=fingerprint, client_cert=(cfg / "client.crt", cfg / "client.key")
        )
        self.unix = AgentClient(f"unix://{agent.socket}")

    def raw(self, who: str, method: str, path: str, **kwargs: Any) -> requests.Response:
        """The HTTP response as it is (no envelope unwrapping, no exception for 4xx)."""
        client = getattr(self, who)
        base = UNIX_BASE if who == "unix" else self.agent.url
        kwargs.setdefault("timeout", 30)
        return client.session.request(method, base + path, **kwargs)


def assert_json_error(response: requests.Response, status: int, *words: str) -> str:
    assert response.status_code == status, (response.status_code, response.text[:300])
    body = response.json()
    assert body["type"] == "error" and body["error_code"] == status, body
    for word in words:
        assert word in body["error"], body
    return body["error"]


def assert_agent_healthy(clients: Clients) -> None:
    """Still serving everyone, and nothing in its log says a request crashed a handler."""
    assert clients.anonymous.get("/1.0")["auth"] == "untrusted"
    assert clients.trusted.get("/1.0")["auth"] == "trusted"
    log = clients.agent.log_tail(10**6)
    assert "Traceback" not in log and "unhandled error" not in log, log[-3000:]


@pytest.fixture
def clients(make_agent, orch: Orch) -> Clients:
    foo = make_agent("foo")
    orch.add_remote("foo", foo)
    return Clients(foo, orch)


@pytest.fixture
def running(clients: Clients, orch: Orch, busybox_image: Path) -> Clients:
    """``foo:c1`` running from the busybox image."""
    orch.run("image", "import", str(busybox_image), "foo:", "--alias", "bb")
    orch.run("launch", "foo:bb", "foo:c1")
    return clients


# ------------------------------------------------------------------------------------ names and newlines


def test_names_with_a_trailing_newline_are_refused(running: Clients, orch: Orch) -> None:
    body = {"name": "c9\n", "source": {"type": "image", "alias": "bb"}}
    for who in ("trusted", "unix"):
        assert_json_error(
            running.raw(who, "POST", "/1.0/containers", json=body), 400, "invalid container name"
        )
    assert_json_error(running.raw("trusted", "GET", "/1.0/containers/c9%0A"), 400, "invalid container name")
    assert_json_error(
        running.raw("trusted", "POST", "/1.0/containers/c1/snapshots", json={"name": "s0\n"}),
        400,
        "invalid snapshot name",
    )
    fingerprint = running.trusted.get("/1.0/images")[0].rsplit("/", 1)[1]
    assert_json_error(
        running.raw("trusted", "POST", "/1.0/images/aliases", json={"name": "bb2\n", "target": fingerprint}),
        400,
        "invalid image alias",
    )
    assert running.trusted.get("/1.0/containers") == ["/1.0/containers/c1"]  # nothing was made
    err = orch.fails("init", "foo:bb", "foo:c9\n")
    assert "invalid container name" in err
    assert "invalid snapshot name" in orch.fails("snapshot", "foo:c1", "s0\n")
    assert_agent_healthy(running)


# ------------------------------------------------------------------------------------- JSON bodies


def test_deeply_nested_json_is_a_400_for_anonymous_and_trusted_callers(clients: Clients) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    assert len(deep) < MAX_UNTRUSTED_JSON_BODY  # so the nesting, not the size, is what is refused
    headers = {"Content-Type": "application/json"}
    for who, path in (("anonymous", "/1.0/certificates"), ("trusted", "/1.0/containers"), ("unix", "/1.0")):
        method = "PATCH" if path == "/1.0" else "POST"
        assert_json_error(clients.raw(who, method, path, data=deep, headers=headers), 400, "nests deeper")
        # deep enough for later recursive code, shallow enough for json.loads: refused too
        nested: Any = "x"
        for _ in range(MAX_DEPTH + 5):
            nested = {"a": nested}
        assert_json_error(clients.raw(who, method, path, json=nested), 400, "nests deeper")
    assert_agent_healthy(clients)


def test_oversized_non_finite_and_undeliverable_bodies(clients: Clients) -> None:
    big = b'{"name": "' + b"x" * (MAX_UNTRUSTED_JSON_BODY + 10) + b'"}'
    headers = {"Content-Type": "application/json"}
    assert_json_error(clients.raw("anonymous", "POST", "/1.0/certificates", data=big, headers=headers), 413)
    # chunked (no Content-Length): the cap holds while reading
    chunks = (big[i : i + 4096] for i in range(0, len(big), 4096))
    assert_json_error(
        clients.raw("anonymous", "POST", "/1.0/certificates", data=chunks, headers=headers), 413
    )
    # a gzip bomb is measured after decompression
    bomb = gzip.compress(b" " * 20_000_000)
    gz = {**headers, "Content-Encoding": "gzip"}
    assert_json_error(clients.raw("anonymous", "POST", "/1.0/certificates", data=bomb, headers=gz), 413)
    # a body that is not what its encoding says: the client's fault, a 400 (was a 500 with a traceback)
    garbage = clients.raw("anonymous", "POST", "/1.0/certificates", data=b"0123456789", headers=gz)
    assert_json_error(garbage, 400, "could not be read")
    for text in ('{"timeout": NaN}', '{"timeout": Infinity}', '{"a": "\\ud800"}', '{"a\\u0000": 1}'):
        assert_json_error(clients.raw("trusted", "PATCH", "/1.0", data=text, headers=headers), 400)
    assert_agent_healthy(clients)


def test_json_parser_rules() -> None:
    assert parse_json(b'{"a": [1, {"b": "c"}], "d": 1.5}') == {"a": [1, {"b": "c"}], "d": 1.5}
    for raw, message in (
        (b"[" * 5000, "nests deeper"),
        (b"[" * (MAX_DEPTH + 2) + b"]" * (MAX_DEPTH + 2), "nests deeper"),
        (b"NaN", "not valid JSON"),
        (b"-Infinity", "not valid JSON"),
        (b'{"x": "a\\u0000b"}', "field 'x' holds a NUL"),
        (b'{"x": ["ok", "\\udfff"]}', "field 'x[1]' holds a NUL character or an unpaired surrogate"),
        (b'{"k\\u0000": 1}', "key"),
        (b"\xff\xfe{", "not valid JSON"),
        (b"1" * 5000, "not valid JSON"),  # more digits than int() converts
    ):
        with pytest.raises(BadRequest, match=re.escape(message)):
            parse_json(raw)


# ------------------------------------------------------------------------------------------ exec


def test_nul_bytes_in_exec_are_a_400_and_exec_still_works(running: Clients) -> None:
    path = "/1.0/containers/c1/exec"
    for body in (
        {"command": ["echo", "a\x00b"]},
        {"command": ["true"], "environment": {"A": "x\x00y"}},
        {"command": ["true"], "environment": {"A\x00B": "x"}},
        {"command": ["true"], "cwd": "/tmp\x00/x"},
        {"command": ["echo", "\ud800"]},
    ):
        raw = json.dumps(body).encode()  # \u0000 and \ud800 escapes, as any JSON client sends them
        response = running.raw(
            "trusted", "POST", path, data=raw, headers={"Content-Type": "application/json"}
        )
        assert_json_error(response, 400, "NUL")
    long_arg = {"command": ["echo", "x" * (MAX_ARG_BYTES + 1)]}
    assert_json_error(running.raw("trusted", "POST", path, json=long_arg), 400, "longer than the kernel")
    assert_json_error(
        running.raw("unix", "POST", path, json={"command": ["true"], "stdin": "é"}), 400, "base64"
    )
    result = running.trusted.run("POST", path, json={"command": ["sh", "-c", "echo ok"], "environment": {}})
    assert result["return"] == 0 and result["stdout"] == "b2sK"  # base64 of "ok\n"
    assert_agent_healthy(running)


def test_exec_parse_refuses_what_execve_cannot_take() -> None:
    ok = _parse({"command": ["sh", "-c", "true"], "environment": {"A": "b"}, "cwd": "/tmp", "timeout": 5})
    assert ok == (["sh", "-c", "true"], {"A": "b"}, "/tmp", None, 5)
    for body, message in (
        ({"command": ["a\x00"]}, "command arguments must not contain NUL"),
        ({"command": ["x"], "environment": {"K": "\x00"}}, "environment variable 'K' must not contain NUL"),
        ({"command": ["x"], "cwd": "/\x00"}, "cwd must not contain NUL"),
        ({"command": ["x"], "timeout": float("nan")}, "timeout"),
        ({"command": ["x"], "timeout": float("inf")}, "timeout"),
        ({"command": ["x"], "stdin": 5}, "stdin must be base64"),
        ({"command": ["x"], "environment": {"K": "v" * MAX_ARG_BYTES}}, "longer than the kernel"),
    ):
        with pytest.raises(BadRequest, match=re.escape(message)):
            _parse(body)


def test_exec_pid_and_log_files_are_in_the_agents_private_dir(running: Clients) -> None:
    run_dir = running.agent.data_dir / "run"
    st = os.lstat(run_dir)
    assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == 0
    before = {p for p in os.listdir("/tmp") if p.startswith("orch-exec-")}
    seen: list[str] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.extend(os.listdir(run_dir))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        result = running.trusted.run("POST", "/1.0/containers/c1/exec", json={"command": ["sleep", "1"]})
    finally:
        done.set()
        watcher.join()
    assert result["return"] == 0
    names = set(seen)
    assert any(n.startswith("exec-") and n.endswith(".pid") for n in names), names
    assert any(n.startswith("exec-") and n.endswith(".log") for n in names), names
    assert os.listdir(run_dir) == []  # removed when the exec ended
    assert {p for p in os.listdir("/tmp") if p.startswith("orch-exec-")} == before
    # a local user can't even look (runc's pid file decides which processes a timeout kills)
    peek = as_nobody(f"ls {run_dir}")
    assert peek.returncode != 0 and "Permission denied" in peek.stderr


def test_run_dir_must_be_a_real_directory_of_the_agent(tmp_path: Path) -> None:
    runc = Runc(tmp_path / "a" / "runc")
    assert runc.run_dir == tmp_path / "a" / "run" and stat.S_IMODE(os.stat(runc.run_dir).st_mode) == 0o700
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "run").symlink_to(elsewhere)
    with pytest.raises(InternalError, match="not a directory owned by"):
        Runc(tmp_path / "b" / "runc")
    foreign = tmp_path / "c" / "run"
    foreign.mkdir(parents=True)
    os.chown(foreign, 65534, 65534)
    with pytest.raises(InternalError, match="not a directory owned by"):
        Runc(tmp_path / "c" / "runc")


# ------------------------------------------------------------------------------ raw TLS, anonymous


def test_a_body_cut_off_mid_way_is_logged_in_one_line(clients: Clients) -> None:
    """Anyone can open a connection, announce a body and hang up: no traceback in the log per attempt."""
    host, port = clients.agent.addr.rsplit(":", 1)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    for _ in range(3):
        with socket.create_connection((host, int(port))) as sock, ctx.wrap_socket(sock) as tls:
            tls.sendall(
                b"POST /1.0/certificates HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b'Content-Length: 1000\r\n\r\n{"certificate": '
            )
            time.sleep(0.2)
    deadline = time.monotonic() + 5
    while "unreadable request body" not in clients.agent.log_tail(10**6) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "unreadable request body on POST /1.0/certificates from anonymous" in clients.agent.log_tail(10**6)
    assert_agent_healthy(clients)
