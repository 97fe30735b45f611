"""The paper's training ablations at small scale, with seeds, at equal wall time or at equal steps.

    unite-sci benchmark images-ablation     --budget-minutes 10 --num-samples 1000 seeds=0,1 jobs=2 threads=1
    unite-sci benchmark qm9-paper-ablation  --budget-minutes 30 --num-samples 1000 seeds=0,1 jobs=2 threads=1
    ... equal=steps steps=2000     # every candidate trains 2,000 steps, no time limit
    ... candidates=unite,separate  # a subset; rescore=true samples and scores finished runs again
    ... minutes=3,12,48            # several budgets: the table per budget, sharing.png and the gap's trend

The UNITE paper's claims on how to train (its Fig. 5 and the ablation tables): one weight-shared Generative
Encoder against a separate encoder and denoiser; K flow passes per reconstruction step (more is better);
the stop-gradient on the clean latent (best for the shared GE, while the separate pair gains without it);
single stage against two-stage. Each claim is a pair of rows of :data:`CANDIDATES`; every candidate starts
from K = 1 and the modality's config, so each row changes one thing.

A study (``benchmarks/study.py``): one job per (candidate, seed) in ``<out>/<candidate>_s<seed>`` (equal
steps: ``..._<N>steps``, never mixed with timed runs), kept once finished, so rerunning trains only what is
missing. The table has the modality's headline metrics (``study.METRICS``) as mean [min-max] over seeds,
the steps each row made, its training seconds and threads. Equal time ranks recipes by what a CPU minute
buys (K = 4 makes fewer steps); equal steps ranks them per optimizer update, as the paper compares them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from unite_sci.config import parse_options
from unite_sci.errors import UserError
from unite_sci.schema import Choice, positive, ranged

from unite_sci_benchmarks.study import StudyOptions, run_study
from unite_sci_benchmarks.trends import gap_section, plot_budgets

TWO_STAGE = ["train.mode=two_stage", "model.shared_weights=false"]
# Each: (overrides on top of K = 1, the claim it tests).
CANDIDATES: dict[str, tuple[list[str], str]] = {
    "unite": ([], "UNITE: one shared GE, K = 1, stop-gradient on"),
    "separate": (["model.shared_weights=false"], "separate encoder and denoiser (paper: shared is better)"),
    "k2": (["flow.flow_batches=2"], "K = 2 flow passes per reconstruction step (paper: more K is better)"),
    "k4": (["flow.flow_batches=4"], "K = 4 flow passes per reconstruction step"),
    "no_sg": (["flow.stop_gradient=false"], "shared GE without the stop-gradient (paper: worse for UNITE)"),
    "separate_no_sg": (["model.shared_weights=false", "flow.stop_gradient=false"],
                       "separate pair without the stop-gradient (paper: better than with it)"),
    "two_stage": (TWO_STAGE, "two-stage: tokenizer for half the budget, then a denoiser on its frozen latents"),
    "unite_small": (["model.preset=small"], "width: the shared GE at the small CPU preset"),
    "separate_small": (["model.preset=small", "model.shared_weights=false"],
                       "width: the separate pair at the small CPU preset"),
    "unite_deep": (["model.depth=8"], "equal parameters: a shared GE of 8 blocks, about the separate pair's "
                                      "encoder + denoiser (2 x 4 blocks)"),
}
# The pairs whose gap a study over several budgets follows: (row, row it is measured against).
PAIRS = [("unite", "separate"), ("unite_small", "separate_small"), ("unite_deep", "separate"), ("k4", "unite")]
# The metrics drawn against training compute, per modality (columns of study.METRICS).
PLOT_KEYS = {"images": ["fd", "class_agreement", "psnr_db"],
             "qm9": ["connected_validity", "edm/atom_stability", "match"]}
# every candidate's starting point, whatever the modality's config says: UNITE as published, K = 1
BASE = ["flow.flow_batches=1", "model.shared_weights=true"]


class Equal(Choice):
    time = "time"
    steps = "steps"


@dataclass
class AblationOptions(StudyOptions):
    """The study options plus what is held equal across candidates."""

    equal: Equal = Equal.time           # time: --budget-minutes of training each | steps: `steps` each
    steps: Optional[int] = ranged(None, lo=1)  # equal=steps: optimizer steps per job
    minutes: Optional[list[float]] = positive(None)  # several training budgets (equal time); None: --budget-minutes


def plan(overrides: list[str]) -> tuple[AblationOptions, list[str], int]:
    """The options, every job's run-config overrides (:data:`BASE` first, the user's after) and the step
    limit (0: equal time), from the benchmark's ``key=value`` words."""
    opts, config = parse_options(AblationOptions, overrides)
    if opts.equal == "steps" and not opts.steps:
        raise UserError("equal=steps needs steps=N, the optimizer steps every candidate trains")
    if opts.equal == "time" and opts.steps:
        raise UserError("steps= is for equal=steps; at equal time --budget-minutes sets the budget")
    if opts.equal == "steps" and opts.minutes:
        raise UserError("minutes= is for equal=time; at equal steps steps=N sets the budget")
    return opts, BASE + config, opts.steps if opts.equal == "steps" else 0


def ablation(modality: str, name: str, default_minutes: float,
             extra: Callable[[list[str], int], list[tuple[str, str]]] | None = None) -> Callable[..., Path]:
    """The benchmark function of one modality's ablation (the signature every benchmark has)."""

    def run(out: str, budget_minutes: float | None = None, num_samples: int | None = None,
            checkpoint: str | None = None, overrides: list[str] = ()) -> Path:
        if checkpoint:
            raise UserError(f"{name} trains its own candidates; it takes no --checkpoint")
        opts, config, steps = plan(list(overrides))
        if steps and budget_minutes:
            raise UserError("equal=steps trains without a time limit: leave out --budget-minutes")
        if opts.minutes and budget_minutes:
            raise UserError("give the budgets once: minutes=3,12 or --budget-minutes, not both")
        num = num_samples or 1000
        budgets = opts.minutes or [budget_minutes or default_minutes]

        def more() -> list[tuple[str, str]]:  # after the timed jobs, so that it never competes with them
            trend = gap_section(out, modality, budgets, PAIRS) if len(budgets) > 1 else []
            return [*trend, *(extra(config, num) if extra else []), ("The paper's claims", __doc__)]

        report = run_study(modality, name, CANDIDATES, out, budgets, num, opts, config, more, steps=steps)
        if len(budgets) > 1:
            plot_budgets(Path(out) / "report.json", Path(out) / "sharing.png", PLOT_KEYS[modality])
        return report

    run.__doc__ = f"``unite-sci benchmark {name}``: the paper's ablations on {modality} (module docstring)."
    return run


def _image_floor(config: list[str], num: int) -> list[tuple[str, str]]:
    from unite_sci_benchmarks.images import real_data_section

    return real_data_section(config, num)


images_ablation = ablation("images", "images-ablation", 10.0, _image_floor)
qm9_ablation = ablation("qm9", "qm9-paper-ablation", 30.0)
