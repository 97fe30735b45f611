"""Trainer: exact resume, atomic checkpoints, schedules, EMA, two-stage phases, non-finite steps."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from unite_sci.checkpoint import atomic_save, latest_complete, list_checkpoints, load_checkpoint
from unite_sci.config import OptimConfig, build_config
from unite_sci.errors import UserError
from unite_sci.optim import EMA, lr_at
from unite_sci.testing import TINY
from unite_sci.trainer import StepBatchSampler, Trainer
from unite_sci.unite import Phase
from unite_sci_modalities.toy import ToyAdapter, ToyConfig


def make_trainer(out: Path, *extra: str) -> Trainer:
    cfg = build_config("toy", ToyConfig, [], TINY + [
        "data.num_train=64", "data.num_test=8", "train.batch_size=16", "train.max_steps=8",
        "train.ckpt_every=4", "train.log_every=1", "train.progress=false", "optim.warmup_steps=2",
        "flow.flow_batches=2", *extra])
    return Trainer(cfg, ToyAdapter(cfg.data), out)


def flat_state(tr: Trainer) -> dict[str, torch.Tensor]:
    out = {f"model.{k}": v for k, v in tr.model.state_dict().items()}
    out.update({f"ema.{k}": v for k, v in tr.ema.state_dict().items()})  # includes the update count
    for i, o in enumerate(tr.optimizers):
        for pid, st in o.state_dict()["state"].items():
            out.update({f"opt{i}.{pid}.{k}": v for k, v in st.items() if torch.is_tensor(v)})
    return out


@pytest.mark.parametrize("optim", ["adamw", "muon"])
def test_resume_is_bit_exact(tmp_path, optim):
    straight = make_trainer(tmp_path / "a", f"optim.name={optim}")
    straight.fit()
    half = make_trainer(tmp_path / "b", f"optim.name={optim}")
    half.fit(stop_at=4)  # as if killed after the step-4 checkpoint
    assert half.step == 4 and not (tmp_path / "b" / "checkpoints" / "step_00000008.pt").exists()
    resumed = make_trainer(tmp_path / "b", f"optim.name={optim}")
    resumed.fit(resume=True)
    # resumed from the step-4 checkpoint, not restarted from step 0 (which would give the same weights)
    assert resumed.resumed_from is not None and Path(resumed.resumed_from).name == "step_00000004.pt"
    a, b = flat_state(straight), flat_state(resumed)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:3]
    rows_a = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    rows_b = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    timing = ("elapsed_s", "samples_per_s", "data_prep_s")
    strip = lambda rows: [{k: v for k, v in json.loads(r).items() if k not in timing} for r in rows]  # noqa: E731
    assert strip(rows_a) == strip(rows_b)
    assert (tmp_path / "a" / "loss.png").exists() and (tmp_path / "a" / "config.yaml").exists()


def test_checkpoint_loads_weights_only_and_holds_everything(tmp_path):
    tr = make_trainer(tmp_path)
    tr.fit()
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert {"model", "ema", "optimizers", "step", "rng", "config", "modality", "phase"} <= set(state)
    assert state["step"] == 8 and "model:" in state["config"]
    assert type(state["phase"]) is str and Phase(state["phase"]) is Phase.JOINT  # plain string on disk


def test_atomic_save_survives_interrupted_write(tmp_path, monkeypatch):
    good = {"format": "unite-sci/1", "x": torch.arange(3)}
    atomic_save(good, tmp_path / "step_00000001.pt")

    def broken_save(obj, fh):
        fh.write(b"partial bytes")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(UserError, match="No space left"):
        atomic_save(good, tmp_path / "step_00000002.pt")
    assert not (tmp_path / "step_00000002.pt").exists() and not list(tmp_path.glob("*.tmp"))
    assert torch.equal(load_checkpoint(tmp_path / "step_00000001.pt")["x"], torch.arange(3))


def test_latest_complete_skips_damaged_and_temporary_files(tmp_path):
    atomic_save({"format": "unite-sci/1", "step": 1, "modality": "toy"}, tmp_path / "step_00000001.pt")
    (tmp_path / "step_00000002.pt").write_bytes(b"truncated")  # damaged (e.g. a copy cut short)
    (tmp_path / "step_00000003.pt.tmp").write_bytes(b"half")   # an interrupted write
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000001.pt", "step_00000002.pt"]
    assert latest_complete(tmp_path)["step"] == 1


def test_resume_refuses_other_model_config(tmp_path):
    make_trainer(tmp_path).fit()
    with pytest.raises(UserError, match="model.depth"):
        make_trainer(tmp_path, "model.depth=3").fit(resume=True)


def test_lr_warmup_then_cosine():
    o = OptimConfig(lr=1.0, warmup_steps=10, min_lr=0.0)
    assert lr_at(0.0, 0, 1.0, o) == pytest.approx(0.1)
    assert lr_at(0.0, 9, 1.0, o) == pytest.approx(1.0)
    assert lr_at(0.5, 50, 1.0, o) == pytest.approx(0.5)
    assert lr_at(1.0, 100, 1.0, o) == pytest.approx(0.0)
    # min_lr > 0 and progress 0.25, where cosine and a linear decay differ: lr = m + (b - m)(1 + cos(pi p)) / 2
    o = OptimConfig(lr=2.0, warmup_steps=10, min_lr=0.2)
    assert lr_at(0.25, 40, 2.0, o) == pytest.approx(0.2 + 1.8 * (1 + 2 ** -0.5) / 2)  # 1.7364
    assert lr_at(0.75, 90, 2.0, o) == pytest.approx(0.2 + 1.8 * (1 - 2 ** -0.5) / 2)  # 0.4636
    assert lr_at(1.0, 120, 2.0, o) == pytest.approx(0.2)
    assert lr_at(0.0, 4, 2.0, o) == pytest.approx(1.0)  # warmup: base (step + 1) / warmup_steps


def test_ema_update_formula():
    m = torch.nn.Linear(1, 1, bias=False)
    m.weight.data.fill_(0.0)
    ema = EMA(m, 0.9, warmup=False)
    m.weight.data.fill_(1.0)
    ema.update(m)
    assert ema.shadow["weight"].item() == pytest.approx(0.1)
    warm = EMA(m, 0.9978)
    assert warm.current_decay() == pytest.approx(0.1)  # (1 + 0) / (10 + 0)
    warm.updates = 10_000
    assert warm.current_decay() == pytest.approx(0.9978)


def test_step_sampler_is_a_function_of_the_step_and_shards_the_global_batch():
    s = StepBatchSampler(100, 10, seed=3, start_step=0)
    assert s.indices(12) == StepBatchSampler(100, 10, seed=3, start_step=12).indices(12)
    r0, r1 = StepBatchSampler(100, 10, 3, 0, 0, 2), StepBatchSampler(100, 10, 3, 0, 1, 2)
    assert r0.indices(5) + r1.indices(5) == s.indices(5)


def test_two_stage_freezes_the_tokenizer_in_phase_two(tmp_path):
    tr = make_trainer(tmp_path, "train.mode=two_stage", "model.shared_weights=false")
    tr.fit(stop_at=4)
    assert tr.phase == "tokenizer"
    tr2 = make_trainer(tmp_path, "train.mode=two_stage", "model.shared_weights=false")
    enc_before = {k: v.clone() for k, v in tr2.model.encoder.state_dict().items()}
    tr2.fit(resume=True)
    assert tr2.phase == "denoiser"
    enc_ckpt = load_checkpoint(tmp_path / "checkpoints" / "step_00000004.pt")["model"]
    final = tr2.model.encoder.state_dict()
    assert all(torch.equal(final[k], enc_ckpt[f"encoder.{k}"]) for k in final)
    assert any(not torch.equal(final[k], enc_before[k]) for k in final)  # it did load the trained one
    # the EMA warm-up restarted at the switch (step 4 of 8): 4 updates in phase two, not 8
    assert tr2.ema.updates == 4 and tr2.phase_start == 4


def test_enter_phase_is_the_one_switch(tmp_path):
    tr = make_trainer(tmp_path, "train.mode=two_stage", "model.shared_weights=false")
    assert tr.phase is Phase.TOKENIZER and tr.model.phase is Phase.TOKENIZER
    tr.step, tr.ema.updates = 3, 5
    tr.enter_phase(Phase.DENOISER)
    assert tr.model.phase is Phase.DENOISER and tr.phase_start == 3 and tr.ema.updates == 0
    trained = {id(p) for o in tr.optimizers for g in o.param_groups for p in g["params"]}
    assert trained == {id(p) for p in tr.model.denoiser.parameters()}
    assert not any(p.requires_grad for p in tr.model.encoder.parameters())
    with pytest.raises(AttributeError):
        tr.phase = Phase.JOINT  # read from the model: enter_phase alone changes it


def test_nonfinite_steps_are_skipped_then_abort(tmp_path, monkeypatch):
    tr = make_trainer(tmp_path, "train.max_nonfinite=3")
    monkeypatch.setattr(tr.adapter, "reconstruction_loss",
                        lambda out, b: (out["points"].sum() * float("nan"), {}))
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    with pytest.raises(UserError, match="3 steps in a row"):
        tr.fit()
    assert tr.skipped == 3
    assert all(torch.equal(v, before[k]) for k, v in tr.model.state_dict().items())


def test_size_buckets_keep_every_item_once_per_epoch_and_cut_padding():
    sizes = torch.randint(3, 30, (640,))
    plain = StepBatchSampler(640, 32, 0, 0)
    bucketed = StepBatchSampler(640, 32, 0, 0, sizes=sizes, bucket=10)
    items = sum((bucketed.indices(s) for s in range(20)), [])
    assert sorted(items) == list(range(640))
    pad = lambda smp: sum(int(sizes[smp.indices(s)].max()) * 32 - int(sizes[smp.indices(s)].sum())  # noqa: E731
                          for s in range(20))
    assert pad(bucketed) < 0.3 * pad(plain)
    assert bucketed.indices(7) == StepBatchSampler(640, 32, 0, 7, sizes=sizes, bucket=10).indices(7)


@pytest.mark.slow  # compiling takes about a minute on 2 cores: run by `pytest -m slow`
def test_compiled_step_matches_eager(tmp_path, monkeypatch):
    import torch._inductor.config as inductor

    monkeypatch.setattr(inductor, "fallback_random", True)  # compiled code draws eager's random numbers
    eager = make_trainer(tmp_path / "a", "optim.warmup_steps=0")
    comp = make_trainer(tmp_path / "b", "optim.warmup_steps=0", "train.compile=true")
    comp.model.load_state_dict(eager.model.state_dict())
    batch = next(iter(eager._loader()))
    for _ in range(2):
        la, lb = eager.train_step(batch), comp.train_step(batch)
        assert abs(la["loss"] - lb["loss"]) < 1e-4 * max(1.0, abs(la["loss"]))


def test_compile_auto_turns_on_only_for_runs_that_repay_the_first_compile(tmp_path, monkeypatch):
    from dataclasses import replace

    from unite_sci import compiling
    from unite_sci.config import TrainConfig

    cpu = torch.device("cpu")
    monkeypatch.setattr(compiling, "compiler_missing", lambda device: None)
    auto = TrainConfig(compile=None)
    cases = [(dict(budget_minutes=10.0), True), (dict(budget_minutes=9.9), False),
             (dict(max_steps=2000), True), (dict(max_steps=1999), False),
             (dict(budget_minutes=5.0, max_steps=5000), False),  # the first limit reached decides
             (dict(budget_minutes=30.0, max_steps=4), False),
             (dict(budget_minutes=30.0, compile=False), False), (dict(max_steps=4, compile=True), True)]
    for fields, on in cases:
        assert compiling.compile_decision(replace(auto, **fields), cpu, 2)[0] is on, fields
    # one CPU thread compiles slower and gains less: three times the run
    for fields, on in [(dict(budget_minutes=29.0), False), (dict(budget_minutes=30.0), True),
                       (dict(max_steps=5999), False), (dict(max_steps=6000), True)]:
        assert compiling.compile_decision(replace(auto, **fields), cpu, 1)[0] is on, fields
    monkeypatch.setattr(compiling, "compiler_missing", lambda device: "no C++ compiler found")
    on, why = compiling.compile_decision(replace(auto, budget_minutes=30.0), cpu, 2)
    assert not on and "no C++ compiler" in why
    # the trainer follows the decision, and a forced compile ignores a short run
    monkeypatch.setattr(compiling, "compiler_missing", lambda device: None)
    long = make_trainer(tmp_path / "a", "train.max_steps=0", "train.budget_minutes=30", "train.threads=2")
    assert long.compiled and not make_trainer(tmp_path / "b", "train.max_steps=4").compiled


def test_budget_run_shows_a_time_bar_with_total_and_eta(tmp_path, capsys):
    """A run limited by wall time counts seconds against its budget (a total, hence an ETA); a run limited
    by steps counts steps."""
    tr = make_trainer(tmp_path / "a", "train.max_steps=0", "train.budget_minutes=0.05", "train.progress=true")
    tr.fit()
    assert "/3 s [" in capsys.readouterr().err  # 0.05 minutes = 3 seconds
    tr = make_trainer(tmp_path / "b", "train.max_steps=4", "train.progress=true")
    tr.fit()
    assert "/4 [" in capsys.readouterr().err


def test_two_stage_trains_compiled_in_both_phases(tmp_path):
    """The compiled tokenizer phase once returned its loss without grad_fn (inductor and a sum started from
    zeros): every two-stage run with train.compile=true failed at its first step."""
    tr = make_trainer(tmp_path, "train.mode=two_stage", "model.shared_weights=false", "train.compile=true")
    batch = next(iter(tr._loader()))
    for phase in (Phase.TOKENIZER, Phase.DENOISER):
        tr.enter_phase(phase)
        before = [p.detach().clone() for p in tr.model.trainable_for_phase()]
        assert math.isfinite(tr.train_step(batch)["loss"])
        assert any(not torch.equal(a, p) for a, p in zip(before, tr.model.trainable_for_phase())), phase


def test_compile_cache_lives_under_the_cache_root_unless_torch_is_told(tmp_path, monkeypatch):
    import torch._functorch.config as functorch
    import torch._inductor.config as inductor

    from unite_sci.compiling import persistent_compile_cache

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("UNITE_SCI_CACHE", str(tmp_path / "root"))
    monkeypatch.setattr(inductor, "fx_graph_cache", False)
    monkeypatch.setattr(functorch, "enable_autograd_cache", False)
    assert persistent_compile_cache() == tmp_path / "root" / "torch-compile"
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "root" / "torch-compile")
    assert inductor.fx_graph_cache and functorch.enable_autograd_cache
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))  # the user's folder wins
    assert persistent_compile_cache() == tmp_path / "mine"
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())  # what importing inductor sets
    assert persistent_compile_cache() == tmp_path / "root" / "torch-compile"


@pytest.mark.slow  # a cold inductor start in a fresh process: about a minute of CPU; the test above is the fast check
def test_a_compile_after_inductor_was_imported_writes_into_the_cache_root(tmp_path):
    """End to end in a fresh process: importing torch._inductor first (as any compile does) must not send the
    compiled graphs to inductor's /tmp default."""
    code = ("import torch, torch._inductor.config\n"
            "from unite_sci.compiling import persistent_compile_cache\n"
            "persistent_compile_cache()\n"
            "print(float(torch.compile(lambda x: (x * 2 + 1).sum())(torch.ones(4))))\n")
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    env.update(UNITE_SCI_CACHE=str(tmp_path / "root"), OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and out.stdout.strip().endswith("12.0"), out.stderr[-2000:]
    written = [p for p in (tmp_path / "root" / "torch-compile").rglob("*") if p.is_file()]
    assert written, "nothing was written under the cache root"


def test_the_cpu_budget_clock_counts_this_process_cpu_seconds(tmp_path):
    import time

    from unite_sci.config import TrainConfig

    assert TrainConfig().budget_clock == "wall"
    from unite_sci.engine import load_config, make_adapter
    from unite_sci.trainer import Trainer

    for clock, fn in (("cpu", time.process_time), ("wall", time.perf_counter)):
        cfg = load_config("toy", overrides=["train.max_steps=1", f"train.budget_clock={clock}", "train.compile=false"])
        trainer = Trainer(cfg, make_adapter(cfg), tmp_path / clock)
        assert trainer.clock is fn
