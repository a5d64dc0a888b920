"""Pure logic of this issue's pieces: progress words, exec control messages, the exec argument split,
Flower's task view, the console's ring log."""

from __future__ import annotations

import pytest

from orchapi.errors import BadRequest
from orchapi.execapi import Resize, Signal, parse_control
from orchestrator.jobtext import progress_text, stage_words, step_words


def test_stages_in_words() -> None:
    meta = {"stage": "snapshot s1 (2/3)", "volume": 2, "volumes": 3, "volume_name": "snapshot s1"}
    assert stage_words(meta) == "sending snapshot s1 (2/3)"
    assert stage_words({**meta, "stage": "verify"}) == "verifying snapshot s1 (2/3)"
    assert stage_words({**meta, "stage": "prefill"}).startswith("pre-filling snapshot s1")
    assert (
        stage_words({"stage": "rootfs", "volume": 1, "volumes": 1, "volume_name": "rootfs"})
        == "sending rootfs"
    )
    assert stage_words({"stage": "commit"}) == "committing the verified copy"
    resumed = {**meta, "stage": "snapshot s2 (1/2)", "volume_name": "snapshot s2", "resumed_volumes": ["s1"]}
    assert stage_words(resumed) == "sending snapshot s2 (2/3); resumed: s1 kept from an earlier attempt"
    assert stage_words({**resumed, "stage": "commit"}) == "committing the verified copy"
    assert step_words("verify_target") == "checking source and target"
    assert step_words("transfer_delta", "sending rootfs") == "sending rootfs"


def test_progress_shows_a_percentage_only_with_a_known_total() -> None:
    assert progress_text(3 << 20, 0, 1 << 20) == "3.00MiB at 1.00MiB/s"
    assert progress_text(1 << 20, 4 << 20, 0) == "1.00MiB of 4.00MiB (25%)"
    assert "(99%)" in progress_text(5 << 20, 4 << 20, 0)  # never 100 % before the end


def test_control_messages_are_lxds_and_checked() -> None:
    assert parse_control(Resize(80, 24).to_json()) == Resize(80, 24)
    assert parse_control(Signal(15).to_json()) == Signal(15)
    assert parse_control('{"command": "window-resize", "args": {"width": "100", "height": "30"}}') == Resize(
        100, 30
    )
    bad_messages = (
        "nope",
        "[]",
        '{"command": "signal", "signal": 0}',
        '{"command": "signal", "signal": true}',
        '{"command": "window-resize", "args": {"width": "-1", "height": "2"}}',
        '{"command": "window-resize", "args": {"width": "99999", "height": "2"}}',
        '{"command": "x"}',
    )
    for bad in bad_messages:
        with pytest.raises(BadRequest):
            parse_control(bad)


def test_exec_options_end_at_the_commands_name() -> None:
    from orchestrator.cli.execute import exec_

    def parsed(*args: str) -> dict:
        ctx = exec_.make_context("exec", list(args))
        return ctx.params

    p = parsed("foo:c1", "ls", "--help")
    assert p["command"] == ("ls", "--help") and p["user"] is None
    p = parsed("foo:c1", "--user", "5", "-T", "sh", "-c", "echo", "--env", "X=1")
    assert p["user"] == 5 and p["no_tty"] and p["command"] == ("sh", "-c", "echo", "--env", "X=1")
    assert p["env"] == ()
    p = parsed("--env", "A=b", "foo:c1", "--", "-weird")
    assert p["env"] == ("A=b",) and p["command"] == ("-weird",)


def test_flower_view_shows_the_label_and_leaves_flowers_object_alone() -> None:
    from celery.events.state import Task

    from orchestrator.flowerview import format_task

    task = Task("u1", name="orch.verify_target", args="('1a2b', 'foo:c1 → bar:c1')", state="SUCCESS")
    shown = format_task(task)
    assert shown.args == "foo:c1 → bar:c1 · job 1a2b" and task.args == "('1a2b', 'foo:c1 → bar:c1')"
    other = Task("u2", name="celery.chord", args="('x', 'y')")
    assert format_task(("u2", other))[1].args == "('x', 'y')"  # not orch's: untouched
    odd = Task("u3", name="orch.rename", args="__import__('os')")
    assert format_task(odd).args == "__import__('os')"  # never evaluated, only parsed as a literal


def test_ring_log_keeps_the_most_recent_output_within_its_limit(tmp_path) -> None:
    from hostagent.console.ringlog import RingLog, read_log

    log = RingLog(tmp_path / "console.log", limit=1000)
    for i in range(300):
        log.write(f"{i:04d}\n".encode())
    log.close()
    text = read_log(tmp_path / "console.log").decode()
    assert text.endswith("0299\n") and 500 <= len(text) <= 1000
    assert sum(p.stat().st_size for p in tmp_path.iterdir()) <= 1000
