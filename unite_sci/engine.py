"""Library functions behind the CLI: one per subcommand, usable from Python as well.

    cfg = load_config("toy", overrides=["train.max_steps=200"])
    summary = train(cfg)
    loaded = load_model(summary["checkpoint"])  # a LoadedModel: model, adapter, cfg and checkpoint facts
    samples, info = generate(loaded.model, loaded.adapter, loaded.cfg.sample)
"""
from __future__ import annotations

import os
import platform
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from importlib.resources import as_file
from pathlib import Path
from typing import Any

import torch

from .adapter import Adapter, available, default_config_source, get_adapter_class, unknown_modality
from .checkpoint import load_checkpoint
from .conditions import Cond
from .config import RunConfig, SampleConfig, build_config, from_yaml, to_yaml
from .errors import UserError
from .files import file_hash, writable_dir, write_json
from .model import CPU_PRESETS
from .sampling import sample_latents
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


def train(cfg: RunConfig, resume: bool = False) -> dict[str, Any]:
    """Train a run folder ``cfg.out``; returns a summary with the final checkpoint path."""
    adapter = make_adapter(cfg)
    return Trainer(cfg, adapter, Path(cfg.out)).fit(resume=resume)


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
    """Rebuild model and adapter from a checkpoint (EMA weights unless ``sample.use_ema`` says otherwise,
    or ``use_ema`` is given), in eval mode.

    ``overrides`` may change sampling and data settings (``sample.*``, ``data.*``), not the model.

        loaded = load_model("runs/toy/checkpoints/last.pt", overrides=["sample.steps=10"])
        samples, info = generate(loaded.model, loaded.adapter, loaded.cfg.sample)
        loaded.train_steps, loaded.ema  # also in provenance(loaded), beside every reported number
    """
    state = load_checkpoint(Path(checkpoint))
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
    if use_ema:
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(state["ema"][name])
    return LoadedModel(model=model.to(resolve_device(device)).eval(), adapter=adapter, cfg=cfg,
                       checkpoint=str(checkpoint), checkpoint_sha256=file_hash(checkpoint)[:16],
                       train_steps=state["step"], train_wall_s=round(state["elapsed"], 1), ema=use_ema)


