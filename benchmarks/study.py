"""Recipe studies: candidates against the default at equal wall time, several seeds, mean and range.

    unite-sci benchmark qm9-ablation --budget-minutes 10 --num-samples 1000 [seeds=0,1] [jobs=2]
                                     [candidates=base,selfcond,...] [recon=200]
    unite-sci benchmark qm9-scaling  minutes=10,30,120 [seeds=0,1] [jobs=2]
    unite-sci benchmark mp20-ablation --budget-minutes 30 [candidates=base,two_stage,chem,...] [jobs=2]

A *candidate* is a named list of config overrides (a training recipe) or, with ``from``, sampler settings
applied to another candidate's checkpoints (no training of its own). Every (candidate, seed) pair is one
job with its own folder ``<out>/<candidate>_s<seed>/``: the training run, then ``eval/`` with the samples,
per-sample CSV and ``results.json``. Finished jobs are kept: rerunning the command with more seeds or
candidates trains only what is missing; ``run=false`` writes the table of the finished jobs alone.
``jobs=2`` runs two jobs at once with one thread each (``threads=`` sets it): the tiny CPU preset gains
little from a second thread, so two one-thread jobs nearly double the throughput of two cores. The report
says which was used, since a one-thread minute is not a two-thread minute.

A difference between two candidates smaller than the seed-to-seed range is no result: the table shows
the range of every number beside its mean.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from unite_sci.checkpoint import load_checkpoint
from unite_sci.config import parse_options
from unite_sci.engine import provenance
from unite_sci.errors import Interrupted, UserError
from unite_sci.protocol import fmt, run_protocol, write_report
from unite_sci.schema import non_negative, positive, ranged

# Each: (overrides, what it tests). "from:<name>" as first override = sampler settings on <name>'s checkpoints.
CANDIDATES: dict[str, tuple[list[str], str]] = {
    "base": ([], "configs/qm9.yaml as it stands"),
    "shift1": (["flow.shift=1.0"], "no time shift (a = 1) in training and sampling"),
    "shift2": (["flow.shift=2.0"], "time shifted toward the data end (a = 2)"),
    "selfcond": (["flow.self_condition=0.5"], "self-conditioning on the previous x-prediction, p = 0.5 (ADiT)"),
    "latent8": (["model.latent_dim=8"], "latent width 8 per atom instead of 16"),
    "velocity": (["flow.prediction=velocity"], "velocity output, x1_hat = x_t + (1 - t) F, instead of x-prediction"),
    "dist": (["data.distance_weight=10.0"], "pairwise-distance term (pairs < 2 A) in the reconstruction loss"),
    "frame": (["data.canonical_frame=true", "data.random_rotation=false"],
              "principal-axes frame for every molecule instead of random rotations"),
    "decnoise": (["decoder_noise.prob=0.9", "decoder_noise.t_min=0.5"],
                 "stronger decoder-side latent noise: p 0.9, t ~ U[0.5, 1] (default p 0.5, U[0.7, 1])"),
    "compile": (["train.compile=true"], "torch.compile of the training step (compile time counts)"),
    "eager": (["train.compile=false"], "no torch.compile (the default compiles budgets of 10 minutes and more)"),
    "ema999": (["optim.ema_decay=0.999"], "EMA decay 0.999 instead of 0.9978"),
    "lr2e-3": (["optim.lr=0.002"], "learning rate 2e-3 instead of 1e-3"),
    "bf16": (["train.precision=bf16"], "bf16 autocast"),
    "base+heun50": (["from:base", "sample.steps=50"], "base checkpoints, Heun 50 steps instead of 25"),
    "base+shift1": (["from:base", "sample.shift=1.0"], "base checkpoints, sampler grid without time shift"),
    "base+raw": (["from:base", "sample.use_ema=false"], "base checkpoints, raw weights instead of EMA"),
    "base+t1": (["from:base", "sample.temperature=1.0"], "base checkpoints, starting noise at temperature 1"),
    "base+t0.7": (["from:base", "sample.temperature=0.7"], "base checkpoints, starting noise at temperature 0.7"),
    "base+final_euler": (["from:base", "sample.final_euler=true"],
                         "base checkpoints, Heun with a last Euler step (JiT's code) instead of the paper's"),
    "frame+raw": (["from:frame", "sample.use_ema=false"], "frame checkpoints, raw weights instead of EMA"),
    "frame+shift1": (["from:frame", "sample.shift=1.0"], "frame checkpoints, sampler grid without time shift"),
}
# Per modality: column -> (results section, key); a key also matches "<protocol>/<key>" (MP-20's metrics).
METRICS: dict[str, dict[str, tuple[str, str]]] = {
    "qm9": {"connected_validity": ("generation", "connected_validity"),
            "edm/atom_stability": ("generation", "edm/atom_stability"),
            "edm/molecule_stability": ("generation", "edm/molecule_stability"),
            "adit/validity": ("generation", "adit/validity"), "edm/validity": ("generation", "edm/validity"),
            "connected_t0.5": ("generation_temperature_0.5", "connected_validity"),
            "atom_stab_t0.5": ("generation_temperature_0.5", "edm/atom_stability"),
            "match": ("reconstruction", "reconstruction/match_rate"), "rmsd": ("reconstruction", "reconstruction/rmsd"),
            "train_steps": ("", "train_steps")},
    "mp20": {"valid": ("generation", "valid_pct"), "comp_valid": ("generation", "comp_valid_pct"),
             "struct_valid": ("generation", "struct_valid_pct"),
             "unique": ("generation", "unique_pct"),  # low: the generator collapsed (validity then says little)
             "elements_per_crystal": ("generation", "elements_per_crystal"),
             "match": ("reconstruction", "match_rate_pct"), "match_ungated": ("reconstruction", "match_rate_ungated_pct"),
             "rmse": ("reconstruction", "rmse"), "train_steps": ("", "train_steps")},
    # one line per image metric: column -> (results section, key of the image adapter's evaluation)
    "images": {"fd": ("generation", "images/fd_*"),  # Frechet distance in the data set's classifier features
               "precision": ("generation", "images/precision"),
               "recall": ("generation", "images/recall"),
               "class_agreement": ("generation", "images/class_agreement"),
               "pixel_diversity": ("generation", "images/pixel_diversity"),
               "duplicate_share": ("generation", "images/duplicate_share"),  # near 1: the samples collapsed
               "gfid": ("generation", "images/gfid"),
               "nn_train_rmse": ("generation", "images/nn_train_rmse"),
               "psnr_db": ("reconstruction", "reconstruction/psnr_db"),
               "rfid": ("reconstruction", "reconstruction/rfid"),
               "train_steps": ("", "train_steps")},
}
# Every study table's last numbers: how much training each row got, and on how many threads.
RUN_COLUMNS: dict[str, tuple[str, str]] = {"wall_s": ("", "train_wall_s"), "threads": ("machine", "torch_threads")}


@dataclass
class StudyOptions:
    """The options of every study, as ``key=value`` words without a dot (``seeds=0,1 jobs=2``)."""

    seeds: Optional[list[int]] = None   # one job per candidate and seed; None: [0]
    jobs: int = ranged(1, lo=1)         # jobs at a time
    threads: Optional[int] = ranged(None, lo=1)  # torch threads per job; None: the cores / jobs
    candidates: Optional[list[str]] = None  # None: every candidate
    recon: Optional[int] = non_negative(None)  # test items reconstructed per job; None: 200
    run: bool = True                    # false: only the table of the jobs already finished
    rescore: bool = False               # true: sample and score every job again, training only what is unfinished


def _source(ov: list[str]) -> str | None:
    """The candidate whose checkpoints a sampler-only candidate uses ("from:<name>"), else None."""
    return ov[0][5:] if ov and ov[0].startswith("from:") else None


def _peer(ov: list[str]) -> str | None:
    """The peer method a candidate trains instead of UNITE ("peer:<name>[:<args>]", see :data:`PEERS`)."""
    return ov[0][5:] if ov and ov[0].startswith("peer:") else None


def limit_overrides(budget_minutes: float, steps: int = 0) -> list[str]:
    """Run-config words of a job's training limit: wall minutes, or (``steps`` > 0) steps and no time limit."""
    if steps:
        return ["train.budget_minutes=0", f"train.max_steps={steps}"]
    return [f"train.budget_minutes={budget_minutes}", "train.max_steps=0"]


