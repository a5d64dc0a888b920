"""A job's step and progress in words, the same in the CLI, `orch jobs` and Flower.

The target agent reports machine-readable stages (``prefill``, ``rootfs``, ``snapshot s1 (2/3)``,
``verify``, ``commit``) with the volume being worked on; :func:`stage_words` turns them into what an
operator reads: "sending snapshot s1 (2/3)", "verifying rootfs (3/3)".
"""

from __future__ import annotations

from typing import Any

from orchestrator.chain import words_by_step
from orchestrator.units import human_rate, human_size

#: what each step of a chain does, in words
STEP_WORDS = words_by_step()


def stage_words(meta: dict[str, Any]) -> str:
    """The target's progress metadata as words (saying so when it resumes an interrupted transfer)."""
    words = _stage(meta)
    resumed = meta.get("resumed_volumes") or []
    if resumed and isinstance(resumed, list) and meta.get("stage") not in ("done", "commit"):
        words += f"; resumed: {', '.join(str(s) for s in resumed)} kept from an earlier attempt"
    return words


def _stage(meta: dict[str, Any]) -> str:
    stage = str(meta.get("stage") or "")
    volume, volumes = int(meta.get("volume") or 0), int(meta.get("volumes") or 0)
    name = str(meta.get("volume_name") or "")
    of = f" ({volume}/{volumes})" if volume and volumes > 1 else ""
    if stage == "prefill":
        return f"pre-filling {name or 'the volume'} from what the target has{of}"
    if stage == "verify":
        return f"verifying {name or 'the volume'}{of}"
    if stage == "rootfs" or stage.startswith("snapshot "):
        return f"sending {name or stage}{of}"
    return {
        "commit": "committing the verified copy",
        "image": "receiving the base image",
        "lxd-migration": "LXD is moving the data",
        "done": "verified",
        "": "starting the transfer",
    }.get(stage, stage)


def step_words(step: str, stage: str = "") -> str:
    """A job's current step (and, while transferring, its stage) as words."""
    if step == "transfer_delta" and stage:
        return stage
    words = STEP_WORDS.get(step, step)
    return f"{words} ({stage})" if stage else words


def progress_text(bytes_done: int, bytes_total: int, rate: float) -> str:
    """ "120.50MiB of 300.00MiB (40%) at 30.12MiB/s", or without a total "120.50MiB at 30.12MiB/s"."""
    text = human_size(bytes_done)
    if bytes_total:
        percent = min(99, 100 * bytes_done // max(bytes_total, 1))
        text += f" of {human_size(bytes_total)} ({percent}%)"
    if rate:
        text += f" at {human_rate(rate)}"
    return text
