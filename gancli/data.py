"""Data sets as in-memory tensors (datasets.py has each data set and its traits), and the
batches a training step draws from them.

Images are kept as uint8 (N, C, H, W) and become floats in [-1, 1] per batch; 2-D mixtures
are float32 (N, 2) points in their own coordinates.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Optional

import numpy as np

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


def unlabelled_images(cfg: DataConfig) -> bool:
    """Images without classes (a folder of photos): the metrics measure them by Inception FID/KID,
    which needs its weights; labelled images have a reference classifier, mixtures their centres."""
    return not DATASETS[cfg.name.value].points and class_names(cfg) is None


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
    file = data.file if images is data.x else None  # resized: the prepared file no longer holds these pixels
    return Data(x=images.contiguous(), labels=data.labels, classes=classes, skipped=data.skipped, file=file)


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


class Order:
    """Which samples batch k holds, and which of them are mirrored: a fresh permutation of the
    data each epoch, drawn from (seed, epoch) alone.

    The batch index is the reader's whole position: step s's D updates take batches
    s * d_steps onward, so a checkpoint's step is where a resumed run reads on, and it draws
    exactly the batches the uninterrupted run would have drawn. In a data-parallel run, batch
    k is world_size * batch_size samples of the same permutation and each rank takes its own
    slice: the ranks never share a sample within an epoch, and one rank of one is the
    single-process order.
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1, xflip: bool = False,
                 device: torch.device = torch.device("cpu")):
        _check_batch(batch_size, world_size, n)
        self.n, self.batch_size, self.seed, self.xflip, self.device = n, batch_size, seed, xflip, device
        self.global_batch = batch_size * world_size
        self.offset = rank * batch_size  # this rank's slice of each global batch
        self.per_epoch = n // self.global_batch  # the last partial batch of an epoch is dropped
        self._epochs: dict[int, tuple[torch.Tensor, Optional[torch.Tensor]]] = {}  # the last two drawn

    def __call__(self, k: int) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """int64 (B,) sample indices of batch k on this rank, and bool (B,) which to mirror (or None)."""
        epoch, i = divmod(k, self.per_epoch)
        if epoch not in self._epochs:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            perm = torch.randperm(self.n, generator=gen).to(self.device)
            # which places of the epoch's order are mirrored: drawn after the order, which stays as it was
            flips = torch.rand(self.n, generator=gen).lt(0.5).to(self.device) if self.xflip else None
            if len(self._epochs) == 2:  # a reader ahead of the step may be an epoch further on
                del self._epochs[min(self._epochs)]
            self._epochs[epoch] = (perm, flips)
        perm, flips = self._epochs[epoch]
        start = i * self.global_batch + self.offset
        flip = None if flips is None else flips[start : start + self.batch_size]
        return perm[start : start + self.batch_size], flip


def _mirrored(x: torch.Tensor, flip: Optional[torch.Tensor]) -> torch.Tensor:
    """Images (B, C, H, W) with those that `flip` (B,) marks mirrored left-right."""
    return x if flip is None else torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