def limit_reached(checkpoint: Path, budget_minutes: float, steps: int = 0) -> bool:
    """The checkpoint exists and has made ``steps`` steps (when > 0), else used the whole budget."""
    if not checkpoint.is_file():
        return False
    state = load_checkpoint(checkpoint)
    return int(state["step"]) >= steps if steps else float(state["elapsed"]) >= 60 * budget_minutes - 1.0


def _trained(run: Path, budget_minutes: float, steps: int = 0) -> bool:
    """A finished training run: its newest checkpoint has used the whole budget (or made ``steps`` steps)."""
    return limit_reached(run / "checkpoints" / "last.pt", budget_minutes, steps)


def _pixel_unet(*args: Any) -> dict[str, Any]:
    from unite_sci_benchmarks.pixel_peer import run_job as peer_job  # diffusers only when a job needs it

    return peer_job(*args)


# Peer methods a study can run beside UNITE: name -> run_job(modality, run, budget_minutes, steps, num,
# overrides, args), which trains (unless done), samples and scores into <run>/eval/results.json.
PEERS: dict[str, Callable[..., dict[str, Any]]] = {"pixel_unet": _pixel_unet}


def run_job(modality: str, run: Path, budget_minutes: float, num: int, recon: int, overrides: list[str],
            source: Path | None, steps: int = 0, peer: str | None = None) -> dict[str, Any]:
    """Train (unless done) and evaluate one candidate at one seed; returns its results.json content.

    ``steps`` > 0: train that many steps with no time limit instead of ``budget_minutes``. ``peer``:
    "<name>[:<args>]" of :data:`PEERS`, trained instead of UNITE."""
    if peer is not None:
        name, _, args = peer.partition(":")
        return PEERS[name](modality, run, budget_minutes, steps, num, overrides, args)
    sample_ov = [o for o in overrides if o.startswith(("sample.", "data."))]
    if source is None and not _trained(run, budget_minutes, steps):
        from unite_sci.engine import load_config, train
        from unite_sci.finetune import model_keys

        cfg = load_config(modality, overrides=overrides + [f"out={run}", "train.progress=false",
                                                            *limit_overrides(budget_minutes, steps)])
        train(cfg, resume=(run / "checkpoints" / "last.pt").is_file(), given_model_keys=model_keys(None, overrides))
    ckpt = (source or run) / "checkpoints" / "last.pt"
    return run_protocol(modality, run / "eval", None, num, str(ckpt), sample_ov, recon)


