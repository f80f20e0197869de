"""The data sets, one table: each states its traits (how it loads, its channels, whether it is
2-D points, its classes, whether the metrics can measure it, what downloads it) the way a model
family does, so that no other code decides them from its name. A new data set is one entry
here and one YAML file in configs/data/.

Images load as uint8 (N, C, H, W) and 2-D mixtures as float32 (N, 2) points in their own
coordinates. This module reads the data config's fields but does not import the config module,
whose `DataName` is built from this table.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import logging
import math
import os
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch

from gancli.decode import IMAGE_SUFFIXES
from gancli.errors import GancliError

log = logging.getLogger(__name__)



@dataclass
class Data:
    x: torch.Tensor  # uint8 (N, C, H, W) images or float32 (N, 2) points
    labels: Optional[torch.Tensor] = None  # int64 (N,) where the data set has classes
    centres: Optional[torch.Tensor] = None  # float32 (K, 2) mixture centres for points
    classes: Optional[list[str]] = None  # the name of each class, where the data set has classes
    skipped: int = 0  # files of the source that are not usable images (a folder's text files, broken files)
    file: Optional[Path] = None  # a prepared set's pixel file, which holds x row by row (streaming reads it)

    @property
    def is_image(self) -> bool:
        return self.x.dtype == torch.uint8

    @property
    def shape(self) -> tuple:
        return tuple(self.x.shape[1:])


Classes = Union[Sequence[str], Callable[[Any], Optional[list[str]]], None]


@dataclass(frozen=True)
class DataSet:
    """What a data set says about itself."""

    load: Callable[[Any, int], Data]  # (data config, seed) -> the whole data set, before resizing
    channels: Optional[int] = None  # fixed by the data set; None: data.channels chooses
    points: bool = False  # 2-D points (data.n of them), not images
    classes: Classes = None  # the name of each class, or a function of the config that finds them; None: none
    download: Optional[str] = None  # the torchvision data set that fetches it into data.root


def class_names(cfg: Any) -> Optional[list[str]]:
    """The names of the data set's classes, known without reading its samples (a folder's
    subfolders are listed); None for a data set without classes."""
    classes = DATASETS[cfg.name.value].classes
    return classes(cfg) if callable(classes) else (list(classes) if classes is not None else None)


# ---- the loaders ----


def _mixture(centres: torch.Tensor, radius: bool = False) -> Callable[[Any, int], Data]:
    """data.n points around `centres` (K, 2), scaled by data.radius if `radius`, with spread
    data.std; each point's mode is its class."""

    def load(cfg: Any, seed: int) -> Data:
        gen = torch.Generator().manual_seed(seed)
        scaled = centres * cfg.radius if radius else centres
        which = torch.randint(len(scaled), (cfg.n,), generator=gen)
        points = scaled[which] + cfg.std * torch.randn(cfg.n, 2, generator=gen)
        return Data(x=points.float(), labels=which, centres=scaled.float(), classes=class_names(cfg))

    return load


_RING = torch.stack([torch.cos(torch.arange(8) * (2 * math.pi / 8)), torch.sin(torch.arange(8) * (2 * math.pi / 8))], 1)
_GRID_AXIS = torch.tensor([-4.0, -2.0, 0.0, 2.0, 4.0])


def _fake(cfg: Any, seed: int) -> Data:
    """data.n random uint8 images of the configured shape, for benchmarks."""
    gen = torch.Generator().manual_seed(seed)
    shape = (cfg.n, cfg.channels, cfg.image_size, cfg.image_size)
    return Data(x=torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8))


def _digits(cfg: Any, seed: int) -> Data:
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
    return Data(x=images[:, None], labels=torch.from_numpy(target.astype(np.int64)).long())


# ---- MNIST and Fashion-MNIST: IDX files, gzipped or not ----

_IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format), optionally gzipped, as a numpy array; a damaged or foreign
    file is one error that names it and what is wrong."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except EOFError:
            raise GancliError(f"{path} is a truncated gzip file: download it again") from None
        except (OSError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
            raise GancliError(f"{path} is a corrupt gzip file ({e}): download it again") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        magic = raw[:4].hex() if len(raw) >= 4 else "none"
        raise GancliError(f"{path} is not an IDX file of unsigned bytes (the MNIST format): its magic number is "
                          f"{magic}, where 000008 and a dimension count are expected")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise GancliError(f"{path} is truncated: its header of {ndim} dimensions is cut short")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    data = np.frombuffer(raw, dtype=np.uint8, offset=header)
    expected = math.prod(dims)
    if data.size < expected:
        raise GancliError(f"{path} is truncated: its header promises {expected} values {dims}, it holds {data.size}: "
                          "download it again")
    if data.size > expected:
        raise GancliError(f"{path} holds {data.size} values where its header says {dims} ({expected}): "
                          "a wrong magic number or not an IDX file")
    return data.reshape(dims)


def _images_and_labels(image_path: Path, label_path: Optional[Path]) -> Data:
    """MNIST-style images (N, H, W) and their labels (N,), read and checked against each other."""
    images = read_idx(image_path)
    labels = read_idx(label_path) if label_path else None
    if labels is not None and images.ndim == 1 and labels.ndim == 3:
        raise GancliError(f"{image_path} holds labels and {label_path} holds images: the two files are swapped; "
                          "rename them")
    if images.ndim != 3:
        raise GancliError(f"{image_path} holds an array of shape {images.shape}, not images (N, height, width)")
    if labels is not None:
        if labels.ndim != 1:
            raise GancliError(f"{label_path} holds an array of shape {labels.shape}, not labels (N,)")
        if len(labels) != len(images):
            raise GancliError(f"{image_path} holds {len(images)} images but {label_path} holds {len(labels)} labels: "
                              "the two files are from different sets; download them again")
    return Data(x=torch.from_numpy(images.copy())[:, None],  # (N, 1, H, W)
                labels=None if labels is None else torch.from_numpy(labels.astype(np.int64)))


def _idx(*folders: str) -> Callable[[Any, int], Data]:
    """A loader of the IDX files of data.split, found in data.root or in one of `folders` below it
    (as torchvision lays them out), downloaded there first where they are missing."""

    def find(cfg: Any, stem: str) -> Optional[Path]:
        root = Path(cfg.root).expanduser()
        for folder in [root] + [root / name / sub for name in folders for sub in ("raw", "")]:
            for name in (stem, stem + ".gz"):
                if (folder / name).is_file():
                    return folder / name
        return None

    def load(cfg: Any, seed: int) -> Data:
        image_stem, label_stem = _IDX_FILES[cfg.split.value]
        if find(cfg, image_stem) is None:
            _download(cfg)
        image_path, label_path = find(cfg, image_stem), find(cfg, label_stem)
        if image_path is None:
            raise GancliError(
                f"data={cfg.name.value}: {image_stem}[.gz] not found under data.root={cfg.root} and it could not be "
                f"downloaded; put {image_stem}.gz and {label_stem}.gz in {Path(cfg.root) / folders[0] / 'raw'} "
                "or point data.root at the folder that holds them"
            )
        return _images_and_labels(image_path, label_path)

    return load


_mnist = _idx("MNIST", "mnist")


def _stacked_mnist(cfg: Any, seed: int) -> Data:
    """data.n images whose R, G and B channels are three MNIST digits drawn independently;
    the label 100 * r + 10 * g + b names one of 1,000 modes."""
    mnist = _mnist(cfg, seed)
    digits, labels = mnist.x, mnist.labels  # (N, 1, 28, 28), (N,)
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(digits), (cfg.n, 3), generator=gen)
    images = digits[idx, 0]  # (n, 3, 28, 28)
    modes = labels[idx[:, 0]] * 100 + labels[idx[:, 1]] * 10 + labels[idx[:, 2]]
    return Data(x=images, labels=modes)


def _download(cfg: Any) -> None:
    """Let torchvision fetch the data set into data.root; offline, this quietly does nothing."""
    from torchvision import datasets

    fetcher = getattr(datasets, DATASETS[cfg.name.value].download)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            fetcher(root=str(Path(cfg.root).expanduser()), train=cfg.split.value == "train", download=True)
    except Exception:  # no network or a failed mirror: the caller reports what is missing
        return


def _cifar10(cfg: Any, seed: int) -> Data:
    from torchvision import datasets

    root = Path(cfg.root).expanduser()
    if not (root / "cifar-10-batches-py").is_dir():
        _download(cfg)
    try:
        ds = datasets.CIFAR10(root=str(root), train=cfg.split.value == "train", download=False)
    except RuntimeError:
        raise GancliError(
            f"data=cifar10: {root / 'cifar-10-batches-py'} not found and it could not be downloaded; "
            "extract cifar-10-python.tar.gz into data.root"
        ) from None
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2)  # (N, 32, 32, 3) -> (N, 3, 32, 32)
    return Data(x=images, labels=torch.tensor(ds.targets, dtype=torch.long))


# ---- a folder of the user's images ----


def folder_path(cfg: Any) -> Path:
    """data.path: a folder of images, or a zip archive of them."""
    if cfg.path is None:
        raise GancliError("data=folder needs data.path=<folder of images>")
    folder = Path(cfg.path).expanduser()
    if is_archive(folder):
        return folder
    if not folder.is_dir():
        raise GancliError(f"data.path={cfg.path} is not a folder or a .zip archive")
    return folder


def is_archive(path: Path) -> bool:
    return path.suffix.lower() == ".zip" and path.is_file()


