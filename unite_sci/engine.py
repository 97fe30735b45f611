"""Library functions behind the CLI: one per subcommand, usable from Python as well.

    cfg = load_config("toy", overrides=["train.max_steps=200"])
    summary = train(cfg)
    loaded = load_model(summary["checkpoint"])  # a LoadedModel: model, adapter, cfg and checkpoint facts
    samples, info = generate(loaded.model, loaded.adapter, loaded.cfg.sample)
"""
from __future__ import annotations

import os
import platform
import sys
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from importlib.resources import as_file
from pathlib import Path
from typing import Any, Iterable

import torch

from .adapter import Adapter, available, default_config_source, get_adapter_class, unknown_modality
from .checkpoint import list_checkpoints, load_checkpoint
from .config import RunConfig, build_config, from_yaml, to_yaml
from .errors import UserError
from .files import file_hash, writable_dir, write_json
from .generation import generate, reconstruct, reconstruct_items  # noqa: F401  (re-exported: one import for callers)
from .model import CPU_PRESETS
from .shipped import looks_like_name, resolve as resolve_shipped
from .trainer import Trainer, resolve_device
from .unite import Unite, resolve_arch

CONFIG_DIR = Path(os.environ.get("UNITE_SCI_CONFIGS", Path(__file__).resolve().parents[1] / "configs"))


def load_config(modality: str, config_file: str | None = None, overrides: list[str] = ()) -> RunConfig:
    """Schema defaults <- the adapter package's shipped defaults (``default_config`` or ``<modality>.yaml``
    beside its module, if any) <- ``configs/<modality>.yaml`` of this repository (if present) <-
    ``config_file`` <- ``key=value`` overrides. Later sources win key by key."""
    cls = get_adapter_class(modality)
    shipped = default_config_source(cls)
    with ExitStack() as stack:  # a packaged (even zipped) resource as a real file while it is read
        files: list[Any] = [] if shipped is None else [
            shipped if isinstance(shipped, dict) else stack.enter_context(as_file(shipped))]
        files += [p for p in [CONFIG_DIR / f"{modality}.yaml"] if p.is_file()]
        if config_file:
            files.append(Path(config_file))
        return build_config(modality, cls.config_class, files, overrides)


def make_adapter(cfg: RunConfig) -> Adapter:
    return get_adapter_class(cfg.modality)(cfg.data)


def train(cfg: RunConfig, resume: bool = False, given_model_keys: Iterable[str] = ()) -> dict[str, Any]:
    """Train a run folder ``cfg.out``; returns a summary with the final checkpoint path.

    With ``cfg.init_from.source`` (a shipped model's name or a checkpoint) the run is a fine-tuning of that
    parent (:mod:`unite_sci.finetune`): its architecture, its weights before the first step (not when resuming
    a run that has a checkpoint already). ``given_model_keys``: the ``model.*`` keys the user set, refused
    where they contradict the parent (:func:`unite_sci.finetune.model_keys` finds them)."""
    parent = None
    if cfg.init_from.source:
        from .finetune import child_config, load_parent

        parent = load_parent(cfg.init_from.source)
        cfg = child_config(cfg, parent, given_model_keys)
    adapter = make_adapter(cfg)
    trainer = Trainer(cfg, adapter, Path(cfg.out))
    if parent is not None and not (resume and list_checkpoints(Path(cfg.out) / "checkpoints")):
        from .finetune import inherit_weights

        done = inherit_weights(trainer.model, adapter, parent, trainer.ema)
        if trainer.rank == 0:
            print(done.line(parent), file=sys.stderr, flush=True)
    return trainer.fit(resume=resume)


@dataclass(frozen=True)
class LoadedModel:
    """What :func:`load_model` rebuilds from a checkpoint, and the facts every report records about it."""

    model: Unite  # in eval mode, on the requested device
    adapter: Adapter
    cfg: RunConfig  # the checkpoint's config with any sample.* / data.* overrides
    checkpoint: str  # the path as given
    checkpoint_sha256: str  # short hash of the file
    train_steps: int
    train_wall_s: float
    ema: bool  # True: the EMA weights were loaded

    def checkpoint_info(self) -> dict[str, Any]:
        """The checkpoint facts as recorded in metrics and sample files."""
        return {"checkpoint": self.checkpoint, "checkpoint_sha256": self.checkpoint_sha256,
                "train_steps": self.train_steps, "train_wall_s": self.train_wall_s, "ema": self.ema}