def metrics_for(modality: str, first: dict[str, Any] | None) -> dict[str, tuple[str, str]]:
    """The table's columns: the modality's own, else every number of a job's generation metrics."""
    if modality in METRICS:
        return METRICS[modality]
    gen = (first or {}).get("generation", {})
    return {**{k: ("generation", k) for k, v in gen.items() if isinstance(v, (int, float))},
            "train_steps": ("", "train_steps")}


def _lookup(section: dict[str, Any], key: str) -> Any:
    """``section[key]``, else the value of a key ending in "/<key>"; a key ending in "*" matches by prefix."""
    if key in section:
        return section[key]
    if key.endswith("*"):
        return next((v for k, v in section.items() if k.startswith(key[:-1])), None)
    return next((v for k, v in section.items() if k.endswith("/" + key)), None)


def _row(res: dict[str, Any], metrics: dict[str, tuple[str, str]]) -> dict[str, float]:
    return {col: _lookup(res.get(sec, {}) if sec else res, key) for col, (sec, key) in metrics.items()}


def _summary(rows: list[dict[str, float]], metrics: dict[str, tuple[str, str]]) -> dict[str, str]:
    out = {}
    for k in metrics:
        vals = [r[k] for r in rows if isinstance(r.get(k), (int, float))]
        if not vals:
            out[k] = "–"
        elif len(vals) == 1:
            out[k] = fmt(float(vals[0]))
        else:
            out[k] = f"{fmt(sum(vals) / len(vals))} [{fmt(float(min(vals)))}–{fmt(float(max(vals)))}]"
    return out


def _launch(modality: str, job: dict[str, Any], threads: int) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OMP_WAIT_POLICY="PASSIVE")
    return subprocess.Popen([sys.executable, "-m", "unite_sci_benchmarks.study", modality, json.dumps(job)], env=env)


