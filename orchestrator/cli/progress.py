"""Progress display for long client-side work (uploads, relays), drawn only on a terminal."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO


class ProgressReader:
    """A file-like wrapper that reports bytes read, so requests can stream it with a progress bar."""

    def __init__(self, fh: IO[bytes], size: int, advance) -> None:  # type: ignore[no-untyped-def]
        self._fh, self._size, self._advance = fh, size, advance

    def read(self, n: int = -1) -> bytes:
        data = self._fh.read(max(n, 1024 * 1024) if n and n > 0 else -1)
        self._advance(len(data))
        return data

    def __len__(self) -> int:
        return self._size


def transfer_progress(percent: bool = True):  # type: ignore[no-untyped-def]
    """A rich ``Progress`` with the columns of every orch transfer bar: bytes, rate, %, ETA."""
    from rich.progress import (  # imported here: most commands never draw a bar
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    class BinaryRate(TransferSpeedColumn):
        """rich's speed in binary units, like the sizes beside it (rich's own says MB/s)."""

        def render(self, task):  # type: ignore[no-untyped-def]
            from rich.text import Text

            from orchestrator.units import human_rate

            speed = task.finished_speed or task.speed
            return Text(human_rate(speed) if speed else "", style="progress.data.speed")

    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        BinaryRate(),
    ]
    if percent:
        columns.append(TextColumn("{task.percentage:>3.0f}%"))
    columns.append(TimeRemainingColumn())
    return Progress(*columns, transient=True)


def job_progress():  # type: ignore[no-untyped-def]
    """The bar of a followed job: its step in words, bytes moved (of the total, when the bytes that will
    travel are known), the job's own measured rate, and % and ETA only with a total."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    class IfTotal(TextColumn):
        def render(self, task):  # type: ignore[no-untyped-def]
            return super().render(task) if task.total else ""

    class EtaIfTotal(TimeRemainingColumn):
        def render(self, task):  # type: ignore[no-untyped-def]
            return super().render(task) if task.total else ""

    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TextColumn("{task.fields[rate]}"),
        IfTotal("{task.percentage:>3.0f}%"),
        EtaIfTotal(),
    ]
    return Progress(*columns, transient=True)


@contextmanager
def byte_progress(description: str, total: int | None) -> Iterator:  # type: ignore[type-arg]
    """Yields ``advance(nbytes)``; shows bytes, rate, % and ETA on stderr when it is a terminal."""
    if not sys.stderr.isatty():
        yield lambda n: None
        return
    with transfer_progress() as progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)
