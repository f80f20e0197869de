"""A folder of images, prepared once: decoded on every core, turned upright, resized and made square
into one file of uint8 pixels that later runs memory-map instead of decoding again.

A prepared set is a folder in data.cache_dir (default $GANCLI_CACHE/data or ~/.cache/gancli/data):

    images.u8       uint8 (N, C, S, S), C-contiguous, no header (the manifest gives the shape)
    labels.i64      int64 (N,), where every image lies in a class subfolder
    manifest.json   what it was made from (the source files with their sizes and modification
                    times, size, channels, fit) and what it holds (count, classes, skipped files)

Its name carries a key of what it was made from, so a changed source (a file added, removed or
modified) or another size is another set, prepared again. It is written in a temporary folder
and renamed into place complete: a prepare killed at any moment, or stopped by a full disk,
leaves nothing that a later run takes for a prepared set. One process prepares a given set at a
time (a lock beside it): data-parallel ranks and runs started together wait for the first.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch

from gancli import decode as decoding
from gancli.console import progress_bar
from gancli.datasets import Data, archive_listing, classes_of, files_below, folder_path, is_archive
from gancli.decode import IMAGE_SUFFIXES
from gancli.errors import GancliError


log = logging.getLogger("gancli.data")

VERSION = 1  # of the format and of the decoding: a change prepares every set again
MANIFEST, IMAGES, LABELS = "manifest.json", "images.u8", "labels.i64"


def cache_root(cache_dir: Optional[str]) -> Path:
    """Where prepared sets are kept: data.cache_dir, else $GANCLI_CACHE/data, else ~/.cache/gancli/data."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    return Path(os.environ.get("GANCLI_CACHE") or "~/.cache/gancli").expanduser() / "data"


def load_folder(cfg: Any) -> Data:
    """data.path's images as a prepared set, preparing it first where there is none for this
    source and these settings."""
    folder = folder_path(cfg).resolve()
    if is_archive(folder):  # a zip: each member's size and CRC say whether it changed
        infos, label_of = archive_listing(folder)
        listing = [[i.filename, i.file_size, i.CRC] for i in infos]
        classes = None if label_of is None else [str(c) for c in sorted(set(label_of.values()))]
        labels = None if label_of is None else {name: classes.index(str(c)) for name, c in label_of.items()}
    else:  # a folder: each file's size and modification time
        listing = [list(file) for file in files_below(folder)]
        classes = classes_of([name for name, _, _ in listing])
        index = {name: i for i, name in enumerate(classes or [])}  # a top folder's class
        tops = ((name, name.split("/", 1)[0]) for name, _, _ in listing)
        labels = None if classes is None else {name: index[top] for name, top in tops if top in index}
    source = {
        "version": VERSION,
        "source": str(folder),
        "image_size": cfg.image_size,
        "channels": cfg.channels,
        "fit": cfg.fit.value,  # how a non-square image becomes square
        "files": listing,
    }
    key = hashlib.sha256(json.dumps(source, sort_keys=True).encode()).hexdigest()[:16]
    root = cache_root(cfg.cache_dir)
    entry = root / f"{_slug(folder)}-{cfg.image_size}px-{key}"  # the key tells sizes, channels and fits apart
    if not (entry / MANIFEST).is_file():
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _cache_error(root, exc) from None
        with _lock(root / f".{entry.name}.lock"):
            if not (entry / MANIFEST).is_file():  # another process may have prepared it meanwhile
                _say_why(root, entry, source, cfg.path)
                _prepare(entry, source, classes, labels, cfg.path)
    return _open(entry, cfg.path)


