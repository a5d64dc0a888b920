"""``orch exec`` as a user at a terminal drives it: a real pty (pexpect) on the client, the agent's
websockets over real TLS, runc's console socket in the container (the busybox image's sh)."""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import signal
import subprocess
import threading
import time

import pexpect
import pytest

from tests.procs import ORCH

PROMPT = re.compile(r"[#$] (\x1b\[6n)?")


def _spawn(orch, *args: str, rows: int = 24, cols: int = 80) -> pexpect.spawn:  # type: ignore[no-untyped-def]
    env = {**orch.env, "TERM": "xterm", "PS1": "$ "}
    return pexpect.spawn(ORCH, list(args), env=env, dimensions=(rows, cols), timeout=30, encoding="utf-8")


@pytest.fixture
def c1(two_agents, orch):  # type: ignore[no-untyped-def]
    orch.run("launch", "foo:bb", "foo:c1")
    return orch


def test_a_shell_has_a_prompt_a_terminal_resizes_and_passes_the_exit_status(c1) -> None:
    shell = _spawn(c1, "exec", "foo:c1", "--", "sh")
    shell.expect(PROMPT)
    shell.sendline("tty; stty size")
    shell.expect(r"/dev/pts/\d+")
    shell.expect(r"24 80")
    shell.setwinsize(40, 132)  # the client gets SIGWINCH and tells the agent
    time.sleep(0.5)
    shell.sendline("stty size")
    shell.expect(r"40 132")
    shell.sendline("exit 7")
    shell.expect(pexpect.EOF)
    shell.close()
    assert shell.exitstatus == 7


def test_ctrl_c_kills_the_foreground_command_and_the_shell_goes_on(c1) -> None:
    shell = _spawn(c1, "exec", "foo:c1", "--", "sh")
    shell.expect(PROMPT)
    shell.sendline("sleep 300")
    time.sleep(1)
    started = time.monotonic()
    shell.sendintr()  # the byte ^C, turned into SIGINT by the container's terminal
    shell.expect(PROMPT)
    assert time.monotonic() - started < 5
    shell.sendline("echo rc=$?")
    shell.expect(r"rc=130")
    shell.sendline("sleep 301")
    time.sleep(1)
    shell.sendcontrol("z")  # job control: the container's terminal stops the foreground job
    shell.expect(r"Stopped\s+sleep 301")
    shell.sendline("kill %1; fg; echo fg=$?")
    shell.expect(r"fg=\d+")
    procs = c1.run("exec", "foo:c1", "--", "ps").stdout
    assert "sleep 300" not in procs
    shell.sendline("exit")
    shell.expect(pexpect.EOF)


def test_options_after_the_command_are_the_commands(c1) -> None:
    out = c1.run("exec", "foo:c1", "ls", "-d", "/etc").stdout
    assert out == "/etc\n"
    out = c1.run("exec", "foo:c1", "--cwd", "/etc", "sh", "-c", "pwd; echo $X", "--env", "X=1").stdout
    assert out == "/etc\n\n"  # the trailing --env is sh's argument ($0), not orch's
    out = c1.run("exec", "foo:c1", "--env", "X=1", "--user", "1000", "--", "sh", "-c", "id -u; echo $X")
    assert out.stdout == "1000\n1\n"


