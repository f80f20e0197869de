"""Data sets as in-memory tensors, and the batches a training step draws from them.

Images are kept as uint8 (N, C, H, W) and become floats in [-1, 1] per batch; 2-D mixtures
are float32 (N, 2) points in their own coordinates.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import logging
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np
import torch
import torch.nn.functional as F

from gancli.config import DataConfig, DataName, Split
from gancli.errors import GancliError

if TYPE_CHECKING:
    import PIL.Image

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass
class Data:
    x: torch.Tensor  # uint8 (N, C, H, W) images or float32 (N, 2) points
    labels: Optional[torch.Tensor] = None  # int64 (N,) where the data set has classes
    centres: Optional[torch.Tensor] = None  # float32 (K, 2) mixture centres for points
    classes: Optional[list[str]] = None  # the name of each class, where the data set has classes

    @property
    def is_image(self) -> bool:
        return self.x.dtype == torch.uint8

    @property
    def shape(self) -> tuple:
        return tuple(self.x.shape[1:])


@dataclass
class Batch:
    """What a training step takes from the data: samples and, for a conditional model, labels."""

    x: torch.Tensor  # float (B, C, H, W) images in [-1, 1] or (B, 2) points
    c: Optional[torch.Tensor] = None  # int64 (B,) class labels, or None


def data_shape(cfg: DataConfig) -> tuple:
    """The shape of one sample, known from the config alone (no data is read)."""
    if cfg.name in (DataName.ring, DataName.grid):
        return (2,)
    return (cfg.channels, cfg.image_size, cfg.image_size)


_FASHION = ["T-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]
_CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def class_names(cfg: DataConfig) -> Optional[list[str]]:
    """The names of the data set's classes, known without reading its samples (a folder's
    subfolders are listed); None for a data set without classes."""
    digits = [str(i) for i in range(10)]
    names = {
        DataName.digits: digits,
        DataName.mnist: digits,
        DataName.fashion_mnist: _FASHION,
        DataName.cifar10: _CIFAR10,
        DataName.stacked_mnist: [f"{i:03d}" for i in range(1000)],  # the digits of the R, G and B channels
        DataName.ring: [f"mode {i}" for i in range(8)],
        DataName.grid: [f"mode {i}" for i in range(25)],
    }
    if cfg.name is DataName.folder:
        return _folder_classes(_folder_path(cfg))
    return names.get(cfg.name)


def to_model(x: torch.Tensor) -> torch.Tensor:
    """A batch as the networks see it: images as floats in [-1, 1], points unchanged."""
    if x.dtype == torch.uint8:
        return x.float().div_(127.5).sub_(1.0)
    return x


_CHANNELS = {DataName.digits: 1, DataName.mnist: 1, DataName.fashion_mnist: 1, DataName.cifar10: 3,
             DataName.stacked_mnist: 3}  # fixed by the data set


def check(cfg: DataConfig) -> None:
    """What can be checked without reading the data: channels a data set fixes, a folder that exists."""
    if cfg.name in _CHANNELS and cfg.channels != _CHANNELS[cfg.name]:
        raise GancliError(f"data={cfg.name.value} has {_CHANNELS[cfg.name]} channel(s); remove data.channels={cfg.channels}")
    if cfg.name is DataName.folder:
        _folder_path(cfg)


def check_evaluable(cfg: DataConfig, every: int) -> None:
    """eval.every needs a data set that the metrics can measure against."""
    from gancli.config import LABELLED, MIXTURES

    if every and cfg.name not in LABELLED | MIXTURES:
        raise GancliError(
            f"eval.every needs a labelled data set ({', '.join(sorted(d.value for d in LABELLED))}) or ring/grid, "
            f"not data={cfg.name.value}; set eval.every=0"
        )


def load_data(cfg: DataConfig, seed: int) -> Data:
    """Load (or, for mixtures, draw) the whole data set named by the config."""
    check(cfg)
    loaders = {
        DataName.digits: _digits,
        DataName.mnist: _mnist,
        DataName.fashion_mnist: _mnist,
        DataName.cifar10: _cifar10,
        DataName.folder: _folder,
        DataName.stacked_mnist: lambda c: _stacked_mnist(c, seed),
    }
    if cfg.name is DataName.ring:
        angles = torch.arange(8) * (2 * math.pi / 8)
        return _mixture(torch.stack([angles.cos(), angles.sin()], 1) * cfg.radius, cfg, seed)
    if cfg.name is DataName.grid:
        axis = torch.tensor([-4.0, -2.0, 0.0, 2.0, 4.0])
        return _mixture(torch.cartesian_prod(axis, axis), cfg, seed)
    if cfg.name is DataName.fake:
        gen = torch.Generator().manual_seed(seed)
        shape = (cfg.n, cfg.channels, cfg.image_size, cfg.image_size)
        return Data(x=torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8))
    images, labels = loaders[cfg.name](cfg)
    if images.shape[-1] != cfg.image_size or images.shape[-2] != cfg.image_size:
        images = _resize(images, cfg.image_size)
    return Data(x=images.contiguous(), labels=labels, classes=class_names(cfg) if labels is not None else None)


def _mixture(centres: torch.Tensor, cfg: DataConfig, seed: int) -> Data:
    gen = torch.Generator().manual_seed(seed)
    which = torch.randint(len(centres), (cfg.n,), generator=gen)  # each point's mode is its class
    points = centres[which] + cfg.std * torch.randn(cfg.n, 2, generator=gen)
    return Data(x=points.float(), labels=which, centres=centres.float(), classes=class_names(cfg))


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (N, C, h, w) -> uint8 (N, C, size, size), bilinear, antialiased when shrinking."""
    out = []
    for chunk in images.split(4096):
        x = F.interpolate(chunk.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        out.append(x.round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(out)


def _digits(cfg: DataConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 1,797 8x8 digits, read from the file it ships (digits.csv.gz: 64 pixels in
    0..16, then the label, per line) without importing scikit-learn, which takes over a second."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    package = list(spec.submodule_search_locations or []) if spec is not None else []
    path = Path(package[0], "datasets", "data", "digits.csv.gz") if package else None
    if path is not None and path.is_file():
        table = np.loadtxt(path, delimiter=",", dtype=np.int64)  # (1797, 65)
        pixels, target = table[:, :-1].reshape(-1, 8, 8), table[:, -1]
    else:  # laid out otherwise in some release: ask scikit-learn itself
        from sklearn.datasets import load_digits

        bunch = load_digits()
        pixels, target = bunch.images, bunch.target
    # (1797, 8, 8) in 0..16 -> uint8 (N, 1, 8, 8) in 0..255
    images = torch.from_numpy(pixels.astype(np.float64)).float().mul_(255.0 / 16.0).round_().to(torch.uint8)
    return images[:, None], torch.from_numpy(target.astype(np.int64)).long()


# ---- MNIST and Fashion-MNIST: IDX files, gzipped or not ----

_MNIST_FILES = {Split.train: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"), Split.test: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_MNIST_FOLDERS = {
    DataName.mnist: ("MNIST", "mnist"),
    DataName.stacked_mnist: ("MNIST", "mnist"),
    DataName.fashion_mnist: ("FashionMNIST", "fashion_mnist", "fashion-mnist"),
}


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format), optionally gzipped, as a numpy array."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise GancliError(f"{path} is not an IDX file of unsigned bytes (the MNIST format)")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != math.prod(dims):
        raise GancliError(f"{path} is truncated: expected {math.prod(dims)} values, found {data.size}")
    return data.reshape(dims)


def _find_idx(cfg: DataConfig, stem: str) -> Optional[Path]:
    root = Path(cfg.root).expanduser()
    folders = [root] + [root / name / sub for name in _MNIST_FOLDERS[cfg.name] for sub in ("raw", "")]
    for folder in folders:
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
    return None


def _mnist(cfg: DataConfig) -> tuple[torch.Tensor, torch.Tensor]:
    image_stem, label_stem = _MNIST_FILES[cfg.split]
    if _find_idx(cfg, image_stem) is None:
        _download(cfg)
    image_path, label_path = _find_idx(cfg, image_stem), _find_idx(cfg, label_stem)
    if image_path is None:
        raise GancliError(
            f"data={cfg.name.value}: {image_stem}[.gz] not found under data.root={cfg.root} and it could not be "
            f"downloaded; put {image_stem}.gz and {label_stem}.gz in {Path(cfg.root) / _MNIST_FOLDERS[cfg.name][0] / 'raw'} "
            "or point data.root at the folder that holds them"
        )
    images = torch.from_numpy(read_idx(image_path).copy())[:, None]  # (N, 1, 28, 28)
    labels = torch.from_numpy(read_idx(label_path).astype(np.int64)) if label_path else None
    return images, labels


def _stacked_mnist(cfg: DataConfig, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """data.n images whose R, G and B channels are three MNIST digits drawn independently;
    the label 100 * r + 10 * g + b names one of 1,000 modes."""
    digits, labels = _mnist(cfg)  # (N, 1, 28, 28), (N,)
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(digits), (cfg.n, 3), generator=gen)
    images = digits[idx, 0]  # (n, 3, 28, 28)
    modes = labels[idx[:, 0]] * 100 + labels[idx[:, 1]] * 10 + labels[idx[:, 2]]
    return images, modes


def _download(cfg: DataConfig) -> None:
    """Let torchvision fetch the data set into data.root; offline, this quietly does nothing."""
    from torchvision import datasets

    cls = {DataName.mnist: datasets.MNIST, DataName.stacked_mnist: datasets.MNIST,
           DataName.fashion_mnist: datasets.FashionMNIST, DataName.cifar10: datasets.CIFAR10}[cfg.name]
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            cls(root=str(Path(cfg.root).expanduser()), train=cfg.split is Split.train, download=True)
    except Exception:  # no network or a failed mirror: the caller reports what is missing
        return


def _cifar10(cfg: DataConfig) -> tuple[torch.Tensor, torch.Tensor]:
    from torchvision import datasets

    root = Path(cfg.root).expanduser()
    if not (root / "cifar-10-batches-py").is_dir():
        _download(cfg)
    try:
        ds = datasets.CIFAR10(root=str(root), train=cfg.split is Split.train, download=False)
    except RuntimeError:
        raise GancliError(
            f"data=cifar10: {root / 'cifar-10-batches-py'} not found and it could not be downloaded; "
            "extract cifar-10-python.tar.gz into data.root"
        ) from None
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2)  # (N, 32, 32, 3) -> (N, 3, 32, 32)
    return images, torch.tensor(ds.targets, dtype=torch.long)


def _folder_path(cfg: DataConfig) -> Path:
    if cfg.path is None:
        raise GancliError("data=folder needs data.path=<folder of images>")
    folder = Path(cfg.path).expanduser()
    if not folder.is_dir():
        raise GancliError(f"data.path={cfg.path} is not a folder")
    return folder


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def _folder_classes(folder: Path) -> Optional[list[str]]:
    """The subfolder names, when every image of `folder` lies in one of its subfolders (one per
    class); else None. Hidden files and folders (.DS_Store, .git) are not the user's data."""
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    if any(_is_image(p) for p in entries):
        return None
    names = sorted(d.name for d in entries if d.is_dir() and any(
        _is_image(p) and _visible(p, d) for p in d.rglob("*")))
    return names or None


def _visible(path: Path, root: Path) -> bool:
    """No part of `path` below `root` is hidden (.DS_Store, .git): hidden files are not the user's data."""
    return not any(part.startswith(".") for part in path.relative_to(root).parts)


MIN_SIDE = 8  # pixels: a smaller image (a 1x1 placeholder, an icon) is not training data


class _Unusable(Exception):
    """A file of a folder data set that cannot be used; the message says why, in a few words."""


def _folder(cfg: DataConfig) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Every usable image below data.path, as uint8 (N, C, S, S), and its class subfolder's label
    where each image lies in one. Files that are not usable images are skipped and counted in
    one warning line; a folder with none left is an error."""
    from torchvision.transforms.functional import center_crop, pil_to_tensor, resize

    folder = _folder_path(cfg)
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and _visible(p, folder))
    classes = _folder_classes(folder)
    mode = "L" if cfg.channels == 1 else "RGB"
    images, kept, skipped = [], [], {}
    for path in paths:
        try:
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                raise _Unusable("not an image file")
            img = _read_image(path, mode)
        except _Unusable as exc:
            skipped.setdefault(str(exc), []).append(path)
            continue
        img = center_crop(resize(img, cfg.image_size, antialias=True), [cfg.image_size, cfg.image_size])
        images.append(pil_to_tensor(img))  # uint8 (C, S, S)
        kept.append(path)
    if skipped:
        n_skipped = sum(len(v) for v in skipped.values())
        reasons = "; ".join(f"{len(v)} {why} (e.g. {v[0].relative_to(folder)})" for why, v in skipped.items())
        if not images:
            raise GancliError(f"data.path={cfg.path} holds no usable image: {reasons}")
        log.warning("data.path=%s: skipped %d of %d files: %s", cfg.path, n_skipped, len(paths), reasons)
    if not images:
        raise GancliError(f"data.path={cfg.path} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    if classes is None:
        return torch.stack(images), None
    index = {name: i for i, name in enumerate(classes)}
    labels = torch.tensor([index[p.relative_to(folder).parts[0]] for p in kept])  # the class subfolder
    return torch.stack(images), labels


def _read_image(path: Path, mode: str) -> "PIL.Image.Image":
    """The image at `path` in `mode` ("L" or "RGB"), decoded in full, or _Unusable. 16-bit grey
    keeps its top 8 bits (a plain conversion clips it to near-white); transparent pixels become
    black, whatever colour the file stores under them."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()  # decode now: a truncated file fails here, not half-way through training
            if min(img.size) < MIN_SIDE:
                raise _Unusable(f"smaller than {MIN_SIDE}x{MIN_SIDE} pixels")
            if img.mode.startswith("I;16") or img.mode == "I":  # 16-bit grey (PNG, TIFF)
                grey = np.asarray(img).astype(np.float64) / 257.0  # 0..65535 -> 0..255
                img = Image.fromarray(grey.round().clip(0, 255).astype(np.uint8), "L")
            elif img.mode == "F":
                raise _Unusable("floating-point images (mode F)")
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                rgba = img.convert("RGBA")
                img = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
            return img.convert(mode)
    except _Unusable:
        raise
    except Image.DecompressionBombError:
        raise _Unusable("too large to decode safely") from None
    except Exception:  # noqa: BLE001 (Pillow raises OSError, ValueError, SyntaxError, ... for broken files)
        raise _Unusable("unreadable or truncated") from None


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
                 memory_format: torch.memory_format = torch.contiguous_format):
        n = len(data.x)
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
            self._epoch = epoch
        start = i * self.global_batch + self.offset
        idx = self._perm[start : start + self.batch_size]
        x = to_model(self.x[idx].to(self.device, non_blocking=True))
        if self.memory_format is not torch.contiguous_format and x.dim() == 4:
            x = x.contiguous(memory_format=self.memory_format)
        return Batch(x, None if self.c is None else self.c[idx].to(self.device, non_blocking=True))


class LoaderBatches:
    """The common PyTorch way, kept for comparison: a shuffling DataLoader over float images
    in host memory, each batch copied to the device. The batch index is ignored."""

    def __init__(self, data: Data, batch_size: int, seed: int, device: torch.device, rank: int = 0,
                 world_size: int = 1, labels: bool = False,
                 memory_format: torch.memory_format = torch.contiguous_format):
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
        x = batch[0].to(self.device, non_blocking=True)
        if self.memory_format is not torch.contiguous_format and x.dim() == 4:
            x = x.contiguous(memory_format=self.memory_format)
        return Batch(x, batch[1].to(self.device, non_blocking=True) if len(batch) > 1 else None)
