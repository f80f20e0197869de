"""StyleGAN2: its layers against their definitions, its shapes at every size, its regularisers,
its preset's derived settings, and training with it (in-process, tiny)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from gancli import checkpoint
from gancli.config import LossConfig
from gancli.errors import GancliError
from gancli.losses import path_length_penalty, style_mixing
from gancli.models import build_models, stylegan2 as sg
from gancli.models.base import SpectralNorm
from test_config import compose_train

TINY = sg.Config(z_dim=16, w_dim=16, mapping_layers=2, width=4, width_max=16)


def test_modulated_conv_equals_a_convolution_per_sample_with_its_own_weights():
    torch.manual_seed(0)
    x, weight, styles = torch.randn(3, 5, 6, 6), torch.randn(4, 5, 3, 3), torch.randn(3, 5)
    for demodulate in (True, False):
        got = sg.modulated_conv2d(x, weight, styles, demodulate)
        for b in range(3):
            w = weight * styles[b][None, :, None, None]  # (O, I, k, k), scaled per input channel
            if demodulate:  # each output channel's kernel to unit norm
                w = w / w.square().sum((1, 2, 3), keepdim=True).add(1e-8).sqrt()
            want = F.conv2d(x[b : b + 1], w, padding=1)
            assert torch.allclose(got[b : b + 1], want, atol=1e-5), (demodulate, b)


def test_demodulation_gives_unit_variance_outputs_for_unit_variance_inputs():
    torch.manual_seed(0)
    x = torch.randn(8, 64, 32, 32)
    y = sg.modulated_conv2d(x, torch.randn(32, 64, 3, 3), torch.rand(8, 64) * 3 + 0.1)
    assert abs(float(y.var()) - 1) < 0.05
    per_channel = y.var((0, 2, 3))
    assert float((per_channel - 1).abs().max()) < 0.15
    undemodulated = sg.modulated_conv2d(x, torch.randn(32, 64, 3, 3), torch.rand(8, 64) * 3 + 0.1, demodulate=False)
    assert float(undemodulated.var()) > 10  # without it the scales compound


def test_the_learning_rate_multiplier_scales_how_far_a_step_moves_the_used_weight():
    """Adam moves every stored weight by about lr; the used weight is the stored one times
    lr_mul / sqrt(fan_in), so a layer with lr_mul 0.01 moves 100 times less."""
    torch.manual_seed(0)
    moved = {}
    for lr_mul in (1.0, 0.01):
        layer = sg.EqualLinear(64, 8, lr_mul=lr_mul)
        used = (layer.weight * layer.weight_gain).detach().clone()
        opt = torch.optim.Adam(layer.parameters(), lr=1e-3)
        layer(torch.randn(16, 64)).square().sum().backward()
        opt.step()
        moved[lr_mul] = float(((layer.weight * layer.weight_gain).detach() - used).abs().mean())
        # at initialisation the used weight is He's N(0, 1/fan_in) whatever lr_mul is
        assert abs(float(used.std()) - 64 ** -0.5) < 0.02
    assert moved[1.0] == pytest.approx(1e-3 / 8, rel=0.05)
    assert moved[0.01] == pytest.approx(moved[1.0] * 0.01, rel=0.05)


@pytest.mark.parametrize("side, num_ws", [(28, 6), (32, 8), (64, 10), (128, 12), (256, 14), (512, 16), (1024, 18)])
def test_shapes_at_every_size(side, num_ws):
    G, D = build_models(TINY, (3, side, side))
    x = G(torch.randn(2, 16))
    assert x.shape == (2, 3, side, side) and torch.isfinite(x).all()
    assert G.num_ws == num_ws and D(x).shape == (2,)


def test_sizes_outside_the_layout_are_one_line():
    with pytest.raises(GancliError, match="model=stylegan2 needs square images of side 28, 32, 64"):
        build_models(TINY, (3, 48, 48))
    with pytest.raises(GancliError, match="equalised learning rates.*model.spectral_norm=none"):
        build_models(sg.Config(spectral_norm=SpectralNorm.d), (3, 32, 32))


def test_noise_is_drawn_in_training_and_fixed_in_eval_mode():
    torch.manual_seed(0)
    G, _ = build_models(TINY, (1, 32, 32))
    for conv in G.synthesis.convs:
        conv.noise_strength.data.fill_(1.0)
    z = torch.randn(2, 16)
    G.train()
    assert not torch.equal(G(z), G(z))
    G.eval()
    assert torch.equal(G(z), G(z))


def test_w_avg_follows_training_batches_and_truncation_pulls_toward_it():
    torch.manual_seed(0)
    G, _ = build_models(TINY, (1, 32, 32))
    assert not G.w_avg.any()
    G.train()
    for _ in range(3):
        G(torch.randn(8, 16))
    tracked = G.w_avg.clone()
    assert tracked.abs().sum() > 0
    G.eval()
    G(torch.randn(8, 16))
    assert torch.equal(G.w_avg, tracked)  # sampling leaves it alone
    z = torch.randn(4, 16)
    ws = G.mapping(z)
    assert torch.allclose(G.mapping(z, psi=0.0), tracked.expand_as(ws))
    assert torch.equal(G.mapping(z, psi=1.0), ws)
    half = G.mapping(z, psi=0.5, cutoff=3)  # only the first 3 layers are truncated
    assert torch.allclose(half[:, :3], tracked.lerp(ws[:, 0], 0.5)[:, None].expand(-1, 3, -1))
    assert torch.equal(half[:, 3:], ws[:, 3:])
    assert torch.allclose(G(z, psi=0.0), G.synthesis(tracked.expand_as(ws).contiguous()), atol=1e-6)


def test_style_mixing_switches_to_the_second_w_from_the_cut_on():
    torch.manual_seed(0)
    G, _ = build_models(TINY, (1, 32, 32))
    G.eval()
    z, z2 = torch.randn(2, 16), torch.randn(2, 16)
    ws, ws2 = G.mapping(z), G.mapping(z2)
    mixed = torch.cat([ws[:, :3], ws2[:, 3:]], 1)
    assert torch.allclose(G(z, mix_z=z2, mix_from=torch.tensor(3)), G.synthesis(mixed), atol=1e-6)
    assert torch.equal(G(z, mix_z=z2, mix_from=torch.tensor(G.num_ws)), G(z))  # num_ws: no layer switches

    assert style_mixing(LossConfig(), G, z) == {}
    cuts = {int(style_mixing(LossConfig(style_mixing=1.0), G, z)["mix_from"]) for _ in range(200)}
    assert cuts == set(range(1, G.num_ws))  # every cut, never 0 (that would be the second w alone)
    never = {int(style_mixing(LossConfig(style_mixing=1e-9), G, z)["mix_from"]) for _ in range(20)}
    assert never == {G.num_ws}


def test_path_length_penalty_on_a_linear_map_is_its_closed_form():
    """For images = ws A, J^T y is A y per layer: the lengths, the penalty and the moved target
    are computed here from the same image-space noise."""
    torch.manual_seed(0)
    A = torch.randn(3 * 8, 1 * 4 * 4)  # (L * w_dim, C * H * W) with L = 3, w_dim = 8
    ws = torch.randn(5, 3, 8, requires_grad=True)
    fake = (ws.flatten(1) @ A).view(5, 1, 4, 4)
    target = torch.tensor(0.5)
    torch.manual_seed(1)
    penalty, length, moved = path_length_penalty(fake, ws, target, decay=0.1)
    torch.manual_seed(1)
    y = torch.randn(5, 1, 4, 4) / math.sqrt(16)
    grad = (y.flatten(1) @ A.T).view(5, 3, 8)
    lengths = grad.square().sum(2).mean(1).sqrt()
    want_target = 0.5 + 0.1 * (lengths.mean() - 0.5)
    assert float(length) == pytest.approx(float(lengths.mean()), rel=1e-5)
    assert float(moved) == pytest.approx(float(want_target), rel=1e-5)
    assert float(penalty) == pytest.approx(float((lengths - want_target).square().mean()), rel=1e-5)


def test_the_w_space_keys_need_a_model_with_one(tmp_path):
    from gancli.run import check

    with pytest.raises(GancliError, match=r"loss.pl_weight=2.0 and loss.style_mixing=0.9 work in StyleGAN2's W "
                                          r"space, which model=dcgan lacks; use model=stylegan2"):
        check(compose_train("device=cpu", "experiment=none", "loss.pl_weight=2", "loss.style_mixing=0.9"))


@pytest.mark.parametrize("side, batch, gamma, width, lr, ema", [
    (28, 32, 0.0002 * 28 ** 2 / 32, 512, 0.0025, 10.0),
    (256, 16, 0.8192, 64, 0.0025, 5.0),
    (512, 8, 0.0002 * 512 ** 2 / 8, 64, 0.0025, 2.5),
    (1024, 4, 52.4288, 32, 0.002, 1.25),
])
def test_the_preset_derives_stylegan2_ada_pytorchs_auto_settings(side, batch, gamma, width, lr, ema):
    cfg = compose_train("experiment=stylegan2", f"data.image_size={side}")
    assert cfg.model.name == "stylegan2" and cfg.model.mapping_layers == 2
    assert cfg.train.batch_size == batch and cfg.model.width == width
    assert cfg.loss.r1_gamma == pytest.approx(gamma) and cfg.ema.half_life_kimg == pytest.approx(ema)
    assert cfg.optimizer.lr == lr and cfg.optimizer.lr_g == pytest.approx(lr * 0.8)
    assert (cfg.loss.reg_every, cfg.loss.pl_every, cfg.loss.pl_weight, cfg.loss.style_mixing) == (16, 4, 2.0, 0.9)
    # a batch given on the command line carries its gamma and EMA with it
    other = compose_train("experiment=stylegan2", f"data.image_size={side}", "train.batch_size=64")
    assert other.loss.r1_gamma == pytest.approx(gamma * batch / 64)


# ---- training ----

SMALL = ["device=cpu", "experiment=stylegan2", "model.width=8", "model.width_max=16", "model.z_dim=16",
         "model.w_dim=16", "train.batch_size=8", "train.log_every=2", "train.sample_every=0", "train.ckpt_every=0",
         "loss.reg_every=2", "loss.pl_every=2", "ema.half_life_kimg=0.05"]


def _train(tmp_path, name, steps, *extra):
    from gancli.train import train

    return train(compose_train(*SMALL, f"train.steps={steps}", *extra), tmp_path / name)


def test_resume_with_the_path_length_target_and_w_avg_is_exact(tmp_path):
    _train(tmp_path, "straight", 6)
    _train(tmp_path, "resumed", 3)
    summary = _train(tmp_path, "resumed", 6, "train.resume=auto")
    assert {"pl", "pl_length", "r1"} <= set(summary["stats"])
    straight = checkpoint.load(tmp_path / "straight" / "checkpoints" / "last.pt")
    resumed = checkpoint.load(tmp_path / "resumed" / "checkpoints" / "last.pt")
    assert float(straight["path_length"]["value"]) > 0  # the target moved, so it is part of what is compared
    assert straight["G"]["mapping_net.w_avg"].abs().sum() > 0
    for key in ("G", "D", "G_ema", "path_length"):
        for name, value in straight[key].items():
            assert torch.equal(value, resumed[key][name]), f"{key}.{name} differs after resume"


@pytest.mark.parametrize("extra", [["precision=bf16", "accel=fast"], ["precision=fp32", "accel=baseline",
                                                                       "model.conditional=true"]])
def test_trains_under_each_accel_and_precision_on_the_cpu(tmp_path, extra):
    summary = _train(tmp_path, "run", 4, *extra)
    assert summary["steps"] == 4
    assert all(math.isfinite(v) for v in summary["stats"].values())
