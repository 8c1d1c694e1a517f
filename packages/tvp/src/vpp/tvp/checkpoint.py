"""Atomic, resumable training checkpoints shared by the TVP and policy trainers.

A checkpoint is a folder ``step-XXXXXXXX`` written under a temporary name and renamed when
complete, so a run killed mid-write leaves either the previous checkpoint or the new one, never a
half-written one that resume would pick up.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)

STATE_NAME = "trainer_state.json"


def checkpoint_dir(root: str | Path, step: int) -> Path:
    return Path(root) / f"step-{step:08d}"


def latest_checkpoint(root: str | Path) -> Path | None:
    root = Path(root)
    if not root.is_dir():
        return None
    complete = [p for p in root.glob("step-*") if p.is_dir() and (p / STATE_NAME).is_file()]
    return max(complete, key=lambda p: int(p.name.split("-")[1]), default=None)


def write_checkpoint(
    root: str | Path, step: int, write: Callable[[Path], None], state: dict, keep: int = 2
) -> Path:
    """Calls ``write(tmp_folder)`` for the payload, adds the trainer state, renames into place
    and prunes all but the newest ``keep`` checkpoints."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = checkpoint_dir(root, step)
    tmp = root / f".tmp-{final.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    write(tmp)
    (tmp / STATE_NAME).write_text(json.dumps({**state, "step": step}, indent=2))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    complete = sorted((p for p in root.glob("step-*") if (p / STATE_NAME).is_file()), key=lambda p: p.name)
    for old in complete[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    logger.info("checkpoint written: %s", final)
    return final


def read_state(folder: str | Path) -> dict:
    return json.loads((Path(folder) / STATE_NAME).read_text())