@torch.no_grad()
def generate(model: Unite, adapter: Adapter, scfg: SampleConfig, num: int | None = None,
             cond: torch.Tensor | None = None, progress: bool = True, given: dict[str, Any] | None = None,
             conds: dict[str, torch.Tensor] | None = None, sizes: torch.Tensor | None = None,
             ) -> tuple[list[Any], dict[str, Any]]:
    """Sample ``num`` domain objects; returns them and the sampling settings and speed.

    ``cond``: class labels (num,). Structured conditions (an adapter with ``condition_specs``): ``given``
    fixes some by name in the user's units and the adapter draws the rest from the training data, or
    ``conds`` gives them ready-made (num rows, with the element counts ``sizes`` they imply)."""
    from tqdm import tqdm

    num = num or scfg.num
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(scfg.seed)
    if cond is None:  # class-balanced labels for conditional data, null otherwise
        cond = (torch.arange(num) % adapter.num_classes if adapter.num_classes
                else torch.full((num,), model.encoder.null_class))
    if conds is None:
        draw = getattr(adapter, "draw_conditions", None)
        conds, sizes = draw(num, gen, dict(given or {})) if draw is not None else ({}, None)
    if sizes is None:
        sizes = adapter.sample_sizes(num, gen)
    shift = model.cfg.flow.shift if scfg.shift is None else scfg.shift
    out: list[Any] = []
    nfe_total, t0 = 0, time.time()
    for lo in tqdm(range(0, num, scfg.batch_size), desc="sample", disable=not progress, dynamic_ncols=True):
        hi = min(lo + scfg.batch_size, num)
        mask = adapter.layout.mask_from_sizes(sizes[lo:hi]) if sizes is not None else None
        k = mask.shape[1] + adapter.layout.extra if mask is not None else adapter.layout.count
        noise = scfg.temperature * torch.randn(hi - lo, k, model.cfg.model.latent_dim, generator=gen).to(device)
        mask = mask.to(device) if mask is not None else None
        rows = Cond(cond[lo:hi], {k: v[lo:hi] for k, v in conds.items()}).to(device)
        regs = model.registers(mask, hi - lo, device, rows.extra)

        def denoise(x, t, c, sc=None, r=regs):  # guidance doubles the batch: repeat the registers with it
            return model.denoiser.denoise(x, t, c.label, r.repeat(x.shape[0] // r.mask.shape[0]), self_cond=sc,
                                          conds=c.extra)

        z, nfe = sample_latents(denoise, noise, cond=rows, null=model.encoder.null_class,
                                solver=scfg.solver, steps=scfg.steps, shift=shift, clamp=model.cfg.flow.clamp,
                                cfg=scfg.cfg, cfg_interval=tuple(scfg.cfg_interval), atol=scfg.atol,
                                rtol=scfg.rtol, self_condition=model.cfg.flow.self_condition > 0,
                                final_euler=scfg.final_euler)
        nfe_total += nfe
        dec = model.decode(z, mask, regs)
        if rows.extra:
            dec = adapter.apply_conditions(dec, rows.extra, mask)
        finish = getattr(adapter, "finish_samples", None)  # optional (AdapterBase): a generation-only repair
        out.extend(adapter.to_domain(finish(dec, mask) if finish is not None else dec, mask))
    wall = time.time() - t0
    info = {"num_samples": num, "solver": scfg.solver, "steps": scfg.steps, "final_euler": scfg.final_euler,
            "temperature": scfg.temperature,
            "time_shift": shift, "cfg_scale": scfg.cfg,
            "cfg_interval": list(scfg.cfg_interval), "seed": scfg.seed, "nfe_per_batch": nfe_total /
            max(1, -(-num // scfg.batch_size)), "sampling_wall_s": round(wall, 2),
            "samples_per_s": round(num / max(wall, 1e-9), 2)}
    return out, info


@torch.no_grad()
def reconstruct(model: Unite, adapter: Adapter, split: str = "test", num: int = 1000,
                batch_size: int = 256, progress: bool = True) -> tuple[list[Any], list[Any]]:
    """Encode -> decode ``num`` items of a split (no decoder noise); inputs and reconstructions."""
    data = adapter.build_splits()[split]
    return reconstruct_items(model, adapter, [data[i] for i in range(min(num, len(data)))], batch_size, progress)


@torch.no_grad()
def reconstruct_items(model: Unite, adapter: Adapter, items: list[Any], batch_size: int = 256,
                      progress: bool = True) -> tuple[list[Any], list[Any]]:
    """Encode -> decode data set items (no decoder noise); inputs and reconstructions as domain objects."""
    from tqdm import tqdm

    device = next(model.parameters()).device
    inputs, recons = [], []
    for lo in tqdm(range(0, len(items), batch_size), desc="reconstruct", disable=not progress, dynamic_ncols=True):
        batch = adapter.collate(items[lo:lo + batch_size])
        inputs.extend(adapter.batch_to_domain(batch))
        batch = batch.to(device)
        regs = model.registers(batch.mask, len(batch), device, batch.conds)
        recons.extend(adapter.to_domain(model.decode(model.encode(batch, regs), batch.mask, regs), batch.mask))
    return inputs, recons


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
    metrics["evaluation_wall_s"] = round(time.time() - t0, 2)
    metrics["samples_path"] = str(path)
    metrics.update(provenance())
    return metrics


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
                   condition: dict[str, Any] | None = None) -> dict[str, Any]:
    """CLI ``sample``: load, generate, export in the modality's formats, record the settings."""
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
    meta = {**info, "condition": condition or {}, **provenance(loaded), "files": [str(f) for f in files], "config": to_yaml(cfg)}
    write_json(meta, out_dir / "samples_meta.json")
    return meta
