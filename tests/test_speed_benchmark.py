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


def test_gemm_flops_read_each_operators_shapes():
    from unite_sci_benchmarks.profile import gemm_flops

    assert gemm_flops("aten::mm", [[8, 4], [4, 3]]) == 2 * 8 * 4 * 3
    assert gemm_flops("aten::addmm", [[3], [8, 4], [4, 3]]) == 2 * 8 * 4 * 3  # bias first
    assert gemm_flops("aten::bmm", [[5, 8, 4], [5, 4, 3]]) == 2 * 5 * 8 * 4 * 3
    assert gemm_flops("aten::baddbmm", [[5, 8, 3], [5, 8, 4], [5, 4, 3]]) == 2 * 5 * 8 * 4 * 3
    assert gemm_flops("aten::mm", [[512, 128], [32, 128]]) == 2 * 512 * 128 * 32  # a transposed operand


def test_a_gemm_recorded_with_a_transposed_operand_is_timed_alone():
    from unite_sci_benchmarks.profile import standalone_gemm_seconds

    assert standalone_gemm_seconds("aten::mm", [[64, 16], [8, 16]], seconds=0.001) > 0


def test_op_kinds_sort_gemm_attention_and_optimiser_apart():
    from unite_sci_benchmarks.profile import op_kind

    assert op_kind("aten::addmm").startswith("GEMM")
    assert op_kind("aten::_scaled_dot_product_flash_attention_for_cpu").startswith("attention")
    assert op_kind("aten::_foreach_lerp_").startswith("optimiser")
    assert op_kind("aten::gelu").startswith("other")
    assert op_kind("autograd::engine::evaluate_function: MmBackward0") is None  # a label, not an operator


def test_profile_accounts_for_a_known_matmul_step():
    """A "step" that is one matmul: the GEMM kind holds most of its time and its FLOPs are counted exactly."""
    import torch

    from unite_sci_benchmarks.profile import against_reference, step_profile

    a, b = torch.randn(256, 128), torch.randn(128, 512)
    flops = 2 * 256 * 128 * 512
    p = step_profile(lambda: torch.mm(a, b), steps=20, flops_per_step=flops, gemm_seconds=0.02)
    p = against_reference(p, reference_flops=p["gemm_GFLOPs_alone"] * 2e9)  # a reference twice as fast
    assert abs(p["mfu_bound_%"] - 50) < 1e-6
    assert p["gemm_flops_per_step"] == flops and round(p["gemm_share_of_flops_%"]) == 100
    gemm = p["kinds"]["GEMM (mm, addmm, bmm)"]
    assert gemm > 0.3 * p["step_s"] and abs(sum(p["kinds"].values()) - p["step_s"]) < 0.05 * p["step_s"] + 1e-4
    assert p["gemm_GFLOPs_alone"] > 0 and 0 < p["mfu_bound_%"] <= 100


def test_speed_benchmark_profiles_and_splits_a_step_on_toy(tmp_path):
    report = speed.run(str(tmp_path), overrides=[
        "modality=toy", "presets=tiny", "batch=16", "steps=1", "precision=fp32", "mem_batches=[]", "eval=",
        "sampling=false", "profile=true", "data.num_train=64", "data.num_test=32"])
    text = report.read_text()
    assert "Where the step's time goes" in text and "What a UNITE step is made of" in text
    data = json.loads((tmp_path / "report.json").read_text())
    (prof,) = data["profiles"]
    assert prof["gemm_flops_per_step"] > 0 and prof["kinds"]["GEMM (mm, addmm, bmm)"] > 0
    parts = {r["part"].split(" (")[0]: r for r in data["step_parts"]}
    assert {"tokenization pass", "decoder + reconstruction loss", "flow pass", "frozen tokenizer forward",
            "optimiser + EMA update", "UNITE step, measured whole"} <= set(parts)
    assert all(r["seconds"] > 0 for r in data["step_parts"])
    assert data["training"][0]["warmup_s"] > 0
