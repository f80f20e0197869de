"""Data sets as in-memory tensors (datasets.py has each data set and its traits), and the
batches a training step draws from them.

Images are kept as uint8 (N, C, H, W) and become floats in [-1, 1] per batch; 2-D mixtures
are float32 (N, 2) points in their own coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from gancli.config import DataConfig
from gancli.datasets import DATASETS, Data, class_names, folder_path, read_idx  # noqa: F401 (read_idx: the MNIST format)
from gancli.errors import GancliError


@dataclass
class Batch:
    """What a training step takes from the data: samples and, for a conditional model, labels."""

    x: torch.Tensor  # float (B, C, H, W) images in [-1, 1] or (B, 2) points
    c: Optional[torch.Tensor] = None  # int64 (B,) class labels, or None


def data_shape(cfg: DataConfig) -> tuple:
    """The shape of one sample, known from the config alone (no data is read)."""
    if DATASETS[cfg.name.value].points:
        return (2,)
    return (cfg.channels, cfg.image_size, cfg.image_size)


def to_model(x: torch.Tensor) -> torch.Tensor:
    """A batch as the networks see it: images as floats in [-1, 1], points unchanged."""
    if x.dtype == torch.uint8:
        return x.float().div_(127.5).sub_(1.0)
    return x


def check(cfg: DataConfig) -> None:
    """What can be checked without reading the data: channels a data set fixes, a folder that exists."""
    ds = DATASETS[cfg.name.value]
    if ds.channels is not None and cfg.channels != ds.channels:
        raise GancliError(f"data={cfg.name.value} has {ds.channels} channel(s); remove data.channels={cfg.channels}")
    if cfg.name.value == "folder":
        folder_path(cfg)
    if cfg.xflip and ds.points:
        raise GancliError(f"data.xflip mirrors images, and data={cfg.name.value} is 2-D points; remove data.xflip")


def check_evaluable(cfg: DataConfig, every: int) -> None:
    """eval.every needs a data set that the metrics can measure."""
    if every and not DATASETS[cfg.name.value].measured:
        measured = sorted(name for name, ds in DATASETS.items() if ds.measured)
        raise GancliError(f"eval.every needs a labelled data set or a 2-D mixture, which the metrics can measure "
                          f"({', '.join(measured)}), not data={cfg.name.value}; set eval.every=0")


def load_data(cfg: DataConfig, seed: int) -> Data:
    """Load (or, for mixtures, draw) the whole data set named by the config, images resized to
    data.image_size."""
    check(cfg)
    ds = DATASETS[cfg.name.value]
    data = ds.load(cfg, seed)
    if ds.points:
        return data
    images = data.x
    if images.shape[-1] != cfg.image_size or images.shape[-2] != cfg.image_size:
        images = _resize(images, cfg.image_size)
    if data.labels is None:
        classes = None
    else:  # a prepared folder knows its classes; others name them without reading (class_names)
        classes = data.classes if data.classes is not None else class_names(cfg)
    return Data(x=images.contiguous(), labels=data.labels, classes=classes, skipped=data.skipped)


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (N, C, h, w) -> uint8 (N, C, size, size), bilinear, antialiased when shrinking."""
    out = []
    for chunk in images.split(4096):
        x = F.interpolate(chunk.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        out.append(x.round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(out)


def _check_batch(batch_size: int, world_size: int, n: int) -> None:
    """One step's batch, over every process, must fit in the data set."""
    if batch_size * world_size > n:
        per_step = f" x {world_size} processes = {batch_size * world_size}" if world_size > 1 else ""
        raise GancliError(f"train.batch_size={batch_size}{per_step} is larger than the data set ({n} samples)")


def _labels(data: Data, labels: bool) -> Optional[torch.Tensor]:
    if labels and data.labels is None:
        raise GancliError("this data set has no class labels, so a conditional model cannot train on it; "
                          "set model.conditional=false")
    return data.labels if labels else None


class Batches:
    """Batch k of a shuffled pass over the data, a fresh permutation per epoch.

    A batch depends only on (seed, k), so a resumed run draws exactly the batches the
    uninterrupted run would have drawn. The data is kept on the device when it fits.
    In a data-parallel run, step k's global batch is world_size * batch_size samples of the
    same permutation, and each rank takes its own slice: the ranks never share a sample within
    an epoch, and one rank of one is the single-process order. `labels` adds each sample's
    class; `memory_format` is the layout D wants its images in.
    """

    def __init__(self, data: Data, batch_size: int, seed: int, device: torch.device, max_device_bytes: int = 2**31,
                 rank: int = 0, world_size: int = 1, labels: bool = False,
                 memory_format: torch.memory_format = torch.contiguous_format, xflip: bool = False):
        n = len(data.x)
        self.xflip = xflip
        _check_batch(batch_size, world_size, n)
        on_device = data.x.numel() * data.x.element_size() <= max_device_bytes
        self.x = data.x.to(device) if on_device else data.x
        c = _labels(data, labels)
        self.c = None if c is None else c.to(self.x.device)
        self.device, self.memory_format = device, memory_format
        self.batch_size = batch_size
        self.global_batch = batch_size * world_size
        self.offset = rank * batch_size  # this rank's slice of each global batch
        self.per_epoch = n // self.global_batch  # the last partial batch of an epoch is dropped
        self.seed = seed
        self._epoch, self._perm = -1, None

    def __call__(self, k: int) -> Batch:
        epoch, i = divmod(k, self.per_epoch)
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = torch.randperm(len(self.x), generator=gen).to(self.x.device)
            # which places of the epoch's order are mirrored: drawn after the order, which stays as it was
            self._flip = torch.rand(len(self.x), generator=gen).lt(0.5).to(self.device) if self.xflip else None
            self._epoch = epoch
        start = i * self.global_batch + self.offset
        idx = self._perm[start : start + self.batch_size]
        x = to_model(self.x[idx].to(self.device, non_blocking=True))
        if self._flip is not None:  # per sample, on the device
            x = torch.where(self._flip[start : start + self.batch_size].view(-1, 1, 1, 1), x.flip(-1), x)
        if self.memory_format is not torch.contiguous_format and x.dim() == 4:
            x = x.contiguous(memory_format=self.memory_format)
        return Batch(x, None if self.c is None else self.c[idx].to(self.device, non_blocking=True))


class LoaderBatches:
    """The common PyTorch way, kept for comparison: a shuffling DataLoader over float images
    in host memory, each batch copied to the device. The batch index is ignored."""

    def __init__(self, data: Data, batch_size: int, seed: int, device: torch.device, rank: int = 0,
                 world_size: int = 1, labels: bool = False,
                 memory_format: torch.memory_format = torch.contiguous_format, xflip: bool = False):
        from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

        _check_batch(batch_size, world_size, len(data.x))
        c = _labels(data, labels)
        # floats in host memory, as the usual loop has them
        dataset = TensorDataset(to_model(data.x), *([] if c is None else [c]))
        # data-parallel, the usual way: a DistributedSampler gives each rank its shard per epoch
        self.sampler = DistributedSampler(dataset, world_size, rank, shuffle=True, seed=seed, drop_last=True) \
            if world_size > 1 else None
        self.loader = DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=self.sampler is None,
            sampler=self.sampler,
            drop_last=True,
            generator=torch.Generator().manual_seed(seed),
            pin_memory=device.type == "cuda",
        )
        self.device, self.memory_format = device, memory_format
        self._flips = torch.Generator().manual_seed(seed + 1) if xflip else None
        self._epoch = 0
        self._it = iter(self.loader)

    def __call__(self, k: int) -> Batch:
        try:
            batch = next(self._it)
        except StopIteration:
            self._epoch += 1
            if self.sampler is not None:
                self.sampler.set_epoch(self._epoch)
            self._it = iter(self.loader)
            batch = next(self._it)
        x = batch[0]
        if self._flips is not None:
            x = torch.where(torch.rand(len(x), generator=self._flips).lt(0.5).view(-1, 1, 1, 1), x.flip(-1), x)
        x = x.to(self.device, non_blocking=True)
        if self.memory_format is not torch.contiguous_format and x.dim() == 4:
            x = x.contiguous(memory_format=self.memory_format)
        return Batch(x, batch[1].to(self.device, non_blocking=True) if len(batch) > 1 else None)
