import math

import pytest
import torch
import torch.nn.functional as F

from gancli.config import LossName
from gancli.losses import LOSSES, d_loss, g_loss_minimax, g_loss_ns, r1_penalty


def test_d_loss_is_binary_cross_entropy_on_logits():
    real, fake = torch.randn(64), torch.randn(64)
    expected = F.binary_cross_entropy_with_logits(real, torch.ones(64)) + F.binary_cross_entropy_with_logits(
        fake, torch.zeros(64)
    )
    assert torch.allclose(d_loss(real, fake), expected, atol=1e-6)


def test_ns_generator_loss_is_minus_log_d():
    fake = torch.randn(64)
    assert torch.allclose(g_loss_ns(fake), -torch.log(torch.sigmoid(fake)).mean(), atol=1e-6)


def test_minimax_generator_loss_is_log_one_minus_d():
    fake = torch.randn(64)
    assert torch.allclose(g_loss_minimax(fake), torch.log1p(-torch.sigmoid(fake)).mean(), atol=1e-6)


def test_values_at_chance():
    zero = torch.zeros(8)
    assert d_loss(zero, zero).item() == pytest.approx(2 * math.log(2))
    assert g_loss_ns(zero).item() == pytest.approx(math.log(2))
    assert g_loss_minimax(zero).item() == pytest.approx(-math.log(2))


def test_stable_for_extreme_logits():
    big = torch.tensor([1e4, -1e4])
    for value in (d_loss(big, big), g_loss_ns(big), g_loss_minimax(big)):
        assert torch.isfinite(value)


def test_low_precision_logits_give_fp32_losses():
    logits = torch.randn(16).to(torch.bfloat16)
    for value in (d_loss(logits, logits), g_loss_ns(logits), g_loss_minimax(logits)):
        assert value.dtype == torch.float32


def test_registry_covers_every_loss_name():
    assert set(LOSSES) == set(LossName)
    assert LOSSES[LossName.ns][1] is g_loss_ns
    assert LOSSES[LossName.minimax][1] is g_loss_minimax


def test_gradients_push_the_right_way():
    fake = torch.zeros(4, requires_grad=True)
    g_loss_ns(fake).backward()
    assert (fake.grad < 0).all()  # G raises D's logit on its samples
    real = torch.zeros(4, requires_grad=True)
    fake = torch.zeros(4, requires_grad=True)
    d_loss(real, fake).backward()
    assert (real.grad < 0).all() and (fake.grad > 0).all()


def test_r1_penalty_is_the_squared_input_gradient_norm():
    # D(x) = <w, x> + tanh(x_0): the gradient at x is w plus (1 - tanh(x_0)^2) in the first pixel
    w = torch.randn(1, 2, 3, requires_grad=True)
    x = torch.randn(5, 1, 2, 3, requires_grad=True)
    logits = (x * w).flatten(1).sum(1) + torch.tanh(x[:, 0, 0, 0])
    grad = w.detach().expand(5, 1, 2, 3).clone()
    grad[:, 0, 0, 0] += 1 - torch.tanh(x.detach()[:, 0, 0, 0]) ** 2
    expected = grad.pow(2).flatten(1).sum(1).mean()
    penalty = r1_penalty(logits, x)
    assert torch.allclose(penalty, expected, atol=1e-6)
    penalty.backward()  # differentiable in D's weights: d/dw mean ||grad||^2 = 2 * mean(grad)
    assert torch.allclose(w.grad, 2 * grad.mean(0), atol=1e-6)


# ---- the losses added for the modern recipes, against values worked out by hand ----

REAL = torch.tensor([2.0, -0.5, 0.0, 1.5])
FAKE = torch.tensor([-1.0, 0.5, 3.0, -2.0])


