"""``unite-sci analyze`` (issue #24 item 5): linear CKA, cosine and histogram entropy against closed forms,
the block hooks against the GE's own output, and the command end to end on a tiny toy checkpoint."""
import csv
import json
import math

import pytest
import torch

from unite_sci.analyze import param_kind, pathway_alignment, register_outputs, to_csv
from unite_sci.cli import main
from unite_sci.engine import load_model, reconstruct_items
from unite_sci.similarity import Alignment, histogram_entropy, linear_cka

from test_trainer import make_trainer


def test_cka_is_one_for_the_same_representation_up_to_rotation_scale_and_shift():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 12, generator=g) @ torch.randn(12, 12, generator=g)  # correlated features
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=g))
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, x @ q) == pytest.approx(1.0, abs=1e-10)
    assert linear_cka(x, 7.5 * x @ q + 3.0) == pytest.approx(1.0, abs=1e-10)  # isotropic scale, shift
    # a non-isotropic rescaling of the features is not an orthogonal transform: CKA drops below 1
    assert linear_cka(x, x * torch.linspace(0.1, 10.0, 12)) < 0.99


def test_cka_of_independent_noise_is_near_d_over_n_and_equals_the_kernel_formula():
    g = torch.Generator().manual_seed(1)
    n, d = 4000, 8
    x, y = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    # for independent Gaussians E||Y^T X||^2 = n d^2 and ||X^T X|| ~ n sqrt(d): CKA ~ d / n = 0.002
    assert linear_cka(x, y) < 10 * d / n
    # the feature-space form equals Kornblith's kernel form HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) with
    # K = X X^T, L = Y Y^T and the centring matrix H (the standard, biased estimator)
    x, y = x[:60].double(), (x[:60] + 0.5 * y[:60]).double()
    h = torch.eye(60, dtype=torch.float64) - 1.0 / 60
    hsic = lambda k, l: torch.trace(k @ h @ l @ h)  # noqa: E731
    k, l = x @ x.T, y @ y.T
    assert linear_cka(x, y) == pytest.approx(float(hsic(k, l) / torch.sqrt(hsic(k, k) * hsic(l, l))), rel=1e-9)


def test_alignment_accumulated_over_batches_equals_one_pass_and_cosine_is_the_row_mean():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(90, 5, generator=g) + 2.0  # off-centre: the running sums must centre exactly
    y = x @ torch.randn(5, 5, generator=g) + torch.randn(90, 5, generator=g)
    acc = Alignment()
    for lo in range(0, 90, 25):
        acc.update(x[lo:lo + 25], y[lo:lo + 25])
    assert acc.n == 90 and acc.cka() == pytest.approx(linear_cka(x, y), rel=1e-12)
    cos = torch.stack([torch.dot(a, b) / (a.norm() * b.norm()) for a, b in zip(x.double(), y.double())]).mean()
    assert acc.cosine() == pytest.approx(float(cos), rel=1e-12)
    assert Alignment().update(x, -x).cosine() == pytest.approx(-1.0)
    assert Alignment().update(x, 3 * x).cosine() == pytest.approx(1.0)
    assert math.isnan(Alignment().update(x, y[:, :3]).cosine())  # widths differ: no cosine, CKA still defined
    assert 0.0 < Alignment().update(x, y[:, :3]).cka() <= 1.0


@pytest.mark.parametrize("k", [1, 3, 8])
def test_entropy_of_uniform_equal_bins_is_k_bits(k):
    values = torch.arange(2 ** k, dtype=torch.float32).repeat(5)  # one value per bin, 5 times each
    assert histogram_entropy(values, bins=2 ** k) == pytest.approx(k, abs=1e-12)


def test_entropy_of_a_delta_is_zero_and_of_a_known_histogram_is_its_formula():
    assert histogram_entropy(torch.full((100,), 0.3)) == 0.0
    assert histogram_entropy(torch.tensor([0.0, 1.0, 1.0, 1.0]), bins=2) == pytest.approx(
        -(0.25 * math.log2(0.25) + 0.75 * math.log2(0.75)), abs=1e-12)
    # a uniform draw fills 256 bins nearly evenly: close to 8 bits, never above
    u = torch.rand(200_000, generator=torch.Generator().manual_seed(3))
    assert 7.99 < histogram_entropy(u, 256) <= 8.0


