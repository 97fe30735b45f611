"""The Generative Encoder and UNITE's training step (SPEC sections 2-4)."""
import math

import pytest
import torch

from unite_sci.config import build_config
from unite_sci.model import PRESETS, GenerativeEncoder, RegisterLayout, apply_rope, rope_tables, sincos_1d
from unite_sci.testing import TINY
from unite_sci.unite import Unite, resolve_arch
from unite_sci_modalities.toy import ToyAdapter, ToyConfig


def toy_setup(*extra):
    cfg = build_config("toy", ToyConfig, [], TINY + ["data.num_train=64", "data.num_test=16", *extra])
    adapter = ToyAdapter(cfg.data)
    items = adapter.build_splits()["train"][:6]
    return adapter, cfg, adapter.collate(items)


def ge(per_element=True, classes=3):
    return GenerativeEncoder(RegisterLayout(per_element, 8), latent_dim=4, width=32, depth=2, heads=2,
                             num_classes=classes)


def regs(m, mask):
    """The register set of a batch with element mask (B, N), as the trainer builds it once per step."""
    return m.layout.registers(mask, mask.shape[0], mask.device)


def test_shapes_of_both_modes():
    m = ge()
    tokens, mask = torch.randn(2, 5, 32), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    z0 = m.tokenize(tokens, mask, regs(m, mask))
    assert z0.shape == (2, 5, 4)
    assert m.denoise(z0, torch.rand(2), torch.tensor([0, 3]), regs(m, mask)).shape == (2, 5, 4)



def test_sincos_table_closed_form():
    # row p: sin(p w_i) in channel 2i, cos(p w_i) in channel 2i + 1, w_i = 10000^(-2i / dim)
    table = sincos_1d(5, 8).double()
    p, i = torch.arange(5.0, dtype=torch.float64)[:, None], torch.arange(4, dtype=torch.float64)[None]
    w = 10000.0 ** (-2 * i / 8)
    assert torch.allclose(table[:, 0::2], torch.sin(p * w), atol=1e-6)
    assert torch.allclose(table[:, 1::2], torch.cos(p * w), atol=1e-6)


def test_rope_rotates_channel_pairs_by_position_angles():
    # head_dim 4: pairs (0, 2) and (1, 3) turn by p * theta^0 and p * theta^(-1/2) radians
    x = torch.randn(1, 1, 3, 4)
    pos = torch.tensor([[0, 1, 5]])
    cos, sin = rope_tables(pos, 4, theta=100.0)
    out = apply_rope(x, cos, sin)
    for j, p in enumerate([0, 1, 5]):
        for pair, w in ((0, 1.0), (1, 0.1)):
            a, b = x[0, 0, j, pair], x[0, 0, j, pair + 2]
            c, s_ = math.cos(p * w), math.sin(p * w)
            assert out[0, 0, j, pair].item() == pytest.approx((a * c - b * s_).item(), abs=1e-5)
            assert out[0, 0, j, pair + 2].item() == pytest.approx((a * s_ + b * c).item(), abs=1e-5)
    # attention scores depend only on the offset: <R(m) q, R(n) k> = <R(m + 3) q, R(n + 3) k>
    q, k = torch.randn(1, 1, 1, 4), torch.randn(1, 1, 1, 4)
    score = lambda m, n: (apply_rope(q, *rope_tables(torch.tensor([[m]]), 4, 100.0))  # noqa: E731
                          * apply_rope(k, *rope_tables(torch.tensor([[n]]), 4, 100.0))).sum()
    assert score(2, 7).item() == pytest.approx(score(5, 10).item(), abs=1e-5)

def test_final_layernorm_normalises_every_output():
    m = ge()
    out = m.denoise(torch.randn(3, 6, 4) * 7, torch.rand(3), torch.zeros(3, dtype=torch.long),
                    regs(m, torch.ones(3, 6, dtype=torch.bool)))
    assert torch.allclose(out.mean(-1), torch.zeros(3, 6), atol=1e-5)  # default affine: mean 0, std 1
    assert torch.allclose(out.var(-1, unbiased=False), torch.ones(3, 6), atol=1e-3)


