"""Trained models that ship with the package: ``<name>.pt`` (the weights a run samples with, no optimiser
state) beside ``<name>.card.yaml`` (what it was trained on, how long, how it scored, the weights' sha256).

    unite-sci ship --checkpoint runs/X/checkpoints/last.pt --name mymodel --score   # make one from a run
    unite-sci sample --model mymodel --num 100 --out s/                           # use it by name
    m = unite_sci.load("mymodel")                                                   # from Python

Where shipped models are looked for, first match of a name wins:
1. the folders in ``$UNITE_SCI_MODELS`` (``os.pathsep``-separated), for models of one's own and for tests;
2. the package folder of each entry point in the ``unite_sci.models`` group (this repository's is
   ``unite_sci_models``, the ``models/`` folder; a third-party package can ship models the same way).

A shipped ``.pt`` is an ordinary checkpoint (:mod:`unite_sci.checkpoint` format, loadable with
``weights_only=True``) with ``model`` holding the weights to sample with and no ``ema``, ``optimizers`` or
``rng`` entries. Its sha256 is checked against the card every time it is loaded by name.
The card format is described in ``docs/models.md``.
"""
from __future__ import annotations

import datetime
import os
import re
import subprocess
from importlib.metadata import entry_points
from importlib.resources import files
from pathlib import Path
from typing import Any

import torch
import yaml

from .checkpoint import atomic_save, load_checkpoint
from .errors import UserError
from .files import file_hash, write_text

ENTRY_GROUP = "unite_sci.models"
BUILTIN = "builtin"  # the entry point whose folder `unite-sci ship` writes to by default
MODELS_ENV = "UNITE_SCI_MODELS"
CARD_SUFFIX = ".card.yaml"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.+-]*$")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DROPPED = ("ema", "optimizers", "rng", "phase", "phase_start", "skipped")  # training state a sampler needs not


# ---------------------------------------------------------------------------------------------- finding
def entry_point_dirs() -> dict[str, Path]:
    """Entry point name -> the folder of the package it names (group ``unite_sci.models``)."""
    out: dict[str, Path] = {}
    for ep in entry_points(group=ENTRY_GROUP):
        try:
            out[ep.name] = Path(str(files(ep.value)))
        except (ImportError, TypeError) as e:  # a broken third-party entry point must not break `list`
            print(f"warning: shipped-model entry point {ep.name!r} ({ep.value}) cannot be read: {e}")
    return out


def model_dirs() -> list[Path]:
    """Folders searched for shipped models, in order (``$UNITE_SCI_MODELS`` first)."""
    env = [Path(p) for p in os.environ.get(MODELS_ENV, "").split(os.pathsep) if p]
    return env + list(entry_point_dirs().values())


def shipped_models(dirs: list[Path] | None = None) -> dict[str, Path]:
    """Name -> ``.pt`` path of every shipped model (a card with its weights beside it) in ``dirs`` (default:
    :func:`model_dirs`), sorted by name."""
    found: dict[str, Path] = {}
    for d in model_dirs() if dirs is None else dirs:
        for card in sorted(d.glob(f"*{CARD_SUFFIX}")) if d.is_dir() else []:
            name = card.name[: -len(CARD_SUFFIX)]
            if name not in found and (d / f"{name}.pt").is_file():
                found[name] = d / f"{name}.pt"
    return dict(sorted(found.items()))


def card_path(weights: str | Path) -> Path:
    p = Path(weights)
    return p.with_name(p.name[: -len(".pt")] + CARD_SUFFIX if p.name.endswith(".pt") else p.name + CARD_SUFFIX)


def read_card(weights: str | Path) -> dict[str, Any]:
    """The card beside a shipped ``.pt``; UserError naming it when missing or not a mapping."""
    path = card_path(weights)
    try:
        card = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"model card '{path}' cannot be read: {str(e).splitlines()[0]}") from None
    if not isinstance(card, dict) or "weights" not in card:
        raise UserError(f"model card '{path}' is not a unite-sci model card (no weights section)")
    return card


def unknown_model(name: str) -> UserError:
    names = ", ".join(shipped_models()) or "none installed"
    return UserError(f"unknown model {name!r}; shipped models: {names}")


