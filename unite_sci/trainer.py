"""Training loop: optimisers, schedule, EMA, data order, distributed data parallel, checkpoints.

Exact resume: the data order is a function of (seed, epoch), every step reseeds the RNGs from
(seed, step, rank), and checkpoints hold model, EMA, optimisers, step and RNG states. A run of N steps
therefore equals N/2 steps + resume + N/2 steps bit for bit on the CPU, with any thread count and any
load on the machine as long as ``train.deterministic`` is on (the default).

SIGINT / SIGTERM: the current step finishes, a checkpoint is written and the run stops with
:class:`~unite_sci.errors.Interrupted` (the CLI exits 130 / 143); see :mod:`unite_sci.stopping`.

Sample quality during training: every ``train.sample_every`` steps rank 0 generates ``train.sample_num``
samples with the EMA weights and logs the adapter's ``quick_metrics`` as a ``sample/*`` row of
metrics.jsonl (plotted beside the losses in loss.png; with ``train.tensorboard`` the pictures its export draws
go to TensorBoard too). The hook leaves weights, modes and every RNG stream
as it found them, so it changes no trained weight.

``train.budget_minutes`` counts training steps only (data loading included). Two other parts of a run's wall
time are recorded beside it, never counted: data preparation (``build_splits``: parsing, caches, reference
sets) before the first step, ``data_prep_s`` in the step-0 row of metrics.jsonl, and the in-run sampling
above, ``sample_wall_s`` (the running total) in every ``sample/*`` row. The summary ``fit`` returns splits
the run into the three (``time_split_s``). A run with the hook therefore makes as many steps in its budget as
one without it. Time is read from :attr:`Trainer.clock` (a seam: tests swap in a fake clock).
"""
from __future__ import annotations

import json
import math
import os
import random
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Sampler

from .adapter import Adapter, Batch, class_path, has_quick_metrics
from .checkpoint import latest_complete, save_checkpoint
from .compiling import compile_decision, first_compiled_call, persistent_compile_cache, repair_compile_cache
from .config import RunConfig, to_yaml
from .errors import Interrupted, UserError
from .generation import generate
from .optim import EMA, FiniteGuard, build_optimizers, lr_at
from .collapse import stalled_warning
from .plots import plot_losses
from .runlog import RunLog
from .stopping import StopSignals, signal_name, stop_at_once
from .unite import Phase, Unite


# ----------------------------------------------------------------------------- environment
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {name!r} requested but no CUDA device is available")
    return torch.device(name)


