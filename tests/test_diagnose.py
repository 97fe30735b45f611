"""``unite-sci diagnose`` (issue #10): where generation loses quality. The ODE and one-shot maths against closed
forms with oracle denoisers, and the command end to end on the toy adapter."""
import json

import pytest
import torch

from unite_sci.cli import main
from unite_sci.diagnose import masked_mse, ode_from, one_shot

from test_trainer import make_trainer


def test_the_ode_from_t0_ends_on_the_target_of_a_denoiser_that_knows_it():
    z = torch.randn(3, 5, 4)
    x_t0 = 0.6 * z + 0.4 * torch.randn(3, 5, 4)
    # the exact path is a straight line to z: Heun integrates it exactly, through the clamp region too
    end = ode_from(lambda x, t: z, x_t0, 0.6, steps=7, clamp=0.05)
    assert torch.allclose(end, z, atol=1e-5)
    # a denoiser that returns its input (x1_hat = x_t) never moves: the "follows its first guess" limit
    assert torch.allclose(ode_from(lambda x, t: x, x_t0, 0.6, steps=7), x_t0)


def test_one_shot_noises_with_the_flow_convention_and_passes_t_per_sample():
    z, eps = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    seen = {}

    def denoise(x, t):
        seen["t"] = t
        return 2 * x

    x_t, x1 = one_shot(denoise, z, eps, 0.8)
    assert torch.allclose(x_t, 0.8 * z + 0.2 * eps, atol=1e-6) and torch.allclose(x1, 2 * x_t)  # 1 - 0.8 != 0.2 in floats
    assert seen["t"].shape == (2,) and torch.allclose(seen["t"], torch.full((2,), 0.8))


def test_masked_mse_counts_real_registers_only():
    a, b = torch.zeros(2, 3, 4), torch.zeros(2, 3, 4)
    a[0, :2] = 1.0
    a[1, 2] = 100.0  # a padding register
    mask = torch.tensor([[True, True, False], [True, True, False]])
    assert masked_mse(a, b, mask) == pytest.approx(8 / 16)


@pytest.fixture(scope="module")
def toy_ckpt(tmp_path_factory):
    return str(make_trainer(tmp_path_factory.mktemp("toy"), "train.max_steps=30").fit()["checkpoint"])


def test_diagnose_command_writes_every_stage_and_refuses_bad_numbers(toy_ckpt, tmp_path, capsys):
    out = tmp_path / "diag"
    assert main(["diagnose", "--checkpoint", toy_ckpt, "--out", str(out), "--num", "6", "--ode-steps", "3"]) == 0
    report = json.loads((out / "report.json").read_text())
    rows = report["rows"]
    stages = {"real", "generated", "decoder/sigma=0", "decoder/sigma=0.2", "one_shot/t=0.3", "one_shot/t=0.98",
              "ode_from/t0=0.3", "ode_from/t0=0.9"}
    assert stages <= set(rows) and all(rows[s] for s in stages)
    assert report["num_items"] == 6 and report["train_steps"] == 30
    lat = report["latent"]
    assert lat["latent_rms"] > 0 and lat["one_shot/t=0.5/mse_x_t"] > lat["one_shot/t=0.98/mse_x_t"]
    assert (out / "diagnose.png").stat().st_size > 1000 and "ode_from/t0=0.9" in (out / "report.md").read_text()
    assert "| stage |" in capsys.readouterr().out
    assert main(["diagnose", "--checkpoint", toy_ckpt, "--num", "1"]) == 2
    assert "--num must be >= 2" in capsys.readouterr().err


def test_sample_temperature_scales_the_starting_noise(toy_ckpt, capsys):
    """A denoiser that returns its input never moves the ODE, so the sampler hands the decoder exactly
    temperature x the seeded starting noise; the setting is recorded with the samples."""
    from dataclasses import replace

    from unite_sci.engine import generate, load_model

    loaded = load_model(toy_ckpt)
    model, seen = loaded.model, []
    model.denoiser.denoise = lambda x, t, c, regs, self_cond=None, conds=None: x
    decode = model.decode
    model.decode = lambda z, mask, regs=None: seen.append(z.clone()) or decode(z, mask, regs)
    for tau in (1.0, 0.5):
        _, info = generate(model, loaded.adapter, replace(loaded.cfg.sample, temperature=tau, seed=3), 4, progress=False)
        assert info["temperature"] == tau
    assert torch.allclose(seen[1], 0.5 * seen[0], atol=1e-6) and seen[0].abs().sum() > 0
    assert main(["sample", "--checkpoint", toy_ckpt, "--num", "2", "--temperature", "0", "--out", "x"]) == 2
    assert "--temperature must be > 0" in capsys.readouterr().err


def test_a_lowered_temperature_is_scored_beside_temperature_1(toy_ckpt, tmp_path):
    from unite_sci.protocol import run_protocol

    res = run_protocol("toy", tmp_path / "p", None, 6, toy_ckpt, ["sample.temperature=0.5"], recon_num=4)
    assert res["sampling"]["temperature"] == 0.5
    assert set(res["generation_temperature_1"]) == set(res["generation"])
    plain = run_protocol("toy", tmp_path / "q", None, 6, toy_ckpt, [], recon_num=4)
    assert "generation_temperature_1" not in plain and plain["generation"] == res["generation_temperature_1"]


def test_diagnostic_noise_is_not_the_encoders_register_noise():
    from unite_sci.diagnose import noise_generator

    torch.manual_seed(3)
    encoder_noise = torch.randn(4, 16, 8)  # what the encoder draws first under the same seed
    eps = torch.randn(4, 16, 8, generator=noise_generator(3))
    assert not torch.allclose(eps, encoder_noise) and abs(float((eps * encoder_noise).mean())) < 0.05