def test_registers_start_from_gaussian_noise():
    m = ge()
    tokens, mask = torch.randn(1, 4, 32), torch.ones(1, 4, dtype=torch.bool)
    torch.manual_seed(0)
    a = m.tokenize(tokens, mask, regs(m, mask))
    torch.manual_seed(0)
    b = m.tokenize(tokens, mask, regs(m, mask))
    c = m.tokenize(tokens, mask, regs(m, mask))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_padding_does_not_change_real_outputs():
    m = ge().eval()
    x = torch.randn(1, 3, 4)
    t, y = torch.rand(1), torch.zeros(1, dtype=torch.long)
    short = m.denoise(x, t, y, regs(m, torch.ones(1, 3, dtype=torch.bool)))
    padded = m.denoise(torch.cat([x, torch.randn(1, 2, 4)], 1), t, y,
                       regs(m, torch.tensor([[1, 1, 1, 0, 0]], dtype=torch.bool)))
    assert torch.allclose(short, padded[:, :3], atol=1e-5)


def test_adaln_zero_init_and_frozen_fourier_and_null_class():
    m = ge(classes=5)
    assert all((b.ada[-1].weight == 0).all() and (b.ada[-1].bias == 0).all() for b in m.blocks)
    assert "t_embed.freqs" not in dict(m.named_parameters()) and "t_embed.freqs" in m.state_dict()
    assert m.y_embed.table.num_embeddings == 6 and m.null_class == 5
    hidden = m.blocks[0].mlp.w3.in_features
    assert hidden == int(2 / 3 * 4 * 32)  # SwiGLU hidden = int(2/3 * 4 d)


def test_presets_match_the_paper():
    assert (PRESETS["B"]["depth"], PRESETS["B"]["width"], PRESETS["B"]["heads"]) == (12, 768, 12)
    assert (PRESETS["L"]["depth"], PRESETS["L"]["width"], PRESETS["L"]["heads"]) == (24, 1024, 16)
    assert (PRESETS["XL"]["depth"], PRESETS["XL"]["width"], PRESETS["XL"]["heads"]) == (28, 1152, 16)
    assert (PRESETS["S"]["depth"], PRESETS["S"]["width"], PRESETS["S"]["heads"]) == (12, 384, 6)
    m = GenerativeEncoder(RegisterLayout(False, 256), 32, width=768, depth=12, heads=12, num_classes=1000)
    n = sum(p.numel() for p in m.parameters())
    ada = sum(p.numel() for b in m.blocks for p in b.ada.parameters())
    # Table 7 gives 86.2M for the B encoder/denoiser; it matches our count without the per-block
    # adaLN modulation (12 x 6 d^2); with it the GE is JiT-B's size (131M in Table 2)
    assert 84e6 < n - ada < 90e6 and 128e6 < n < 133e6, (n, ada)


def test_weight_sharing_one_parameter_set_versus_separate():
    adapter, shared_cfg, _ = toy_setup()
    _, sep_cfg, _ = toy_setup("model.shared_weights=false")
    shared, separate = Unite(adapter, shared_cfg), Unite(adapter, sep_cfg)
    assert shared.encoder is shared.denoiser
    assert separate.encoder is not separate.denoiser
    n_ge = sum(p.numel() for p in shared.encoder.parameters())
    total = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert total(separate) == total(shared) + n_ge


@pytest.mark.parametrize("stop_gradient", [True, False])
def test_stop_gradient_blocks_flow_gradient_into_z0(stop_gradient, monkeypatch):
    adapter, cfg, batch = toy_setup(f"flow.stop_gradient={stop_gradient}", "decoder_noise.mode=none")
    model = Unite(adapter, cfg)
    captured = {}
    encode = model.encode

    def spy(b, regs=None):
        z0 = encode(b, regs)
        z0.retain_grad()
        captured["z0"] = z0
        return z0

    monkeypatch.setattr(model, "encode", spy)
    # reconstruction contributes exactly zero gradient, so z0.grad is the flow loss's alone
    monkeypatch.setattr(adapter, "reconstruction_loss", lambda out, b: (out["points"].sum() * 0.0, {}))
    loss, _ = model(batch)
    loss.backward()
    g = captured["z0"].grad
    if stop_gradient:
        assert g is None or torch.count_nonzero(g) == 0
    else:
        assert g is not None and g.abs().sum() > 0


def test_loss_is_reconstruction_plus_sum_of_k_flow_passes():
    adapter, cfg, batch = toy_setup("flow.flow_batches=3")
    model = Unite(adapter, cfg)
    calls = []
    orig = model.denoiser.denoise
    model.denoiser.denoise = lambda *a, **k: calls.append(1) or orig(*a, **k)
    loss, logs = model(batch)
    assert len(calls) == 3
    assert loss.item() == pytest.approx(logs["rec"].item() + logs["flow"].item(), rel=1e-6)