def dist_info() -> tuple[int, int]:
    """(rank, world size) of a torchrun launch, (0, 1) otherwise."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def init_distributed(device: torch.device) -> tuple[int, int]:
    rank, world = dist_info()
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world


def step_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step * 9_973 + rank) % (2**63 - 1)


SAMPLE_STREAM = 2**31  # the "rank" of the sampling hook's seeds: no process has it, so no stream is shared


# ----------------------------------------------------------------------------- data order
class StepBatchSampler(Sampler[list[int]]):
    """Index batches as a pure function of the step: epoch e uses permutation(seed + e).

    The global batch of a step is split across ranks, so 2 processes see exactly the samples that
    1 process sees with the same global batch size. With ``sizes`` (elements per item) and
    ``bucket`` > 1, each run of ``bucket`` consecutive batches is re-cut from the same items sorted by
    size, so batches of variable-size data carry little padding (the batches' order stays random).
    """

    def __init__(self, size: int, batch: int, seed: int, start_step: int, rank: int = 0, world: int = 1,
                 sizes: "np.ndarray | None" = None, bucket: int = 0):
        if batch % world:
            raise UserError(f"train.batch_size {batch} is not divisible by the {world} processes")
        if size < batch:
            raise UserError(f"training set has {size} items, fewer than train.batch_size {batch}")
        self.size, self.batch, self.seed, self.start = size, batch, seed, start_step
        self.rank, self.world = rank, world
        self.per_epoch = size // batch
        self.sizes = None if sizes is None or bucket <= 1 else torch.as_tensor(sizes)
        self.bucket = bucket
        self._epoch: tuple[int, torch.Tensor] | None = None

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        """All global batches of an epoch, (per_epoch, batch)."""
        if self._epoch is None or self._epoch[0] != epoch:
            g = torch.Generator().manual_seed(self.seed + epoch)
            perm = torch.randperm(self.size, generator=g)[: self.per_epoch * self.batch]
            if self.sizes is not None:
                chunk = self.bucket * self.batch
                parts = []
                for lo in range(0, len(perm), chunk):
                    part = perm[lo:lo + chunk]
                    part = part[torch.argsort(self.sizes[part], stable=True)].view(-1, self.batch)
                    parts.append(part[torch.randperm(len(part), generator=g)])
                perm = torch.cat(parts)
            self._epoch = (epoch, perm.view(self.per_epoch, self.batch))
        return self._epoch[1]

    def indices(self, step: int) -> list[int]:
        epoch, i = divmod(step, self.per_epoch)
        glob = self._epoch_order(epoch)[i]
        local = self.batch // self.world
        return glob[self.rank * local:(self.rank + 1) * local].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start
        while True:
            yield self.indices(step)
            step += 1

    def __len__(self) -> int:
        return 2**62


def rng_state() -> dict[str, Any]:
    py = random.getstate()
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": [py[0], list(py[1]), py[2]],
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]]}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), *n[2:]))


# ----------------------------------------------------------------------------- the loop
class Trainer:
    """Trains one run folder: ``config.yaml``, ``metrics.jsonl`` (its first row at step 0), ``train.log``,
    ``tb/`` (TensorBoard, see :mod:`unite_sci.runlog`), ``checkpoints/``, ``loss.png``."""

    def __init__(self, cfg: RunConfig, adapter: Adapter, out_dir: Path):
        self.cfg, self.adapter, self.out = cfg, adapter, Path(out_dir)
        t = cfg.train
        self.device = resolve_device(t.device)
        if t.threads:
            torch.set_num_threads(t.threads)
        if t.deterministic and self.device.type == "cpu":
            # some multi-threaded CPU kernels otherwise accumulate in an order set by thread timing, so
            # a loaded machine changes the last bits; warn_only: an op without such a kernel still runs
            torch.use_deterministic_algorithms(True, warn_only=True)
        self.rank, self.world = init_distributed(self.device)
        torch.manual_seed(t.seed)
        t0 = time.time()
        with stop_at_once("preparing the data", "nothing was trained; caches already written are complete "
                          "and reused by the next run"):
            self.splits = adapter.build_splits()
        self.data_prep_s = round(time.time() - t0, 2)  # data set parsing and caches: never counted in elapsed
        self.model = Unite(adapter, cfg).to(self.device)
        self.model.shard = (self.rank, self.world)
        self.ema = EMA(self.model, cfg.optim.ema_decay, cfg.optim.ema_warmup)
        self.base_lr = cfg.optim.lr * (t.batch_size / cfg.optim.lr_reference_batch
                                       if cfg.optim.lr_reference_batch else 1.0)
        self.step, self.elapsed = 0, 0.0  # elapsed: seconds of training steps, what the budget counts
        self.sample_wall_s = 0.0  # seconds of in-run sampling (all of this run's, resumes included)
        # seconds; the budget's clock (train.budget_clock), replaceable in tests
        self.clock = time.process_time if cfg.train.budget_clock == "cpu" else time.perf_counter
        self.guard = FiniteGuard(self.device, t.max_nonfinite)
        self.resumed_from: str | None = None  # the checkpoint file :meth:`resume` loaded
        self.compiled, self.compile_why = compile_decision(t, self.device, torch.get_num_threads())
        self._sampling = has_quick_metrics(adapter)
        self.runlog: RunLog | None = None  # rank 0's metrics.jsonl / train.log / tb/, open while fitting
        if t.sample_every and not self._sampling and self.rank == 0:
            warnings.warn(f"train.sample_every is set, but the {adapter.name!r} adapter has no quick_metrics: "
                          "no samples are drawn during training", stacklevel=2)
        self.enter_phase(Phase.JOINT if t.mode == "single_stage" else Phase.TOKENIZER)

    # ------------------------------------------------------------------ set-up
    @property
    def phase(self) -> Phase:
        """The current phase; the model holds it, :meth:`enter_phase` alone changes it."""
        return self.model.phase

    def enter_phase(self, phase: Phase) -> None:
        """Begin ``phase`` at the current step: the model's phase, which parameters train, fresh optimisers
        (and the DDP / compile wrappers built around them) and a restarted EMA warm-up.

        The warm-up restart matters at the two-stage switch: the new denoiser's average must not start at
        full decay (it would hold mostly its random init after a short phase), and the now frozen
        tokenizer's average moves to the very weights that made the denoiser's latents.
        """
        self.model.phase, self.phase_start = Phase(phase), self.step
        self.ema.updates = 0
        params = [p for p in self.model.trainable_for_phase()]
        for p in self.model.parameters():
            p.requires_grad_(any(p is q for q in params))
        named = {id(p): n for n, p in self.model.named_parameters()}
        self.optimizers = build_optimizers(params, named, self.cfg.optim, self.base_lr)
        self.ddp = self.model
        if self.world > 1:
            self.ddp = nn.parallel.DistributedDataParallel(
                self.model, find_unused_parameters=self.phase != Phase.JOINT)
        if self.compiled:
            persistent_compile_cache()  # compiled graphs and kernels from earlier runs are reused
            # dynamic shapes: size buckets change the padded element count from batch to batch
            self.ddp = torch.compile(self.ddp, dynamic=True)
        self.compile_pending = self.compiled  # the next step compiles: see _step

    def _loader(self) -> DataLoader:
        t = self.cfg.train
        data = self.splits["train"]
        sizes = self.adapter.item_sizes(data) if t.bucket_batches > 1 else None
        sampler = StepBatchSampler(len(data), t.batch_size, t.seed, self.step, self.rank, self.world,
                                   sizes, t.bucket_batches)
        return DataLoader(self.splits["train"], batch_sampler=sampler, collate_fn=self.adapter.collate,
                          num_workers=t.num_workers, persistent_workers=False,
                          pin_memory=self.device.type == "cuda")  # then copied without waiting

    def state(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "ema": self.ema.state_dict(),
                "optimizers": [o.state_dict() for o in self.optimizers], "step": self.step,
                "phase": self.phase.value, "phase_start": self.phase_start, "elapsed": self.elapsed,
                "sample_wall_s": self.sample_wall_s, "skipped": self.guard.check(), "rng": rng_state(),
                "config": to_yaml(self.cfg), "modality": self.adapter.name,
                "adapter_class": class_path(type(self.adapter)),  # named when the modality is not registered
                "adapter_state": self.adapter.state_dict()}

    def resume(self) -> bool:
        state = latest_complete(self.out / "checkpoints")
        if state is None:
            return False
        if state["modality"] != self.adapter.name:
            raise UserError(f"checkpoint '{state['path']}' is for modality {state['modality']!r}, "
                            f"not {self.adapter.name!r}")
        saved, now = state["config"], to_yaml(self.cfg)
        if _arch_lines(saved) != _arch_lines(now):
            raise UserError(f"checkpoint '{state['path']}' was trained with another model config: "
                            f"{_first_diff(_arch_lines(saved), _arch_lines(now))}")
        self.enter_phase(Phase(state["phase"]))  # the plain strings of older checkpoints load too
        self.phase_start = state["phase_start"]  # the saved phase began then, not now
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        for o, s in zip(self.optimizers, state["optimizers"]):
            o.load_state_dict(s)
        self.step, self.elapsed = state["step"], state["elapsed"]
        self.sample_wall_s = state.get("sample_wall_s", 0.0)  # older checkpoints counted it in elapsed
        self.guard.restore(state["skipped"])
        self.resumed_from = state["path"]
        set_rng_state(state["rng"])
        self._truncate_metrics(self.step)
        return True

    def _truncate_metrics(self, step: int) -> None:
        """Drop log rows past the resumed step so metrics.jsonl reads as one uninterrupted run."""
        path = self.out / "metrics.jsonl"
        if self.rank or not path.is_file():
            return
        rows = [ln for ln in path.read_text().splitlines() if ln.strip()]
        keep = [ln for ln in rows if json.loads(ln).get("step", 0) <= step]
        path.write_text("".join(ln + "\n" for ln in keep))

    # ------------------------------------------------------------------ progress
    def progress(self) -> float:
        """Fraction of the run done, by steps or wall time, whichever is further."""
        t = self.cfg.train
        parts = []
        if t.max_steps:
            parts.append(self.step / t.max_steps)
        if t.budget_minutes:
            parts.append(self.elapsed / (60 * t.budget_minutes))
        return max(parts) if parts else 0.0

    def phase_progress(self) -> float:
        """Progress inside the current phase (two-stage runs have two schedules)."""
        p, f = self.progress(), self.cfg.train.tokenizer_fraction
        if self.cfg.train.mode == "single_stage":
            return p
        return p / f if self.phase == Phase.TOKENIZER else (p - f) / max(1 - f, 1e-9)

    # ------------------------------------------------------------------ one step
    @property
    def skipped(self) -> int:
        """Steps skipped for a non-finite loss or gradient (as of the last :meth:`FiniteGuard.check`)."""
        return self.guard.skipped

    def train_step(self, batch: Batch) -> dict[str, Any]:
        """One optimisation step. Returns the logs as 0-d device tensors (plus ``lr``): nothing is read
        back from the device here, so a GPU step queues behind the last one; :meth:`_fit` converts the
        logs at log intervals. A step whose loss or gradient norm is not finite changes nothing (see
        :mod:`unite_sci.optim`)."""
        t = self.cfg.train
        # every process draws the same numbers (the model slices its shard), so runs resume exactly
        # and a data-parallel run follows the single-process one
        torch.manual_seed(step_seed(t.seed, self.step, 0))
        gen = torch.Generator().manual_seed(step_seed(t.seed, self.step, self.rank))
        batch = self.adapter.augment(batch.to(self.device, non_blocking=True), gen)
        phase_step = self.step - self.phase_start
        lr = lr_at(self.phase_progress(), phase_step, self.base_lr, self.cfg.optim)
        ramp = self.cfg.flow.loss_warmup_steps
        self.model.flow_weight.fill_(min(1.0, phase_step / ramp) if ramp else 1.0)
        for o in self.optimizers:
            for g in o.param_groups:
                g["lr"] = lr
        self.model.train()
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=t.precision == "bf16")
        with autocast:
            loss, logs = self.ddp(batch)
        for o in self.optimizers:
            o.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for o in self.optimizers for g in o.param_groups for p in g["params"]]
        # grad_clip 0 = no clipping (max_norm inf still returns the norm, for the finiteness check)
        norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.optim.grad_clip or float("inf"))
        ok = self.guard.observe(loss, norm, self.optimizers)
        if FiniteGuard.skips_on_device(self.optimizers) or bool(ok):  # else: one sync (Muon has no flag)
            for o in self.optimizers:
                o.step()
            self.ema.update(self.model, ok)
        logs = {k: torch.as_tensor(v, device=self.device).detach() for k, v in logs.items()}
        if self.world > 1:  # log the global batch's values, not this shard's
            keys = sorted(logs)
            vec = torch.stack([logs[k].float() for k in keys])
            dist.all_reduce(vec)
            logs = dict(zip(keys, vec / self.world))
        return {**logs, "lr": lr, "grad_norm": norm.detach()}

    # ------------------------------------------------------------------ sample quality
    def sample_quality(self) -> dict[str, float]:
        """Generate ``train.sample_num`` samples with the EMA weights; the adapter's ``quick_metrics`` of them,
        keys prefixed ``sample/``, with ``sample/wall_s`` (seconds the whole hook took) and ``sample_wall_s``
        (the run's total so far). Empty on ranks > 0.

        Training goes on as if nothing happened: the EMA weights are copied in and the raw ones copied back
        (bit for bit), the model runs in eval mode without gradients, its noise comes from a generator
        seeded by (train.seed, step) and the global RNG states (torch, CUDA, Python, NumPy) are restored.
        Only rank 0 samples while the others wait at a barrier. The hook's time goes to ``sample_wall_s``,
        not to ``elapsed``: it does not count toward ``train.budget_minutes``.
        """
        t, t0, out = self.cfg.train, self.clock(), {}
        if self.rank == 0:
            s = self.cfg.sample
            scfg = replace(s, num=t.sample_num, batch_size=min(s.batch_size, t.sample_num),
                           steps=t.sample_steps or s.steps, seed=step_seed(t.seed, self.step, SAMPLE_STREAM))
            saved, was_training = rng_state(), self.model.training
            params = dict(self.model.named_parameters())
            raw = {k: p.detach().clone() for k, p in params.items()}
            cuda = [self.device] if self.device.type == "cuda" else []
            with torch.random.fork_rng(devices=cuda), torch.no_grad():
                try:
                    for k, p in params.items():
                        p.copy_(self.ema.shadow[k])
                    samples, _ = generate(self.model.eval(), self.adapter, scfg, progress=False)
                finally:
                    for k, p in params.items():
                        p.copy_(raw[k])
                    self.model.train(was_training)
                metrics = self.adapter.quick_metrics(samples)
                if self.runlog is not None:
                    self.runlog.pictures(self.adapter, samples, self.step)
            set_rng_state(saved)
            out = {f"sample/{k}": round(float(v), 4) for k, v in metrics.items()}
        if self.world > 1:
            dist.barrier()
        wall = self.clock() - t0
        self.sample_wall_s += wall
        return {**out, "sample/wall_s": round(wall, 2), "sample_wall_s": round(self.sample_wall_s, 2)} if out else {}

    def _sample_due(self) -> bool:
        """Every ``sample_every`` steps, and at the last step of a run longer than that (a short smoke run
        draws none); not while a two-stage run trains its tokenizer (its denoiser is still untrained)."""
        t = self.cfg.train
        return bool(t.sample_every and self._sampling and self.phase != Phase.TOKENIZER
                    and (self.step % t.sample_every == 0 or (self._done() and self.step > t.sample_every)))

    # ------------------------------------------------------------------ run
    def fit(self, resume: bool = False, stop_at: int | None = None) -> dict[str, Any]:
        """Train until max_steps / budget. ``stop_at`` halts early without a final checkpoint,
        as a killed run would (used to test resuming). On SIGINT / SIGTERM it saves a checkpoint at the
        step reached and raises :class:`Interrupted`."""
        t = self.cfg.train
        if not t.max_steps and not t.budget_minutes:
            raise UserError("set train.max_steps or train.budget_minutes (--max-steps / --budget-minutes)")
        if self.rank == 0:
            try:
                self.out.mkdir(parents=True, exist_ok=True)
                (self.out / "config.yaml").write_text(to_yaml(self.cfg))
            except OSError as e:
                raise UserError(f"cannot write to run folder '{self.out}': {e.strerror or e}") from None
        with StopSignals() as stop:
            return self._fit(stop, resume, stop_at)

    def _fit(self, stop: StopSignals, resume: bool, stop_at: int | None) -> dict[str, Any]:
        from tqdm import tqdm

        t = self.cfg.train
        resumed = self.resume() if resume else False
        if resume and self.rank == 0:  # never silent: a fresh start under --resume may be a wrong --out
            print(f"resumed from step {self.step} ({self.resumed_from})" if resumed else
                  f"nothing to resume: no complete checkpoint in '{self.out / 'checkpoints'}'; "
                  "starting from step 0", file=sys.stderr, flush=True)
        if self.rank == 0 and (self.compiled or t.progress):  # never silent: the first compile takes minutes
            where = f"; graphs cached in {persistent_compile_cache()}" if self.compiled else ""
            print(f"compile: {'on' if self.compiled else 'off'} ({self.compile_why}){where}", file=sys.stderr,
                  flush=True)
            broken = repair_compile_cache(persistent_compile_cache()) if self.compiled else []
            if broken:  # one line, however many a killed compile left
                print(f"compile: removed {len(broken)} truncated cache file(s) a killed compile left (e.g. "
                      f"'{broken[0]}'); they are rebuilt", file=sys.stderr, flush=True)
        # A budget run counts seconds (total and ETA known); a step-limited run counts steps.
        timed = bool(t.budget_minutes) and not t.max_steps
        bar = tqdm(total=round(60 * t.budget_minutes) if timed else (t.max_steps or None),
                   initial=round(self.elapsed) if timed else self.step, unit="s" if timed else "it",
                   bar_format=("{desc}: {percentage:3.0f}%|{bar}| {n}/{total} s [{elapsed}<{remaining}{postfix}]"
                               if timed else None),  # a seconds bar's "s/s" rate says nothing
                   disable=not t.progress or self.rank > 0, desc=f"train {self.adapter.name}", dynamic_ncols=True)
        last_ckpt_time, last_ckpt_step = time.time(), self.step
        last_path = Path(self.resumed_from) if resumed else None
        window_t, window_n = time.time(), 0
        loader = iter(self._loader())
        log = self.runlog = (RunLog(self.out, t.tensorboard, self.step if resumed else None)
                             if self.rank == 0 else None)
        if log and not resumed:  # a first row at once: what the run is, and how long its data took
            log.write({"step": 0, "phase": self.phase, "elapsed_s": 0.0, "data_prep_s": self.data_prep_s,
                       "parameters": sum(p.numel() for p in self.model.parameters()),
                       "batch_size": t.batch_size, "world_size": self.world, "compiled": self.compiled})
        try:
            while not self._done():
                signum = self._stop_requested(stop)
                if signum:
                    if last_path is None or last_ckpt_step != self.step:
                        last_path = self.save()
                    raise Interrupted(f"{signal_name(signum)} at step {self.step}: saved '{last_path}'; "
                                      "continue with --resume", signum)
                if stop_at is not None and self.step >= stop_at:
                    return {"steps": self.step, "stopped": True}
                if t.mode == "two_stage" and self.phase == Phase.TOKENIZER and self.progress() >= t.tokenizer_fraction:
                    self.enter_phase(Phase.DENOISER)
                t0 = self.clock()  # wall time of the step, data loading included
                logs = self._step(next(loader), stop, last_path)
                self.elapsed = self._agreed(self.elapsed + self.clock() - t0)
                self.step += 1
                window_n += t.batch_size
                bar.update(min(round(self.elapsed), bar.total) - bar.n if timed else 1)
                log_due = self.step % t.log_every == 0 or self._done()
                if log_due or self.step % t.max_nonfinite == 0:
                    self.guard.check()  # the loop's only read-back from the device, besides logging
                if log_due:
                    logs = {k: float(v) for k, v in logs.items()}
                if log_due and math.isfinite(logs["loss"]) and math.isfinite(logs["grad_norm"]):  # not a skipped step
                    rate = window_n / max(time.time() - window_t, 1e-9)
                    window_t, window_n = time.time(), 0
                    row = {"step": self.step, "phase": self.phase, "elapsed_s": round(self.elapsed, 2),
                           "samples_per_s": round(rate, 1), **{k: round(v, 6) for k, v in logs.items()}}
                    bar.set_postfix(step=self.step, loss=f"{logs['loss']:.4f}", rec=f"{logs.get('rec', 0):.4f}",
                                    flow=f"{logs.get('flow', 0):.4f}", sps=f"{rate:.0f}")
                    if log:
                        log.write(row)
                if self._sample_due():
                    quality = self.sample_quality()
                    window_t = time.time()  # samples_per_s stays a training rate
                    if log and quality:
                        log.write({"step": self.step, "phase": self.phase, "elapsed_s": round(self.elapsed, 2),
                                   **quality})
                due = (self.step - last_ckpt_step >= t.ckpt_every
                       or time.time() - last_ckpt_time >= 60 * t.ckpt_every_minutes)
                if due and not self._done():
                    last_path = self.save()
                    last_ckpt_time, last_ckpt_step = time.time(), self.step
        finally:
            bar.close()
            if log:
                log.close()
            self.runlog = None
        path = self.save()
        if self.rank == 0:
            plot_losses(self.out / "metrics.jsonl", self.out / "loss.png")
            stalled_warning(self.out / "metrics.jsonl")  # a falling flow loss alone says nothing about samples
        return {"steps": self.step, "elapsed_s": self.elapsed, "data_prep_s": self.data_prep_s,
                "sample_wall_s": round(self.sample_wall_s, 2),
                # how the run's wall time was spent; train.budget_minutes counts "training" only
                "time_split_s": {"training": round(self.elapsed, 2), "in_run_sampling": round(self.sample_wall_s, 2),
                                 "data_prep": self.data_prep_s},
                "skipped_steps": self.guard.check(),
                "checkpoint": str(path), "device": str(self.device), "world_size": self.world}

    def _step(self, batch: Batch, stop: StopSignals, last_path: Path | None) -> dict[str, Any]:
        """:meth:`train_step`; the first one after a (re)compile stops at once on a signal and falls back to
        eager training if the compile fails (:func:`~unite_sci.compiling.first_compiled_call`)."""
        if not self.compile_pending:
            return self.train_step(batch)
        kept = (f"the last checkpoint is '{last_path}', continue with --resume" if last_path else
                "no checkpoint was written yet") + "; compiled kernels finished so far stay cached"
        logs = first_compiled_call(lambda: self.train_step(batch), stop, f"stopped at step {self.step}; {kept}",
                                   self._eager)
        self.compile_pending = False
        return logs

    def _eager(self, reason: str) -> None:
        self.ddp, self.compiled, self.compile_pending = self.ddp._orig_mod, False, False
        if self.rank == 0:
            print(f"compile: failed ({reason}); training eager instead (train.compile=false skips the attempt)",
                  file=sys.stderr, flush=True)

    def _stop_requested(self, stop: StopSignals) -> int:
        """The signal that asks this run to stop, or 0; the same on every process."""
        signum = stop.signum or 0
        if self.world > 1:  # all ranks must stop at the same step, or the checkpoint's barrier hangs
            flag = torch.tensor([signum], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            signum = int(flag.item())
        return signum

    def _agreed(self, elapsed: float) -> float:
        """The largest ``elapsed`` (seconds) over all processes, so that every rank ends a budget run at the
        same step (each times its own steps; a rank that waited less in the all-reduce reads less)."""
        if self.world == 1:
            return elapsed
        value = torch.tensor([elapsed], dtype=torch.float64, device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return float(value.item())

    def _done(self) -> bool:
        t = self.cfg.train
        return bool((t.max_steps and self.step >= t.max_steps)
                    or (t.budget_minutes and self.elapsed >= 60 * t.budget_minutes))

    def save(self) -> Path:
        path = self.out / "checkpoints" / f"step_{self.step:08d}.pt"
        if self.rank == 0:
            for p in self.model.parameters():  # never write non-finite weights
                if not torch.isfinite(p).all():
                    raise UserError("refusing to save a checkpoint with non-finite weights")
            path = save_checkpoint(self.state(), self.out / "checkpoints", self.step, self.cfg.train.keep_checkpoints)
        if self.world > 1:
            dist.barrier()
        return path


def _arch_lines(config_yaml: str) -> list[str]:
    """The model section of a saved config: what must agree for weights to load."""
    import yaml

    model = yaml.safe_load(config_yaml).get("model", {})
    return [f"model.{k}={model[k]}" for k in sorted(model)]


def _first_diff(a: list[str], b: list[str]) -> str:
    for x, y in zip(a, b):
        if x != y:
            return f"saved {x}, now {y.split('=', 1)[1]}"
    return "different keys"
