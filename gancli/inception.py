"""Inception FID and KID, computed when the user has the Inception weights on disk.

The feature extractor is torch-fidelity's TensorFlow-compatible InceptionV3 (the `inception`
extra). Its weights file, `weights-inception-2015-12-05-6726825d.pth`, is never downloaded
here: it is taken from `eval.inception_weights` or from torch hub's cache."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Optional

import torch

from gancli.errors import GancliError
from gancli.metrics import frechet_distance, kernel_inception_distance

WEIGHTS_NAME = "weights-inception-2015-12-05-6726825d.pth"


def find_weights(path: Optional[str]) -> Optional[Path]:
    """The weights file named by the user, else torch hub's cached copy, else None."""
    if path:
        weights = Path(path).expanduser()
        if not weights.is_file():
            raise GancliError(f"eval.inception_weights={path}: no such file (torch-fidelity's {WEIGHTS_NAME})")
        return weights
    cached = Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_NAME
    return cached if cached.is_file() else None


def inception_metrics(real: torch.Tensor, fake: torch.Tensor, weights_path: Optional[str],
                      device: torch.device) -> dict[str, Any]:
    """{"inception_fid", "inception_kid", "inception_kid_std", "inception_protocol"} for uint8 real
    (N, C, H, W) and float fake images in [-1, 1]; or {"inception_note": why not}."""
    weights = find_weights(weights_path)
    if weights is None:
        return {"inception_note": "Inception FID/KID skipped: no weights "
                                  f"(set eval.inception_weights=<{WEIGHTS_NAME}>)"}
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except ImportError:
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
    real_feats, fake_feats = _features(extractor, real, device), _features(extractor, fake_u8, device)
    kid, kid_std = kernel_inception_distance(real_feats, fake_feats)
    digest = hashlib.sha256(b"".join(t.numpy().tobytes() for t in state.values() if torch.is_tensor(t))).hexdigest()
    return {
        "inception_fid": frechet_distance(real_feats, fake_feats),
        "inception_kid": kid,
        "inception_kid_std": kid_std,
        "inception_protocol": {"n_real": len(real_feats), "n_generated": len(fake_feats),
                               "feature_extractor": "torch-fidelity InceptionV3 pool3 (2048-d)",
                               "extractor_hash": digest[:16]},
    }


@torch.no_grad()
def _features(extractor: torch.nn.Module, images: torch.Tensor, device: torch.device, batch_size: int = 100):
    out = []
    for chunk in images.split(batch_size):
        if chunk.shape[1] == 1:
            chunk = chunk.repeat(1, 3, 1, 1)  # grey -> RGB
        out.append(extractor(chunk.to(device))[0].cpu())
    return torch.cat(out).numpy()