def archive_listing(path: Path) -> tuple[list[zipfile.ZipInfo], Optional[dict[str, int]]]:
    """A zip archive's image files (sorted by name) and, where it has a dataset.json with labels
    (StyleGAN2-ADA's dataset_tool layout: {"labels": [[name, class], ...]}), each one's class."""
    try:
        with zipfile.ZipFile(path) as archive:
            infos = sorted((i for i in archive.infolist() if not i.is_dir() and Path(i.filename).name != "dataset.json"
                            and not any(part.startswith((".", "__MACOSX")) for part in Path(i.filename).parts)),
                           key=lambda i: i.filename)
            names = set(archive.namelist())
            meta = json.loads(archive.read("dataset.json")) if "dataset.json" in names else {}
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise GancliError(f"data.path={path} is not a readable zip archive ({exc})") from None
    labels = meta.get("labels") if isinstance(meta, dict) else None
    if not labels:
        return infos, None
    try:
        label_of = {str(name): int(label) for name, label in labels}
    except (TypeError, ValueError):
        raise GancliError(f"{path}: dataset.json's labels are not [file name, class] pairs") from None
    unlabelled = [i.filename for i in infos if i.filename not in label_of and _is_image_name(i.filename)]
    if unlabelled:
        raise GancliError(f"{path}: dataset.json gives no label for {len(unlabelled)} images (e.g. {unlabelled[0]}); "
                          "label them all, or remove its labels to train without classes")
    return infos, label_of


def _is_image_name(name: str) -> bool:
    dot = name.rfind(".")
    return dot > name.rfind("/") and name[dot:].lower() in IMAGE_SUFFIXES


def files_below(folder: Path) -> list[tuple[str, int, int]]:
    """(path relative to `folder` with / between folders, size in bytes, modification time in ns)
    of every visible file below `folder`, sorted as paths, through symlinked folders (a class
    subfolder that links elsewhere), each real folder once (a link back up is not followed again).
    Plain strings and one scandir per folder: 70,000 files are listed in a fraction of a second."""
    seen, found = set(), []
    stack = [("", str(folder))]
    while stack:
        relative, path = stack.pop()
        st = os.stat(path)
        if (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        with os.scandir(path) as entries:
            for entry in entries:
                if entry.name.startswith("."):  # .DS_Store, .git: not the user's data
                    continue
                name = relative + entry.name
                try:
                    if entry.is_dir():  # through a symlink too
                        stack.append((name + "/", entry.path))
                    elif entry.is_file():  # a broken link is neither
                        info = entry.stat()
                        found.append((name, info.st_size, info.st_mtime_ns))
                except OSError:  # gone since it was listed, or a link we may not follow
                    continue
    found.sort(key=lambda file: file[0].split("/"))  # as paths sort: folder by folder
    return found


def folder_classes(cfg: Any) -> Optional[list[str]]:
    """The subfolder names, when every image of data.path lies in one of its subfolders (one per
    class); else None. Hidden files and folders (.DS_Store, .git) are not the user's data."""
    folder = folder_path(cfg)
    if is_archive(folder):  # its classes are dataset.json's labels
        _, label_of = archive_listing(folder)
        return None if label_of is None else [str(c) for c in sorted(set(label_of.values()))]
    return classes_of([name for name, _, _ in files_below(folder)])


def classes_of(names: list[str]) -> Optional[list[str]]:
    """The class subfolders of a folder's files (paths relative to it, / between folders): the
    first folder of every image's path, or None where an image lies at the top."""
    tops = [name.split("/", 1) for name in names if _is_image_name(name)]
    if not tops or any(len(parts) == 1 for parts in tops):
        return None
    return sorted({parts[0] for parts in tops})


def _folder(cfg: Any, seed: int) -> Data:
    """Every usable image below data.path, prepared once (gancli/prepared.py) and memory-mapped."""
    from gancli.prepared import load_folder

    return load_folder(cfg)


# ---- the table ----

_DIGITS = [str(i) for i in range(10)]

DATASETS: dict[str, DataSet] = {
    # scikit-learn's bundled handwritten digits (1,797 8x8 images): needs no download
    "digits": DataSet(_digits, channels=1, classes=_DIGITS),
    "mnist": DataSet(_mnist, channels=1, classes=_DIGITS, download="MNIST"),
    "fashion_mnist": DataSet(_idx("FashionMNIST", "fashion_mnist", "fashion-mnist"), channels=1,
                             classes=["T-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                                      "sneaker", "bag", "ankle boot"], download="FashionMNIST"),
    "cifar10": DataSet(_cifar10, channels=3, download="CIFAR10",
                       classes=["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                                "truck"]),
    "folder": DataSet(_folder, classes=folder_classes),  # data.path, one subfolder per class or none
    "ring": DataSet(_mixture(_RING, radius=True), points=True, classes=[f"mode {i}" for i in range(8)]),
    "grid": DataSet(_mixture(torch.cartesian_prod(_GRID_AXIS, _GRID_AXIS)), points=True,
                    classes=[f"mode {i}" for i in range(25)]),
    "fake": DataSet(_fake),  # random uint8 images of the configured shape, for benchmarks
    # three independent MNIST digits as RGB channels: 1,000 modes, named by their digits
    "stacked_mnist": DataSet(_stacked_mnist, channels=3, classes=[f"{i:03d}" for i in range(1000)],
                             download="MNIST"),
}
