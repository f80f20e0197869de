"""Inception FID and KID: torch-fidelity's TensorFlow-compatible InceptionV3 (the `inception`
extra), pool3 features.

Its weights file, `weights-inception-2015-12-05-6726825d.pth`, is taken from
`eval.inception_weights` or from torch hub's cache. For a labelled data set they are an extra
beside the reference classifier's metrics, computed when the file is there. For images without
labels (a folder of photos) they are the quality number: the file is downloaded into torch hub's
cache, as torch-fidelity does, when it is not there, and a machine offline is told in one line
how to supply it."""

from __future__ import annotations

import hashlib
import logging
import socket
import urllib.error
from pathlib import Path
from typing import Any, Iterable, Optional, Union

import torch

from gancli.errors import GancliError
from gancli.metrics import frechet_distance, kernel_inception_distance

log = logging.getLogger(__name__)

WEIGHTS_NAME = "weights-inception-2015-12-05-6726825d.pth"
_REAL_FEATURES: dict[tuple, Any] = {}  # (real_key, weights digest) -> float (N, 2048) features of the last real images
DOWNLOAD_TIMEOUT_S = 60  # per network operation: a machine offline answers at once or never
NEEDS_FIDELITY = ("Inception FID/KID, the quality number of images without class labels, needs torch-fidelity: "
                  "pip install 'gancli[inception]'")


def find_weights(path: Optional[str]) -> Optional[Path]:
    """The weights file named by the user, else torch hub's cached copy, else None."""
    if path:
        weights = Path(path).expanduser()
        if not weights.is_file():
            raise GancliError(f"eval.inception_weights={path}: no such file (torch-fidelity's {WEIGHTS_NAME})")
        return weights
    return _cached() if _cached().is_file() else None


def _cached() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_NAME


def obtain_weights(path: Optional[str]) -> Path:
    """The weights file as find_weights finds it, else downloaded from torch-fidelity's release
    into torch hub's cache (written whole or not at all); offline, one line on how to supply it."""
    found = find_weights(path)
    if found is not None:
        return found
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3 as url
    except ImportError:
        raise GancliError(NEEDS_FIDELITY) from None
    target = _cached()
    log.info("downloading the Inception weights for FID/KID from %s into %s (once)", url, target)
    before = socket.getdefaulttimeout()
    try:
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(target), progress=False)
    except (OSError, urllib.error.URLError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
        raise GancliError(f"Inception FID/KID, the quality number of images without class labels, needs the "
                          f"weights file {WEIGHTS_NAME}, and downloading it failed ({reason}); fetch {url} on a "
                          "machine that is online and set eval.inception_weights=<that file>") from None
    finally:
        socket.setdefaulttimeout(before)
    return target


def inception_metrics(real: Union[torch.Tensor, Iterable[torch.Tensor]], fake: torch.Tensor,
                      weights_path: Optional[str], device: torch.device, required: bool = False,
                      real_key: Optional[tuple] = None) -> dict[str, Any]:
    """{"inception_fid", "inception_kid", "inception_kid_std", "inception_protocol"} for uint8 real
    images (N, C, H, W), whole or in chunks, and float fake images in [-1, 1]; or, unless
    `required` (then the weights are obtained or it fails in one line), {"inception_note": why not}.
    `real_key` names the real images, whose features are then kept for the next call."""
    weights = obtain_weights(weights_path) if required else find_weights(weights_path)
    if weights is None:
        return {"inception_note": "Inception FID/KID skipped: no weights "
                                  f"(set eval.inception_weights=<{WEIGHTS_NAME}>)"}
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except ImportError:
        if required:
            raise GancliError(NEEDS_FIDELITY) from None
        return {"inception_note": "Inception FID/KID skipped: pip install 'gancli[inception]' (torch-fidelity)"}
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)  # plain tensors only
    except Exception:
        raise GancliError(f"eval.inception_weights={weights} is not a readable weights file") from None
    # torch-fidelity loads the file itself; it holds nothing but tensors, as checked above
    extractor = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                            feature_extractor_weights_path=str(weights))
    extractor.to(device).eval()
    fake_u8 = fake.add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8)
    digest = hashlib.sha256(b"".join(t.numpy().tobytes() for t in state.values() if torch.is_tensor(t))).hexdigest()
    key = (real_key, digest) if real_key is not None else None
    real_feats = _REAL_FEATURES.get(key) if key is not None else None
    if real_feats is None:
        real_feats = _features(extractor, real, device)
        if key is not None:  # the same real images at the next evaluation of the run: their features once
            _REAL_FEATURES.clear()
            _REAL_FEATURES[key] = real_feats
    fake_feats = _features(extractor, fake_u8, device)
    kid, kid_std = kernel_inception_distance(real_feats, fake_feats)
    return {
        "inception_fid": frechet_distance(real_feats, fake_feats),
        "inception_kid": kid,
        "inception_kid_std": kid_std,
        "inception_protocol": {"n_real": len(real_feats), "n_generated": len(fake_feats),
                               "feature_extractor": "torch-fidelity InceptionV3 pool3 (2048-d)",
                               "extractor_hash": digest[:16]},
    }


@torch.no_grad()
def _features(extractor: torch.nn.Module, images: Union[torch.Tensor, Iterable[torch.Tensor]], device: torch.device,
              batch_size: int = 100):
    out = []
    for chunk in images.split(batch_size) if isinstance(images, torch.Tensor) else images:
        if chunk.shape[1] == 1:
            chunk = chunk.repeat(1, 3, 1, 1)  # grey -> RGB
        out.append(extractor(chunk.to(device))[0].cpu())
    return torch.cat(out).numpy()