def test_hinge_against_hand_computed_values():
    from gancli.losses import d_loss_hinge, g_loss_critic

    # relu(1 - real) = [0, 1.5, 1, 0] -> 0.625; relu(1 + fake) = [0, 1.5, 4, 0] -> 1.375
    assert d_loss_hinge(REAL, FAKE).item() == pytest.approx(0.625 + 1.375)
    assert g_loss_critic(FAKE).item() == pytest.approx(-0.125)  # -mean(fake) = -(0.5 / 4)


def test_wasserstein_against_hand_computed_values():
    from gancli.losses import d_loss_wasserstein

    # mean(fake) - mean(real) = 0.125 - 0.75
    assert d_loss_wasserstein(REAL, FAKE).item() == pytest.approx(-0.625)
    assert LOSSES[LossName.wasserstein].g(FAKE).item() == pytest.approx(-0.125)


def test_lsgan_against_hand_computed_values():
    from gancli.losses import d_loss_lsgan, g_loss_lsgan

    # (real - 1)^2 = [1, 2.25, 1, 0.25] -> 1.125; fake^2 = [1, 0.25, 9, 4] -> 3.5625
    assert d_loss_lsgan(REAL, FAKE).item() == pytest.approx(0.5 * 1.125 + 0.5 * 3.5625)
    # (fake - 1)^2 = [4, 0.25, 4, 9] -> 4.3125
    assert g_loss_lsgan(FAKE).item() == pytest.approx(0.5 * 4.3125)


def test_rpgan_against_hand_computed_values():
    from gancli.losses import d_loss_rpgan, g_loss_rpgan

    diff = [-3.0, 1.0, 3.0, -3.5]  # fake - real, pair by pair

    def softplus(v):
        return math.log1p(math.exp(v))

    assert d_loss_rpgan(REAL, FAKE).item() == pytest.approx(sum(map(softplus, diff)) / 4, rel=1e-6)
    assert g_loss_rpgan(FAKE, REAL).item() == pytest.approx(sum(softplus(-v) for v in diff) / 4, rel=1e-6)
    assert LOSSES[LossName.rpgan].g_needs_real and not LOSSES[LossName.hinge].g_needs_real
    # at chance (equal scores) both sides are log 2
    assert d_loss_rpgan(REAL, REAL).item() == pytest.approx(math.log(2))


@pytest.mark.parametrize("name", list(LossName))
def test_every_loss_is_fp32_finite_and_pushes_the_right_way(name):
    loss = LOSSES[name]
    real = torch.zeros(4, requires_grad=True)
    fake = torch.full((4,), 0.5, requires_grad=True)  # short of every loss's optimum
    value = loss.d(real.to(torch.bfloat16), fake.to(torch.bfloat16))
    assert value.dtype == torch.float32 and torch.isfinite(value)
    value.backward()
    assert (real.grad < 0).all() and (fake.grad > 0).all()  # D raises real scores, lowers fake ones
    fake = torch.full((4,), 0.5, requires_grad=True)
    g_value = loss.g(fake, torch.zeros(4)) if loss.g_needs_real else loss.g(fake)
    g_value.backward()
    assert (fake.grad < 0).all()  # G raises D's score of its samples
    big = torch.tensor([1e4, -1e4])
    assert torch.isfinite(loss.d(big, big)) and torch.isfinite(loss.g(big, big) if loss.g_needs_real else loss.g(big))