def resolve(name: str) -> Path:
    """The ``.pt`` of shipped model ``name`` after checking its sha256 against its card (one-line
    UserError on an unknown name, listing the shipped ones, or on a hash mismatch)."""
    path = shipped_models().get(name)
    if path is None:
        raise unknown_model(name)
    expected = str(read_card(path)["weights"].get("sha256", ""))
    actual = file_hash(path)
    if actual != expected:
        raise UserError(f"shipped model {name!r}: '{path}' has sha256 {actual[:16]}..., its card says "
                        f"{expected[:16] or 'nothing'}... (file changed or damaged: reinstall, or ship it again)")
    return path


def looks_like_name(text: str) -> bool:
    """A bare model name (``mymodel``), as opposed to a file path (``runs/x/last.pt``)."""
    return bool(NAME_RE.match(text)) and not text.endswith(".pt") and os.sep not in text


def summary(name: str, path: Path) -> str:
    """One line for ``unite-sci list``: modality, training, size and the headline numbers."""
    try:
        c = read_card(path)
    except UserError as e:
        return f"{name}: {e}"
    t, w, s = c.get("training", {}), c["weights"], c.get("scores") or {}
    gen = s.get("generation", {})
    head = ", ".join(f"{k} {gen[k]:.{1 if abs(gen[k]) >= 10 else 2}f}" for k in c.get("headline", [])
                     if isinstance(gen.get(k), (int, float)))
    cfg = f", CFG {s['cfg_scale']:g}" if s.get("cfg_scale") not in (None, 1.0) else ""  # 1: no guidance
    scored = (f"; {head} ({s.get('num_samples')} samples, temperature {s.get('temperature')}{cfg})" if head
              else "; not scored")
    parent = f", fine-tuned from {c['parent'].get('source')}" if isinstance(c.get("parent"), dict) else ""
    return (f"{name}: {c.get('modality')}, preset {c.get('recipe', {}).get('preset')}, {t.get('steps')} steps, "
            f"{t.get('cpu_hours')} CPU-h, {w.get('size_mb')} MB{parent}{scored}")


# ---------------------------------------------------------------------------------------------- making
def sampling_state(state: dict[str, Any], dtype: torch.dtype = torch.float32) -> tuple[dict[str, Any], str]:
    """A training checkpoint's state reduced to what sampling needs: ``model`` holds the EMA weights (the
    raw ones when the run's ``sample.use_ema`` is false), floating tensors stored as ``dtype``. Returns the
    state and which weights it holds (``"ema"`` or ``"raw"``)."""
    cfg = yaml.safe_load(state["config"])
    kind = "ema" if cfg.get("sample", {}).get("use_ema", True) else "raw"
    model = state["model"]
    # Shared weights appear under several state-dict names (encoder.* and denoiser.*) that torch.save stores
    # once, while the EMA lists each parameter once: every name of a tensor gets its EMA value, still shared.
    source: dict[tuple, torch.Tensor] = {}
    if kind == "ema":
        if "ema" not in state:
            raise UserError("the checkpoint holds no EMA weights (already shipped?); give the run's checkpoint")
        ema = {k: v for k, v in state["ema"].items() if k != "__updates__"}
        stray = sorted(set(ema) - set(model))
        if stray:
            raise UserError(f"the checkpoint's EMA names a parameter the model lacks: {stray[0]}")
        source = {tensor_key(model[k]): v for k, v in ema.items()}
    cast: dict[int, torch.Tensor] = {}
    weights = {}
    for k, v in model.items():
        v = source.get(tensor_key(v), v)
        if id(v) not in cast:  # one cast per tensor keeps shared names shared
            cast[id(v)] = v.to(dtype) if v.is_floating_point() else v
        weights[k] = cast[id(v)]
    kept = {k: v for k, v in state.items() if k not in DROPPED and k != "model" and k != "path"}
    return {**kept, "model": weights, "weights": kind}, kind