def test_register_set_is_built_once_per_step(monkeypatch):
    # K = 3 passes, each with a self-conditioning pass: every one reuses the step's register set
    adapter, cfg, batch = toy_setup("flow.flow_batches=3", "flow.self_condition=1.0")
    model = Unite(adapter, cfg).train()
    calls, build = [], RegisterLayout.registers
    monkeypatch.setattr(RegisterLayout, "registers", lambda self, *a: calls.append(1) or build(self, *a))
    model(batch)
    assert len(calls) == 1


def test_decoder_noise_modes():
    adapter, cfg, _ = toy_setup("decoder_noise.prob=1.0")
    model = Unite(adapter, cfg).train()
    z = torch.ones(4096, 1, cfg.model.latent_dim)
    mask = torch.ones(4096, 1, dtype=torch.bool)
    reg = model.registers(mask, 4096, z.device)
    out = model.decoder_noise(z, reg)
    # z <- t z + (1 - t) eps with t ~ U[0.7, 1]: mean 0.85 z
    assert out.mean().item() == pytest.approx(0.85, abs=0.02)
    model.eval()
    assert torch.equal(model.decoder_noise(z, reg), z)  # training only


@pytest.mark.parametrize("mode", ["interpolate", "additive"])
def test_decoder_noise_variance_and_share_noised(mode):
    # z = 1 everywhere; a noised sample's latents are t + (1 - t) eps with t ~ U[0.7, 1] (interpolate: variance
    # Var(t) + E[(1 - t)^2] = 0.3^2 / 12 + 0.3^2 / 3 = 0.0375) or 1 + 0.7 eps (additive: variance 0.49);
    # with prob = 0.5 half the samples are noised and the rest are returned untouched
    adapter, cfg, _ = toy_setup("decoder_noise.prob=0.5", f"decoder_noise.mode={mode}")
    model = Unite(adapter, cfg).train()
    n, c = 8192, cfg.model.latent_dim
    z = torch.ones(n, 1, c)
    reg = model.registers(torch.ones(n, 1, dtype=torch.bool), n, z.device)
    torch.manual_seed(0)
    out = model.decoder_noise(z, reg)
    noised = (out != z).flatten(1).any(1)  # (n,)
    assert noised.float().mean().item() == pytest.approx(0.5, abs=0.03)  # binomial std 0.0055
    assert torch.equal(out[~noised], z[~noised])
    values = out[noised].flatten()
    mean, var = (0.85, 0.0375) if mode == "interpolate" else (1.0, 0.49)
    assert values.mean().item() == pytest.approx(mean, abs=0.02)
    assert values.var().item() == pytest.approx(var, rel=0.08)


def test_flow_loss_is_the_sum_of_k_separately_computed_passes(monkeypatch):
    # each pass's loss recomputed here from that pass's denoiser inputs and output with the loss formula
    # mean((x1 - x1_hat)^2 / max(1 - t, 0.05)^2): the step's flow loss is their sum, not their mean
    adapter, cfg, batch = toy_setup("flow.flow_batches=3", "flow.self_condition=0")
    model = Unite(adapter, cfg)
    seen, orig = [], model.denoiser.denoise

    def spy(x_t, t, y, regs, **kw):
        out = orig(x_t, t, y, regs, **kw)
        seen.append((t.detach().clone(), out.detach().clone()))
        return out

    z0 = {}
    encode = model.encode
    monkeypatch.setattr(model, "encode", lambda b, r=None: z0.setdefault("z", encode(b, r)))
    model.denoiser.denoise = spy
    torch.manual_seed(0)
    loss, logs = model(batch)
    x1, mask = z0["z"].detach(), None
    mask = model.registers(batch.mask, x1.shape[0], x1.device).mask  # (B, K)
    per_pass = []
    for t, x1_hat in seen:
        w = (1 - t).clamp_min(cfg.flow.clamp).pow(-2)[:, None, None]
        err = ((x1 - x1_hat) ** 2 * w * mask[..., None]).sum((1, 2)) / (mask.sum(1) * x1.shape[-1])
        per_pass.append(err.mean().item())
    assert len(per_pass) == 3 and len({round(v, 6) for v in per_pass}) == 3  # three different passes
    assert logs["flow"].item() == pytest.approx(sum(per_pass), rel=1e-5)
    assert loss.item() == pytest.approx(logs["rec"].item() + sum(per_pass), rel=1e-5)


def test_resolve_arch_overrides_preset():
    _, cfg, _ = toy_setup("model.depth=3")
    arch = resolve_arch(cfg)
    assert arch.depth == 3 and arch.width == 64