def _run_jobs(modality: str, name: str, pending: list[dict], running: list[tuple[dict, subprocess.Popen]],
              failed: list[str], jobs_at_once: int, threads: int, steps: int) -> None:
    """Start ``pending`` jobs ``jobs_at_once`` at a time (a job whose source run is unfinished waits) until all
    ended; ``running`` and ``failed`` are the caller's, so that it can stop the running ones on a signal."""
    while pending or running:
        ready = [j for j in pending if j["source"] is None or _trained(Path(j["source"]), j["budget"], steps)]
        while ready and len(running) < jobs_at_once:
            job = ready.pop(0)
            pending.remove(job)
            print(f"[{name}] start {job['tag']}", flush=True)
            running.append((job, _launch(modality, job, threads)))
        if not running and pending:
            raise UserError(f"{pending[0]['tag']}: its source run {pending[0]['source']} never finished training")
        time.sleep(2)
        for job, proc in list(running):
            if proc.poll() is not None:
                running.remove((job, proc))
                print(f"[{name}] {job['tag']} finished (rc {proc.returncode})", flush=True)
                if proc.returncode != 0:
                    failed.append(job["tag"])
                    pending = [j for j in pending if j["source"] != job["run"]]  # they would wait forever


def _stop_jobs(procs: list[subprocess.Popen], own_stop_s: float = 0.0, grace_s: float = 10.0) -> None:
    """End every job: those that have not stopped by themselves within ``own_stop_s`` seconds get SIGTERM
    (each says what it stopped, :func:`_job_main`), and SIGKILL ``grace_s`` seconds later."""
    deadline = time.monotonic() + own_stop_s
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + grace_s
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def study(modality: str, name: str, candidates: dict[str, tuple[list[str], str]], out: str,
          budgets: list[float], num: int, overrides: list[str],
          extra: Callable[[], list[tuple[str, str]]] | None = None) -> Path:
    """:func:`run_study` with :class:`StudyOptions` and config overrides read from ``key=value`` words."""
    opts, config = parse_options(StudyOptions, overrides)
    return run_study(modality, name, candidates, out, budgets, num, opts, config, extra)


def _tag(cand: str, seed: int, minutes: float, budgets: list[float], steps: int) -> str:
    """A job's folder name: several budgets, or a step limit, are part of it (never mixed with timed runs)."""
    return (f"{cand}_s{seed}" + (f"_{minutes:g}min" if len(budgets) > 1 and not steps else "")
            + (f"_{steps}steps" if steps else ""))


def plan_jobs(candidates: dict[str, tuple[list[str], str]], names: list[str], seeds: list[int], out: Path,
              budgets: list[float], steps: int, num: int, recon: int, threads: int,
              config: list[str]) -> list[dict[str, Any]]:
    """One job per (budget, candidate, seed), training candidates first (sampler-only ones need their
    checkpoints): its folder, limit, source run or peer, and the run-config overrides it trains with."""
    todo = []
    for minutes in budgets[:1] if steps else budgets:
        for cand in sorted(names, key=lambda n: _source(candidates[n][0]) is not None):
            ov = candidates[cand][0]
            src = _source(ov)
            for seed in seeds:
                tag = _tag(cand, seed, minutes, budgets, steps)
                source = None if src is None else str(out / _tag(src, seed, minutes, budgets, steps))
                todo.append({"tag": tag, "run": str(out / tag), "budget": minutes, "steps": steps, "num": num,
                             "recon": recon, "source": source, "peer": _peer(ov), "threads": threads,
                             "overrides": config + [o for o in ov if not o.startswith(("from:", "peer:"))] +
                             [f"train.seed={seed}", f"train.threads={threads}"]})
    return todo