def git_commit(run_dir: Path | None, source: Path) -> tuple[str | None, str]:
    """The commit that trained a run, and how it was found: the newest commit of the source tree made
    before the run folder's ``config.yaml`` was written (the run's start), else the source tree's HEAD."""
    def git(*words: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(source), *words], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return (out.stdout.strip() or None) if out.returncode == 0 else None

    started = run_dir / "config.yaml" if run_dir is not None else None
    if started is not None and started.is_file():
        stamp = int(started.stat().st_mtime)
        sha = git("log", "-1", "--format=%H", f"--before=@{stamp}")
        if sha:
            when = datetime.datetime.fromtimestamp(stamp, datetime.timezone.utc).isoformat(timespec="seconds")
            return sha, f"newest commit before the run started ({when}, config.yaml written)"
    sha = git("rev-parse", "HEAD")
    return sha, "HEAD of the source tree at ship time (the run's start time was not found)" if sha else "unknown"


def cpu_model() -> str | None:
    """The processor's model name (``/proc/cpuinfo``), where the platform says no more than ``x86_64``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def tensor_key(v: torch.Tensor) -> tuple:
    """Where a tensor's values live: equal for two state-dict names of one shared parameter."""
    return v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape), tuple(v.stride())


def count_parameters(weights: dict[str, torch.Tensor]) -> int:
    """Floating-point values of a state dict, each tensor once: shared weights (encoder.* and denoiser.* of one
    Generative Encoder) appear under two names but are one set of parameters."""
    seen = {tensor_key(v): v.numel() for v in weights.values() if v.is_floating_point()}
    return int(sum(seen.values()))


def with_sample_settings(config_yaml: str, overrides: list[str]) -> str:
    """A saved run config with the ``sample.*`` words of ``overrides`` applied: how the shipped model samples
    by default (a run may have trained with other sampling settings than the ones it ships with)."""
    from omegaconf import OmegaConf

    words = [o for o in overrides if o.startswith("sample.")]
    if not words:
        return config_yaml
    return OmegaConf.to_yaml(OmegaConf.merge(OmegaConf.create(config_yaml), OmegaConf.from_dotlist(words)))


def ship(checkpoint: str | Path, name: str, out_dir: str | Path, dtype: str = "float32",
         commit: str | None = None, recipe: str = "", machine: dict[str, Any] | None = None,
         overrides: list[str] = ()) -> Path:
    """Write ``out_dir/<name>.pt`` (atomically) and its card (no scores yet: :func:`add_scores`).

    ``checkpoint``: a training checkpoint (``runs/X/checkpoints/last.pt``). ``recipe``: a line on how the
    run was chosen. ``machine``: where it trained (default: this machine). ``overrides``: its ``sample.*``
    words become the shipped model's sampling defaults. Returns the ``.pt`` path."""
    if not NAME_RE.match(name):
        raise UserError(f"model name {name!r} must be lower-case letters, digits and _ . + - (e.g. mymodel)")
    if dtype not in DTYPES:
        raise UserError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    checkpoint = Path(checkpoint)
    state = load_checkpoint(checkpoint)
    small, kind = sampling_state(state, DTYPES[dtype])
    small["config"] = with_sample_settings(small["config"], list(overrides))
    out = Path(out_dir) / f"{name}.pt"
    atomic_save(small, out)
    cfg = yaml.safe_load(small["config"])
    run_dir = checkpoint.resolve().parent.parent if checkpoint.parent.name == "checkpoints" else None
    if commit is None:
        commit, commit_how = git_commit(run_dir, Path(__file__).resolve().parents[1])
    else:
        commit_how = "given to unite-sci ship"
    threads = int(cfg["train"].get("threads") or 0) or os.cpu_count() or 1
    wall_h = float(state["elapsed"]) / 3600
    size = out.stat().st_size
    from . import __version__

    card = {
        "name": name,
        "modality": state["modality"],
        "data": {"split": "the adapter's default split (see the data config below and docs/models.md)",
                 "config": cfg.get("data", {})},
        "recipe": {"preset": cfg.get("model", {}).get("preset"), "note": recipe,
                   "parameters": count_parameters(small["model"]),
                   "config": cfg},
        "training": {"steps": int(state["step"]), "wall_s": round(float(state["elapsed"]), 1),
                     "wall_hours": round(wall_h, 3), "threads": threads,
                     "cpu_hours": round(wall_h * threads, 3), "device": cfg["train"].get("device"),
                     "machine": {**(machine or {}), "cpu_model": cpu_model()}, "commit": commit, "commit_found": commit_how},
        "weights": {"file": out.name, "sha256": file_hash(out), "size_bytes": size,
                    "size_mb": round(size / 2**20, 2), "dtype": dtype,
                    "holds": f"{'EMA' if kind == 'ema' else 'raw (the run samples without EMA)'} weights, "
                             "resolved config, adapter state; no optimiser state"},
        "shipped": {"date": datetime.date.today().isoformat(), "unite_sci_version": __version__,
                    "from_checkpoint": str(checkpoint), "adapter_class": state.get("adapter_class")},
        # a fine-tuned run names the model it started from (unite_sci.finetune); absent for a run from scratch
        **({"parent": cfg["init_from"]} if (cfg.get("init_from") or {}).get("source") else {}),
        "headline": [],
        "scores": None,
        "floor": None,
    }
    write_card(card, out)
    return out


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:  # the data config appears twice: write it twice, no &id001
        return True


