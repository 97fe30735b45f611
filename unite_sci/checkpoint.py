"""Checkpoints: one file per save, written atomically, loadable with ``weights_only=True``.

A save goes through :func:`unite_sci.files.atomic_write` (a ``step_XXXXXXXX.pt.<pid>-<tag>.tmp`` file,
flushed, fsynced, renamed over the final name, folder fsynced), so a crash leaves either the previous
set of complete checkpoints or the new one, never a half-written file under a valid name. ``last.pt``
is a copy of the newest (same procedure).
"""
from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from .errors import UserError
from .files import atomic_write

FORMAT = "unite-sci/1"
_STEP_RE = re.compile(r"^step_(\d{8})\.pt$")


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save through :func:`atomic_write`. Raises UserError on a full/readonly disk."""
    try:
        atomic_write(path, lambda fh: torch.save(obj, fh), binary=True)
    except OSError as e:
        raise UserError(f"cannot write checkpoint '{path}': {e.strerror or e}") from None


def save_checkpoint(state: dict[str, Any], ckpt_dir: Path, step: int, keep: int) -> Path:
    """Write ``step_XXXXXXXX.pt`` and ``last.pt``; prune to the ``keep`` newest step files."""
    state = {"format": FORMAT, **state}
    path = Path(ckpt_dir) / f"step_{step:08d}.pt"
    atomic_save(state, path)
    atomic_save(state, Path(ckpt_dir) / "last.pt")
    for old in list_checkpoints(ckpt_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Complete step checkpoints, oldest first (temporary files are never listed)."""
    d = Path(ckpt_dir)
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if _STEP_RE.match(p.name))


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load with ``weights_only=True``; UserError naming the file if it is missing or not ours."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint '{path}' does not exist")
    # torch.save writes a zip archive: anything else (a YAML file, random bytes, a cut-off download) is
    # refused here in one line, before torch.load answers with a paragraph about its own options.
    if not zipfile.is_zipfile(path):
        raise UserError(f"'{path}' is not a unite-sci checkpoint (cannot be read as a torch file; "
                        "wrong file, or truncated)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:  # weights_only refused a pickle of foreign objects
        raise UserError(f"'{path}' is not a unite-sci checkpoint (holds objects other than tensors "
                        "and plain data)") from None
    except Exception as e:  # damaged archive
        raise UserError(f"checkpoint '{path}' cannot be read: {str(e).splitlines()[0][:200]}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"checkpoint '{path}' is not a unite-sci checkpoint ({FORMAT})")
    return state


def latest_complete(ckpt_dir: Path) -> dict[str, Any] | None:
    """The newest checkpoint that loads; skips (and names) damaged ones. None if there is none."""
    for path in reversed(list_checkpoints(ckpt_dir)):
        try:
            state = load_checkpoint(path)
        except UserError as e:
            print(f"warning: skipping damaged checkpoint: {e}")
            continue
        state["path"] = str(path)
        return state
    return None
