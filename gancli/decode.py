"""Decoding one image file for a prepared set: upright, resized, made square, written into its
row of the set's pixel file. Imports neither torch nor the rest of gancli, so that the worker
processes that run it start in a fraction of a second."""

from __future__ import annotations

import contextlib
import io
import os
import threading
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np

if TYPE_CHECKING:
    import PIL.Image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
MIN_SIDE = 8  # pixels: a smaller image (a 1x1 placeholder, an icon) is not training data


class Unusable(Exception):
    """A file of a folder data set that cannot be used; the message says why, in a few words."""


_archives = threading.local()  # each thread's open zip archive: reading it is not safe across threads


def decode_into(job: tuple[int, Path, str, bool, int, int, str, Path]) -> Optional[str]:
    """Decode file `name` of the folder or zip archive `source` into row `row` of the uint8
    (N, C, S, S) file `out`; None when done, else why the file is not usable. A failed write (a
    full disk) raises OSError."""
    row, source, name, archive, size, channels, fit, out = job
    if archive:
        if getattr(_archives, "path", None) != source:
            _archives.path, _archives.zip = source, zipfile.ZipFile(source)
        try:
            member: Path | io.BytesIO = io.BytesIO(_archives.zip.read(name))
        except Exception:  # noqa: BLE001 (a damaged member: BadZipFile, zlib.error, EOFError, ...)
            return "unreadable or truncated"
        pixels = decode(member, size, channels, fit, suffix=Path(name).suffix)
    else:
        pixels = decode(source / name, size, channels, fit)
    if isinstance(pixels, str):
        return pixels
    fd = os.open(out, os.O_WRONLY)
    try:
        data = pixels.tobytes()
        written = os.pwrite(fd, data, row * len(data))
        if written != len(data):  # a short write: the disk filled up part-way
            raise OSError(28, os.strerror(28))
    finally:
        os.close(fd)
    return None


def decode(path: Path | io.BytesIO, size: int, channels: int, fit: str = "crop",
           suffix: Optional[str] = None) -> np.ndarray | str:
    """The file (or a zip member's bytes, named by `suffix`) as uint8 (C, S, S), or why it is not usable."""
    if (suffix if suffix is not None else path.suffix).lower() not in IMAGE_SUFFIXES:
        return "not an image file"
    try:
        img = read_image(path, "L" if channels == 1 else "RGB", draft=size)
    except Unusable as exc:
        return str(exc)
    return square(img, size, fit)


def square(img: "PIL.Image.Image", size: int, fit: str = "crop") -> np.ndarray:
    """`crop`: the image's shorter side resized to `size` (bilinear, antialiased), its centre
    cropped square. `pad`: its longer side resized to `size`, centred on black: all of it kept."""
    from PIL import Image

    w, h = img.size
    if fit == "pad":
        new = (size, max(1, round(size * h / w))) if w >= h else (max(1, round(size * w / h)), size)
        img_square = Image.new(img.mode, (size, size))
        img_square.paste(img.resize(new, Image.BILINEAR), ((size - new[0]) // 2, (size - new[1]) // 2))
    else:
        new = (size, max(size, int(size * h / w))) if w <= h else (max(size, int(size * w / h)), size)
        left, top = int(round((new[0] - size) / 2.0)), int(round((new[1] - size) / 2.0))
        img_square = img.resize(new, Image.BILINEAR).crop((left, top, left + size, top + size))
    pixels = np.asarray(img_square, dtype=np.uint8)  # (S, S) grey or (S, S, 3)
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1).copy()


def read_image(path: Path | io.BytesIO, mode: str, draft: Optional[int] = None) -> "PIL.Image.Image":
    """The image at `path` in `mode` ("L" or "RGB"), decoded in full, upright, or Unusable. A JPEG
    to be shrunk to `draft` pixels is decoded at the smallest scale (1/2, 1/4, 1/8) that keeps
    both sides at least twice that: its DCT does the first halvings, and the antialiased resize
    the last (a 512-pixel photo prepared at 64 pixels: PSNR 45.6 dB against decoding it in full,
    2.4 times as fast; docs/data.md). The EXIF orientation
    a camera records is applied (a phone's portrait is stored on its side); 16-bit grey keeps its
    top 8 bits (a plain conversion clips it to near-white); transparent pixels become black,
    whatever colour the file stores under them."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as img:
            if min(img.size) < MIN_SIDE:
                raise Unusable(f"smaller than {MIN_SIDE}x{MIN_SIDE} pixels")
            if draft and img.format == "JPEG":  # both sides stay at least twice `draft` (and MIN_SIDE)
                img.draft(img.mode, (2 * max(draft, MIN_SIDE),) * 2)
            img.load()  # decode now: a truncated file fails here, not half-way through training
            with contextlib.suppress(Exception):  # damaged EXIF: the pixels as stored are still an image
                img = ImageOps.exif_transpose(img)
            if img.mode.startswith("I;16") or img.mode == "I":  # 16-bit grey (PNG, TIFF)
                grey = np.asarray(img).astype(np.float64) / 257.0  # 0..65535 -> 0..255
                img = Image.fromarray(grey.round().clip(0, 255).astype(np.uint8), "L")
            elif img.mode == "F":
                raise Unusable("floating-point images (mode F)")
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                rgba = img.convert("RGBA")
                img = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
            return img.convert(mode)
    except Unusable:
        raise
    except Image.DecompressionBombError:
        raise Unusable("too large to decode safely") from None
    except Exception:  # noqa: BLE001 (Pillow raises OSError, ValueError, SyntaxError, ... for broken files)
        raise Unusable("unreadable or truncated") from None
