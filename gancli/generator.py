"""A trained generator: rebuilt from a checkpoint, and its samples, batch by batch."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator, Optional

import torch

from gancli import checkpoint
from gancli.config import train_config_from_plain
from gancli.errors import GancliError
from gancli.models import build_models, latents
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
    return G.to(device).eval(), state, path


@torch.no_grad()
def generate_batches(G: torch.nn.Module, n: int, device: torch.device, gen: torch.Generator, batch_size: int,
                     labels: Optional[torch.Tensor] = None) -> Iterator[tuple[int, torch.Tensor]]:
    """(index of the first sample, float32 samples on the CPU) for n samples of G, batch by batch,
    from CPU noise drawn with `gen`: the same samples on every device. A conditional G draws
    its classes at random, or the (n,) `labels` given."""
    for start in range(0, n, batch_size):
        z, c = latents(G, min(batch_size, n - start), device, gen)
        if labels is not None and c is not None:
            c = labels[start : start + len(z)].to(device)
        yield start, G(z, c).float().cpu()  # (b, C, H, W) or (b, 2)


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
