"""``unite-sci`` command line: parses, loads config, calls one library function per subcommand.

A user mistake (missing file, bad value, unknown modality) exits with status 2 and one line on stderr.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from typing import Any, Callable

# Set before torch loads: with 2 threads and any other load, OpenMP spinning made steps 5x slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

BENCHMARK_GROUP = "unite_sci.benchmarks"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unite-sci", description="Single-stage generative modelling (UNITE).")
    sub = p.add_subparsers(dest="command", required=True)

    from .adapter import available

    # Every option says what it does and its default; None defaults come from the modality's config,
    # which the help text says rather than printing "None".
    def command(name: str, help: str, **kw: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, **kw)

    command("list", "registered modalities, benchmarks and presets")

    modalities = ", ".join(available())
    t = command("train", "train a model (single stage by default)", epilog=f"registered modalities: {modalities}")
    t.add_argument("--modality", required=True, help=f"what to model, one of: {modalities}")
    t.add_argument("--preset", help="model preset (tiny, small, S, B, L, XL) (default: the config's model.preset)")
    t.add_argument("--config", help="YAML file merged over the modality's default config (default: none)")
    t.add_argument("--max-steps", type=int, help="stop after this many steps (default: the config's "
                                                 "train.max_steps)")
    t.add_argument("--budget-minutes", type=float, help="stop after this much wall time (default: the "
                                                        "config's train.budget_minutes)")
    t.add_argument("--out", help="run folder (default: runs/<modality>)")
    t.add_argument("--data", "--data-dir", dest="data_dir", metavar="FILE_OR_FOLDER",
                   help="the data set's file or folder, as the modality reads it (data.data_dir; see "
                        "docs/) (default: the modality's own, downloaded into the cache)")
    t.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint "
                                                         "(default: start from step 0)")
    t.add_argument("--init-from", metavar="NAME_OR_CHECKPOINT",
                   help="fine-tune: start from a shipped model (see `unite-sci list`) or a checkpoint, with its "
                        "architecture and weights, a fresh optimiser and the LR warm-up; the data may hold new "
                        "elements, classes or conditions (docs/fine-tuning.md) (default: from scratch)")
    t.add_argument("overrides", nargs="*", help="key=value config overrides (default: none)")

    s = command("sample", "generate samples from a checkpoint")
    _source(s)
    s.add_argument("--num", type=int, required=True, help="how many samples")
    s.add_argument("--solver", choices=["heun", "euler", "dopri5"], help="ODE solver (default: the "
                                                                         "checkpoint's sample.solver)")
    s.add_argument("--steps", type=int, help="solver steps (default: the checkpoint's sample.steps)")
    s.add_argument("--temperature", type=float, help="scale of the starting noise; below 1 trades diversity "
                                                     "for quality (default: the checkpoint's sample.temperature)")
    s.add_argument("--cfg", type=float, help="classifier-free guidance scale (default: the checkpoint's "
                                             "sample.cfg)")
    s.add_argument("--seed", type=int, help="random seed (default: the checkpoint's sample.seed)")
    s.add_argument("--out", required=True, help="folder for the exported samples")
    s.add_argument("--condition", action="append", default=[], metavar="KEY=VALUE",
                   help="generate under this condition: class=N for class-conditional checkpoints, or a "
                        "condition the checkpoint was trained on (the adapter's, e.g. a property value "
                        "or a composition); conditions not given are drawn from the training data "
                        "(default: unconditional, or class-balanced labels); repeatable")

    e = command("evaluate", "metrics of samples on disk")
    e.add_argument("--modality", required=True, help=f"how to read and score the samples, one of: {modalities}")
    e.add_argument("--samples", required=True, help="a file or folder written by `unite-sci sample`")
    e.add_argument("--per-sample", help="CSV with one row per sample; the modality's plots go beside it "
                                        "(default: with --out, <out without .json>_per_sample.csv, else none)")
    e.add_argument("--out", help="write the metrics JSON here too (default: print only)")
    e.add_argument("--data", "--data-dir", dest="data_dir", metavar="FILE_OR_FOLDER",
                   help="the data set's file or folder, for reference metrics, data.data_dir (default: the "
                        "modality's own)")
    e.add_argument("overrides", nargs="*", help="data.key=value settings of the modality (default: none)")

    rx = command("relax", "relax samples with the modality's physical tool (crystals: CHGNet; molecules: a force "
                          "field) and write them in the same formats, with relax.csv per sample")
    rx.add_argument("--samples", required=True, help="a file or folder written by `unite-sci sample`")
    rx.add_argument("--out", required=True, help="folder for the relaxed samples, relax.csv and relax_meta.json; "
                                                 "rerunning into it resumes")
    rx.add_argument("--modality", help="how to read the samples (default: the one recorded by `sample`)")
    rx.add_argument("overrides", nargs="*", help="data.key=value settings of the modality, e.g. the relaxation's "
                                                 "force threshold (default: none)")

    cf = command("config", "print the resolved run config (schema defaults <- the modality's YAML <- --config "
                           "<- overrides) with every key, as `train` would use it")
    cf.add_argument("--modality", required=True, help=f"whose config, one of: {modalities}")
    cf.add_argument("--config", help="YAML file merged over the modality's default config (default: none)")
    cf.add_argument("overrides", nargs="*", help="key=value config overrides (default: none)")

    b = command("benchmark", "train for a budget (or load), sample, evaluate, report")
    b.add_argument("name", help="a benchmark (see `unite-sci list`) or a modality")
    b.add_argument("--budget-minutes", type=float, help="training budget (default: the benchmark's own)")
    b.add_argument("--num-samples", type=int, help="samples to score (default: the benchmark's own)")
    _source(b, "score this checkpoint instead of training (default: train)", required=False)
    b.add_argument("--out", help="report folder (default: runs/benchmark_<name>)")
    b.add_argument("overrides", nargs="*", help="key=value config overrides")
    enc = command("encode", "the Generative Encoder as a tokenizer: inputs -> latents (.npz)")
    _source(enc)
    enc.add_argument("--inputs", required=True, help="a file or folder in the modality's formats (as "
                                                     "`unite-sci sample` writes them)")
    enc.add_argument("--out", required=True, help="the .npz to write: latents (sum of registers, C), sizes "
                                                  "(per sample), pooled (samples, C)")
    enc.add_argument("--seed", type=int, default=0, help="seed of the registers' starting noise (default: 0)")

    rec = command("reconstruct", "encode and decode inputs; export the reconstructions and score them")
    _source(rec)
    rec.add_argument("--inputs", required=True, help="a file or folder in the modality's formats")
    rec.add_argument("--out", required=True, help="folder for the reconstructions and report.json")
    rec.add_argument("--seed", type=int, default=0, help="seed of the registers' starting noise (default: 0)")

    pr = command("probe", "linear probe of the pooled latents for a property, beside a random network")
    _source(pr)
    pr.add_argument("--property", required=True, help="a property the checkpoint's adapter provides "
                                                       "(an unknown name lists the valid ones)")
    pr.add_argument("--num-train", type=int, default=5000, help="training items for the fit (default: 5000)")
    pr.add_argument("--num-val", type=int, default=1000, help="validation items, to choose the ridge strength "
                                                             "(default: 1000)")
    pr.add_argument("--num-test", type=int, default=2000, help="test items scored (default: 2000)")
    pr.add_argument("--out", help="write the report JSON here too (default: print only)")

    dg = command("diagnose", "where generation loses quality: decoder tolerance, the denoiser's one-shot and "
                             "ODE-from-t0 predictions on real test items, and the sampler, scored alike")
    _source(dg)
    dg.add_argument("--out", help="folder for report.json, report.md and diagnose.png (default: print only)")
    dg.add_argument("--num", type=int, default=300, help="test items, and samples drawn (default: 300)")
    dg.add_argument("--ode-steps", type=int, default=10, help="Heun steps of each ODE from t0 (default: 10)")
    dg.add_argument("--seed", type=int, default=0, help="noise and register seed (default: 0)")

    an = command("analyze", "pathway analysis (the paper's Fig. 6, 7 and weight entropy): per-layer CKA and "
                            "cosine of tokenization vs denoising activations, decoded one-shot predictions "
                            "against t, weight entropy against a fresh network")
    _source(an)
    an.add_argument("--out", default=os.path.join("runs", "analyze"),
                    help="folder for the CSVs, analyze.png, report.json and report.md (default: runs/analyze)")
    an.add_argument("--num", type=int, default=300, help="test items (default: 300)")
    an.add_argument("--seed", type=int, default=0, help="noise, register and fresh-network seed (default: 0)")
    an.add_argument("overrides", nargs="*", help="data.key=value settings of the checkpoint's modality, e.g. "
                                                 "data.fid=false (default: none)")

    sh = command("ship", "make a shipped model from a run: <name>.pt (the weights it samples with, no "
                         "optimiser state) and <name>.card.yaml; with --score, measured (docs/models.md)")
    sh.add_argument("--checkpoint", required=True, help="the run's checkpoint (runs/X/checkpoints/last.pt)")
    sh.add_argument("--name", required=True, help="the model's name, as `--model NAME` will take it")
    sh.add_argument("--out", help="folder for the two files (default: the package's shipped-models folder)")
    sh.add_argument("--score", action="store_true", help="score it with `unite-sci benchmark` and put the "
                                                         "numbers and the command into the card (default: no)")
    sh.add_argument("--benchmark", help="the benchmark that scores it (default: the model's modality)")
    sh.add_argument("--num-samples", type=int, default=1000, help="samples scored (default: 1000)")
    sh.add_argument("--score-out", help="report folder of the scoring (default: runs/ship_<name>)")
    sh.add_argument("--headline", action="append", metavar="METRIC", help="a generation metric shown by "
                    "`list`; repeatable (default: the first two in percent)")
    sh.add_argument("--floor", action="append", metavar="METRIC", help="a generation metric the tests' floor "
                    "checks; repeatable (default: the headline ones)")
    sh.add_argument("--floor-margin", type=float, default=20.0, help="the tests' floor: the card's headline "
                                                                     "numbers minus this (default: 20 points)")
    sh.add_argument("--floor-override", action="append", default=[], metavar="data.KEY=VALUE",
                    help="data setting the floor test loads with (e.g. to skip a slow reference); repeatable")
    sh.add_argument("--dtype", default="float32", help="storage type of the weights: float32, bfloat16 or "
                                                       "float16; loading casts back (default: float32)")
    sh.add_argument("--commit", help="the commit that trained the run (default: the newest commit of the "
                                     "source tree before the run started)")
    sh.add_argument("--recipe", default="", help="a line on the recipe and why (default: none)")
    sh.add_argument("overrides", nargs="*", help="benchmark key=value words passed to the scoring; sample.* words also become the shipped model's sampling defaults (default: none)")

    cd = command("card", "add the physical checks of a shipped model's samples to its card: the numbers of "
                         "`evaluate ... data.physics=true --out FILE` with the commands that made them")
    cd.add_argument("name", help="the shipped model (see `unite-sci list`)")
    cd.add_argument("--physics", required=True, metavar="RESULTS.json",
                    help="evaluate's results (--out) on samples this model drew, relaxed or not")

    for command in (sub.choices["list"], t, s, e, rx, cf, b, enc, rec, pr, dg, an, sh, cd):
        command.add_argument("--adapter", action="append", default=[], metavar="PACKAGE.MODULE:CLASS",
                             help="register this adapter class (importable from sys.path or the current "
                                  "folder; nothing installed); repeatable. Also: $UNITE_SCI_ADAPTERS")
    for command in (s, e, rx, enc, rec):
        command.add_argument("--threads", type=int, help="use at most this many CPUs: torch threads and worker "
                                                         "processes (default: every CPU)")
    return p


def _source(p: argparse.ArgumentParser, what: str = "a .pt file written by `unite-sci train`",
            required: bool = True) -> None:
    """``--checkpoint FILE`` or ``--model NAME`` (a shipped model, see docs/models.md), one of them."""
    g = p.add_mutually_exclusive_group(required=required)
    either = "" if "default" in what else " (default: none; this or --model)"
    g.add_argument("--checkpoint", help=what + either)
    g.add_argument("--model", help="a shipped model by name instead of a checkpoint, see `unite-sci list` "
                                   "(default: none; this or --checkpoint)")


def _benchmarks() -> dict[str, Any]:
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=BENCHMARK_GROUP)}


def _check_positive(name: str, value: float | None) -> None:
    from .errors import UserError

    if value is not None and value <= 0:
        raise UserError(f"{name} must be > 0, got {value}")


def cmd_list(args: argparse.Namespace) -> None:
    from .adapter import available
    from .model import CPU_PRESETS, PRESETS

    print("modalities:", ", ".join(available()))
    print("benchmarks:", ", ".join(sorted(_benchmarks())))
    from .shipped import shipped_models, summary

    models = shipped_models()
    print("shipped models:", ", ".join(models) or "none installed (see docs/models.md)")
    for name, path in models.items():
        print(f"model {summary(name, path)}")
    for name, p in PRESETS.items():
        tag = " (CPU preset)" if name in CPU_PRESETS else ""
        print(f"preset {name}: depth {p['depth']}, width {p['width']}, heads {p['heads']}; "
              f"decoder {p['dec_depth']}/{p['dec_width']}/{p['dec_heads']}{tag}")


def cmd_train(args: argparse.Namespace) -> None:
    from .engine import load_config, train
    from .files import writable_dir
    from .finetune import model_keys

    _check_positive("--max-steps", args.max_steps)
    _check_positive("--budget-minutes", args.budget_minutes)
    over = list(args.overrides)
    if args.preset:
        over.append(f"model.preset={args.preset}")
    if args.max_steps is not None:
        over.append(f"train.max_steps={args.max_steps}")
    if args.budget_minutes is not None:
        over.append(f"train.budget_minutes={args.budget_minutes}")
    if args.data_dir:
        over.append(f"data.data_dir={args.data_dir}")
    if args.init_from:
        over.append(f"init_from.source={args.init_from}")
    over.append(f"out={args.out or os.path.join('runs', args.modality)}")
    cfg = load_config(args.modality, args.config, over)
    writable_dir(cfg.out, "run folder")  # before the data is built or a step is taken
    summary = train(cfg, resume=args.resume, given_model_keys=model_keys(args.config, over))
    from .trainer import dist_info

    if dist_info()[0] == 0:  # under torchrun every process returns the summary: one copy, from rank 0
        print(json.dumps(summary, indent=2))


def cmd_config(args: argparse.Namespace) -> None:
    from .config import to_yaml
    from .engine import load_config

    # out as `train` sets it without --out; an out= override still wins
    cfg = load_config(args.modality, args.config, [f"out={os.path.join('runs', args.modality)}", *args.overrides])
    print(to_yaml(cfg), end="")


def cmd_sample(args: argparse.Namespace) -> None:
    from .engine import sample_to_disk
    from .errors import UserError

    _check_positive("--num", args.num)
    _check_positive("--steps", args.steps)
    _check_positive("--temperature", args.temperature)
    condition = {}
    for word in args.condition:
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise UserError(f"--condition takes KEY=VALUE, got {word!r}")
        condition[key] = value
    meta = sample_to_disk(args.checkpoint, args.out, args.num,
                          {"solver": args.solver, "steps": args.steps, "cfg": args.cfg, "seed": args.seed,
                           "temperature": args.temperature},
                          condition or None, command_line(args))
    print(json.dumps({k: meta[k] for k in ("num_samples", "solver", "steps", "temperature", "samples_per_s", "files")},
                     indent=2))


def cmd_evaluate(args: argparse.Namespace) -> None:
    from .engine import evaluate_path
    from .files import json_ready, writable_dir, write_json

    over = ([f"data.data_dir={args.data_dir}"] if args.data_dir else []) + list(args.overrides)
    per_sample = args.per_sample
    if per_sample is None and args.out:  # rows and plots land in the output folder, beside the JSON
        per_sample = os.path.splitext(args.out)[0] + "_per_sample.csv"
    for target in (args.out, per_sample):  # before the metrics run (the first may build a reference)
        if target:
            writable_dir(os.path.dirname(os.path.abspath(target)))
    metrics = evaluate_path(args.modality, args.samples, per_sample, over)
    metrics["command"] = command_line(args)
    if args.out:
        write_json(metrics, args.out)
    print(json.dumps(json_ready(metrics), indent=2, default=str))  # the same JSON as the file: NaN as null


def cmd_relax(args: argparse.Namespace) -> None:
    from .files import json_ready
    from .engine import relax_path

    summary = relax_path(args.samples, args.out, args.modality, list(args.overrides), command=command_line(args))
    print(json.dumps(json_ready({k: v for k, v in summary.items() if not isinstance(v, dict)}), indent=2))


def cmd_card(args: argparse.Namespace) -> None:
    from pathlib import Path

    from .physics import card_physics, read_json
    from .shipped import read_card, resolve, write_card

    weights = resolve(args.name)
    card = read_card(weights)
    results = read_json(Path(args.physics))
    card["physics"] = card_physics(results, str(card["weights"].get("sha256", "")), args.name)
    write_card(card, weights)
    print(f"{args.name}: physics of {card['physics']['num_samples']} samples added to {weights.name[:-3]}.card.yaml")


def command_line(args: argparse.Namespace) -> str:
    """The command line that ran this command, as a user would type it again."""
    import shlex

    return "unite-sci " + shlex.join(getattr(args, "argv", None) or [])


def cmd_benchmark(args: argparse.Namespace) -> None:
    from .adapter import available
    from .errors import UserError
    from .files import writable_dir

    _check_positive("--budget-minutes", args.budget_minutes)
    _check_positive("--num-samples", args.num_samples)
    out = args.out or os.path.join("runs", f"benchmark_{args.name}")
    benches = _benchmarks()
    if args.name in benches or args.name in available():
        writable_dir(out)  # before the benchmark trains or samples
    if args.name in benches:
        try:
            fn: Callable[..., Any] = benches[args.name].load()
        except ImportError as e:
            raise UserError(f"benchmark {args.name!r} cannot be imported ({e})") from None
        report = fn(out=out, budget_minutes=args.budget_minutes, num_samples=args.num_samples,
                    checkpoint=args.checkpoint, overrides=list(args.overrides))
    elif args.name in available():
        from .protocol import markdown_table, run_protocol, write_report

        res = run_protocol(args.name, out, args.budget_minutes, args.num_samples, args.checkpoint,
                           list(args.overrides))
        rows = [{"metric": k, "value": v} for k, v in {**res["generation"], **res["reconstruction"]}.items()
                if isinstance(v, (int, float))]
        report = write_report(out, f"unite-sci benchmark: {args.name}",
                              [("Results", markdown_table(rows, ["metric", "value"]))], res)
    else:
        raise UserError(f"unknown benchmark {args.name!r}; available: "
                        f"{', '.join(sorted(set(benches) | set(available())))}")
    print(f"report: {report}")


def cmd_ship(args: argparse.Namespace) -> None:
    from pathlib import Path

    from .engine import machine_description
    from .files import writable_dir
    from .shipped import BUILTIN, add_scores, entry_point_dirs, find_results, read_card, ship

    _check_positive("--num-samples", args.num_samples)
    out = args.out or entry_point_dirs().get(BUILTIN)
    if out is None:
        from .errors import UserError

        raise UserError("no shipped-models folder is installed (entry point unite_sci.models:builtin); give --out")
    writable_dir(out, "shipped-models folder")
    weights = ship(args.checkpoint, args.name, out, args.dtype, args.commit, args.recipe, machine_description(),
                   args.overrides)
    if args.score:
        bench = args.benchmark or read_card(weights)["modality"]
        report = Path(args.score_out or os.path.join("runs", f"ship_{args.name}"))
        words = [bench, "--model", args.name, "--num-samples", str(args.num_samples), *args.overrides]
        cmd_benchmark(argparse.Namespace(name=bench, out=str(report), budget_minutes=None,
                                         num_samples=args.num_samples, checkpoint=str(weights),
                                         overrides=list(args.overrides)))
        add_scores(weights, find_results(report, weights), "unite-sci benchmark " + " ".join(words),
                   args.headline, args.floor_margin, floor_overrides=args.floor_override, floor=args.floor)
    from .shipped import summary

    print(f"shipped: {weights} and {weights.name[:-3]}.card.yaml")
    print(summary(args.name, weights))


def cmd_encode(args: argparse.Namespace) -> None:
    from .api import load
    from .files import writable_dir

    writable_dir(os.path.dirname(os.path.abspath(args.out)))
    m = load(args.checkpoint)
    objs = m.read(args.inputs)
    lat = m.encode(objs, args.seed)
    lat.save(args.out, checkpoint=args.checkpoint, inputs=args.inputs, seed=args.seed)
    print(json.dumps({"samples": len(lat), "registers": int(sum(len(z) for z in lat.per_register)),
                      "latent_dim": int(lat.pooled.shape[-1]), "out": args.out}, indent=2))


def cmd_reconstruct(args: argparse.Namespace) -> None:
    from .api import load
    from .engine import provenance
    from .files import writable_dir, write_json

    out = writable_dir(args.out)
    m = load(args.checkpoint)
    inputs = m.read(args.inputs)
    recons, report = m.reconstruct(inputs, args.seed)
    pairs = getattr(m.adapter, "export_reconstructions", None)  # inputs beside outputs (AdapterBase)
    files = pairs(inputs, recons, out) if pairs is not None else m.adapter.export(recons, out)
    report = {**report, "inputs": args.inputs, "num_inputs": len(recons), "seed": args.seed,
              "files": [str(f) for f in files], **provenance(m.loaded)}
    write_json(report, out / "report.json")
    print(json.dumps({k: v for k, v in report.items() if isinstance(v, (int, float, str))}, indent=2))


def cmd_probe(args: argparse.Namespace) -> None:
    from .files import json_ready, writable_dir, write_json
    from .probe import run_probe

    if args.out:
        writable_dir(os.path.dirname(os.path.abspath(args.out)))
    report = run_probe(args.checkpoint, args.property, args.num_train, args.num_val, args.num_test)
    if args.out:
        write_json(report, args.out)
    print(json.dumps(json_ready(report), indent=2))


def cmd_diagnose(args: argparse.Namespace) -> None:
    from .diagnose import markdown, run_diagnose

    report = run_diagnose(args.checkpoint, args.out, args.num, args.seed, args.ode_steps)
    print(markdown(report))


def cmd_analyze(args: argparse.Namespace) -> None:
    from .analyze import markdown, run_analyze

    report = run_analyze(args.checkpoint, args.out, args.num, args.seed, overrides=args.overrides)
    print(markdown(report))
    print(f"written: {args.out}")


COMMANDS = {"analyze": cmd_analyze,
            "diagnose": cmd_diagnose, "list": cmd_list, "train": cmd_train, "sample": cmd_sample,
            "evaluate": cmd_evaluate, "config": cmd_config, "benchmark": cmd_benchmark, "encode": cmd_encode,
            "reconstruct": cmd_reconstruct, "probe": cmd_probe, "ship": cmd_ship, "relax": cmd_relax,
            "card": cmd_card}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line as ``main`` reads it, without running anything (the docs check parses every
    documented command with it). A malformed line exits with status 2 and argparse's usage message."""
    parser = _parser()
    # key=value overrides may come before or after options: collect the leftovers here
    args, extra = parser.parse_known_args(argv)
    stray = [a for a in extra if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    from .errors import Interrupted, UserError
    from .stopping import command_signals

    # Libraries' deprecation notices about their own internals (torch.jit.script inside lpips and
    # torch-geometric) are not the user's business and would break the one-line error contract.
    warnings.filterwarnings("ignore", category=FutureWarning, message=r"`torch\.jit\.script` is deprecated",
                            module=r"torch\.jit\._script")
    try:
        from .adapter import load_adapter

        for spec in args.adapter:
            load_adapter(spec)
        if getattr(args, "model", None):  # a shipped model: its path, after the sha256 check
            from .shipped import resolve

            args.checkpoint = str(resolve(args.model))
        if getattr(args, "threads", None) is not None:
            _check_positive("--threads", args.threads)
            from .parallel import limit_threads

            limit_threads(args.threads)
        with command_signals(args.command):
            COMMANDS[args.command](args)
        sys.stdout.flush()  # a closed pipe must fail here, inside the try, not at interpreter exit
    except BrokenPipeError:
        # The reader (`unite-sci list | head -1`) has what it wanted: no traceback. Point stdout at
        # devnull so the interpreter's own flush at exit does not raise again; 141 = 128 + SIGPIPE,
        # what a shell reports for any tool that stops on a closed pipe.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:  # the message says what was interrupted and what was kept
        print(f"interrupted: {e}", file=sys.stderr)
        # the finally blocks on the way out closed every file of ours; skip the interpreter's teardown,
        # which took 4-7 s after an interrupted torch.compile on a loaded 2-core machine
        sys.stdout.flush(), sys.stderr.flush()
        os._exit(e.exit_code)
    except KeyboardInterrupt:  # outside the training loop nothing is saved, so promise nothing
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
