"""Solvers on an ODE with a known solution, and guidance only inside its interval (SPEC section 5)."""
import math

import pytest
import torch

from unite_sci.sampling import guided_prediction, integrate


def linear_ode(x, t):
    return -x  # x(1) = x(0) e^-1


@pytest.mark.parametrize("shift", [1.0, 0.5])
@pytest.mark.parametrize("solver,order", [("euler", 1), ("heun", 2)])
def test_fixed_step_solvers_converge_at_their_order(solver, order, shift):
    x0 = torch.ones(1, 1, dtype=torch.float64)
    exact = math.exp(-1)
    errs = [abs(integrate(linear_ode, x0, solver=solver, steps=n, shift=shift)[0].item() - exact) for n in (20, 40, 80)]
    rates = [math.log2(errs[i] / errs[i + 1]) for i in range(2)]
    assert all(abs(r - order) < 0.15 for r in rates), (errs, rates)


def test_heun_evaluations_count():
    _, nfe = integrate(linear_ode, torch.ones(1, 1), solver="heun", steps=50)
    assert nfe == 100  # 50 steps = 100 evaluations, as the paper counts
    assert integrate(linear_ode, torch.ones(1, 1), solver="heun", steps=50, final_euler=True)[1] == 99  # JiT


def test_heun_ends_on_the_prediction_of_an_x_predictor_that_returns_its_input_at_t_1():
    """With x-prediction, v = (x1_hat - x) / max(1 - t, clamp). A model that knows the target z ends on z
    exactly with JiT's final Euler step; the paper's Heun corrector at t = 1 (where this model predicts its
    input, so v = 0) stops halfway between the last grid state and z."""
    from unite_sci.flow import x_to_velocity

    z, x0 = torch.full((1, 4), 2.0), torch.zeros(1, 4)

    def f(x, t):  # the prediction is z before t = 1 and the input itself at t = 1
        x1_hat = torch.where(t.view(-1, 1) >= 1.0, x, z)
        return x_to_velocity(x1_hat, x, t)

    assert torch.allclose(integrate(f, x0, solver="heun", steps=10, final_euler=True)[0], z)
    halfway = integrate(f, x0, solver="heun", steps=10)[0]
    assert torch.allclose(halfway, 0.5 * (0.9 * z) + 0.5 * z)  # state at t = 0.9 is 0.9 z


def test_dopri5_within_tolerance_on_time_dependent_ode():
    x0 = torch.ones(3, 2, dtype=torch.float64)
    f = lambda x, t: 2 * t.view(-1, 1) * x  # noqa: E731  x(1) = x(0) e^{1}
    x1, nfe = integrate(f, x0, solver="dopri5", shift=0.5, atol=1e-8, rtol=1e-6)
    assert torch.allclose(x1, x0 * math.e, rtol=1e-5)
    assert nfe > 6


def test_cfg_only_inside_interval():
    def predict(x, t, c):  # conditional prediction 1, unconditional 0
        return (c != 9).double().view(-1, 1, 1).expand_as(x).clone()

    x = torch.zeros(4, 2, 3, dtype=torch.float64)
    t = torch.tensor([0.05, 0.1, 0.5, 1.0], dtype=torch.float64)
    cond = torch.zeros(4, dtype=torch.long)
    out = guided_prediction(predict, x, t, cond=cond, null=9, scale=3.0, interval=(0.1, 1.0))
    # t = 0.05, 0.1 and 1.0 lie outside the open (0.1, 1.0): conditional alone; inside: 0 + 3 (1 - 0) = 3
    assert out[:, 0, 0].tolist() == [1.0, 1.0, 3.0, 1.0]


def test_cfg_scale_one_is_plain_conditional():
    calls = []

    def predict(x, t, c):
        calls.append(len(c))
        return x + 1

    out = guided_prediction(predict, torch.zeros(2, 1), torch.tensor([0.5, 0.5]), cond=torch.zeros(2, dtype=torch.long),
                            null=9, scale=1.0, interval=(0.1, 1.0))
    assert calls == [2] and torch.equal(out, torch.ones(2, 1))