def load_model(checkpoint: str | Path, device: str = "auto", use_ema: bool | None = None,
               overrides: list[str] = ()) -> LoadedModel:
    """Rebuild model and adapter from a checkpoint, or a shipped model by name (see ``unite-sci list``; its
    sha256 is checked against its card: :mod:`unite_sci.shipped`), with the EMA weights unless
    ``sample.use_ema`` says otherwise or ``use_ema`` is given, in eval mode.

    ``overrides`` may change sampling and data settings (``sample.*``, ``data.*``), not the model.

        loaded = load_model("runs/toy/checkpoints/last.pt", overrides=["sample.steps=10"])
        samples, info = generate(loaded.model, loaded.adapter, loaded.cfg.sample)
        loaded.train_steps, loaded.ema  # also in provenance(loaded), beside every reported number
    """
    path = Path(checkpoint)
    if not path.exists() and looks_like_name(str(checkpoint)):  # a shipped model by name, hash checked
        checkpoint = path = resolve_shipped(str(checkpoint))
    state = load_checkpoint(path)
    if state["modality"] not in available():  # name the adapter class it was trained with, if recorded
        raise unknown_modality(state["modality"], state.get("adapter_class", ""))
    cls = get_adapter_class(state["modality"])
    cfg = from_yaml(state["config"], cls.config_class)
    fixed = [o for o in overrides if not o.startswith(("sample.", "data."))]
    if fixed:
        raise UserError(f"override {fixed[0]!r} cannot change a trained checkpoint (only sample.* and data.*)")
    if overrides:
        import tempfile

        with tempfile.NamedTemporaryFile("w", suffix=".yaml") as fh:
            fh.write(to_yaml(cfg))
            fh.flush()
            cfg = build_config(cfg.modality, cls.config_class, [fh.name], list(overrides))
    if use_ema is None:
        use_ema = cfg.sample.use_ema
    adapter = cls(cfg.data)
    adapter.load_state_dict(state.get("adapter_state", {}))
    model = Unite(adapter, cfg)
    model.load_state_dict(state["model"])
    if use_ema and "ema" in state:  # a shipped model has none: its ``model`` already holds them
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(state["ema"][name])
    if "ema" not in state:
        use_ema = state.get("weights") == "ema"
    return LoadedModel(model=model.to(resolve_device(device)).eval(), adapter=adapter, cfg=cfg,
                       checkpoint=str(checkpoint), checkpoint_sha256=file_hash(checkpoint)[:16],
                       train_steps=state["step"], train_wall_s=round(state["elapsed"], 1), ema=use_ema)


