"""``orch console`` driven from a real terminal (pexpect): the init's console over the agent's websockets
from the container's keeper process, its bounded log, detaching, and an agent restart in between."""

from __future__ import annotations

import time

import pexpect

from tests.procs import ORCH

#: a process on the container's console that answers one line typed there (as a getty would read it)
ANSWER = "setsid sh -c 'read l </dev/console; echo got:$l >/dev/console' </dev/null >/dev/null 2>&1 &"


def _console(orch, target: str) -> pexpect.spawn:  # type: ignore[no-untyped-def]
    return pexpect.spawn(ORCH, ["console", target], env={**orch.env, "TERM": "xterm"}, timeout=30,
                         encoding="utf-8", dimensions=(24, 80))  # fmt: skip


def test_console_attach_type_detach_log_and_an_agent_restart(two_agents, orch):
    foo, _ = two_agents
    orch.run("launch", "foo:bb", "foo:c1")
    orch.run("exec", "foo:c1", "--", "sh", "-c", "echo boot-message > /dev/console")
    assert "boot-message" in orch.run("console", "foo:c1", "--show-log").stdout

    orch.run("exec", "foo:c1", "--", "sh", "-c", ANSWER)
    con = _console(orch, "foo:c1")
    con.expect("To detach from the console, press: <ctrl>\\+a q")
    time.sleep(0.5)
    con.sendline("typed-in")  # through the keeper to the console's line discipline, read by ANSWER
    con.expect("got:typed-in")
    con.send("\x01q")  # Ctrl+a q
    con.expect(pexpect.EOF)
    con.close()
    assert con.exitstatus == 0
    assert "RUNNING" in orch.run("info", "foo:c1").stdout  # leaving the console leaves it running

    foo.stop()  # the agent goes; the container and its console keeper stay
    foo.start()
    orch.run("remote", "remove", "foo")
    orch.add_remote("foo", foo)
    con = _console(orch, "foo:c1")
    con.expect("To detach")
    time.sleep(0.5)
    orch.run("exec", "foo:c1", "--", "sh", "-c", "echo after-restart > /dev/console")
    con.expect("after-restart")
    con.send("\x01q")
    con.expect(pexpect.EOF)
    log = orch.run("console", "foo:c1", "--show-log").stdout
    assert log.index("boot-message") < log.index("got:typed-in") < log.index("after-restart"), log


def test_the_console_log_is_bounded(two_agents, orch):
    foo, _ = two_agents
    orch.run("launch", "foo:bb", "foo:c1")
    orch.run("exec", "foo:c1", "--", "sh", "-c", "head -c 3000000 /dev/zero | tr '\\0' x > /dev/console; "
             "echo the-end > /dev/console")  # fmt: skip
    cdir = foo.data_dir / "containers" / "c1"
    deadline = time.monotonic() + 30
    while "the-end" not in orch.run("console", "foo:c1", "--show-log").stdout:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    on_disk = sum(p.stat().st_size for p in cdir.glob("console.log*"))
    assert 512 * 1024 <= on_disk <= 1024 * 1024, on_disk
    assert all((p.stat().st_mode & 0o077) == 0 for p in cdir.glob("console.log*"))  # the agent's only


def test_console_of_a_stopped_container_says_so(two_agents, orch):
    orch.run("init", "foo:bb", "foo:off")
    err = orch.fails("console", "foo:off")
    assert "container foo:off is not running" in err and "orch start foo:off" in err, err


def test_a_local_user_can_neither_attach_to_a_console_nor_read_its_log(two_agents, orch):
    import json
    import shlex

    from tests.procs import as_nobody

    foo, _ = two_agents
    orch.run("launch", "foo:bb", "foo:c1")
    orch.run("exec", "foo:c1", "--", "sh", "-c", "echo secret-console-line > /dev/console")
    cdir = foo.data_dir / "containers" / "c1"
    sockets = json.loads((cdir / "console.json").read_text())["dir"]
    connect = f"import socket; socket.socket(socket.AF_UNIX).connect({sockets + '/attach'!r})"
    probe = as_nobody(
        f"python3 -c {shlex.quote(connect)}; echo rc=$?; "
        f"cat {shlex.quote(str(cdir / 'console.log'))}; ls {shlex.quote(sockets)}"
    )
    assert "rc=1" in probe.stdout and "PermissionError" in probe.stderr, (probe.stdout, probe.stderr)
    assert "secret-console-line" not in probe.stdout + probe.stderr
    assert "Permission denied" in probe.stderr
