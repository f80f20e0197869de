"""What every model family shares: the config fields, the traits a family states about itself,
and the check that a data shape is one the family builds for."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Optional

import torch
from torch import Tensor, nn

from gancli.errors import GancliError, at_least


class SpectralNorm(Enum):
    none = "none"
    d = "d"
    g = "g"
    both = "both"


@dataclass
class ModelConfig:
    """The keys of every family; each family's Config adds its own."""

    name: str = "?"
    z_dim: int = 100  # the noise G maps to a sample
    # torch's spectral-norm parametrisation on every conv and linear layer of D, G or both
    spectral_norm: SpectralNorm = SpectralNorm.none
    pack: int = 1  # PacGAN: D scores this many samples at once (1: one at a time)
    conditional: bool = False  # G(z, c) and D(x, c) learn the data's classes (labelled data only)

    def __post_init__(self) -> None:
        at_least(self, "model", 1, "z_dim", "pack")
        if self.conditional and self.pack > 1:
            raise GancliError(f"model.pack={self.pack} cannot be combined with model.conditional=true: a pack mixes "
                              "classes; set model.pack=1 or model.conditional=false")


@dataclass(frozen=True)
class Traits:
    """What a family says about itself, so that no other code decides it from the name."""

    convolutional: bool  # D convolves images, so NHWC (channels_last) activations can pay off
    sizes: Optional[tuple[int, ...]] = None  # the square image sides it builds for; None: any size
    points: bool = False  # it also builds for 2-D points (data=ring, data=grid)
    # G maps z to a w per layer (G.mapping, G.synthesis, G.w_avg): truncation toward w_avg, style
    # mixing and the path-length penalty work in W; the other families truncate their noise
    w_space: bool = False
    # model.spectral_norm applies (it would undo layers with equalised learning rates)
    spectral_norm: bool = True


def check_shape(name: str, traits: Traits, shape: tuple) -> None:
    """Refuse, in one line, a data shape (C, H, W) or (2,) that the family does not build for."""
    points = len(shape) == 1
    square = len(shape) == 3 and shape[1] == shape[2]
    if traits.sizes is not None and not (square and shape[1] in traits.sizes):
        hint = " (for 2-D points use model=mlp)" if points else ""
        raise GancliError(
            f"model={name} needs square images of side {', '.join(map(str, traits.sizes))}, "
            f"not {'x'.join(map(str, shape))}; set data.image_size{hint}"
        )
    if points and not traits.points:
        raise GancliError(f"model={name} needs image data; for 2-D points (data=ring, data=grid) use model=mlp")


class Packed(nn.Module):
    """PacGAN's D (Lin et al. 2018): it scores m samples at once, so that a G whose samples lack
    variety is easy to catch. Consecutive samples form a pack, concatenated along channels for
    images ((B, C, H, W) -> (B/m, m C, H, W)) and along features for points ((B, F) -> (B/m, m F));
    `net` is the family's D built for the packed shape. Output: (B/m,) logits, one per pack."""

    def __init__(self, net: nn.Module, m: int):
        super().__init__()
        self.net, self.m = net, m

    def forward(self, x: Tensor, c: Optional[Tensor] = None) -> Tensor:
        packed = x.reshape(len(x) // self.m, self.m * x.shape[1], *x.shape[2:])
        return self.net(packed, c)


def check_pack(pack: int, batch_size: int, key: str = "train.batch_size") -> None:
    """Refuse, in one line, a batch that packs of `pack` samples do not divide."""
    if batch_size % pack:
        raise GancliError(f"model.pack={pack} must divide {key}={batch_size}: D scores whole packs; "
                          f"set {key} to a multiple of {pack}")


# ---- class conditioning: G reads c through a class embedding or conditional batch norm, D through a projection ----

class Projection(nn.Module):
    """The projection discriminator's class term (Miyato & Koyama 2018): <embed(c), h>, the inner
    product of a learned vector per class with D's last features h (B, F) -> (B,), added to the
    logit."""

    def __init__(self, n_classes: int, features: int):
        super().__init__()
        self.embed = nn.Embedding(n_classes, features)
        nn.init.normal_(self.embed.weight, 0.0, features ** -0.5)

    def forward(self, h: Tensor, c: Tensor) -> Tensor:
        return (self.embed(c) * h).sum(1)


class ConditionalBatchNorm(nn.Module):
    """Batch norm whose scale and shift depend on the class (de Vries et al. 2017; as in SNGAN's
    and BigGAN's conditional G): (B, C, H, W) and (B,) labels -> (B, C, H, W). Scale 1 + W_g e(c)
    and shift W_b e(c) come from a learned class embedding e(c) through linear maps that start at
    zero, so every class starts as plain batch norm. Per-class scales learned directly would each
    move by at most about the learning rate per Adam step, too slowly for a short run; through an
    embedding the step is shared over its dimensions."""

    takes_class = True  # ClassSequential hands it the labels
    EMBED_DIM = 64

    def __init__(self, channels: int, n_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, affine=False)
        self.embed = nn.Embedding(n_classes, self.EMBED_DIM)  # N(0, 1)
        self.gain = nn.Linear(self.EMBED_DIM, channels, bias=False)
        self.shift = nn.Linear(self.EMBED_DIM, channels, bias=False)
        nn.init.zeros_(self.gain.weight)
        nn.init.zeros_(self.shift.weight)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        e = self.embed(c)  # (B, EMBED_DIM)
        return self.bn(x) * (1 + self.gain(e))[:, :, None, None] + self.shift(e)[:, :, None, None]


def batch_norm(channels: int, n_classes: int = 0) -> nn.Module:
    """Batch norm over (B, C, H, W), conditional on the class when there are classes."""
    return ConditionalBatchNorm(channels, n_classes) if n_classes else nn.BatchNorm2d(channels)


class ClassSequential(nn.Sequential):
    """nn.Sequential that also hands the class labels to the layers that take them."""

    def forward(self, x: Tensor, c: Optional[Tensor] = None) -> Tensor:
        for layer in self:
            x = layer(x, c) if getattr(layer, "takes_class", False) else layer(x)
        return x


# ---- convolutions that are matrix products: the same weights, computed as what they are ----

def _channels_last(t: Tensor) -> bool:
    return t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last)


