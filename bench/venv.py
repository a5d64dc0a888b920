"""Run the benchmark scripts with the project's own Python, so ``bench/run`` is one command.

The benchmarks start ``orch`` and ``orch-agent`` from the directory of the Python running them (as the
tests do); under a system ``python3`` they would not be found. If the script is not running in the
project's ``.venv``, bootstrap it when missing and re-execute the script with it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def ensure_venv() -> None:
    venv_python = REPO / ".venv" / "bin" / "python"
    if Path(sys.prefix).resolve() == (REPO / ".venv").resolve():
        return
    if not venv_python.exists():
        subprocess.run([str(REPO / "scripts" / "bootstrap")], check=True)
    os.execv(str(venv_python), [str(venv_python), *sys.argv])
