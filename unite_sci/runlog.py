"""Where a training run's numbers go: ``metrics.jsonl`` (one JSON row per log step, what the toolkit reads
back), ``train.log`` (the same rows as readable text) and, with ``train.tensorboard`` on, TensorBoard event
files under ``tb/`` (the ``tensorboard`` package's own writer, ``torch.utils.tensorboard.SummaryWriter``).

    log = RunLog(run_dir, tensorboard=True, resumed_at=None)
    log.write({"step": 25, "phase": "joint", "loss": 0.12})   # all three sinks
    log.pictures(adapter, samples, step=25)                   # the PNGs the adapter's export draws
    log.close()

TensorBoard tags: ``sample/*`` keys keep their name, every other numeric key goes under ``train/``
(``train/loss``); strings (the phase) go to the text log only. Open it with ``tensorboard --logdir runs/``.
"""
from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path
from typing import Any, Sequence

SAMPLE_PREFIX = "sample/"


def format_row(row: dict[str, Any]) -> str:
    """One metrics row as a line of text: ``step      25  joint  elapsed_s 12.3  loss 0.12 ...``."""
    head = f"step {row.get('step', 0):>8}"
    if "phase" in row:
        head += f"  {row['phase']}"
    rest = "  ".join(f"{k} {_fmt(v)}" for k, v in row.items() if k not in ("step", "phase"))
    return f"{head}  {rest}".rstrip()


def _fmt(v: Any) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def tag(key: str) -> str:
    """The TensorBoard tag of a metrics key."""
    return key if key.startswith(SAMPLE_PREFIX) else f"train/{key}"


def scalars(row: dict[str, Any]) -> dict[str, float]:
    """The numeric entries of a row (booleans and strings left out), keyed by TensorBoard tag."""
    return {tag(k): float(v) for k, v in row.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}


class RunLog:
    """The three sinks of one run folder, opened by rank 0 only.

    ``resumed_at``: the step a resumed run continues from, or None for a fresh run. A fresh run empties
    ``metrics.jsonl`` and ``train.log``; a resumed one keeps the rows up to that step (the trainer has cut
    the rest), rewrites ``train.log`` from them and tells TensorBoard to drop its events past that step.
    """

    def __init__(self, run_dir: Path, tensorboard: bool = True, resumed_at: int | None = None):
        self.dir = Path(run_dir)
        jsonl, text = self.dir / "metrics.jsonl", self.dir / "train.log"
        if resumed_at is None or not jsonl.is_file():
            jsonl.write_text("")
        rows = [json.loads(ln) for ln in jsonl.read_text().splitlines() if ln.strip()]
        text.write_text("".join(format_row(r) + "\n" for r in rows))
        self._jsonl, self._text = open(jsonl, "a"), open(text, "a")
        self.tb = _writer(self.dir / "tb", None if resumed_at is None else resumed_at + 1) if tensorboard else None

    def write(self, row: dict[str, Any]) -> None:
        """Append ``row`` (it holds ``step``) to every sink and flush, so a killed run keeps it."""
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()
        self._text.write(format_row(row) + "\n")
        self._text.flush()
        if self.tb is not None:
            for name, value in scalars(row).items():
                self.tb.add_scalar(name, value, row["step"])
            self.tb.flush()

    def pictures(self, adapter: Any, samples: Sequence[Any], step: int) -> list[str]:
        """Log as ``sample/<name>`` images the PNG files that ``adapter.export(samples, folder)`` writes
        (galleries, grids, cells); an adapter whose export draws none logs nothing. Returns the tags."""
        if self.tb is None:
            return []
        import matplotlib.image as mpimg

        tags = []
        with tempfile.TemporaryDirectory(prefix="unite-sci-tb-") as tmp:
            for path in sorted(Path(p) for p in adapter.export(list(samples), Path(tmp))):
                if path.suffix.lower() == ".png" and path.is_file():
                    image = mpimg.imread(path)  # (H, W, 3 or 4) floats in [0, 1], or (H, W) grey
                    name = f"{SAMPLE_PREFIX}{path.stem}"
                    self.tb.add_image(name, image, step, dataformats="HW" if image.ndim == 2 else "HWC")
                    tags.append(name)
        self.tb.flush()
        return tags

    def close(self) -> None:
        self._jsonl.close()
        self._text.close()
        if self.tb is not None:
            self.tb.close()


def _writer(folder: Path, purge_step: int | None) -> Any:
    """A SummaryWriter on ``folder``, or None (one warning) when the tensorboard package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        warnings.warn("train.tensorboard is on but the 'tensorboard' package is not installed "
                      "(pip install tensorboard): no TensorBoard logs", stacklevel=3)
        return None
    return SummaryWriter(log_dir=str(folder), purge_step=purge_step)