class ConvTransposeFromPoint(nn.ConvTranspose2d):
    """nn.ConvTranspose2d that, on a 1x1 input without padding, runs as the matrix product it is:
    (B, C_in, 1, 1) -> (B, C_in) @ (C_in, C_out * k * k) -> (B, C_out, k, k). Its weight,
    checkpoints and gradients are nn.ConvTranspose2d's; oneDNN's transposed convolution of this
    shape runs at a sixth to a tenth of a matrix product's rate on the CPU (docs/benchmarks.md). Any
    other input goes to nn.ConvTranspose2d."""

    def forward(self, x: Tensor, output_size: Optional[list[int]] = None) -> Tensor:
        if (x.dim() != 4 or x.shape[-2:] != (1, 1) or output_size is not None or self.groups != 1
                or any(self.padding) or any(self.output_padding) or self.dilation != (1, 1)):
            return super().forward(x, output_size)
        w = self.weight  # (C_in, C_out, kh, kw)
        kh, kw = self.kernel_size
        if _channels_last(w):  # its memory is (C_in, kh, kw, C_out): a channels-last output without a copy
            y = (x.flatten(1) @ w.permute(0, 2, 3, 1).flatten(1)).view(x.shape[0], kh, kw, -1).permute(0, 3, 1, 2)
        else:
            y = (x.flatten(1) @ w.flatten(1)).view(x.shape[0], -1, kh, kw)
        return y if self.bias is None else y + self.bias[:, None, None].to(y.dtype)


class ConvToPoint(nn.Conv2d):
    """nn.Conv2d that, when its kernel covers its unpadded input, runs as the matrix product it
    is: (B, C_in, k, k) -> (B, C_in * k * k) @ (C_in * k * k, C_out) -> (B, C_out, 1, 1). Its
    weight, checkpoints and gradients are nn.Conv2d's; oneDNN's convolution of this shape runs
    far below a matrix product's rate on the CPU (docs/benchmarks.md). Any other input goes to
    nn.Conv2d."""

    def forward(self, x: Tensor) -> Tensor:
        if (x.dim() != 4 or x.shape[-2:] != self.kernel_size or self.groups != 1 or self.padding != (0, 0)
                or self.dilation != (1, 1) or self.padding_mode != "zeros"):
            return super().forward(x)
        w = self.weight  # (C_out, C_in, kh, kw)
        if _channels_last(x):  # flatten both in (kh, kw, C_in) order: a view of x, no copy
            y = x.permute(0, 2, 3, 1).flatten(1) @ w.permute(0, 2, 3, 1).flatten(1).T
        else:
            y = x.flatten(1) @ w.flatten(1).T
        y = y if self.bias is None else y + self.bias.to(y.dtype)
        return y[:, :, None, None]  # (B, C_out, 1, 1)
