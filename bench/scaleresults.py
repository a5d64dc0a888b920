"""A ``bench/scale`` run's figures kept as JSON (``--json``) and written into docs/benchmarks.md
(``--markdown``), from a fresh run or from an earlier run's file (``--from-json``)."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench import scalereport, scaletrace, stats
from bench.scalefigures import Row

HEADING = "## Orchestrator at scale (bench/scale)"


def save(path: Path, run: dict[str, Any]) -> None:
    """``run``: environment, command, idle_rates, trace, trace_seconds, settings, rows (Row), floor."""
    data = {**run, "rows": [asdict(r) for r in run["rows"]]}
    path.write_text(json.dumps(data, indent=2) + "\n")


def load(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    data["rows"] = [Row(**{**r, "top_cmds": [tuple(c) for c in r["top_cmds"]]}) for r in data["rows"]]
    data["idle_rates"] = {int(w): rates for w, rates in data["idle_rates"].items()}
    data.setdefault("floor", [])
    return data


def trace_text(run: dict[str, Any]) -> str:
    raw = run.get("trace", {})
    counts = Counter({tuple(k.split(" ", 1)) if " " in k else (k, ""): n for k, n in raw.items()})
    return scaletrace.report(counts, run.get("trace_seconds", 0.0)) if counts else ""


def write_markdown(path: Path, run: dict[str, Any], args: argparse.Namespace) -> None:
    text = scalereport.markdown(
        run["rows"],
        run["idle_rates"],
        run["environment"],
        run["command"],
        args,
        trace_text(run),
        run["floor"],
    )
    stats.write_markdown_section(path, "scale", text, heading=HEADING)
