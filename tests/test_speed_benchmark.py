"""The speed benchmark runs end to end on the toy domain and reports every section with real numbers."""
import json

from unite_sci_benchmarks import speed


def test_speed_benchmark_on_toy(tmp_path):
    report = speed.run(str(tmp_path), num_samples=8, overrides=[
        "modality=toy", "presets=tiny", "batch=16", "steps=1", "precision=fp32", "mem_batches=16",
        "eval=toy", "eval_num=32", "data.num_train=64", "data.num_test=32"])
    text = report.read_text()
    for section in ("Matmul reference", "Cost split of one step", "Sampling", "Peak memory",
                    "two-stage baseline", "Evaluation throughput"):
        assert section in text, section
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["matmul_flops"]["fp32"] > 1e8
    (train,) = data["training"]
    assert train["samples_per_s"] > 0 and 0 < train["mfu_%"] < 100
    assert train["modality"] == "toy" and train["batch"] == 16
    (mem,) = data["memory"]
    assert "error" not in mem, mem
    assert mem["peak_rss_MB"] >= mem["rss_before_step_MB"] > 50
    phases = [(r["method"], r["phase"]) for r in data["stages"]]
    assert phases == [("UNITE single-stage", "joint"), ("two-stage baseline", "tokenizer"),
                      ("two-stage baseline", "denoiser")]
    assert all(r["step_s"] > 0 for r in data["stages"])
    serial, parallel = data["evaluation"]
    assert serial["items"] == parallel["items"] == 32 and parallel["speedup"] > 0


def test_side_by_side_pairs_eager_and_compiled_rows():
    rows = [{"modality": m, "preset": "tiny", "precision": "fp32", "batch": 32, "compiled": c,
             "samples_per_s": sps, "mfu_%": mfu}
            for m, c, sps, mfu in [("qm9", False, 100.0, 30.0), ("qm9", True, 150.0, 45.0), ("mp20", False, 80.0, 20.0)]]
    (qm9,) = speed.side_by_side(rows)  # mp20 has no compiled row: no pair
    assert qm9 == {"modality": "qm9", "preset": "tiny", "precision": "fp32", "batch": 32,
                   "eager_samples_per_s": 100.0, "eager_mfu_%": 30.0, "compiled_samples_per_s": 150.0,
                   "compiled_mfu_%": 45.0, "speedup": 1.5}
