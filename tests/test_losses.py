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

