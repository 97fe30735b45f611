"""The device-agnostic training path, as far as a CPU can test it (issue #16): bf16 autocast numerics
against fp32, fp32 master weights and loss reductions, no host read-back inside a step, non-finite steps
skipped on the device, attention masks in the form the fused kernels take, device-safe augmentation."""
import math

import pytest
import torch
import torch.nn.functional as F

from unite_sci.adapter import Batch
from unite_sci.model import Attention
from unite_sci.optim import EMA, FiniteGuard, build_optimizers
from unite_sci.config import OptimConfig

from test_qm9_adapter import adapter as qm9_adapter
from test_trainer import make_trainer

# bf16 keeps 8 bits of mantissa (relative step 2^-8 = 0.4 %); through a few blocks and a squared error the
# loss of one batch moves by a few percent at most
BF16_LOSS_RTOL = 0.05


def _loss(tr, batch, precision: str) -> tuple[torch.Tensor, dict]:
    torch.manual_seed(0)  # the same flow times and noise in both precisions
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        return tr.model(batch)


def test_bf16_autocast_loss_matches_fp32_within_tolerance(tmp_path):
    tr = make_trainer(tmp_path, "flow.flow_batches=1")
    batch = next(iter(tr._loader()))
    fp32, _ = _loss(tr, batch, "fp32")
    bf16, parts = _loss(tr, batch, "bf16")
    assert bf16.dtype == torch.float32  # the reductions run in fp32 under autocast
    assert all(v.dtype == torch.float32 for v in parts.values() if torch.is_tensor(v))
    bf16, fp32 = float(bf16.detach()), float(fp32.detach())
    assert math.isclose(bf16, fp32, rel_tol=BF16_LOSS_RTOL), (bf16, fp32)
    assert bf16 != fp32  # autocast really ran in bf16


def test_bf16_step_keeps_fp32_master_weights_and_grads(tmp_path):
    tr = make_trainer(tmp_path, "train.precision=bf16")
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    tr.train_step(next(iter(tr._loader())))
    assert all(p.dtype == torch.float32 for p in tr.model.parameters())
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in tr.model.parameters())
    assert all(v.dtype == torch.float32 for v in tr.ema.shadow.values())
    assert any(not torch.equal(v, before[k]) for k, v in tr.model.state_dict().items())


class _NoReadBack:
    """Makes every host read of a tensor value fail (what synchronises a GPU)."""

    names = ["item", "tolist", "__bool__", "__float__", "__int__", "__index__"]

    def __enter__(self):
        self.saved = {n: getattr(torch.Tensor, n) for n in self.names}

        def refuse(name):
            def f(t, *a, **k):
                raise AssertionError(f"host read-back: Tensor.{name}")
            return f
        for n in self.names:
            setattr(torch.Tensor, n, refuse(n))
        return self

    def __exit__(self, *exc):
        for n, f in self.saved.items():
            setattr(torch.Tensor, n, f)


@pytest.mark.parametrize("extra", [[], ["train.precision=bf16"], ["flow.self_condition=0.5"]])
def test_a_training_step_reads_nothing_back_from_the_device(tmp_path, extra):
    tr = make_trainer(tmp_path, *extra)
    batch = next(iter(tr._loader()))
    tr.train_step(batch)  # first step outside: lazy set-up may inspect values once
    with _NoReadBack():
        logs = tr.train_step(batch)
    assert all(torch.is_tensor(v) for k, v in logs.items() if k != "lr")
    assert math.isfinite(float(logs["loss"])) and float(logs["grad_norm"]) > 0


def test_the_read_back_trap_catches_a_sync():
    with _NoReadBack(), pytest.raises(AssertionError, match="host read-back"):
        float(torch.ones(()) * 2)