def test_param_kind_and_csv():
    assert param_kind("encoder.blocks.0.ada.1.weight") == "norm"
    assert param_kind("encoder.blocks.0.attn.q_norm.weight") == "norm"
    assert param_kind("encoder.blocks.1.mlp.w12.weight") == "attn/mlp"
    assert param_kind("encoder.x_embed.weight") == "other"
    rows = list(csv.DictReader(to_csv([{"a": 1, "b": 0.123456789}, {"a": 2, "c": "x"}]).splitlines()))
    assert rows == [{"a": "1", "b": "0.123457", "c": ""}, {"a": "2", "b": "", "c": "x"}]


@pytest.fixture(scope="module")
def toy_ckpt(tmp_path_factory):
    return str(make_trainer(tmp_path_factory.mktemp("toy"), "train.max_steps=6").fit()["checkpoint"])


def test_hooks_take_the_real_registers_of_every_block_after_the_in_context_tokens(tmp_path):
    """The last block's register rows, put through the GE's final layer, give exactly the denoiser's output
    (wrong rows, such as the in-context condition copies prepended from block 1 on here, would not); padding
    registers are left out."""
    model = make_trainer(tmp_path, "model.in_context_tokens=3", "model.in_context_start=1").model.eval()
    ge, adapter = model.denoiser, model.adapter
    test = adapter.build_splits()["test"]
    batch = adapter.collate([test[i] for i in range(5)])
    regs = model.registers(batch.mask, 5, torch.device("cpu"))
    g = torch.Generator().manual_seed(4)
    x_t, t = torch.randn(5, regs.mask.shape[1], ge.latent_dim, generator=g), torch.full((5,), 0.4)
    null = torch.full((5,), ge.null_class)
    sc = torch.zeros_like(x_t) if model.cfg.flow.self_condition > 0 else None
    with torch.no_grad(), register_outputs(ge, regs.mask) as outs:
        x1 = ge.denoise(x_t, t, null, regs, self_cond=sc)
    n = int(regs.mask.sum())
    assert n < regs.mask.numel() and all(o.shape == (n, ge.width) for o in outs)
    full = torch.zeros(5, regs.mask.shape[1], ge.width)
    full[regs.mask] = outs[-1]
    with torch.no_grad():
        again = ge.final(full, ge.t_embed(t) + ge.y_embed(null))  # (B, K, C)
    assert torch.allclose(again[regs.mask], x1[regs.mask], atol=1e-5)


def test_one_shot_rows_follow_the_path_for_a_denoiser_that_returns_its_input(toy_ckpt):
    """x1_hat = x_t gives latent MSE (1 - t)^2 E|eps - z0|^2: the ratios between noise levels are exact, and
    the latent row's cosine at t compares z0 with t z0 + (1 - t) eps."""
    loaded = load_model(toy_ckpt)
    model, adapter = loaded.model, loaded.adapter
    real = model.denoiser.denoise  # still run (the block hooks record it), then hand back x_t itself

    def denoise(x, t, c, regs, self_cond=None, conds=None):
        real(x, t, c, regs, self_cond=self_cond)
        return x

    model.denoiser.denoise = denoise
    test = adapter.build_splits()["test"]
    res = pathway_alignment(model, adapter, [test[i] for i in range(8)], times=(0.2, 0.6), batch_size=3,
                            progress=False)
    mse = res["latent_mse"]
    assert mse[0.2] / mse[0.6] == pytest.approx((0.8 / 0.4) ** 2, rel=1e-5)
    # eps is fresh noise, independent of z0 (which the final LayerNorm puts at mean 0, variance 1 per
    # register): E|eps - z0|^2 = 1 + 1 per channel; an eps correlated with z0 would move it.
    assert mse[0.2] / 0.8 ** 2 == pytest.approx(2.0, abs=0.3)
    latent = {r["t"]: r for r in res["alignment"] if r["layer"] == "latent"}
    assert latent[0.6]["cosine"] > latent[0.2]["cosine"] and latent[0.6]["cka"] > latent[0.2]["cka"]
    assert latent[0.2]["rows"] == sum(len(test[i][0]) for i in range(8))  # one row per real register


