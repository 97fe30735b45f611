"""`benchmark images-ablation` / `qm9-paper-ablation` and the rows of `benchmark images seeds=`: options,
the job list (which settings each candidate trains with), equal steps, the peer row, finished runs."""
import json
from pathlib import Path

import pytest

from unite_sci.checkpoint import FORMAT, atomic_save
from unite_sci.engine import load_config
from unite_sci.errors import UserError
from unite_sci_benchmarks.images import NO_DIFFUSERS, ROWS
from unite_sci_benchmarks.paper_ablation import CANDIDATES, images_ablation, plan
from unite_sci_benchmarks.study import StudyOptions, limit_overrides, limit_reached, plan_jobs, run_study

# candidate -> (shared weights, K, stop-gradient, train mode) it must train with
EXPECTED = {"unite": (True, 1, True, "single_stage"), "separate": (False, 1, True, "single_stage"),
            "k2": (True, 2, True, "single_stage"), "k4": (True, 4, True, "single_stage"),
            "no_sg": (True, 1, False, "single_stage"), "separate_no_sg": (False, 1, False, "single_stage"),
            "two_stage": (False, 1, True, "two_stage"), "unite_small": (True, 1, True, "single_stage"),
            "separate_small": (False, 1, True, "single_stage"), "unite_deep": (True, 1, True, "single_stage")}
# candidate -> (preset, encoder blocks) where the width rows differ from the tiny preset's 4 blocks
SIZES = {"unite_small": ("small", None), "separate_small": ("small", None), "unite_deep": ("tiny", 8)}


def _jobs(words, candidates=CANDIDATES, budgets=(10.0,)):
    opts, config, steps = plan(words)
    return plan_jobs(candidates, list(candidates), opts.seeds or [0], Path("/out"), list(budgets), steps, 100, 20,
                     opts.threads or 1, config), steps


@pytest.mark.parametrize("modality", ["images", "qm9"])
def test_each_candidate_trains_with_its_settings(modality):
    jobs, steps = _jobs(["seeds=0,1", "jobs=2", "threads=1"])
    assert steps == 0 and len(jobs) == 2 * len(EXPECTED)
    for job in jobs:
        cand, seed = job["tag"].rsplit("_s", 1)
        cfg = load_config(modality, overrides=job["overrides"] + limit_overrides(job["budget"], job["steps"]))
        got = (cfg.model.shared_weights, cfg.flow.flow_batches, cfg.flow.stop_gradient, cfg.train.mode)
        assert got == EXPECTED[cand], cand
        assert (cfg.model.preset, cfg.model.depth) == SIZES.get(cand, ("tiny", None)), cand
        limits = (cfg.train.seed, cfg.train.threads, cfg.train.budget_minutes, cfg.train.max_steps)
        assert limits == (int(seed), 1, 10.0, 0)
        assert job["run"] == f"/out/{cand}_s{seed}"


def test_equal_steps_trains_n_steps_without_a_time_limit_in_its_own_folders():
    jobs, steps = _jobs(["equal=steps", "steps=1500", "candidates=k4"])
    assert steps == 1500
    cfg = load_config("images", overrides=jobs[0]["overrides"] + limit_overrides(jobs[0]["budget"], jobs[0]["steps"]))
    assert (cfg.train.max_steps, cfg.train.budget_minutes) == (1500, 0.0)
    assert {j["tag"] for j in jobs} >= {"k4_s0_1500steps", "unite_s0_1500steps"}  # never a timed run's folder


@pytest.mark.parametrize("words,message", [
    (["equal=steps"], "equal=steps needs steps=N"),
    (["steps=100"], "steps= is for equal=steps"),
    (["equal=often"], "benchmark option 'equal'"),
    (["seeds=0", "jobz=2"], "benchmark option 'jobz': unknown"),
    (["equal=steps", "steps=10", "minutes=3,12"], "minutes= is for equal=time"),
])
def test_bad_options_are_one_line(words, message):
    with pytest.raises(UserError, match=message):
        plan(words)


def test_equal_steps_refuses_a_time_budget(tmp_path):
    with pytest.raises(UserError, match="leave out --budget-minutes"):
        images_ablation(str(tmp_path), budget_minutes=5.0, overrides=["equal=steps", "steps=10"])


def test_several_budgets_are_given_once(tmp_path):
    with pytest.raises(UserError, match="not both"):
        images_ablation(str(tmp_path), budget_minutes=5.0, overrides=["minutes=3,12"])