def run_study(modality: str, name: str, candidates: dict[str, tuple[list[str], str]], out: str,
              budgets: list[float], num: int, opts: StudyOptions, config: list[str],
              extra: Callable[[], list[tuple[str, str]]] | None = None, steps: int = 0,
              skipped: dict[str, str] | None = None) -> Path:
    """Run the missing jobs (``opts.jobs`` at a time), then write the table of every candidate.

    ``config``: run-config overrides of every job. ``extra``: called after the jobs, more report sections
    (title, markdown), e.g. real-data rows. ``steps`` > 0: every job trains that many steps with no time
    limit (equal steps; ``budgets`` is then not used). ``skipped``: candidate -> why it is not run (its row
    says so).
    """
    seeds = opts.seeds or [0]
    names = opts.candidates or list(candidates)
    bad = [n for n in names if n not in candidates]
    if bad:
        raise UserError(f"unknown candidate {bad[0]!r}; known: {', '.join(candidates)}")
    skipped = {n: why for n, why in (skipped or {}).items() if n in names}
    jobs_at_once = opts.jobs
    threads = opts.threads or max(1, (os.cpu_count() or 1) // jobs_at_once)
    recon = 200 if opts.recon is None else opts.recon
    out_p = Path(out)
    results = {}
    todo = plan_jobs(candidates, [n for n in names if n not in skipped], seeds, out_p, budgets, steps, num,
                     recon, threads, config)
    pending = [j for j in todo if opts.rescore or not (Path(j["run"]) / "eval" / "results.json").is_file()]
    if not opts.run:  # only the table of what has finished
        pending = []
    running: list[tuple[dict, subprocess.Popen]] = []
    failed: list[str] = []
    try:
        _run_jobs(modality, name, pending, running, failed, jobs_at_once, threads, steps)
    except BaseException as e:  # Ctrl-C, the CLI's Interrupted on SIGTERM: no job may outlive the study
        # a terminal's Ctrl-C reached every job too (one process group): each first gets time to save
        code = getattr(e, "exit_code", 128 + signal.SIGINT) if isinstance(e, KeyboardInterrupt) else None
        _stop_jobs([proc for _, proc in running], own_stop_s=10.0 if code == 128 + signal.SIGINT else 0.0)
        raise
    if failed:
        raise UserError(f"study jobs failed: {', '.join(failed)} (their messages are above); finished jobs "
                        "are kept, rerun the same command after fixing the cause")
    rows = []
    done = sorted(out_p.glob("*/eval/results.json"))
    metrics = {**metrics_for(modality, json.loads(done[0].read_text()) if done else None), **RUN_COLUMNS}
    for minutes in budgets[:1] if steps else budgets:
        for cand in names:
            per_seed = []
            for seed in seeds:
                tag = _tag(cand, seed, minutes, budgets, steps)
                path = out_p / tag / "eval" / "results.json"
                if path.is_file() and cand not in skipped:
                    res = json.loads(path.read_text())
                    results[tag] = _row(res, metrics)
                    per_seed.append(results[tag])
            rows.append({"candidate": cand, "minutes": 0 if steps else minutes, "budget": f"{steps} steps" if steps
                         else minutes, "seeds": len(per_seed), **_summary(per_seed, metrics),
                         "what": skipped.get(cand, candidates[cand][1])})
    cols = ["candidate", "budget", "seeds", *metrics, "what"]
    table = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n" + "".join(
        "| " + " | ".join(str(r[c]) for c in cols) + " |\n" for r in rows)
    from unite_sci.engine import load_config

    cpu_clock = load_config(modality, overrides=list(config)).train.budget_clock == "cpu"  # however it was set
    settings = (f"- {len(seeds)} seed(s) {seeds}; {num} samples per job; reconstruction on {recon} test items\n"
                f"- {jobs_at_once} job(s) at a time with {threads} thread(s) each; budget = "
                + (f"{steps} optimizer steps per job, no time limit (equal steps)" if steps else
                   ("CPU minutes of training per job, each job's own process (train.budget_clock=cpu)"
                    if cpu_clock else "wall minutes of training per job")
                   + " (sampling and evaluation not counted)") + "\n"
                f"- Numbers: mean [min–max] over seeds, percent; rmsd in the modality's length unit\n"
                f"- Config overrides for every job: {config or 'none'}")
    data = {"rows": rows, "per_job": results, "candidates": {n: candidates[n] for n in names}, **provenance()}
    print(table)
    return write_report(out, f"unite-sci benchmark: {name}", [("Results", table), ("Settings", settings),
                                                             *(extra() if extra else []),
                                                             ("About", __doc__)], data)


def qm9_ablation(out: str, budget_minutes: float | None = None, num_samples: int | None = None,
                 checkpoint: str | None = None, overrides: list[str] = ()) -> Path:
    if checkpoint:
        raise UserError("qm9-ablation trains its own candidates; it takes no --checkpoint")
    return study("qm9", "qm9-ablation", CANDIDATES, out, [budget_minutes or 10.0], num_samples or 1000,
                 list(overrides))


