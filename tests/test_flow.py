"""Flow-matching maths against closed forms (SPEC section 1)."""
import math

import pytest
import torch

from unite_sci.flow import (flow_loss, interpolate, logit_normal_time, sample_time, shift_time,
                            shift_time_derivative, x_to_velocity)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0, 1 / 3])
def test_shift_endpoints_and_formula(alpha):
    t = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=torch.float64)
    expected = alpha * t / (1 + (alpha - 1) * t)
    assert torch.allclose(shift_time(t, alpha), expected)
    assert shift_time(t, alpha)[0] == 0 and shift_time(t, alpha)[-1].item() == pytest.approx(1.0)


def test_shift_half_gives_one_third():
    # a = 0.5: t = 1/2 -> (1/4) / (3/4) = 1/3, more time at the noisy end
    assert shift_time(torch.tensor(0.5), 0.5).item() == pytest.approx(1 / 3)


def test_shift_derivative_matches_autograd():
    t = torch.linspace(0.01, 0.99, 7, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(shift_time(t, 0.5).sum(), t)
    assert torch.allclose(g, shift_time_derivative(t.detach(), 0.5))


def test_logit_normal_median_is_shifted_half():
    t = sample_time(200_000, alpha=0.5, generator=torch.Generator().manual_seed(0))
    assert t.median().item() == pytest.approx(1 / 3, abs=5e-3)
    assert torch.equal(logit_normal_time(torch.zeros(1), 0.0, 1.0, 1.0), torch.tensor([0.5]))
    # mean and std of the logit: sigmoid(mean + std n), then the shift
    n = torch.tensor([-1.0, 0.0, 0.5], dtype=torch.float64)
    expected = 1 / (1 + torch.exp(-(0.4 + 2.0 * n)))
    assert torch.allclose(logit_normal_time(n, 0.4, 2.0, 1.0), expected)
    assert torch.allclose(logit_normal_time(n, 0.4, 2.0, 0.5), 0.5 * expected / (1 - 0.5 * expected))


def test_interpolation_endpoints_and_midpoint():
    x1, eps = torch.randn(4, 3, 2), torch.randn(4, 3, 2)
    assert torch.equal(interpolate(x1, eps, torch.zeros(4)), eps)
    assert torch.equal(interpolate(x1, eps, torch.ones(4)), x1)
    t = torch.tensor([0.25, 0.5, 0.75, 0.1])
    assert torch.allclose(interpolate(x1, eps, t), t.view(-1, 1, 1) * x1 + (1 - t.view(-1, 1, 1)) * eps)


def test_x_to_velocity_recovers_straight_path_velocity():
    x1, eps = torch.randn(5, 4, 3, dtype=torch.float64), torch.randn(5, 4, 3, dtype=torch.float64)
    t = torch.tensor([0.0, 0.2, 0.5, 0.9, 0.94], dtype=torch.float64)
    v = x_to_velocity(x1, interpolate(x1, eps, t), t, clamp=0.05)
    assert torch.allclose(v, x1 - eps)  # exact: dx_t/dt of the straight path


def test_x_to_velocity_clamps_near_data():
    x1, xt = torch.ones(1, 2), torch.zeros(1, 2)
    assert torch.allclose(x_to_velocity(x1, xt, torch.tensor([0.99]), 0.05), torch.full((1, 2), 20.0))


def test_flow_loss_weighting_closed_form():
    x1 = torch.zeros(2, 3, 4)
    x1_hat = torch.ones(2, 3, 4) * torch.tensor([1.0, 2.0]).view(2, 1, 1)
    t = torch.tensor([0.5, 0.99])
    # sample 0: err 1 / 0.5^2 = 4; sample 1: err 4 / max(0.01, 0.05)^2 = 1600
    assert flow_loss(x1_hat, x1, t, 0.05).item() == pytest.approx((4 + 1600) / 2)


def test_flow_loss_ignores_padding_and_weighs_samples_equally():
    x1 = torch.zeros(2, 4, 3)
    x1_hat = torch.zeros(2, 4, 3)
    x1_hat[0, :2] = 1.0    # real registers of sample 0: error 1
    x1_hat[0, 2:] = 100.0  # padding: must not count
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    t = torch.zeros(2)
    assert flow_loss(x1_hat, x1, t, 0.05, mask).item() == pytest.approx(0.5)
    assert math.isfinite(flow_loss(x1_hat, x1, t, 0.05, mask).item())
