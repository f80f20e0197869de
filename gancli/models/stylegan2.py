"""StyleGAN2 (Karras et al., CVPR 2020; config F of stylegan2-ada-pytorch) for 28x28 and square
powers of two from 32 to 1024.

G is two networks. The mapping network turns normalised z (beside a normalised class
embedding, when conditional) through `mapping_layers` fully connected layers into w, and keeps
w_avg, the moving average of the w it has made in training, for truncation. The synthesis
network starts from a learned 4x4 constant (7x7 for 28x28) and doubles the side per block;
each 3x3 convolution is modulated by a style (an affine map of w, one scale per input channel)
and demodulated (each output channel rescaled to unit norm), then gets per-pixel noise scaled by
a learned strength; each block adds its own RGB image to the upsampled image of the block
before it (skip connections). Each layer reads its own w, so that w may differ per layer: that
is style mixing. D is residual: blocks of two 3x3 convolutions with a 1x1 shortcut, halving the
side, then a minibatch standard-deviation channel, a 3x3 conv and two dense layers. Every layer
has an equalised learning rate: weights drawn N(0, 1) and scaled by He's constant at run time,
so that Adam moves every layer at the same relative speed.

Our own layout where it differs from stylegan2-ada-pytorch: resampling is bilinear (G) and a
2x2 average (D) instead of a [1, 3, 3, 1] filter, D halves the side before its second conv, and
modulation is computed as scale, convolve, rescale (no grouped convolution), which is the same
function and keeps a dynamic batch size in exported graphs.
Train it with StyleGAN2's objective: `gancli train experiment=stylegan2`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gancli.errors import at_least, require
from gancli.models.base import ModelConfig, Projection, Traits

SIZES = (28, 32, 64, 128, 256, 512, 1024)
GAIN = math.sqrt(2)  # leaky ReLU's gain, so that activations keep unit variance


@dataclass
class Config(ModelConfig):
    """Channels double from the largest map towards the smallest, as in the other families."""

    name: str = "stylegan2"
    z_dim: int = 512
    w_dim: int = 512  # the intermediate latent space W
    mapping_layers: int = 8  # fully connected layers from z to w (stylegan2-ada-pytorch's auto: 2)
    mapping_lr: float = 0.01  # the mapping network's learning-rate multiplier
    width: int = 64  # channels at the largest map; they double at each smaller one, up to width_max
    width_max: int = 512
    mbstd_group: int = 4  # samples per group of D's minibatch standard-deviation channel
    w_avg_beta: float = 0.995  # w_avg moves 1 - this toward each training batch's mean w

    def __post_init__(self) -> None:
        super().__post_init__()
        at_least(self, "model", 1, "w_dim", "mapping_layers", "width", "width_max", "mbstd_group")
        require(self.mapping_lr > 0, "model.mapping_lr", self.mapping_lr, "a number > 0")
        require(0 <= self.w_avg_beta < 1, "model.w_avg_beta", self.w_avg_beta, "a number in [0, 1)")


TRAITS = Traits(convolutional=True, sizes=SIZES, w_space=True, spectral_norm=False)


def _channels(cfg: Config, side: int) -> tuple[int, list[int]]:
    """(side of the smallest map, channels per resolution from the smallest map to the largest)."""
    base = 7 if side == 28 else 4
    n = (side // base).bit_length()  # resolutions: base, 2 base, ..., side
    return base, [min(cfg.width * 2 ** (n - 1 - i), cfg.width_max) for i in range(n)]


def _act(x: Tensor) -> Tensor:
    return F.leaky_relu(x, 0.2) * GAIN


def normalize_2nd_moment(x: Tensor, eps: float = 1e-8) -> Tensor:
    """Each row of (B, F) scaled to a mean square of 1."""
    return x * (x.square().mean(1, keepdim=True) + eps).rsqrt()


# ---- equalised learning rate: weights N(0, 1) / lr_mul, scaled by lr_mul / sqrt(fan_in) at run time ----

class EqualLinear(nn.Module):
    """(B, n_in) -> (B, n_out). The stored weight is N(0, 1/lr_mul^2) and the layer uses it times
    lr_mul / sqrt(n_in): the function at initialisation is He's, and an optimizer step of size
    lr on the stored weight moves the used weight by lr * lr_mul / sqrt(n_in)."""

    def __init__(self, n_in: int, n_out: int, bias_init: float = 0.0, lr_mul: float = 1.0, act: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_out, n_in) / lr_mul)
        self.bias = nn.Parameter(torch.full((n_out,), bias_init / lr_mul))
        self.weight_gain, self.lr_mul, self.act = lr_mul / math.sqrt(n_in), lr_mul, act

    def forward(self, x: Tensor) -> Tensor:
        y = F.linear(x, self.weight * self.weight_gain, self.bias * self.lr_mul)
        return _act(y) if self.act else y


class EqualConv2d(nn.Module):
    """(B, n_in, H, W) -> (B, n_out, H, W): a same-padded k x k convolution with an equalised learning rate."""

    def __init__(self, n_in: int, n_out: int, kernel: int, bias: bool = True, act: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_out, n_in, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(n_out)) if bias else None
        self.weight_gain, self.act = 1 / math.sqrt(n_in * kernel * kernel), act

    def forward(self, x: Tensor) -> Tensor:
        y = F.conv2d(x, self.weight * self.weight_gain, self.bias, padding=self.weight.shape[-1] // 2)
        return _act(y) if self.act else y


def modulated_conv2d(x: Tensor, weight: Tensor, styles: Tensor, demodulate: bool = True) -> Tensor:
    """StyleGAN2's modulated convolution, same-padded: x (B, I, H, W), weight (O, I, k, k), styles
    (B, I) -> (B, O, H, W). Per sample b it convolves with weight[o, i] * styles[b, i], and with
    `demodulate` divides each output channel's kernel by its norm, so that unit-variance inputs
    give unit-variance outputs. Computed as scale x, convolve with the shared weight, rescale the
    output: the same function as one grouped convolution per sample, with plain convolutions."""
    y = F.conv2d(x * styles[:, :, None, None].to(x.dtype), weight.to(x.dtype), padding=weight.shape[-1] // 2)
    if demodulate:  # 1 / ||weight[o] * styles[b]||: (B, I) @ (I, O) -> (B, O)
        norms = styles.float().square() @ weight.float().square().sum((2, 3)).T
        y = y * (norms + 1e-8).rsqrt()[:, :, None, None].to(y.dtype)
    return y


class StyleConv(nn.Module):
    """(B, I, S, S) and w (B, w_dim) -> (B, O, S', S'): a modulated, demodulated 3x3 conv (after a
    2x bilinear upsampling when `up`), per-pixel noise times a learned strength, bias, leaky ReLU.
    In training the noise is drawn anew; in eval mode it is a fixed map kept in the checkpoint, so
    that a sample is a function of its z alone."""

    def __init__(self, n_in: int, n_out: int, w_dim: int, side: int, up: bool = False):
        super().__init__()
        self.affine = EqualLinear(w_dim, n_in, bias_init=1.0)  # styles start at 1
        self.weight = nn.Parameter(torch.randn(n_out, n_in, 3, 3))
        self.bias = nn.Parameter(torch.zeros(n_out))
        self.noise_strength = nn.Parameter(torch.zeros(()))
        self.register_buffer("noise_const", torch.randn(side, side))
        self.up = up

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        if self.up:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        y = modulated_conv2d(x, self.weight, self.affine(w))
        if self.training:
            noise = torch.randn(y.shape[0], 1, *y.shape[2:], device=y.device, dtype=y.dtype)
        else:
            noise = self.noise_const.to(y.dtype)
        y = y + noise * self.noise_strength.to(y.dtype) + self.bias[:, None, None].to(y.dtype)
        return _act(y)


class ToRGB(nn.Module):
    """(B, I, S, S) and w -> (B, C, S, S): a modulated 1x1 conv without demodulation, and a bias."""

    def __init__(self, n_in: int, channels: int, w_dim: int):
        super().__init__()
        self.affine = EqualLinear(w_dim, n_in, bias_init=1.0)
        # (C, I), viewed as a 1x1 kernel: a 4-D weight with a single output channel would take
        # channels_last strides that its gradient (and DDP's bucket for it) does not have
        self.weight = nn.Parameter(torch.randn(channels, n_in))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.weight_gain = 1 / math.sqrt(n_in)

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        y = modulated_conv2d(x, self.weight[:, :, None, None], self.affine(w) * self.weight_gain, demodulate=False)
        return y + self.bias[:, None, None].to(y.dtype)


class MappingNetwork(nn.Module):
    """z (B, z_dim) and labels (B,) or None -> w (B, w_dim). In training it moves w_avg toward the
    batch's mean w."""

    def __init__(self, cfg: Config, n_classes: int):
        super().__init__()
        self.embed = nn.Embedding(n_classes, cfg.w_dim) if n_classes else None  # a one-hot dense layer
        n_in = cfg.z_dim + (cfg.w_dim if n_classes else 0)
        self.layers = nn.Sequential(*(EqualLinear(n_in if i == 0 else cfg.w_dim, cfg.w_dim, lr_mul=cfg.mapping_lr,
                                                  act=True) for i in range(cfg.mapping_layers)))
        self.register_buffer("w_avg", torch.zeros(cfg.w_dim))
        self.w_avg_beta = cfg.w_avg_beta

    def forward(self, z: Tensor, c: Optional[Tensor] = None) -> Tensor:
        x = normalize_2nd_moment(z.float())
        if self.embed is not None:
            x = torch.cat([x, normalize_2nd_moment(self.embed(c))], 1)
        w = self.layers(x)
        if self.training:  # in place, so that a CUDA graph replays it
            with torch.no_grad():
                self.w_avg.copy_(w.detach().float().mean(0).lerp(self.w_avg, self.w_avg_beta))
        return w