def test_output_streams_as_it_comes(c1) -> None:
    proc = subprocess.Popen(
        [ORCH, "exec", "foo:c1", "--", "sh", "-c", "echo first; sleep 3; echo second"],
        env=c1.env, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.stdout is not None
    started = time.monotonic()
    assert proc.stdout.readline() == b"first\n"
    assert time.monotonic() - started < 2.5  # before the sleep ended
    assert proc.stdout.readline() == b"second\n"
    assert proc.wait(10) == 0


def test_a_signal_ending_the_client_ends_the_command(c1) -> None:
    proc = subprocess.Popen(
        [ORCH, "exec", "foo:c1", "--", "sh", "-c", "echo up; exec sleep 300"],
        env=c1.env, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 128 + signal.SIGTERM
    assert "sleep 300" not in c1.run("exec", "foo:c1", "--", "ps").stdout
    # and a client killed outright: the agent sees the connection go and kills the command
    proc = subprocess.Popen(
        [ORCH, "exec", "foo:c1", "--", "sh", "-c", "echo up; exec sleep 301"],
        env=c1.env, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
    proc.kill()
    proc.wait(10)
    deadline = time.monotonic() + 15
    while "sleep 301" in c1.run("exec", "foo:c1", "--", "ps").stdout:
        assert time.monotonic() < deadline, "the command outlived its client"
        time.sleep(0.5)


def test_a_gib_through_exec_arrives_intact_with_flat_client_memory(c1) -> None:
    """1 GiB into ``orch exec ... sha256sum`` through a pipe: the container's checksum is ours, and the
    client's peak memory does not grow with the data."""
    client = subprocess.Popen(
        ["/usr/bin/time", "-f", "%M", ORCH, "exec", "foo:c1", "--", "sha256sum"],
        env=c1.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    expected = hashlib.sha256()
    block = bytearray(os.urandom(1 << 20))
    result: dict[str, bytes] = {}

    def collect() -> None:
        assert client.stdout is not None and client.stderr is not None
        result["out"], result["err"] = client.stdout.read(), client.stderr.read()

    reader = threading.Thread(target=collect)
    reader.start()
    assert client.stdin is not None
    for i in range(1024):
        block[:8] = i.to_bytes(8, "big")  # no two MiB alike
        expected.update(block)
        client.stdin.write(block)
    client.stdin.close()
    reader.join(600)
    assert client.wait(60) == 0, result.get("err")
    assert result["out"].decode().split()[0] == expected.hexdigest()
    max_rss_kib = int(result["err"].decode().strip().splitlines()[-1])
    print(f"client peak RSS {max_rss_kib} KiB")
    assert max_rss_kib < 150 * 1024, f"the client peaked at {max_rss_kib} KiB for 1 GiB"


def test_all_output_arrives_before_the_exit_status(c1) -> None:
    """50 MB written as fast as the command can, which then exits at once: every byte is relayed before
    the end is reported."""
    proc = subprocess.run(
        [ORCH, "exec", "foo:c1", "--", "sh", "-c", "head -c 50000000 /dev/zero; echo tail >&2; exit 3"],
        env=c1.env, capture_output=True, stdin=subprocess.DEVNULL, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 3 and len(proc.stdout) == 50_000_000 and proc.stderr == b"tail\n"


def test_exec_websockets_need_trust_and_a_secret_that_works_once(c1, two_agents) -> None:
    import asyncio
    import ssl

    import aiohttp

    from orchapi.client import AgentClient
    from orchapi.wsclient import session_for

    foo, _ = two_agents
    client = AgentClient(f"unix://{foo.socket}")
    body = {"command": ["cat"], "wait-for-websocket": True, "interactive": False}
    op = client.request("POST", "/1.0/containers/c1/exec", json=body).json()
    path, fds = op["operation"], op["metadata"]["metadata"]["fds"]
    assert set(fds) == {"0", "1", "2", "control"} and len({*fds.values()}) == 4
    assert "fds" not in client.get(path)["metadata"]  # the secrets are given once, to the creator

    quick = aiohttp.ClientWSTimeout(ws_close=0.5)  # nobody reads an unstarted exec's stdout websocket

    async def attempts() -> list[int]:
        session, base = session_for(client)
        statuses = []
        async with session:
            for secret in ("wrong", fds["1"], fds["1"]):
                try:
                    ws = await session.ws_connect(f"{base}{path}/websocket?secret={secret}", timeout=quick)
                    statuses.append(101)
                    await ws.close()
                except aiohttp.WSServerHandshakeError as exc:
                    statuses.append(exc.status)
            plain = await session.get(f"{base}{path}/websocket?secret={fds['2']}")  # no upgrade: 400,
            statuses.append(plain.status)  # and the secret is not spent by it
            ws = await session.ws_connect(f"{base}{path}/websocket?secret={fds['2']}", timeout=quick)
            statuses.append(101)
            await ws.close()
        # anyone on the HTTPS port, without a trusted certificate: 403 before any secret is looked at
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        async with aiohttp.ClientSession() as anon:
            response = await anon.get(f"https://{foo.addr}{path}/websocket?secret={fds['0']}", ssl=ctx)
            statuses.append(response.status)
        return statuses

    assert asyncio.run(attempts()) == [403, 101, 403, 400, 101, 403]
    client.request("DELETE", path)  # cancelled: the command never started (not all streams came)
    assert client.get(f"{path}/wait", params={"timeout": 10})["status"] == "Cancelled"


def test_a_slow_reader_gets_all_of_the_output_of_a_command_that_has_ended(c1) -> None:
    """The command ends long before its output has reached a reader that takes its time: nothing of it
    is dropped (the end of output is a silence after the exit, not a deadline)."""
    slow = (
        "import sys, time\nn = 0\n"
        "while b := sys.stdin.buffer.read(16384):\n    n += len(b); time.sleep(0.05)\nprint(n)"
    )
    proc = subprocess.run(
        f"{ORCH} exec foo:c1 -- head -c 1000000 /dev/zero | python3 -c {shlex.quote(slow)}",
        shell=True, env=c1.env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120,
    )  # fmt: skip
    assert proc.stdout.strip() == "1000000", proc.stderr
