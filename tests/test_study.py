"""The study runner behind `benchmark qm9-ablation`, `qm9-scaling` and `qm9 seeds=`: jobs per candidate
and seed, sampler-only candidates on another candidate's checkpoints, finished jobs kept, mean and range."""
import json

import pytest

from unite_sci.errors import UserError
from unite_sci.testing import TINY
from unite_sci_benchmarks.study import METRICS, _summary, study

CANDIDATES = {
    "base": ([], "the toy default"),
    "base+euler": (["from:base", "sample.solver=euler"], "base checkpoints, Euler"),
}
SMALL = TINY + ["data.num_train=64", "data.num_test=16", "train.batch_size=8", "sample.steps=2"]


def test_summary_gives_mean_and_range():
    rows = [{"connected_validity": 10.0}, {"connected_validity": 20.0}, {"connected_validity": 60.0}]
    cols = METRICS["qm9"]
    assert _summary(rows, cols)["connected_validity"] == "30.00 [10.00–60.00]"
    assert _summary(rows[:1], cols)["connected_validity"] == "10.00"
    assert _summary([], cols)["connected_validity"] == "–"


def test_unknown_option_and_candidate_are_refused(tmp_path):
    with pytest.raises(UserError, match=r"benchmark option 'seed': unknown, valid: seeds, "):
        study("toy", "t", CANDIDATES, str(tmp_path), [0.02], 4, ["seed=1"])
    with pytest.raises(UserError, match="unknown candidate 'nope'"):
        study("toy", "t", CANDIDATES, str(tmp_path), [0.02], 4, ["candidates=nope"])


def test_a_failing_job_is_one_line_and_names_itself(tmp_path, capfd):
    with pytest.raises(UserError, match="study jobs failed: base_s0"):
        study("toy", "t", CANDIDATES, str(tmp_path), [0.02], 4, SMALL + ["data.bogus=1", "candidates=base"])
    err = capfd.readouterr().err
    assert "error: base_s0: config key 'data.bogus'" in err and "Traceback" not in err


def test_jobs_seeds_sources_and_reuse(tmp_path):
    overrides = SMALL + ["seeds=0,1", "jobs=2", "threads=1", "recon=4"]
    report = study("toy", "t", CANDIDATES, str(tmp_path), [0.02], 4, overrides)
    data = json.loads((tmp_path / "report.json").read_text())
    assert set(data["per_job"]) == {"base_s0", "base_s1", "base+euler_s0", "base+euler_s1"}
    # the sampler-only candidate trained nothing: its samples come from base's checkpoint, with its solver
    assert not (tmp_path / "base+euler_s0" / "checkpoints").exists()
    res = json.loads((tmp_path / "base+euler_s0" / "eval" / "results.json").read_text())
    assert res["sampling"]["solver"] == "euler" and res["checkpoint"].startswith(str(tmp_path / "base_s0"))
    assert "| base | 0.02 | 2 |" in report.read_text()
    # a second call trains and samples nothing again
    stamp = (tmp_path / "base_s0" / "eval" / "results.json").stat().st_mtime
    study("toy", "t", CANDIDATES, str(tmp_path), [0.02], 4, overrides)
    assert (tmp_path / "base_s0" / "eval" / "results.json").stat().st_mtime == stamp
    # the settings name the clock that counted the budget (read from the resolved config)
    assert "wall minutes of training per job" in report.read_text()
    study("toy", "t", CANDIDATES, str(tmp_path), [0.02], 4, overrides + ["run=false", "train.budget_clock=cpu"])
    assert "CPU minutes of training per job" in report.read_text()


def test_scaling_plot_reads_budgets_from_job_tags(tmp_path):
    from unite_sci_benchmarks.trends import plot_scaling

    per_job = {f"{m}_s{s}_{b}min": {"connected_validity": b + s + (m == "unite"), "edm/atom_stability": 50.0,
                                    "edm/molecule_stability": 1.0}
               for m in ("unite", "two_stage") for s in (0, 1) for b in (10, 30)}
    rows = [{"candidate": m} for m in ("unite", "two_stage")]
    (tmp_path / "report.json").write_text(json.dumps({"rows": rows, "per_job": per_job}))
    plot_scaling(tmp_path / "report.json", tmp_path / "scaling.png")
    assert (tmp_path / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_scaling_plot_of_one_budget_reads_it_from_the_rows(tmp_path):
    """With one budget the job tags carry no "_<N>min" (a 30-minute-only study crashed in its plot)."""
    from unite_sci_benchmarks.trends import plot_scaling

    per_job = {f"{m}_s{s}": {"connected_validity": 40.0 + s, "edm/atom_stability": 50.0, "edm/molecule_stability": 0.0}
               for m in ("unite", "two_stage") for s in (0, 1)}
    rows = [{"candidate": m, "minutes": 30.0} for m in ("unite", "two_stage")]
    (tmp_path / "report.json").write_text(json.dumps({"rows": rows, "per_job": per_job}))
    plot_scaling(tmp_path / "report.json", tmp_path / "scaling.png")
    assert (tmp_path / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_gap_rows_follow_the_pair_across_budgets_and_keep_prefix_names_apart(tmp_path):
    """unite vs separate at 3 and 12 minutes: the gap (means), whether the seed ranges separate, the ratio;
    "unite_small" jobs never count as "unite" ones."""
    from unite_sci_benchmarks.trends import gap_rows, plot_budgets

    values = {("unite", 3): [400.0, 450.0], ("separate", 3): [180.0, 200.0],
              ("unite", 12): [150.0, 250.0], ("separate", 12): [140.0, 160.0], ("unite_small", 3): [1e6, 1e6]}
    per_job = {f"{m}_s{s}_{b}min": {"fd": v[s]} for (m, b), v in values.items() for s in (0, 1)}
    data = {"rows": [{"candidate": m} for m in ("unite", "separate", "unite_small")], "per_job": per_job}
    (row,) = gap_rows(data, [("unite", "separate")], ["fd"])
    assert row["gap at 3 min"] == "235.00 (ranges apart)"
    assert row["gap at 12 min"] == "50.00 (ranges overlap)"
    assert float(row["gap ratio (largest / smallest)"]) == pytest.approx(50 / 235, abs=0.005)
    assert row["means' ratio, smallest -> largest"] == "2.24 -> 1.33"  # 425 / 190 and 200 / 150
    (tmp_path / "report.json").write_text(json.dumps(data))
    plot_budgets(tmp_path / "report.json", tmp_path / "sharing.png", ["fd"])
    assert (tmp_path / "sharing.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
