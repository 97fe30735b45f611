"""Files written whole or not at all, and the hash that names a file's content.

Every file the toolkit writes for later runs to read (checkpoints, caches, samples, metrics, reports)
goes through :func:`atomic_write`: the bytes go to a temporary file in the same folder, are flushed and
fsynced, and ``os.replace`` moves them under the final name. A crash (a killed job, a full disk) then
leaves the previous file or the new one, never half a file under a valid name, and a reader never sees
a file in progress. The temporary name holds the process id and a random tag, so concurrent writers of
one path (two jobs filling the same cache) never write into each other's file; the last rename wins.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
import sys
from pathlib import Path
from typing import IO, Any, Callable

from .errors import UserError


def _fsync_dir(path: Path) -> None:
    # The rename itself lives in the folder's entry table: without this a power cut can undo it.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[IO[Any]], None], *, binary: bool) -> Path:
    """Call ``write(file)`` on a temporary file beside ``path``, then move it into place.

    Args:
        path: the final file; its folder is created when missing.
        write: fills the open file (e.g. ``lambda f: np.savez(f, **arrays)``); it must not close it.
        binary: open the file as bytes, else as UTF-8 text.
    Returns: ``path``. Raises whatever ``write`` or the file system raised (OSError on a full or
    read-only disk), after removing the temporary file; an existing file at ``path`` is then untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        # "x": never open another writer's file; plain open (not mkstemp) keeps the umask's permissions
        with open(tmp, "xb" if binary else "x", **({} if binary else {"encoding": "utf-8"})) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


CACHE_ENV = "UNITE_SCI_CACHE"


def cache_root() -> Path:
    """The one folder under which every modality keeps files it can rebuild (parsed data sets,
    reference statistics): ``$UNITE_SCI_CACHE`` if set, else ``~/.cache/unite-sci``. Not created here;
    writers create their own subfolder. Older releases also used ``~/.cache/unite_sci``; such files are not
    read any more and get rebuilt once (nothing is migrated).
    """
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "unite-sci"


def announce_build(what: str, why: str, about_s: float, cache_path: str | os.PathLike | None = None) -> None:
    """One line on stderr before a reference that takes a while is built: what, why, about how long
    (``about_s``, seconds), and where it is kept, so that a first use is never minutes of silence.

        note: building the reference statistics (10,000 training items) for the distribution metrics:
        about 2 min, once; cached in ~/.cache/unite-sci/<modality>/reference_10000.npz
    """
    about = f"{about_s / 60:.0f} min" if about_s >= 90 else f"{max(1, round(about_s))} s"
    where = f"; cached in {cache_path}" if cache_path is not None else ""
    print(f"note: building {what} for {why}: about {about}, once{where}", file=sys.stderr, flush=True)


def writable_dir(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Create ``path`` (and parents) and prove a file can be written there; UserError naming it if not.

    Called before any sampling or training, so that a read-only or mistyped ``--out`` is refused in
    one line at once instead of after an hour of work. ``mkdir`` alone succeeds on an existing
    read-only folder, hence the probe file (removed again).
    """
    path = Path(path)
    probe = path / f".write-test.{os.getpid()}-{secrets.token_hex(4)}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        with open(probe, "x"):
            pass
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write to {what} '{path}': {e.strerror or e}") from None
    return path


def file_hash(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MB blocks, so any size fits in memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def json_ready(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, +-inf) inside dicts, lists and tuples replaced by None.

    Strict JSON has no such numbers: ``json.dumps`` would write the bare word ``NaN``, which most JSON
    readers refuse. An undefined number (a percentage of nothing, a mean over no matches) becomes null.
    """
    if isinstance(obj, float):  # numpy's float64 included
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    return obj


def write_text(text: str, path: str | os.PathLike) -> Path:
    """Atomic text write; UserError naming the path when the folder cannot be written."""
    try:
        return atomic_write(path, lambda f: f.write(text), binary=False)
    except OSError as e:
        raise UserError(f"cannot write '{path}': {e.strerror or e}") from None


def write_json(obj: Any, path: str | os.PathLike) -> Path:
    """Atomic JSON write (indent 2, non-finite numbers as null, other objects as ``str``), as
    :func:`write_text`."""
    return write_text(json.dumps(json_ready(obj), indent=2, default=str), path)


def beside(per_sample_csv: str | os.PathLike, name: str) -> Path:
    """A figure's path beside a per-sample CSV, named like it: for ``bond_lengths.png``,
    ``per_sample.csv`` gives ``bond_lengths.png``, ``per_sample_temperature_1.csv`` gives
    ``bond_lengths_temperature_1.png`` and ``run_per_sample.csv`` gives ``run_bond_lengths.png``, so two
    sample sets in one folder never overwrite each other's picture."""
    csv = Path(per_sample_csv)
    before, found, after = csv.stem.partition("per_sample")
    stem, dot, ext = name.rpartition(".")
    return csv.with_name(f"{before}{stem}{after}{dot}{ext}" if found else f"{csv.stem}_{name}")
