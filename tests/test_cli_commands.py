"""The CLI's lazy command index (orchestrator/cli/main.py) against the command modules themselves, and
that a move loads none of the other commands' modules."""

from __future__ import annotations

import importlib
import json
import subprocess

from orchestrator.cli.main import COMMANDS, cli
from tests.procs import VENV_BIN

MODULES = ("containers", "execute", "console", "jobs", "joblist", "monitor", "hosts", "version")
GROUPS = {"remote": "remote", "image": "images", "config": "config"}


def test_the_index_names_every_command_of_every_module_and_nothing_else() -> None:
    found = {}
    for name in MODULES:
        module = importlib.import_module(f"orchestrator.cli.{name}")
        for command in module.COMMANDS:
            found[command.name] = command
    for name, module_name in GROUPS.items():
        found[name] = getattr(importlib.import_module(f"orchestrator.cli.{module_name}"), name)
    assert set(COMMANDS) == set(found)
    for name, command in found.items():
        assert cli.get_command(None, name) is command, name  # type: ignore[arg-type]


def test_help_lists_every_command() -> None:
    out = subprocess.run(
        [str(VENV_BIN / "orch"), "--help"], capture_output=True, text=True, check=True
    ).stdout
    for name in COMMANDS:
        assert f"  {name} " in out, name


def test_a_move_imports_only_its_own_command_module() -> None:
    code = (
        "import json, sys\n"
        "from orchestrator.cli.main import cli\n"
        "cli.get_command(None, 'move')\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('orchestrator.cli.'))))\n"
    )
    out = subprocess.run([str(VENV_BIN / "python"), "-c", code], capture_output=True, text=True, check=True)
    loaded = json.loads(out.stdout)
    assert "orchestrator.cli.jobs" in loaded
    assert not {"orchestrator.cli.containers", "orchestrator.cli.hosts", "orchestrator.cli.images"} & set(
        loaded
    )
