"""A trained generator: rebuilt from a checkpoint, its samples batch by batch, and `Generator`,
what `gancli.load` returns and `gancli sample` and `gancli export` are built on."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator, Optional, Sequence

import torch

from gancli import checkpoint, runtime
from gancli.config import DeviceConfig, DeviceType, train_config_from_plain
from gancli.errors import GancliError
from gancli.images import quantise
from gancli.models import build_models, latents, traits, truncate_noise
from gancli.runfolder import find_checkpoint


def load_generator(ckpt: str | Path, device: torch.device, use_ema: bool = True) -> tuple[torch.nn.Module, dict, Path]:
    """(G rebuilt from the checkpoint's own config by family name, in eval mode on `device`, with
    the weights of its moving average where it has one and `use_ema`; the checkpoint's
    contents, with "generator" set to "G_ema" or "G"; its path)."""
    path = find_checkpoint(ckpt)
    state = checkpoint.load(path)
    train_cfg = train_config_from_plain(state["config"])
    shape = tuple(state["data_shape"])
    G, _ = build_models(train_cfg.model, shape, len(state.get("classes") or []))
    state["generator"] = "G_ema" if use_ema and "G_ema" in state else "G"
    try:
        G.load_state_dict(state[state["generator"]])
    except RuntimeError:
        raise GancliError(f"{path}: the generator weights do not match the model config stored with them") from None
    state["w_space"] = traits(train_cfg.model).w_space
    return G.to(device).eval(), state, path


def synthesize(G: torch.nn.Module, z: torch.Tensor, c: Optional[torch.Tensor], psi: float = 1.0,
               cutoff: Optional[int] = None, w_space: bool = False) -> torch.Tensor:
    """G's samples of noise z and labels c, truncated by psi < 1: toward w_avg in W (on the layers
    before `cutoff`) where G has a W space, else by truncating its noise."""
    if w_space:
        return G(z, c, psi=psi, cutoff=cutoff) if psi != 1 else G(z, c)
    return G(truncate_noise(z, psi), c)


@torch.no_grad()
def generate_batches(G: torch.nn.Module, n: int, device: torch.device, gen: torch.Generator, batch_size: int,
                     labels: Optional[torch.Tensor] = None, psi: float = 1.0, cutoff: Optional[int] = None,
                     w_space: bool = False) -> Iterator[tuple[int, torch.Tensor]]:
    """(index of the first sample, float32 samples on the CPU) for n samples of G, batch by batch,
    from CPU noise drawn with `gen`: the same samples on every device. A conditional G draws
    its classes at random, or the (n,) `labels` given. psi < 1 truncates (`synthesize`)."""
    for start in range(0, n, batch_size):
        z, c = latents(G, min(batch_size, n - start), device, gen)
        if labels is not None and c is not None:
            c = labels[start : start + len(z)].to(device)
        yield start, synthesize(G, z, c, psi, cutoff, w_space).float().cpu()  # (b, C, H, W) or (b, 2)


def generate(G: torch.nn.Module, n: int, device: torch.device, seed: int,
             batch_size: int = 500) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """n samples from G in eval mode (float32, on the CPU), from noise of their own generator, and
    for a conditional G the (n,) classes asked for: every class in turn, in equal runs."""
    was_training = G.training
    G.eval()
    gen = torch.Generator().manual_seed(seed)
    labels = even_labels(torch.arange(G.n_classes), n)[0] if G.n_classes else None
    fake = torch.cat([x for _, x in generate_batches(G, n, device, gen, batch_size, labels)])
    G.train(was_training)
    return fake, labels


def even_labels(classes: torch.Tensor, n: int) -> tuple[torch.Tensor, int]:
    """n labels, the classes in turn in equal runs: (n,) labels and the run length, which is a grid
    row."""
    per = math.ceil(n / len(classes))
    return classes.repeat_interleave(per)[:n], per


def chosen_classes(asked: Optional[Sequence], names: list[str], ckpt: Path) -> torch.Tensor:
    """The labels (k,) of the classes asked for by index or by name; every class when none are."""
    if asked is None:
        return torch.arange(len(names))
    labels = []
    for item in asked:
        item = str(item)
        if item in names:
            labels.append(names.index(item))
        elif item.isdigit() and int(item) < len(names):
            labels.append(int(item))
        else:
            shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
            raise GancliError(f"class {item} is not one of the {len(names)} classes of {ckpt} (0..{len(names) - 1} "
                              f"or a name: {shown})")
    if not labels:
        raise GancliError("classes=[] asks for no class; name at least one, or leave classes out for all of them")
    return torch.tensor(labels)


class Generator:
    """A trained generator, ready to use:

        G = gancli.load("outputs/<run>")             # a run folder or a checkpoint file
        images = G.sample(16, psi=0.7, seed=1)       # uint8 (16, C, H, W)
        G.net                                         # the torch.nn.Module, in eval mode

    `classes` are the data set's class names of a conditional G ([] otherwise), `shape` a
    sample's (C, H, W) (or (2,) for points), `step` the training step of the weights and
    `which` "G_ema" (G's moving average, used where the checkpoint has one) or "G"."""

    def __init__(self, net: torch.nn.Module, state: dict, path: Path, device: torch.device):
        self.net, self.path, self.device = net, path, device
        self.classes: list[str] = list(state.get("classes") or [])
        self.shape = tuple(state["data_shape"])
        self.step = int(state["step"])
        self.which: str = state["generator"]
        self.w_space: bool = state["w_space"]  # truncation, mixing and interpolation work in W
        self.z_dim, self.n_classes = net.z_dim, net.n_classes

    def __repr__(self) -> str:
        return (f"Generator({self.path}, {self.which} at step {self.step}, samples of {tuple(self.shape)}, "
                f"{self.n_classes} classes, {self.device})")

    def chosen(self, classes: Optional[Sequence] = None) -> Optional[torch.Tensor]:
        """The labels (k,) of the classes asked for (indices or names), every class when none are;
        None for an unconditional G, which refuses classes."""
        if not self.n_classes:
            if classes is not None:
                raise GancliError(f"{self.path} holds an unconditional G, which draws no classes; leave out classes=")
            return None
        return chosen_classes(classes, self.classes, self.path)

    def labels(self, n: int, classes: Optional[Sequence] = None) -> Optional[torch.Tensor]:
        """(n,) labels of the classes asked for, in equal runs; None for an unconditional G."""
        chosen = self.chosen(classes)
        return None if chosen is None else even_labels(chosen, n)[0]

    def batches(self, n: int, seed: int = 0, labels: Optional[torch.Tensor] = None, psi: float = 1.0,
                cutoff: Optional[int] = None, batch_size: int = 256) -> Iterator[tuple[int, torch.Tensor]]:
        """(index of the first sample, float32 samples in [-1, 1] and beyond, on the CPU), batch by batch."""
        check_psi(psi)
        gen = torch.Generator().manual_seed(seed)
        return generate_batches(self.net, n, self.device, gen, batch_size, labels, psi, cutoff, self.w_space)

    def sample(self, n: int, classes: Optional[Sequence] = None, psi: float = 1.0, seed: int = 0,
               cutoff: Optional[int] = None, batch_size: int = 256) -> torch.Tensor:
        """n samples as uint8 images (n, C, H, W), the pixels `gancli sample` writes for the same
        seed (float (n, 2) for 2-D points). `classes`: a conditional G's classes by index or name,
        in equal runs (all of them when None); psi < 1 truncates toward the average sample
        (`cutoff`: in W, the layers it applies to)."""
        labels = self.labels(n, classes)
        parts = [x for _, x in self.batches(n, seed, labels, psi, cutoff, batch_size)]
        out = torch.cat(parts)
        return quantise(out) if len(self.shape) == 3 else out


def check_psi(psi: float) -> None:
    if not 0 <= psi <= 1:
        raise GancliError(f"psi={psi} is not a truncation; give a number in [0, 1] (1: none, 0.7: StyleGAN's usual)")


def device_named(device: str | torch.device) -> torch.device:
    """torch.device for "auto", "cpu", "cuda", "cuda:1", "mps" or a torch.device, checked like device=."""
    if isinstance(device, torch.device):
        return device
    kind, _, index = str(device).partition(":")
    try:
        cfg = DeviceConfig(type=DeviceType(kind), index=int(index) if index else None)
    except ValueError:
        raise GancliError(f"device '{device}' is not one of auto, cpu, cuda, cuda:<n>, mps") from None
    return runtime.resolve_device(cfg)


def load(source: str | Path, device: str | torch.device = "auto", use_ema: bool = True) -> Generator:
    """The generator of a run folder or checkpoint file, rebuilt on `device` (auto: a CUDA GPU,
    else Apple's, else the CPU) from plain data (`weights_only=True`), with G's moving average's
    weights where the checkpoint has them and `use_ema`."""
    dev = device_named(device)
    net, state, path = load_generator(source, dev, use_ema)
    return Generator(net, state, path, dev)