def test_user_overrides_come_after_the_base_but_candidates_win():
    jobs, _ = _jobs(["flow.flow_batches=3", "data.fid=false"])
    ks = {j["tag"]: load_config("images", overrides=j["overrides"]).flow.flow_batches for j in jobs}
    assert ks["unite_s0"] == 3 and ks["k4_s0"] == 4


def test_image_rows_peer_job_and_limits():
    jobs, _ = _jobs([], candidates={**ROWS, "pixel_unet": (["peer:pixel_unet:8,16"], "peer")})
    by = {j["tag"]: j for j in jobs}
    assert by["pixel_unet_s0"]["peer"] == "pixel_unet:8,16" and by["unite_s0"]["peer"] is None
    assert not any(o.startswith("peer:") for o in by["pixel_unet_s0"]["overrides"])
    assert "model.shared_weights=false" in by["two_stage_s0"]["overrides"]
    rows = plan_jobs(ROWS, [n for n in ROWS if n != "pixel_unet"], [0], Path("/out"), [1.0], 0, 10, 10, 1, [])
    shared = {j["tag"]: load_config("images", overrides=j["overrides"]).model.shared_weights for j in rows}
    assert shared == {"unite_s0": False, "unite_shared_s0": True, "two_stage_s0": False}  # the default: separate


def test_the_ablation_starts_from_unite_as_published_whatever_the_config_says():
    """configs/images.yaml defaults to separate weights; the paper's ablation rows start from one shared GE."""
    jobs, _ = _jobs([])
    shared = {j["tag"]: load_config("images", overrides=j["overrides"]).model.shared_weights for j in jobs}
    assert shared["unite_s0"] and shared["k4_s0"] and not shared["separate_s0"]


def test_limit_reached_by_steps_or_minutes(tmp_path):
    ckpt = tmp_path / "last.pt"
    assert not limit_reached(ckpt, 1.0)
    atomic_save({"format": FORMAT, "step": 5, "elapsed": 59.5}, ckpt)
    assert limit_reached(ckpt, 1.0) and not limit_reached(ckpt, 1.1)  # one second of slack
    assert limit_reached(ckpt, 0.0, 5) and not limit_reached(ckpt, 0.0, 6)


def test_skipped_row_and_finished_jobs_in_the_table(tmp_path):
    res = {"generation": {"images/fd_fashion_mnist": 12.0, "images/recall": 0.5, "images/gfid": 80.0,
                          "images/nn_train_rmse": 0.2}, "reconstruction": {},
           "train_steps": 300, "train_wall_s": 60.0, "machine": {"torch_threads": 1}}
    for seed, gfid in ((0, 80.0), (1, 100.0)):
        (tmp_path / f"unite_s{seed}" / "eval").mkdir(parents=True)
        (tmp_path / f"unite_s{seed}" / "eval" / "results.json").write_text(
            json.dumps({**res, "generation": {**res["generation"], "images/gfid": gfid}}))
    opts = StudyOptions(seeds=[0, 1], run=False)
    report = run_study("images", "images", ROWS, str(tmp_path), [1.0], 10, opts, [],
                       skipped={"pixel_unet": NO_DIFFUSERS}).read_text()
    # fd: the data set's fd_<set> key; precision, class agreement, diversity, duplicates: absent here
    assert ("| unite | 1.0 | 2 | 12.00 [12.00–12.00] | – | 0.50 [0.50–0.50] | – | – | – | 90.00 [80.00–100.00] |"
            in report)
    assert "| pixel_unet | 1.0 | 0 |" in report and NO_DIFFUSERS in report
    assert "60.00 [60.00–60.00] | 1.00 [1.00–1.00] |" in report  # wall seconds and threads of every row


def test_image_rows_say_when_diffusers_is_missing(tmp_path, monkeypatch):
    import unite_sci_benchmarks.images as bench

    monkeypatch.setattr(bench, "find_spec", lambda name: None if name == "diffusers" else object())
    report = bench.run(str(tmp_path), 2.0, overrides=["seeds=0", "run=false", "sanity=0"]).read_text()
    assert "| pixel_unet | 2.0 | 0 |" in report and NO_DIFFUSERS in report
    with pytest.raises(UserError, match="one guidance scale"):
        bench.run(str(tmp_path), overrides=["seeds=0", "cfg_sweep=1,2"])