class SynthesisNetwork(nn.Module):
    """ws (B, num_ws, w_dim) -> images (B, C, side, side), unbounded (no tanh, as in StyleGAN2).
    Block 0 reads w 0 (conv) and 1 (RGB); block k > 0 reads w 2k - 1, 2k (convs) and 2k + 1
    (RGB): an RGB layer shares its w with the next block's first conv."""

    def __init__(self, cfg: Config, shape: tuple):
        super().__init__()
        base, channels = _channels(cfg, shape[1])
        self.const = nn.Parameter(torch.randn(channels[0], base, base))
        self.convs = nn.ModuleList([StyleConv(channels[0], channels[0], cfg.w_dim, base)])
        self.to_rgb = nn.ModuleList([ToRGB(channels[0], shape[0], cfg.w_dim)])
        for i, (a, b) in enumerate(zip(channels[:-1], channels[1:]), start=1):
            side = base * 2 ** i
            self.convs.extend([StyleConv(a, b, cfg.w_dim, side, up=True), StyleConv(b, b, cfg.w_dim, side)])
            self.to_rgb.append(ToRGB(b, shape[0], cfg.w_dim))
        self.num_ws = 2 * len(channels)

    def forward(self, ws: Tensor) -> Tensor:
        # a copy, not a view: a view of a parameter requires grad even under no_grad
        x = self.const[None].repeat(ws.shape[0], 1, 1, 1)
        x = self.convs[0](x, ws[:, 0])
        img = self.to_rgb[0](x, ws[:, 1])
        for k in range(1, len(self.to_rgb)):
            x = self.convs[2 * k - 1](x, ws[:, 2 * k - 1])
            x = self.convs[2 * k](x, ws[:, 2 * k])
            img = F.interpolate(img, scale_factor=2, mode="bilinear", align_corners=False) + self.to_rgb[k](
                x, ws[:, 2 * k + 1])
        return img


