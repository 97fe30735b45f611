"""The recipe options of the QM9 study, each against what it must compute: self-conditioning
(flow.self_condition), the sampler's time-shift override, the pairwise-distance loss term and the
principal-axes frame."""
import numpy as np
import pytest
from scipy.spatial.distance import pdist
import torch

from unite_sci_modalities.atoms import masses
from unite_sci.model import GenerativeEncoder, RegisterLayout
from unite_sci.sampling import sample_latents
from unite_sci.unite import Unite
from unite_sci_modalities.atoms import principal_axes_frame, random_rotations
from unite_sci_modalities.molecules.base import pair_distance_mse

from test_model import toy_setup


def ge(self_condition):
    torch.manual_seed(0)
    return GenerativeEncoder(RegisterLayout(True, 8), latent_dim=4, width=32, depth=2, heads=2,
                             self_condition=self_condition)


def test_self_condition_projection_starts_at_zero():
    # a zero-initialised projection: at init the previous prediction changes nothing, so switching the
    # feature on never starts a run from a different function
    with_sc, without = ge(True), ge(False)
    without.load_state_dict({k: v for k, v in with_sc.state_dict().items() if not k.startswith("sc_embed")})
    x, t = torch.randn(2, 5, 4), torch.rand(2)
    c, m = torch.zeros(2, dtype=torch.long), with_sc.layout.registers(torch.ones(2, 5, dtype=torch.bool), 2, x.device)
    sc = torch.randn(2, 5, 4)
    assert torch.equal(with_sc.denoise(x, t, c, m, self_cond=sc), without.denoise(x, t, c, m))
    torch.nn.init.normal_(with_sc.sc_embed.weight)
    assert not torch.allclose(with_sc.denoise(x, t, c, m, self_cond=sc), without.denoise(x, t, c, m))


def test_sampler_feeds_back_the_previous_prediction():
    seen, made = [], []

    def denoise(x, t, c, sc):
        seen.append(sc.clone())
        out = torch.full_like(x, float(len(made)))
        made.append(out)
        return out

    sample_latents(denoise, torch.randn(3, 2, 4), cond=torch.zeros(3, dtype=torch.long), null=1, solver="heun",
                   steps=3, self_condition=True)
    assert len(seen) == 6 and torch.equal(seen[0], torch.zeros(3, 2, 4))
    for i in range(1, 6):  # every evaluation sees the one before it
        assert torch.equal(seen[i], made[i - 1])


@pytest.mark.parametrize("p,passes", [(0.0, 1), (1.0, 2)])
def test_training_pass_count_follows_probability(p, passes):
    adapter, cfg, batch = toy_setup(f"flow.self_condition={p}")
    model = Unite(adapter, cfg).train()
    calls = []
    x1 = model.encode(batch).detach()  # the same module when weights are shared: hook it afterwards
    model.denoiser.register_forward_hook(lambda *a: calls.append(torch.is_grad_enabled()))
    model.flow_losses(x1, batch.cond, model.registers(batch.mask, len(batch.cond), x1.device))
    assert len(calls) == passes
    if passes == 2:
        assert calls == [False, True]  # the first pass carries no gradient




def test_pair_distance_mse_closed_forms():
    torch.manual_seed(1)
    pos = torch.randn(2, 6, 3)
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    q, _ = torch.linalg.qr(torch.randn(3, 3))
    moved = pos @ q.T + torch.tensor([1.0, -2.0, 0.5])  # rigid motion: distances unchanged
    assert pair_distance_mse(moved, pos, mask, cutoff=100.0).item() == pytest.approx(0.0, abs=1e-9)
    # stretching by 10 %: every distance error is 0.1 d, so the per-molecule MSE is 0.01 mean(d^2)
    got = pair_distance_mse(pos * 1.1, pos, mask, cutoff=100.0)
    expected = []
    for b in range(2):
        p = pos[b][mask[b]]
        d = torch.cdist(p, p)[~torch.eye(len(p), dtype=torch.bool)]
        expected.append((0.01 * d.pow(2)).mean())
    assert got.item() == pytest.approx(torch.stack(expected).mean().item(), rel=1e-5)
    # pairs beyond the cutoff do not count: a cutoff below every distance leaves no pair, loss 0
    assert pair_distance_mse(pos * 1.1, pos, mask, cutoff=1e-3).item() == 0.0


def test_sample_shift_override_reaches_the_sampler(tmp_path):
    from unite_sci.engine import generate, load_config, load_model, train

    cfg = load_config("toy", overrides=["train.max_steps=2", f"out={tmp_path}", "train.progress=false",
                                        "model.preset=tiny", "model.depth=1", "model.width=32", "model.heads=2",
                                        "model.dec_depth=1", "model.dec_width=32", "model.dec_heads=2"])
    ckpt = train(cfg)["checkpoint"]
    for shift in (None, 2.0):
        loaded = load_model(ckpt, overrides=[] if shift is None else [f"sample.shift={shift}"])
        _, info = generate(loaded.model, loaded.adapter, loaded.cfg.sample, 4, progress=False)
        assert info["time_shift"] == (cfg.flow.shift if shift is None else shift)


def test_principal_axes_frame_is_a_pose_free_rigid_motion():
    rng = np.random.default_rng(3)
    z = np.array([6, 6, 8, 7, 1, 1, 1, 1, 1])
    pos = rng.normal(size=(9, 3)) * np.array([2.0, 1.0, 0.5])  # distinct moments: a unique frame
    framed = principal_axes_frame(z, pos)
    assert np.allclose(pdist(framed), pdist(pos), atol=1e-9)  # distances kept
    m = masses(z)[:, None]
    assert np.allclose((m * framed).sum(0), 0, atol=1e-9)  # centre of mass at the origin
    second = (m * framed).T @ framed
    assert np.allclose(second, np.diag(np.diag(second)), atol=1e-8)  # principal axes = coordinate axes
    assert np.all(np.diff(np.diag(second)) < 0)  # largest spread first
    for rot in random_rotations(4, torch.Generator().manual_seed(0)).double().numpy():
        # any rotation and translation of the input gives the same framed coordinates (proper: no mirror)
        assert np.allclose(principal_axes_frame(z, pos @ rot.T + 3.0), framed, atol=1e-8)
    mirrored = pos * np.array([1, 1, -1])
    assert not np.allclose(principal_axes_frame(z, mirrored), framed, atol=1e-3)  # chirality kept


def test_canonical_frame_and_random_rotation_exclude_each_other():
    from unite_sci.engine import load_config
    from unite_sci.errors import ConfigError

    with pytest.raises(ConfigError, match="data.random_rotation=false"):
        load_config("qm9", overrides=["data.canonical_frame=true"])
