"""Listings in the four formats every ``orch ... list`` accepts: table (like ``lxc``), json, yaml, csv."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from typing import Any

import click
import yaml

from orchestrator.units import human_size  # noqa: F401 - re-exported for the commands

FORMATS = ("table", "json", "yaml", "csv")

format_option = click.option(
    "--format",
    "-f",
    "fmt",
    type=click.Choice(FORMATS),
    default="table",
    show_default=True,
    help="Output format.",
)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """An ``lxc``-style box table: centred headers, a rule after every row."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    header = "|" + "|".join(f" {h.center(w)} " for h, w in zip(headers, widths, strict=True)) + "|"
    lines = [rule, header, rule]
    for row in cells:
        lines.append("|" + "|".join(f" {c.ljust(w)} " for c, w in zip(row, widths, strict=True)) + "|")
        lines.append(rule)
    return "\n".join(lines)


def emit(fmt: str, headers: Sequence[str], rows: Sequence[Sequence[Any]], objects: Any) -> None:
    """Print a listing: ``rows`` for table/csv, the full ``objects`` for json/yaml."""
    if fmt == "json":
        click.echo(json.dumps(objects, indent=2, sort_keys=True))
    elif fmt == "yaml":
        click.echo(yaml.safe_dump(objects, sort_keys=True).rstrip())
    elif fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerows([[str(c) for c in row] for row in rows])
        click.echo(buf.getvalue().rstrip("\n"))
    else:
        click.echo(table(headers, rows))