def provenance(loaded: LoadedModel | None = None) -> dict[str, Any]:
    """What every metrics file records beside its numbers (SPEC section 9); with ``loaded``, the
    checkpoint's facts and the model's size as well."""
    import importlib.metadata as md

    versions = {}
    for pkg in ("unite-sci", "torch", "numpy", "rdkit", "openbabel-wheel", "pymatgen", "smact", "ase", "lpips"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    info: dict[str, Any] = {"library_versions": versions, "machine": machine_description()}
    if loaded is not None:
        info.update(loaded.checkpoint_info())
        cfg, arch = loaded.cfg, resolve_arch(loaded.cfg)
        info["model"] = {"preset": cfg.model.preset, "cpu_preset": cfg.model.preset in CPU_PRESETS,
                         **asdict(arch), "latent_dim": cfg.model.latent_dim,
                         "shared_weights": cfg.model.shared_weights, "train_mode": cfg.train.mode}
    return info


def machine_description() -> dict[str, Any]:
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def evaluate_path(modality: str, samples: str, per_sample_csv: str | None = None,
                  data_overrides: list[str] = ()) -> dict[str, Any]:
    """Generation metrics of samples on disk (scoring is redone without sampling again)."""
    path = Path(samples)
    if not path.exists():
        raise UserError(f"samples path '{path}' does not exist")
    cfg = load_config(modality, overrides=list(data_overrides))
    adapter = make_adapter(cfg)
    objs = adapter.load_samples(path)
    t0 = time.time()
    metrics = adapter.evaluate(objs, per_sample_csv)
    if getattr(cfg.data, "physics", False):  # relaxation and physical checks: minutes, so opt-in
        from .physics import physics_metrics

        metrics.update(physics_metrics(adapter, objs, path, per_sample_csv))
    asked = requested_condition(path)
    if asked:  # what the samples were asked to be, and how far they are it
        metrics.update(adapter.condition_metrics(objs, asked) if hasattr(adapter, "condition_metrics") else {})
        metrics["condition"] = asked
    metrics["evaluation_wall_s"] = round(time.time() - t0, 2)
    metrics["samples_path"] = str(path)
    metrics.update(provenance())
    return metrics


def requested_condition(samples: Path) -> dict[str, Any]:
    """The ``--condition`` words ``sample`` recorded in samples_meta.json beside ``samples`` (a folder or a file
    in it); {} when there are none or no such file."""
    import json

    meta = (samples if samples.is_dir() else samples.parent) / "samples_meta.json"
    try:
        condition = json.loads(meta.read_text()).get("condition") or {}
    except (OSError, ValueError, AttributeError):
        return {}
    return condition if isinstance(condition, dict) else {}


def relax_path(samples: str, out: str, modality: str | None = None, overrides: list[str] = (),
               progress: bool = True, command: str | None = None) -> dict[str, Any]:
    """CLI ``relax``: read samples (any format ``evaluate`` reads), relax them into ``out`` with the
    modality's tool; returns the summary also written to ``out/relax_meta.json`` (with ``command``, the
    command line that ran it, when given)."""
    from .physics import RELAX_META, modality_of, require_physics

    src = Path(samples)
    if not src.exists():
        raise UserError(f"samples path '{src}' does not exist")
    modality = modality or modality_of(src)
    if not modality:
        raise UserError(f"cannot tell the modality of '{src}' (no samples_meta.json beside it): pass --modality")
    adapter = make_adapter(load_config(modality, overrides=list(overrides)))
    require_physics(adapter)
    objs = adapter.load_samples(src)
    if not objs:
        raise UserError(f"no samples in '{src}'")
    out_dir = Path(out)
    if out_dir.resolve() == (src if src.is_dir() else src.parent).resolve():
        raise UserError("--out must differ from the samples' folder (the relaxed samples would replace them)")
    (out_dir / RELAX_META).unlink(missing_ok=True)  # unfinished until the summary is written again
    t0 = time.time()
    summary = adapter.relax(objs, out_dir, progress=progress)
    summary = {"modality": modality, "samples": str(src), "num_samples": len(objs),
               "wall_s": round(time.time() - t0, 2), **summary, **provenance(),
               **({"command": command} if command else {})}
    write_json(summary, out_dir / RELAX_META)
    return summary


def class_condition(adapter: Adapter, num: int, condition: dict[str, Any] | int | None) -> torch.Tensor | None:
    """Labels (num,) for ``condition``'s class (``{"class": 3}`` or ``3``), None for none; one-line errors.

    Other keys of a dict are the adapter's structured conditions (``split_condition``)."""
    if isinstance(condition, dict):
        condition = condition.get("class")
    if condition is None:
        return None
    try:
        label = int(condition)
    except (TypeError, ValueError):
        raise UserError(f"class must be an integer, got {condition!r}") from None
    if not adapter.num_classes or not 0 <= label < adapter.num_classes:
        raise UserError(f"class {label} is not a class of this checkpoint ({adapter.num_classes} classes)")
    return torch.full((num,), label, dtype=torch.long)


def structured_condition(condition: dict[str, Any] | int | None) -> dict[str, Any]:
    """The non-class part of a user's condition (checked by the adapter's ``draw_conditions``)."""
    return {k: v for k, v in condition.items() if k != "class"} if isinstance(condition, dict) else {}


def sample_to_disk(checkpoint: str, out: str, num: int, overrides: dict[str, Any],
                   condition: dict[str, Any] | None = None, command: str | None = None) -> dict[str, Any]:
    """CLI ``sample``: load, generate, export in the modality's formats, record the settings (and
    ``command``, the command line, when given)."""
    loaded = load_model(checkpoint)
    out_dir = writable_dir(out)  # before sampling: a bad --out must not cost the sampling time
    adapter, cfg = loaded.adapter, loaded.cfg
    scfg = cfg.sample
    for k, v in overrides.items():
        if v is not None:
            setattr(scfg, k, v)
    cond = class_condition(adapter, num, condition)
    samples, info = generate(loaded.model, adapter, scfg, num, cond=cond, given=structured_condition(condition))
    files = adapter.export(samples, out_dir)
    meta = {**info, "condition": condition or {}, **provenance(loaded), "files": [str(f) for f in files],
            "config": to_yaml(cfg), **({"command": command} if command else {})}
    write_json(meta, out_dir / "samples_meta.json")
    return meta