def _finite_difference_grad(f, w: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    grad = torch.zeros_like(w)
    for i in range(w.numel()):
        step = torch.zeros_like(w).flatten()
        step[i] = eps
        step = step.view_as(w)
        grad.view(-1)[i] = (f(w + step) - f(w - step)) / (2 * eps)
    return grad


def _tiny_critic(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    # a nonlinear D with weights w (3,): tanh(w0 x0 + w1 x1) * w2 + (w0 x1)^2, per sample of x (B, 2)
    return torch.tanh(w[0] * x[:, 0] + w[1] * x[:, 1]) * w[2] + (w[0] * x[:, 1]) ** 2


def test_r2_penalty_and_its_weight_gradient_match_finite_differences():
    """R2 is R1's penalty at G's samples: the same function, checked in float64 end to end."""
    x = torch.randn(5, 2, dtype=torch.float64)
    w = torch.randn(3, dtype=torch.float64)

    def penalty(weights):
        xs = x.clone().requires_grad_(True)
        logits = _tiny_critic(weights, xs)
        (g,) = torch.autograd.grad(logits.sum(), xs)
        return g.pow(2).sum(1).mean()

    w_leaf = w.clone().requires_grad_(True)
    xs = x.clone().requires_grad_(True)
    value = r1_penalty(_tiny_critic(w_leaf, xs), xs)
    assert value.item() == pytest.approx(penalty(w).item(), rel=1e-6)
    value.backward()  # the double backward: d penalty / d D's weights
    assert torch.allclose(w_leaf.grad.double(), _finite_difference_grad(penalty, w), rtol=1e-4, atol=1e-7)


def test_gradient_penalty_and_its_weight_gradient_match_finite_differences():
    from gancli.losses import gradient_penalty

    x_hat = torch.randn(6, 2, dtype=torch.float64)
    w = torch.randn(3, dtype=torch.float64)

    def penalty(weights):
        xs = x_hat.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(_tiny_critic(weights, xs).sum(), xs)
        return (g.norm(dim=1) - 1).pow(2).mean()

    w_leaf = w.clone().requires_grad_(True)
    xs = x_hat.clone().requires_grad_(True)
    value = gradient_penalty(_tiny_critic(w_leaf, xs), xs)
    assert value.item() == pytest.approx(penalty(w).item(), rel=1e-6)
    value.backward()
    assert torch.allclose(w_leaf.grad.double(), _finite_difference_grad(penalty, w), rtol=1e-4, atol=1e-7)
    # a critic of slope exactly 1 everywhere pays nothing
    unit = torch.randn(4, 2, requires_grad=True)
    assert gradient_penalty(unit @ torch.tensor([0.6, 0.8]), unit).item() == pytest.approx(0.0, abs=1e-12)


def test_a_scaled_penalty_gradient_is_unscaled_again():
    x = torch.randn(4, 3, requires_grad=True)
    logits = (x ** 3).sum(1)
    plain = r1_penalty(logits, x)
    scaled = r1_penalty((x ** 3).sum(1), x, grad_scale=1024.0)  # what fp16's scaler passes
    assert scaled.item() == pytest.approx(plain.item(), rel=1e-6)


def test_d_objective_weights_each_penalty_and_lazy_regularisation(monkeypatch):
    from gancli import losses
    from gancli.config import LossConfig
    from gancli.data import Batch

    class G(torch.nn.Module):  # G(z, c) of 2-D points
        z_dim, n_classes = 3, 0

        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(3, 2)

        def forward(self, z, c=None):
            return self.net(z)

    class D(torch.nn.Module):  # D(x, c), nonlinear so that every penalty has a gradient
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))

        def forward(self, x, c=None):
            return self.net(x).squeeze(1)

    torch.manual_seed(0)
    G, D = G(), D()
    batch = Batch(torch.randn(16, 2))
    cfg = LossConfig(name=LossName.ns, r1_gamma=2.0, r2_gamma=3.0, gp_lambda=5.0, reg_every=4)
    torch.manual_seed(1)
    objective, stats = losses.d_objective(cfg, G, D, batch, reg=True)
    assert set(stats) == {"loss_d", "d_real", "d_fake", "r1", "r2", "gp"}
    expected = stats["loss_d"] + 4 * (2.0 / 2 * stats["r1"] + 3.0 / 2 * stats["r2"] + 5.0 * stats["gp"])
    assert objective.item() == pytest.approx(expected.item(), rel=1e-6)
    torch.manual_seed(1)
    plain, plain_stats = losses.d_objective(cfg, G, D, batch, reg=False)
    assert set(plain_stats) == {"loss_d", "d_real", "d_fake"}
    assert plain.item() == pytest.approx(stats["loss_d"].item(), rel=1e-6)  # the same noise, no penalties
