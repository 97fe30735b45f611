"""Benchmark options (``key=value`` words without a dot) go through the run config's checks: a typo, a
wrong type or a value out of range is refused in one line naming the option, before any work starts."""
import json

import pytest

from unite_sci.config import parse_options
from unite_sci.errors import ConfigError
from unite_sci_benchmarks import crystals, gpu, images, qm9, speed, study

RUNS = {"qm9": qm9.run, "mp20": crystals.run, "images": images.run, "speed": speed.run, "gpu": gpu.run,
        "qm9-ablation": study.qm9_ablation, "qm9-scaling": study.qm9_scaling}


@pytest.mark.parametrize("name", RUNS)
def test_a_typo_is_refused_in_one_line_before_any_work(name, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ConfigError) as e:
        RUNS[name](out=str(out), overrides=["baselin=false", "train.seed=1"])
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("benchmark option 'baselin': unknown, valid: "), msg
    assert not out.exists()


@pytest.mark.parametrize("schema,word,needle", [
    (qm9.QM9Options, "jobs=0", "benchmark option 'jobs': must be >= 1, got 0"),
    (qm9.QM9Options, "baseline=maybe", "benchmark option 'baseline'"),
    (study.StudyOptions, "seeds=0,x", "benchmark option 'seeds[1]'"),
    (study.ScalingOptions, "minutes=10,0", "benchmark option 'minutes[1]': must be > 0"),
    (speed.SpeedOptions, "precision=fp32,fp33", "benchmark option 'precision[1]'"),
    (images.ImageOptions, "cfg_sweep=1,nan", "benchmark option 'cfg_sweep[1]': must be a finite number"),
    (crystals.CrystalOptions, "sanity", "benchmark option 'sanity' is not of the form key=value"),
])
def test_wrong_types_and_ranges_name_the_option(schema, word, needle):
    with pytest.raises(ConfigError) as e:
        parse_options(schema, [word])
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_options_keep_their_names_and_defaults():
    opts, config = parse_options(qm9.QM9Options, ["seeds=0,1", "jobs=2", "baseline=false", "train.seed=3"])
    assert (opts.seeds, opts.jobs, opts.baseline, opts.sanity, opts.recon) == ([0, 1], 2, False, 1000, None)
    assert config == ["train.seed=3"]  # dotted words are run-config overrides, passed on as given
    s, _ = parse_options(speed.SpeedOptions, ["eval=", "compile=false,true", "precision=[fp32]"])
    assert s.eval == [] and s.compile == [False, True] and s.precision == ["fp32"]
    assert (s.modality, s.presets, s.batch, s.steps, s.mem_batches) == (["qm9"], ["tiny", "small"], 128, 6, None)
    c, _ = parse_options(crystals.CrystalOptions, ["other_decode=false", "recon=5"])
    assert (c.other_decode, c.recon, c.sanity) == (False, 5, 1000)
    i, _ = parse_options(images.ImageOptions, ["cfg_sweep=1,2.5"])
    assert i.cfg_sweep == [1.0, 2.5] and i.sanity is None


def test_run_false_writes_the_table_of_finished_jobs_only(tmp_path):
    candidates = {"base": ([], "the toy default")}
    report = study.study("toy", "t", candidates, str(tmp_path), [0.02], 4, ["run=false", "seeds=0,1"])
    assert "| base | 0.02 | 0 |" in report.read_text()  # no job ran: no seed has results
    assert json.loads((tmp_path / "report.json").read_text())["per_job"] == {}
    assert not (tmp_path / "base_s0").exists()


def test_the_cli_prints_the_refusal_as_one_line(tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "unite_sci.cli", "benchmark", "mp20", "--out", str(tmp_path / "b"),
                        "baselin=false"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.startswith("error: benchmark option 'baselin': unknown, valid: recon,")
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_qm9_report_of_a_checkpoint_states_its_own_training(tmp_path, monkeypatch):
    # The report of `benchmark qm9 --checkpoint X` once said "30.0 CPU minutes; trained ? steps in 0 s":
    # the default budget instead of the checkpoint's own steps and wall time.
    from unite_sci_benchmarks import qm9

    fake = {"generation": {}, "reconstruction": {}, "reconstruction_num": 3, "training": {},
            "sampling": {"num_samples": 4, "solver": "heun", "steps": 10, "seed": 0, "samples_per_s": 1.0},
            "train_steps": 1234, "train_wall_s": 567.8, "machine": {"processor": "x86_64", "torch_threads": 2}}
    monkeypatch.setattr(qm9, "run_protocol", lambda *a, **k: fake)
    monkeypatch.setattr(qm9, "sanity_rows", lambda *a, **k: [{"method": "Data"}])
    report = qm9.run(str(tmp_path), num_samples=4, checkpoint="ckpt.pt").read_text()
    line = next(x for x in report.splitlines() if x.startswith("- Budget"))
    assert "1234 steps in 568 s" in line and "ckpt.pt" in line and "x86_64" in line and "30.0" not in line


def test_qm9_sanity_zero_leaves_out_the_real_data_row(tmp_path, monkeypatch):
    # sanity=0 once wrote a "Data: 0 real test molecules" row of NaNs
    from unite_sci_benchmarks import qm9

    fake = {"generation": {}, "reconstruction": {}, "reconstruction_num": 3, "training": {},
            "sampling": {"num_samples": 4, "solver": "heun", "steps": 10, "seed": 0, "samples_per_s": 1.0},
            "train_steps": 12, "train_wall_s": 5.0, "machine": {"processor": "x86_64", "torch_threads": 2}}
    monkeypatch.setattr(qm9, "run_protocol", lambda *a, **k: fake)
    monkeypatch.setattr(qm9, "sanity_rows", lambda num, *a: [{"method": f"SANITY ROW {num}"}])
    report = qm9.run(str(tmp_path / "a"), num_samples=4, checkpoint="c.pt", overrides=["sanity=0"]).read_text()
    assert "SANITY ROW" not in report
    report = qm9.run(str(tmp_path / "b"), num_samples=4, checkpoint="c.pt", overrides=["sanity=7"]).read_text()
    assert "SANITY ROW 7" in report


def test_mp20_benchmark_puts_cdvae_distribution_metrics_in_unless_told_otherwise():
    from unite_sci.config import parse_options

    def extra(*words):
        opts, config = parse_options(crystals.CrystalOptions, list(words))
        return crystals.distribution_overrides(opts, config)

    assert extra() == ["data.wasserstein_reference=1000", "data.coverage=true"]
    assert extra("reference=200", "coverage=false") == ["data.wasserstein_reference=200", "data.coverage=false"]
    assert extra("reference=0") == []
    assert extra("data.wasserstein_reference=50") == ["data.coverage=true"]  # the user's own setting wins