MP20_CANDIDATES: dict[str, tuple[list[str], str]] = {
    "base": ([], "configs/mp20.yaml as it stands"),
    "two_stage": (["train.mode=two_stage", "model.shared_weights=false"],
                  "two-stage baseline: tokenizer for half the budget, then a denoiser on its frozen latents"),
    "chem": (["data.element_features=true"],
             "element embedding and type logits through chemistry features (period, group, block, "
             "electronegativity, oxidation states)"),
    "latent8": (["model.latent_dim=8"], "latent width 8 per atom instead of 16"),
    "decnoise": (["decoder_noise.prob=0.9", "decoder_noise.t_min=0.5"],
                 "stronger decoder-side latent noise: p 0.9, t ~ U[0.5, 1]"),
    "small": (["model.preset=small"], "capacity: the small CPU preset instead of tiny"),
    "latent32": (["model.latent_dim=32"], "capacity of the latent: width 32 per atom instead of 16"),
    "typew3": (["data.type_weight=3.0"], "objective: atom-type loss weight 3 instead of 1 (coordinates 3)"),
    "shift1": (["flow.shift=1.0"], "objective: no time shift of the flow (a = 1)"),
    "lemat": (["data.extra_train=lemat"], "data: the extended protocol, MP-20 offline + the shipped LeMat-Bulk "
              "crystals (training only)"),
    "separate": (["model.shared_weights=false"], "a separate encoder and denoiser, trained jointly (not the "
                 "shared GE)"),
    "count": (["data.condition_on=[num_atoms]"], "representation: the atom count as a scalar condition of the "
              "denoiser (adaLN), not only implied by how many registers it sees"),
    "half": (["data.num_train=4900"], "data: the first half of the protocol's training crystals (4,900 of 9,805)"),
    "base+comp": (["from:base", "data.type_decode=composition"],
                  "base checkpoints, types among the elements the composition head predicts present"),
    "base+vote": (["from:base", "data.type_decode=cell_vote"],
                  "base checkpoints, types among the elements whose probabilities sum to half an atom or more"),
    "base+balanced": (["from:base", "data.type_decode=charge_balanced"],
                      "REPAIR, not the model's own validity: base checkpoints, argmax types then the opt-in "
                      "SMACT charge-balance repair (one or two atoms to their next most probable elements)"),
    "chem+comp": (["from:chem", "data.type_decode=composition"],
                  "chem checkpoints, types among the elements the composition head predicts present"),
}


def mp20_ablation(out: str, budget_minutes: float | None = None, num_samples: int | None = None,
                  checkpoint: str | None = None, overrides: list[str] = ()) -> Path:
    """MP-20 recipe study (``unite-sci benchmark mp20-ablation``): composition candidates and the two-stage
    row at equal wall time, as ``qm9-ablation``."""
    if checkpoint:
        raise UserError("mp20-ablation trains its own candidates; it takes no --checkpoint")
    return study("mp20", "mp20-ablation", MP20_CANDIDATES, out, [budget_minutes or 10.0], num_samples or 1000,
                 list(overrides))


SCALING: dict[str, tuple[list[str], str]] = {
    "unite": ([], "UNITE single-stage (configs/qm9.yaml)"),
    "two_stage": (["train.mode=two_stage", "model.shared_weights=false"],
                  "two-stage baseline: tokenizer for half the budget, then a denoiser on its frozen latents"),
}


@dataclass
class ScalingOptions(StudyOptions):
    minutes: Optional[list[float]] = positive(None)  # training budgets; None: --budget-minutes (10), 30, 120


def qm9_scaling(out: str, budget_minutes: float | None = None, num_samples: int | None = None,
                checkpoint: str | None = None, overrides: list[str] = ()) -> Path:
    """UNITE against two-stage at several budgets (option ``minutes=10,30,120``), table and curve."""
    opts, config = parse_options(ScalingOptions, overrides)
    if checkpoint:
        raise UserError("qm9-scaling trains its own runs; it takes no --checkpoint")
    budgets = opts.minutes or [budget_minutes or 10.0, 30.0, 120.0]
    report = run_study("qm9", "qm9-scaling", SCALING, out, budgets, num_samples or 1000, opts, config)
    from unite_sci_benchmarks.trends import plot_scaling  # it imports this module

    plot_scaling(Path(out) / "report.json", Path(out) / "scaling.png")
    return report


def _job_main(modality: str, job_json: str) -> None:
    import torch

    job = json.loads(job_json)
    torch.set_num_threads(job["threads"])
    try:
        run_job(modality, Path(job["run"]), job["budget"], job["num"], job["recon"], job["overrides"],
                Path(job["source"]) if job["source"] else None, job.get("steps", 0), job.get("peer"))
    except UserError as e:  # a user mistake is one line, as everywhere else
        print(f"error: {job['tag']}: {e}", file=sys.stderr)
        sys.exit(2)
    except Interrupted as e:  # one line, as the CLI prints it; the exit status names the signal
        print(f"interrupted: {job['tag']}: {e}", file=sys.stderr, flush=True)
        sys.exit(e.exit_code)


if __name__ == "__main__":
    _job_main(sys.argv[1], sys.argv[2])
