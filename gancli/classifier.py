"""A small reference classifier for labelled image data: trained once on the real data,
cached on disk under a hash of that data, and used for features and class predictions."""

from __future__ import annotations

import hashlib
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from gancli.data import Data, to_model
from gancli.files import atomic

log = logging.getLogger(__name__)

VERSION = 1
FEATURES = 128
HELD_OUT = 0.2  # share of the real data kept out of training, for accuracy and the FD floor


class Classifier(nn.Module):
    def __init__(self, channels: int, size: int, n_classes: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, 32, S/2, S/2)
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, 64, S/4, S/4)
            nn.Flatten(),
            nn.Linear(64 * (size // 4) ** 2, FEATURES), nn.ReLU(),  # the features FD is computed on
        )
        self.head = nn.Linear(FEATURES, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@dataclass
class Reference:
    model: Classifier
    accuracy: float  # on the held-out split
    train_idx: torch.Tensor
    held_idx: torch.Tensor
    data_hash: str
    weights_hash: str
    n_classes: int

    @torch.no_grad()
    def embed(self, images: torch.Tensor, device: torch.device,
              batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
        """float images in [-1, 1] (N, C, H, W) -> (features (N, 128), predicted classes (N,)), on the CPU."""
        feats, preds = [], []
        for chunk in images.split(batch_size):
            f = self.model.body(chunk.to(device).float())
            feats.append(f.cpu())
            preds.append(self.model.head(f).argmax(1).cpu())
        return torch.cat(feats), torch.cat(preds)


def data_hash(data: Data) -> str:
    digest = hashlib.sha256(data.x.contiguous().numpy().tobytes())
    digest.update(data.labels.contiguous().numpy().tobytes())
    return digest.hexdigest()


def cache_folder(cache_dir: Optional[str]) -> Path:
    """Where reference classifiers are kept: `cache_dir`, else $GANCLI_CACHE, else ~/.cache/gancli."""
    return Path(cache_dir or os.environ.get("GANCLI_CACHE") or "~/.cache/gancli").expanduser()


def reference_classifier(data: Data, cache_dir: Optional[str], device: torch.device) -> Reference:
    """The cached classifier for this data (kept in `cache_folder(cache_dir)`), training it
    (seeded) if there is none yet."""
    key = data_hash(data)
    n_classes = int(data.labels.max()) + 1
    perm = torch.randperm(len(data.x), generator=torch.Generator().manual_seed(0))
    n_held = max(1, int(len(perm) * HELD_OUT))
    held_idx, train_idx = perm[:n_held], perm[n_held:]
    channels, size = data.shape[0], data.shape[1]
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):  # leave training's RNG alone
        torch.manual_seed(0)
        model = Classifier(channels, size, n_classes)
        state = _load_or_fit(model, data, key, train_idx, held_idx, cache_folder(cache_dir), device)
    model.to(device).eval()
    weights = hashlib.sha256(b"".join(t.cpu().numpy().tobytes() for t in state["model"].values())).hexdigest()
    return Reference(model, float(state["accuracy"]), train_idx, held_idx, key, weights, n_classes)


def _load_or_fit(model: Classifier, data: Data, key: str, train_idx: torch.Tensor, held_idx: torch.Tensor,
                 cache_dir: Path, device: torch.device) -> dict:
    path = cache_dir / f"classifier-v{VERSION}-{key[:16]}.pt"
    state = None
    if path.is_file():
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(state["model"])
        except Exception:  # a corrupt or stale cache entry is rebuilt, not trusted
            log.info("reference classifier cache %s is unreadable; training it again", path)
            state = None
    if state is None:
        log.info("training the reference classifier on %d real images (once; cached in %s)", len(train_idx),
                 path.parent)
        _fit(model, data, train_idx, device)
        accuracy = _accuracy(model, data, held_idx, device)
        state = {"model": model.state_dict(), "accuracy": accuracy, "data_hash": key, "version": VERSION}
        with atomic(path) as tmp:
            torch.save(state, tmp)
    return state


def _fit(model: Classifier, data: Data, train_idx: torch.Tensor, device: torch.device) -> None:
    gen = torch.Generator().manual_seed(0)
    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batch = 128
    steps = min(3000, max(400, 3 * math.ceil(len(train_idx) / batch)))  # >= 3 epochs, bounded
    for _ in range(steps):
        idx = train_idx[torch.randint(len(train_idx), (batch,), generator=gen)]
        loss = F.cross_entropy(model(to_model(data.x[idx]).to(device)), data.labels[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()


@torch.no_grad()
def _accuracy(model: Classifier, data: Data, idx: torch.Tensor, device: torch.device) -> float:
    correct = 0
    for chunk in idx.split(1000):
        logits = model(to_model(data.x[chunk]).to(device))
        correct += int((logits.argmax(1).cpu() == data.labels[chunk]).sum())
    return correct / len(idx)