def test_a_nonfinite_step_is_skipped_on_the_device_moments_and_step_count_too():
    p = torch.nn.Parameter(torch.ones(4))
    (opt,) = build_optimizers([p], {id(p): "w"}, OptimConfig(), lr=0.1)
    ema, guard = EMA(torch.nn.Linear(1, 1), 0.9), FiniteGuard(torch.device("cpu"), limit=3)
    assert opt.defaults["fused"] and FiniteGuard.skips_on_device([opt])
    p.grad = torch.ones(4)
    guard.observe(torch.tensor(1.0), torch.tensor(1.0), [opt])
    opt.step()
    state = {k: v.clone() for k, v in opt.state[p].items()}
    w = p.detach().clone()
    for bad in [torch.tensor(float("nan")), torch.tensor(float("inf"))]:
        p.grad = torch.full((4,), float("inf"))
        ok = guard.observe(bad, torch.tensor(float("inf")), [opt])
        opt.step()
        assert not bool(ok) and torch.equal(p.detach(), w)
        assert all(torch.equal(opt.state[p][k], state[k]) for k in state)  # moments and step untouched
    assert guard.check() == 2
    guard.observe(torch.tensor(float("nan")), torch.tensor(1.0), [opt])
    with pytest.raises(Exception, match="3 steps in a row"):
        guard.check()


def test_ema_update_with_a_false_flag_keeps_the_average():
    m = torch.nn.Linear(3, 3)
    ema = EMA(m, 0.5, warmup=False)
    with torch.no_grad():
        m.weight.add_(1.0)
    ema.update(m, torch.tensor(False))
    assert torch.allclose(ema.shadow["weight"], m.weight.detach() - 1.0, atol=1e-6)
    ema.update(m, torch.tensor(True))
    assert torch.allclose(ema.shadow["weight"], m.weight.detach() - 0.5)


def test_attention_mask_is_the_broadcast_boolean_form_fused_kernels_accept():
    torch.manual_seed(0)
    att = Attention(32, 4)
    x = torch.randn(2, 5, 32)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    attn_mask = mask[:, None, None, :]  # (B, 1, 1, L) bool, as the Generative Encoder builds it
    out = att(x, None, attn_mask)
    # reference: explicit softmax with -inf on padded keys
    b, l, d = x.shape
    q, k, v = att.qkv(x).view(b, l, 3, 4, 8).permute(2, 0, 3, 1, 4)
    q, k = att.q_norm(q), att.k_norm(k)
    s = (q @ k.transpose(-1, -2)) / math.sqrt(8)
    s = s.masked_fill(~attn_mask, float("-inf"))
    ref = att.proj((F.softmax(s, -1) @ v).transpose(1, 2).reshape(b, l, d))
    assert torch.allclose(out, ref, atol=1e-5)
    # padding never leaks into real elements
    x2 = x.clone()
    x2[1, 3:] = 100.0
    assert torch.allclose(att(x2, None, attn_mask)[1, :3], out[1, :3], atol=1e-5)


def test_augmentation_draws_on_the_cpu_and_follows_the_batch_device():
    """The per-step generator lives on the CPU; the batch may not (meta stands in for a GPU here)."""
    a, _, batch = qm9_adapter()
    meta = batch.to("meta")
    out = a.augment(meta, torch.Generator().manual_seed(1))
    assert out.data["pos"].device.type == "meta"
    from unite_sci_modalities.crystals.data import random_translate
    frac = random_translate(torch.zeros(2, 3, 3, device="meta"), torch.ones(2, 3, dtype=torch.bool, device="meta"),
                            torch.Generator().manual_seed(0))
    assert frac.device.type == "meta"


def test_batch_moves_without_blocking_and_pins_when_an_accelerator_exists():
    b = Batch({"x": torch.randn(2, 3)}, torch.ones(2, 3, dtype=torch.bool), torch.zeros(2, dtype=torch.long))
    moved = b.to("cpu", non_blocking=True)
    assert torch.equal(moved.data["x"], b.data["x"])
    if not torch.cuda.is_available():
        pytest.skip("pinned memory needs a CUDA device")
    pinned = b.pin_memory()
    assert pinned.data["x"].is_pinned() and pinned.mask.is_pinned() and pinned.cond.is_pinned()