def test_analyze_command_writes_csvs_figure_and_report(toy_ckpt, tmp_path, capsys):
    out = tmp_path / "an"
    assert main(["analyze", "--checkpoint", toy_ckpt, "--out", str(out), "--num", "8", "--seed", "1"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["num_items"] == 8 and report["seed"] == 1 and report["times"] == [0.1, 0.3, 0.5, 0.7, 0.9]
    assert len(report["checkpoint_sha256"]) == 16
    align = list(csv.DictReader((out / "alignment.csv").open()))
    assert len(align) == 5 * (2 + 1)  # 5 t values x (2 blocks + latent)
    assert all(-1.0 <= float(r["cosine"]) <= 1.0 and 0.0 <= float(r["cka"]) <= 1.0 + 1e-9 for r in align)
    recon = list(csv.DictReader((out / "reconstruction.csv").open()))
    assert [float(r["t"]) for r in recon] == [0.1, 0.3, 0.5, 0.7, 0.9, 1.0] and recon[-1]["latent"] == "z0"
    assert float(recon[-1]["latent_mse"]) == 0.0 and "toy/rmse" in recon[0]
    # the z0 row is the plain reconstruction: engine.reconstruct_items on the same items, same register noise
    loaded = load_model(toy_ckpt)
    test = loaded.adapter.build_splits()["test"]
    torch.manual_seed(1)
    inputs, recons = reconstruct_items(loaded.model, loaded.adapter, [test[i] for i in range(8)], progress=False)
    ref = loaded.adapter.evaluate_reconstruction(inputs, recons)["toy/rmse"]
    assert float(recon[-1]["toy/rmse"]) == pytest.approx(ref, rel=1e-5)
    ent = list(csv.DictReader((out / "entropy.csv").open()))
    adaln = [r for r in ent if r["tensor"] == "encoder.blocks.0.ada.1.weight"][0]
    assert float(adaln["bits_init"]) == 0.0 and float(adaln["bits_trained"]) > 0.0  # adaLN-Zero starts at 0
    assert all(0.0 <= float(r["bits_trained"]) <= 8.0 for r in ent)  # 256 bins: at most 8 bits
    total = [g for g in report["entropy_totals"] if g["part"] == "all"][0]
    assert total["mb_trained"] == pytest.approx(sum(float(r["mb_trained"]) for r in ent), rel=1e-4)
    assert (out / "analyze.png").stat().st_size > 1000 and "CKA / cosine" in (out / "report.md").read_text()
    assert "| block 0 |" in capsys.readouterr().out
    assert main(["analyze", "--checkpoint", toy_ckpt, "--out", str(out), "--num", "1"]) == 2
    assert "--num must be >= 2" in capsys.readouterr().err


def test_analyze_says_when_it_uses_fewer_items_than_asked(toy_ckpt, tmp_path, capsys):
    out = tmp_path / "few"
    assert main(["analyze", "--checkpoint", toy_ckpt, "--out", str(out), "--num", "500"]) == 0
    report = json.loads((out / "report.json").read_text())
    n = report["num_items"]
    assert n < 500 and report["num_requested"] == 500
    note = f"analyze uses {n} test items, fewer than the 500 asked for: the test split has {n}"
    assert report["notes"] == [note] and f"Note: {note}." in (out / "report.md").read_text()
    assert f"note: {note}" in capsys.readouterr().err.splitlines()


def test_plot_limits_do_not_stretch_noise_into_a_trend():
    from unite_sci.analyze import readable_limits

    lo, hi = readable_limits([31.204, 31.208, 31.212, float("nan")])  # a flat PSNR, dB
    assert hi - lo >= 0.1 * 31.212 and lo < 31.204 and hi > 31.212  # >= 3 dB shown, values inside
    lo, hi = readable_limits([0.2, 0.9])  # a real trend keeps its own range (plus a margin)
    assert lo == pytest.approx(0.165) and hi == pytest.approx(0.935)
    assert readable_limits([float("nan")]) == (0.0, 1.0) and readable_limits([0.0, 0.0])[1] > 0
