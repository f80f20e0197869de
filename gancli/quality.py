"""The quality and mode-collapse metrics of generated samples, for each kind of data, each with
the protocol it was measured under: what `gancli eval` reports and training logs every `eval.every` steps."""

from __future__ import annotations

import logging
from typing import Any, Optional

import torch

from gancli.classifier import FEATURES, VERSION, reference_classifier
from gancli.config import DataConfig, DataName
from gancli.data import Data, read_samples, to_model
from gancli.errors import GancliError
from gancli.inception import inception_metrics
from gancli.metrics import (class_metrics, density_coverage, frechet_distance, mixture_metrics, per_class_fd,
                            precision_recall, stacked_metrics)

log = logging.getLogger(__name__)


def near_chance(accuracy: float, n_classes: int) -> bool:
    """A held-out accuracy nearer chance (1 / classes) than perfect: features that barely separate
    the classes (a folder of two classes reached 0.125 once), on which a Frechet distance means little."""
    chance = 1.0 / n_classes
    return accuracy < (chance + 1.0) / 2


def evaluate(fake: torch.Tensor, data: Data, data_cfg: DataConfig, device: torch.device, seed: int,
             cache_dir: Optional[str], inception_weights: Optional[str] = None,
             asked: Optional[torch.Tensor] = None) -> dict[str, Any]:
    """The metrics of generated samples `fake` (from `generate`) for this kind of data, each
    with the protocol it was measured under. `asked`, the (N,) classes a conditional G was asked
    for, adds how often the sample is of that class (class_accuracy) and, for images, the FD of
    each class."""
    n = len(fake)
    conditional: dict[str, Any] = {}
    if not data.is_image:
        if data.centres is None:
            raise GancliError(f"data={data_cfg.name.value} has no mixture centres to measure modes against")
        metrics: dict[str, Any] = mixture_metrics(fake, data.centres, data_cfg.std)
        if asked is not None:  # a sample is of the class (mode) whose centre is nearest
            nearest = torch.cdist(fake.double(), data.centres.double()).argmin(1)
            conditional["class_accuracy"] = float((nearest == asked).double().mean())
        protocol = {"n_generated": n, "n_real": 0, "feature_extractor": "none (nearest mixture centre)"}
    elif data_cfg.name is DataName.stacked_mnist:
        # one digit classifier, trained on the real images' channels, labels each generated channel
        channel_digits = torch.stack([data.labels // 100, data.labels // 10 % 10, data.labels % 10], 1)  # (N, 3)
        channels = Data(x=data.x.reshape(-1, 1, *data.shape[1:]), labels=channel_digits.reshape(-1))
        ref = reference_classifier(channels, cache_dir, device)
        _, predicted = ref.embed(fake.reshape(-1, 1, *fake.shape[2:]), device)
        metrics = {**stacked_metrics(predicted.reshape(-1, 3)), "classifier_accuracy": ref.accuracy}
        if asked is not None:  # all three channel digits as asked
            digits = predicted.reshape(-1, 3)
            conditional["class_accuracy"] = float(((digits[:, 0] * 100 + digits[:, 1] * 10 + digits[:, 2]) == asked)
                                                  .double().mean())
        protocol = {
            "n_generated": n,
            "n_real": len(channels.x),
            "feature_extractor": f"gancli reference classifier v{VERSION} on single channels",
            "extractor_hash": ref.weights_hash[:16],
            "data_hash": ref.data_hash[:16],
        }
    elif data.labels is None:  # a folder of photos, say: Inception FID/KID against its own images
        n_real = min(n, len(data.x))
        idx = torch.randperm(len(data.x), generator=torch.Generator().manual_seed(seed))[:n_real].sort().values
        real = (read_samples(data, chunk) for chunk in idx.split(100))  # read as needed: memory stays bounded
        key = (str(data.file) if data.file is not None else id(data.x), len(data.x), n_real, seed)
        metrics = inception_metrics(real, fake, inception_weights, device, required=True, real_key=key)
        protocol = {
            "n_generated": n,
            "n_real": n_real,
            "real_images": f"{n_real} of the data set's {len(data.x)}, drawn at random (seed {seed})",
            "feature_extractor": metrics["inception_protocol"]["feature_extractor"],
            "extractor_hash": metrics["inception_protocol"]["extractor_hash"],
        }
    else:
        ref = reference_classifier(data, cache_dir, device)
        train_real = data.x[ref.train_idx[:n]]
        held_real = data.x[ref.held_idx[:n]]
        real_feats, _ = ref.embed(to_model(train_real), device)
        held_feats, _ = ref.embed(to_model(held_real), device)
        fake_feats, fake_pred = ref.embed(fake, device)
        m = min(len(real_feats), len(held_feats))
        metrics = {
            "fd": frechet_distance(real_feats.numpy(), fake_feats.numpy()),
            "fd_real_floor": frechet_distance(real_feats[:m].numpy(), held_feats[:m].numpy()),
            **precision_recall(real_feats, fake_feats),  # k = 3
            **density_coverage(real_feats, fake_feats),  # k = 5
            "classifier_accuracy": ref.accuracy,
            **class_metrics(fake_pred, data.labels[ref.train_idx], ref.n_classes),
            **inception_metrics(train_real, fake, inception_weights, device),
        }
        if asked is not None:
            fds = per_class_fd(real_feats, data.labels[ref.train_idx[:n]], fake_feats, asked, ref.n_classes)
            finite = [v for v in fds if v == v]
            conditional = {"class_accuracy": float((fake_pred == asked).double().mean()),
                           "fd_class_mean": sum(finite) / len(finite) if finite else float("nan"),
                           "fd_per_class": fds}
        metrics["classifier_near_chance"] = near_chance(ref.accuracy, ref.n_classes)
        if metrics["classifier_near_chance"]:
            log.warning("the reference classifier tells the classes apart in only %.0f%% of held-out images (chance: "
                        "%.0f%%), so fd and the class metrics, built on its features, say little about these images; "
                        "more images per class help", 100 * ref.accuracy, 100 / ref.n_classes)
        if "inception_note" in metrics:
            log.info(metrics["inception_note"])
        protocol = {
            "n_generated": n,
            "n_real": len(real_feats),
            "n_real_floor": m,
            "feature_extractor": f"gancli reference classifier v{VERSION}, penultimate layer ({FEATURES}-d)",
            "extractor_hash": ref.weights_hash[:16],
            "data_hash": ref.data_hash[:16],
        }
    protocol["data"] = data_cfg.name.value
    protocol["data_split"] = data_cfg.split.value if data.is_image else f"drawn, seed {seed}"
    protocol["seed"] = seed
    if asked is not None:
        protocol["classes_asked"] = "every class in turn, equal runs"
    return {**metrics, **conditional, "protocol": protocol}