def _laid_out(x: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
    if memory_format is not torch.contiguous_format and x.dim() == 4:
        return x.contiguous(memory_format=memory_format)
    return x


def on_device(cfg: DataConfig, data: Data) -> tuple[bool, str]:
    """Whether training keeps the whole data set on the device (True) or streams its batches
    from host memory or a prepared set's file (False), and why, in words for the log."""
    size_gb = data.x.numel() * data.x.element_size() / 1e9
    if cfg.on_device != "auto":
        return cfg.on_device == "true", f"data.on_device={cfg.on_device}"
    fits = size_gb <= cfg.on_device_gb
    return fits, (f"data.on_device=auto: {size_gb:.2f} GB {'within' if fits else 'over'} "
                  f"data.on_device_gb={cfg.on_device_gb:g}")


def read_samples(data: Data, idx: torch.Tensor, out: Optional[torch.Tensor] = None,
                 file: Optional[BinaryIO] = None) -> torch.Tensor:
    """Samples `idx` (int64 (B,)) of `data`, into `out` if given: read from a prepared set's file
    where it has one (`file`, that file opened unbuffered; else it is opened here), so that the
    kernel's page cache keeps what was read, not this process; else taken from memory."""
    out = torch.empty((len(idx), *data.shape), dtype=data.x.dtype) if out is None else out
    if data.file is None:
        return torch.index_select(data.x, 0, idx, out=out)
    try:
        with open_pixels(data.file) if file is None else contextlib.nullcontext(file) as f:
            rows = out.view(len(idx), -1).numpy()
            row_bytes, where = rows.shape[1], idx.tolist()
            for i in np.argsort(where, kind="stable").tolist():  # in file order, each straight into its place
                f.seek(where[i] * row_bytes)
                if f.readinto(rows[i]) != row_bytes:
                    raise GancliError(f"{data.file} is shorter than its manifest says (changed since it was "
                                      f"prepared?); delete {data.file.parent} and run again")
    except OSError as exc:
        raise GancliError(f"cannot read {data.file}: {exc.strerror or exc}") from None
    return out


def open_pixels(path: Path) -> BinaryIO:
    """A prepared set's pixel file, opened for plain reads (unbuffered: each read goes straight
    into its buffer), or one line on why it cannot be."""
    try:
        return open(path, "rb", buffering=0)
    except OSError as exc:
        raise GancliError(f"cannot read {path}: {exc.strerror}") from None


class Batches:
    """Batch k (see Order) from a copy of the whole data set on the device: an index into it,
    no copy from the host. `labels` adds each sample's class; `memory_format` is the layout D
    wants its images in; `xflip` mirrors the samples Order marks, on the device."""

    def __init__(self, data: Data, batch_size: int, seed: int, device: torch.device, rank: int = 0,
                 world_size: int = 1, labels: bool = False,
                 memory_format: torch.memory_format = torch.contiguous_format, xflip: bool = False):
        self.order = Order(len(data.x), batch_size, seed, rank, world_size, xflip, device)
        self.x = data.x.to(device)
        c = _labels(data, labels)
        self.c = None if c is None else c.to(device)
        self.memory_format = memory_format
        self.where = f"kept on {device.type}"

    def __call__(self, k: int) -> Batch:
        idx, flip = self.order(k)
        x = _mirrored(to_model(self.x[idx]), flip)
        return Batch(_laid_out(x, self.memory_format), None if self.c is None else self.c[idx])

    def close(self) -> None:
        pass


class StreamBatches:
    """The batches of Batches, equal to them, for data that stays off the device: gathered from
    host memory, or from a prepared set's file by plain reads (the kernel's page cache keeps what
    was read, not this process: host memory stays bounded whatever the number of images).

    For a GPU, a background thread reads `ahead` batches ahead of the step into `ahead` + 1
    buffers, pinned for CUDA, and the step copies each to the device without blocking. On the
    CPU the step's own thread reads each batch as it needs it, while the kernel reads the
    file `ahead` batches ahead (posix_fadvise): the step's threads already use every core, and
    a reader thread waking among them slowed DCGAN's steps by a third (docs/data.md). Batch k
    depends on k alone (Order), so a step that asks for another batch than the next (a resume,
    a rollback) restarts the reader there."""

    def __init__(self, data: Data, batch_size: int, seed: int, device: torch.device, rank: int = 0,
                 world_size: int = 1, labels: bool = False,
                 memory_format: torch.memory_format = torch.contiguous_format, xflip: bool = False, ahead: int = 2,
                 threaded: Optional[bool] = None):
        self.order = Order(len(data.x), batch_size, seed, rank, world_size, xflip)
        self.data, self.file, self.c = data, data.file, _labels(data, labels)
        self.device, self.memory_format, self.ahead = device, memory_format, ahead
        self.threaded = device.type != "cpu" if threaded is None else threaded  # None: a thread off the CPU
        pin = device.type == "cuda"
        self._buffers = [torch.empty((batch_size, *data.shape), dtype=data.x.dtype, pin_memory=pin)
                         for _ in range(ahead + 1 if self.threaded else 1)]
        self._copied: list[Optional[torch.cuda.Event]] = [None] * len(self._buffers)  # a slot's last copy out
        self._free: queue.Queue = queue.Queue()
        self._ready: queue.Queue = queue.Queue()
        for slot in range(len(self._buffers)):
            self._free.put(slot)
        self._want = (0, 0)  # (restart count, first batch): where the reader reads from
        self._next = 0  # the batch the step is expected to ask for next
        self._thread: Optional[threading.Thread] = None
        self._file: Optional[BinaryIO] = None  # the step's own handle (on the CPU)
        self._advised = 0  # on the CPU: batches below this one have been read ahead by the kernel
        source = self.file or "host memory"
        self.where = (f"streamed from {source} by a background reader, {ahead} batches ahead" if self.threaded else
                      f"streamed from {source}, each batch read by the step as the kernel reads {ahead} ahead")

    def __call__(self, k: int) -> Batch:
        if not self.threaded:
            return self._read_now(k)
        if self._thread is None:
            self._want, self._next = (0, k), k
            self._thread = threading.Thread(target=self._read, name="gancli-data-reader", daemon=True)
            self._thread.start()
        elif k != self._next:  # a resume or rollback: the reader starts over at k
            self._want, self._next = (self._want[0] + 1, k), k
        while True:
            restart, got, slot, item = self._ready.get()
            if isinstance(item, BaseException):
                raise item
            if restart == self._want[0] and got == k:
                break
            self._free.put(slot)  # read before the restart: not wanted
        self._next = k + 1
        idx, flip = item
        cuda = self.device.type == "cuda"  # from pinned memory, the copy need not block
        buffer = self._buffers[slot]
        x = buffer.to(self.device, non_blocking=cuda)
        c = None if self.c is None else self.c[idx].to(self.device, non_blocking=cuda)
        flip = None if flip is None else flip.to(self.device, non_blocking=cuda)
        event = torch.cuda.Event() if cuda else None
        if event is not None:
            event.record()
        self._copied[slot] = event
        batch = self._as_model(x, buffer, flip, c)  # before the buffer is handed back: on the CPU, x is it
        self._free.put(slot)
        return batch

    def _as_model(self, x: torch.Tensor, buffer: torch.Tensor, flip: Optional[torch.Tensor],
                  c: Optional[torch.Tensor]) -> Batch:
        """A batch read into `buffer` (x: it, or its copy on the device) as the step takes it:
        floats in [-1, 1] that do not share the buffer, which is read into again; mirrored where
        Order says; in D's layout."""
        x = to_model(x)
        x = x.clone() if x.data_ptr() == buffer.data_ptr() else x  # points are floats already
        return Batch(_laid_out(_mirrored(x, flip), self.memory_format), c)

    def _read_now(self, k: int) -> Batch:
        """Batch k read in this thread; the kernel is asked to read the next ones' rows meanwhile."""
        if self.file is not None and self._file is None:
            self._file = open_pixels(self.file)
        if self._file is not None and hasattr(os, "posix_fadvise"):
            row_bytes = self._buffers[0][0].numel() * self._buffers[0].element_size()
            for j in range(max(self._advised, k + 1), k + self.ahead + 1):
                for i in self.order(j)[0].tolist():
                    os.posix_fadvise(self._file.fileno(), i * row_bytes, row_bytes, os.POSIX_FADV_WILLNEED)
            self._advised = k + self.ahead + 1
        idx, flip = self.order(k)
        buffer = read_samples(self.data, idx, self._buffers[0], self._file)
        return self._as_model(buffer, buffer, flip, None if self.c is None else self.c[idx])

    def _read(self) -> None:
        """The reader thread: fill a free buffer with the next batch, hand it over, repeat."""
        try:
            reader = open_pixels(self.file) if self.file is not None else None
        except GancliError as exc:
            self._ready.put((-1, -1, -1, exc))
            return
        with reader if reader is not None else contextlib.nullcontext():
            restart, k = -1, 0
            while True:
                slot = self._free.get()
                if slot is None:
                    return
                if self._want[0] != restart:
                    restart, k = self._want
                event = self._copied[slot]
                if event is not None:  # the step's copy out of this buffer has finished
                    event.synchronize()
                try:
                    item = self._gather(k, self._buffers[slot], reader)
                except GancliError as exc:  # the step that asked for this batch raises it
                    item = exc
                self._ready.put((restart, k, slot, item))
                k += 1

    def _gather(self, k: int, out: torch.Tensor, reader: Any) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Batch k's samples into `out`, as they are; the step mirrors and converts them. Reads
        and nothing else: the thread then holds Python's lock only between system calls, and
        no torch op of its own competes with the step's threads."""
        idx, flip = self.order(k)
        read_samples(self.data, idx, out, reader)
        return idx, flip

    def close(self) -> None:
        """Stop the reader thread and close the file."""
        if self._thread is not None:
            self._free.put(None)
            self._thread.join()
            self._thread = None
        if self._file is not None:
            self._file.close()
            self._file = None


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
        self.where = "through a torch DataLoader over host memory"
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

    def close(self) -> None:
        pass