def _slug(folder: Path) -> str:
    """A readable part of a prepared set's name: the source folder's own name, in safe letters."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", folder.name)[:40] or "root"


def _say_why(root: Path, entry: Path, source: dict[str, Any], path: str) -> None:
    """One line: why this set is being prepared (first time, or what changed since the last one)."""
    for other in sorted(root.glob(f"{_slug(Path(source['source']))}-{source['image_size']}px-*")):
        manifest = _read_manifest(other)
        if other == entry or manifest is None or manifest.get("source") != source["source"]:
            continue
        if any(manifest.get(k) != source[k] for k in ("version", "channels", "fit")):
            continue  # another set made from this folder (in grey, say): still of use
        before = {name: (size, mtime) for name, size, mtime in manifest["files"]}
        now = {name: (size, mtime) for name, size, mtime in source["files"]}
        added, removed = len(now.keys() - before.keys()), len(before.keys() - now.keys())
        modified = sum(before[name] != now[name] for name in now.keys() & before.keys())
        log.info("data.path=%s changed since it was prepared (%d files added, %d removed, %d modified): "
                 "preparing it again", path, added, removed, modified)
        shutil.rmtree(other, ignore_errors=True)  # what it holds is no longer the folder's
        return
    log.info("data.path=%s: preparing %d files at %dx%d once, into %s (later runs reuse it)", path,
             len(source["files"]), source["image_size"], source["image_size"], entry)


def _read_manifest(entry: Path) -> Optional[dict[str, Any]]:
    try:
        return json.loads((entry / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` while the block runs (waits for its holder); none without flock."""
    try:
        import fcntl
    except ImportError:  # Windows: two processes preparing at once each write their own temporary folder
        yield
        return
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _prepare(entry: Path, source: dict[str, Any], classes: Optional[list[str]], labels: Optional[dict[str, int]],
             path: str) -> None:
    size, channels, fit = source["image_size"], source["channels"], source["fit"]
    names = [name for name, _, _ in source["files"]]
    for stale in entry.parent.glob(f"{entry.name}.tmp-*"):  # a prepare killed part-way (we hold the lock)
        shutil.rmtree(stale, ignore_errors=True)
    tmp = entry.with_name(f"{entry.name}.tmp-{os.getpid()}")
    pixels, row_bytes = tmp / IMAGES, channels * size * size
    t0 = time.perf_counter()
    try:
        tmp.mkdir()
        with open(pixels, "wb") as out:
            out.truncate(len(names) * row_bytes)  # row i for file i, written by whichever worker decodes it
        results = list(_decode_all(Path(source["source"]), names, size, channels, fit, pixels))  # None: written
        kept = [i for i, why in enumerate(results) if why is None]
        skipped: dict[str, list[str]] = {}
        for name, why in zip(names, results):
            if why is not None:
                skipped.setdefault(why, []).append(name)
        _compact(pixels, kept, row_bytes)
        if labels is not None and kept:
            np.array([labels[names[i]] for i in kept], dtype=np.int64).tofile(tmp / LABELS)
        manifest = {**source, "count": len(kept), "classes": classes, "skipped": skipped}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        if kept:
            os.rename(tmp, entry)  # complete, all at once
    except OSError as exc:
        raise _cache_error(entry.parent, exc) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not kept:
        _no_images(path, skipped, len(names))
    seconds = time.perf_counter() - t0
    log.info("prepared %d images in %.1f s (%.0f images/s)", len(kept), seconds, len(kept) / max(seconds, 1e-9))


def _compact(pixels: Path, kept: list[int], row_bytes: int) -> None:
    """Close the gaps that skipped files left (rows move down, in order), then make it durable."""
    with open(pixels, "r+b") as f:
        for row, source_row in enumerate(kept):
            if row != source_row:
                f.seek(source_row * row_bytes)
                data = f.read(row_bytes)
                f.seek(row * row_bytes)
                f.write(data)
        f.truncate(len(kept) * row_bytes)
        f.flush()
        os.fsync(f.fileno())


def _decode_all(source: Path, names: list[str], size: int, channels: int, fit: str,
                pixels: Path) -> Iterator[Optional[str]]:
    """Each file decoded into its row of `pixels` (None) or why it is not usable, in order, on
    every core: threads suffice, since Pillow lets go of Python's lock while it decodes and
    resizes (and threads need no worker start-up, nor a main module that can be imported again)."""
    archive = is_archive(source)
    jobs = [(row, source, name, archive, size, channels, fit, pixels) for row, name in enumerate(names)]
    workers = min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1, 32)
    with ThreadPoolExecutor(workers) as pool, progress_bar(len(names), 0, name="prepare") as bar:
        for done, result in enumerate(pool.map(decoding.decode_into, jobs), 1):
            bar.update(done)
            yield result


def _cache_error(root: Path, exc: OSError) -> GancliError:
    reason = exc.strerror or type(exc).__name__
    return GancliError(f"cannot write the prepared data set in {root} ({reason}); free space there or set "
                       "data.cache_dir to another folder (nothing half-written is kept)")


def _no_images(path: str, skipped: dict[str, list[str]], n_files: int) -> None:
    if not n_files or set(skipped) == {"not an image file"}:
        raise GancliError(f"data.path={path} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    raise GancliError(f"data.path={path} holds no usable image: {_reasons(skipped)}")


def _reasons(skipped: dict[str, list[str]]) -> str:
    return "; ".join(f"{len(names)} {why} (e.g. {names[0]})" for why, names in skipped.items())


def _open(entry: Path, path: str) -> Data:
    """A prepared set, memory-mapped (copy on write: the file never changes)."""
    manifest = _read_manifest(entry)
    if manifest is None:
        raise GancliError(f"{entry / MANIFEST} is unreadable; delete {entry} and run again")
    n, c, s = manifest["count"], manifest["channels"], manifest["image_size"]
    images = np.memmap(entry / IMAGES, dtype=np.uint8, mode="c", shape=(n, c, s, s))
    labels = None
    if manifest["classes"] is not None:
        labels = torch.from_numpy(np.fromfile(entry / LABELS, dtype=np.int64))
    skipped = manifest["skipped"]
    n_skipped = sum(len(names) for names in skipped.values())
    if n_skipped:
        log.warning("data.path=%s: skipped %d of %d files: %s", path, n_skipped, n + n_skipped, _reasons(skipped))
    return Data(x=torch.from_numpy(images), labels=labels, classes=manifest["classes"], skipped=n_skipped,
                file=entry / IMAGES)


