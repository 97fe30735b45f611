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
    (mem,) = data["memory"]
    assert "error" not in mem, mem
    assert mem["peak_rss_MB"] >= mem["rss_before_step_MB"] > 50
    phases = [(r["method"], r["phase"]) for r in data["stages"]]
    assert phases == [("UNITE single-stage", "joint"), ("two-stage baseline", "tokenizer"),
                      ("two-stage baseline", "denoiser")]
    assert all(r["step_s"] > 0 for r in data["stages"])
    serial, parallel = data["evaluation"]
    assert serial["items"] == parallel["items"] == 32 and parallel["speedup"] > 0