class Generator(nn.Module):
    """G(z, c) -> images; `mapping` and `synthesis` are its two halves, for what works in W:
    truncation (psi, cutoff), style mixing (mix_z from layer mix_from on) and the path-length
    penalty (return_ws)."""

    def __init__(self, cfg: Config, shape: tuple, n_classes: int = 0):
        super().__init__()
        self.z_dim, self.w_dim, self.n_classes = cfg.z_dim, cfg.w_dim, n_classes
        self.mapping_net = MappingNetwork(cfg, n_classes)
        self.synthesis = SynthesisNetwork(cfg, shape)
        self.num_ws = self.synthesis.num_ws

    @property
    def w_avg(self) -> Tensor:
        return self.mapping_net.w_avg

    def mapping(self, z: Tensor, c: Optional[Tensor] = None, psi: float = 1.0,
                cutoff: Optional[int] = None) -> Tensor:
        """ws (B, num_ws, w_dim): w for every layer, truncated toward w_avg by psi on the layers
        before `cutoff` (all when None)."""
        w = self.mapping_net(z, c)[:, None].expand(-1, self.num_ws, -1)
        if psi == 1:
            return w
        w_trunc = self.w_avg.to(w.dtype).lerp(w, psi)  # w_avg + psi (w - w_avg)
        return w_trunc if cutoff is None else self._switch(w_trunc, w, cutoff)

    def _switch(self, before: Tensor, after: Tensor, layer: int | Tensor) -> Tensor:
        """ws (B, num_ws, w_dim): `before`'s on the layers before `layer`, `after`'s from it on."""
        index = torch.arange(self.num_ws, device=before.device)[None, :, None]
        return torch.where(index < layer, before, after)

    def forward(self, z: Tensor, c: Optional[Tensor] = None, psi: float = 1.0, cutoff: Optional[int] = None,
                mix_z: Optional[Tensor] = None, mix_from: Optional[Tensor] = None,
                return_ws: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Images (B, C, H, W); with `mix_z` the layers from `mix_from` (a device scalar; num_ws:
        none) on read w of mix_z instead; with `return_ws`, (images, the ws they came from)."""
        ws = self.mapping(z, c, psi, cutoff)
        if mix_z is not None:
            ws = self._switch(ws, self.mapping(mix_z, c, psi, cutoff), mix_from)
        img = self.synthesis(ws)
        return (img, ws) if return_ws else img


def minibatch_std(x: Tensor, group: int) -> Tensor:
    """(B, C, H, W) -> (B, C + 1, H, W): the mean standard deviation over each group of samples
    (samples i, i + B/G, ... form a group), as one more channel, so that D sees variety."""
    b, c, h, w = x.shape
    g = min(group, b)
    while b % g:  # the largest group size up to `group` that divides the batch
        g -= 1
    y = x.float().reshape(g, -1, c, h, w)
    y = (y - y.mean(0)).square().mean(0).add(1e-8).sqrt().mean((1, 2, 3))  # (B/G,)
    y = y.reshape(-1, 1, 1, 1).repeat(g, 1, h, w).to(x.dtype)  # (B, 1, H, W)
    return torch.cat([x, y], 1)


class DBlock(nn.Module):
    """(B, I, S, S) -> (B, O, S/2, S/2): (shortcut + conv3x3 -> halve -> conv3x3) / sqrt(2)."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.conv0 = EqualConv2d(n_in, n_in, 3, act=True)
        self.conv1 = EqualConv2d(n_in, n_out, 3, act=True)
        self.skip = EqualConv2d(n_in, n_out, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        skip = self.skip(F.avg_pool2d(x, 2))
        y = self.conv1(F.avg_pool2d(self.conv0(x), 2))
        return (skip + y) * math.sqrt(0.5)


class Discriminator(nn.Module):
    def __init__(self, cfg: Config, shape: tuple, n_classes: int = 0):
        super().__init__()
        base, channels = _channels(cfg, shape[1])
        channels = channels[::-1]  # from the largest map to the smallest
        self.from_rgb = EqualConv2d(shape[0], channels[0], 1, act=True)
        self.blocks = nn.Sequential(*(DBlock(a, b) for a, b in zip(channels[:-1], channels[1:])))
        c = channels[-1]
        self.mbstd_group = cfg.mbstd_group
        self.conv = EqualConv2d(c + 1, c, 3, act=True)
        self.fc = EqualLinear(c * base * base, c, act=True)
        self.out = EqualLinear(c, 1)
        self.project = Projection(n_classes, c) if n_classes else None

    def forward(self, x: Tensor, c: Optional[Tensor] = None) -> Tensor:
        h = self.blocks(self.from_rgb(x))
        h = self.conv(minibatch_std(h, self.mbstd_group))
        h = self.fc(h.flatten(1))  # (B, C)
        logits = self.out(h).squeeze(1)
        return logits if self.project is None else logits + self.project(h, c)


def build(cfg: Config, shape: tuple, n_classes: int = 0) -> tuple[nn.Module, nn.Module]:
    return Generator(cfg, shape, n_classes), Discriminator(cfg, shape, n_classes)