def write_card(card: dict[str, Any], weights: Path) -> Path:
    """The card as YAML beside ``weights`` (atomically), keys in the order built."""
    text = yaml.dump(card, Dumper=_Dumper, sort_keys=False, width=110, allow_unicode=True)
    return write_text(text, card_path(weights))


def _numbers(d: dict[str, Any]) -> dict[str, float]:
    """The metrics of a results dict (plain numbers; wall times and counts of work are no scores)."""
    return {k: round(float(v), 4) for k, v in d.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and not k.endswith("_s")}


def find_results(report_dir: Path, weights: Path) -> dict[str, Any]:
    """The ``results.json`` (written by :func:`unite_sci.protocol.run_protocol`) under ``report_dir`` that
    scored ``weights``."""
    import json

    for path in sorted(Path(report_dir).rglob("results.json")):
        res = json.loads(path.read_text())
        if Path(str(res.get("checkpoint", ""))).resolve() == Path(weights).resolve():
            return res
    raise UserError(f"no results.json under '{report_dir}' scored '{weights}' (the benchmark wrote none)")


def add_scores(weights: Path, results: dict[str, Any], command: str, headline: list[str] | None = None,
               floor_margin: float = 20.0, floor_num: int = 20, floor_overrides: list[str] = (),
               floor: list[str] | None = None) -> dict[str, Any]:
    """Put a benchmark's measured numbers into the card of ``weights``, with the command that made them, the
    headline metrics (default: the first two generation metrics in percent) and the floor the tests check on
    ``floor_num`` samples: each ``floor`` metric (default: the headline ones) at the default temperature minus
    ``floor_margin`` points, never below 0, scored with the data settings ``floor_overrides``."""
    card = read_card(weights)
    gen = _numbers(results.get("generation", {}))
    samp = results.get("sampling", {})
    scores = {"command": command, "num_samples": samp.get("num_samples"), "seed": samp.get("seed"),
              "solver": samp.get("solver"), "steps": samp.get("steps"), "temperature": samp.get("temperature")}
    if samp.get("cfg_scale") is not None:  # the guidance scale the numbers are at (1: none)
        scores["cfg_scale"] = samp["cfg_scale"]
    scores["generation"] = gen
    for key in sorted(k for k in results if k.startswith("generation_temperature_")):  # rows beside the headline
        scores[key] = _numbers(results[key])
    scores["reconstruction"] = _numbers(results.get("reconstruction", {}))
    scores["reconstruction_num"] = results.get("reconstruction_num")
    if headline is None:
        headline = [k for k in gen if k != "num_samples" and 0 <= gen[k] <= 100][:2]
    floor = list(headline) if floor is None else floor
    missing = [k for k in [*headline, *floor] if k not in gen]
    if missing:
        raise UserError(f"headline metric {missing[0]!r} is not among the scored ones: {', '.join(gen)}")
    card["headline"] = list(headline)
    card["scores"] = scores
    card["floor"] = {"num_samples": floor_num, "margin": floor_margin, "overrides": list(floor_overrides),
                     "metrics": {k: round(max(0.0, gen[k] - floor_margin), 2) for k in floor}}
    if "split" in results.get("generation", {}):  # the modality's own words for its split, when it gives them
        card["data"]["split"] = results["generation"]["split"]
    write_card(card, weights)
    return card
