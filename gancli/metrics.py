"""Sample-quality and mode-collapse metrics, as pure functions of samples or features."""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch


def mixture_metrics(samples: torch.Tensor, centres: torch.Tensor, std: float) -> dict[str, float]:
    """Metrics of 2-D samples (N, 2) against a Gaussian mixture with centres (K, 2).

    modes: centres that are the nearest centre of at least one high-quality sample;
    hq: share of samples within 3 std of their nearest centre (0.989 for the true mixture);
    reverse_kl: KL(histogram of nearest centres over all samples || uniform), natural log.
    """
    samples, centres = samples.double(), centres.double()
    dist, nearest = torch.cdist(samples, centres).min(dim=1)
    high_quality = dist <= 3 * std
    k = len(centres)
    p = torch.bincount(nearest, minlength=k).double() / len(samples)
    nonzero = p > 0
    reverse_kl = float((p[nonzero] * torch.log(p[nonzero] * k)).sum())
    return {
        "modes": int(torch.unique(nearest[high_quality]).numel()),
        "n_modes": k,
        "hq": float(high_quality.double().mean()),
        "reverse_kl": reverse_kl,
    }


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to feature sets a (N, F) and b (M, F):
    |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))."""
    from scipy import linalg

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with warnings.catch_warnings():
        # features that never fire make the product singular; scipy warns, and the result is
        # checked here instead, so that an evaluation does not print a warning per call
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        root = linalg.sqrtm(cov_a @ cov_b)
        if not np.isfinite(root).all():  # a near-singular product: nudge both covariances
            eps = 1e-6 * np.eye(len(cov_a))
            root = linalg.sqrtm((cov_a + eps) @ (cov_b + eps))
    root = root.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(root))


def class_metrics(predicted: torch.Tensor, real_labels: torch.Tensor, n_classes: int) -> dict[str, float]:
    """classes_covered: classes predicted at least once; class_kl: KL(predicted-class histogram ||
    real class histogram), natural log."""
    p = torch.bincount(predicted, minlength=n_classes).double()
    q = torch.bincount(real_labels, minlength=n_classes).double()
    p, q = p / p.sum(), q / q.sum()
    nonzero = p > 0
    kl = (p[nonzero] * torch.log(p[nonzero] / q[nonzero])).sum()
    return {"classes_covered": int(nonzero.sum()), "n_classes": n_classes,
            "class_kl": float(kl) if math.isfinite(kl) else math.inf}


def per_class_fd(real: torch.Tensor, real_labels: torch.Tensor, fake: torch.Tensor, fake_labels: torch.Tensor,
                 n_classes: int) -> list[float]:
    """The Frechet distance between the real and the generated features (N, F) of each class, for
    a conditional G; NaN for a class with fewer than 2 samples on either side."""
    out = []
    for k in range(n_classes):
        a, b = real[real_labels == k], fake[fake_labels == k]
        out.append(frechet_distance(a.numpy(), b.numpy()) if len(a) > 1 and len(b) > 1 else math.nan)
    return out


def stacked_metrics(channel_digits: torch.Tensor) -> dict[str, float]:
    """Stacked MNIST: channel_digits (N, 3) are the digits predicted for each channel.
    modes: distinct (r, g, b) triples of 1,000; kl: KL(mode histogram || uniform), natural log."""
    modes = channel_digits[:, 0] * 100 + channel_digits[:, 1] * 10 + channel_digits[:, 2]
    p = torch.bincount(modes, minlength=1000).double() / len(modes)
    nonzero = p > 0
    return {
        "modes": int(nonzero.sum()),
        "n_modes": 1000,
        "kl": float((p[nonzero] * torch.log(p[nonzero] * 1000)).sum()),
    }


def _knn_radii(x: torch.Tensor, k: int) -> torch.Tensor:
    """(N,) distance from each row of x (N, F) to its k-th nearest other row (the farthest, when
    there are k rows or fewer)."""
    k = min(k, len(x) - 1)
    return torch.cdist(x, x).kthvalue(k + 1, dim=1).values  # k + 1: the row itself is at distance 0


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> dict[str, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) of feature sets real (N, F) and
    fake (M, F). Each set's manifold is the union of balls around its points, each ball as wide
    as the distance to the point's k-th nearest neighbour in its own set. precision: share of
    fake points inside the real manifold (are samples realistic?); recall: share of real points
    inside the fake manifold (is the data's variety covered?)."""
    real, fake = real.double(), fake.double()
    dist = torch.cdist(fake, real)  # (M, N)
    precision = (dist <= _knn_radii(real, k)[None, :]).any(dim=1).double().mean()
    recall = (dist.T <= _knn_radii(fake, k)[None, :]).any(dim=1).double().mean()
    return {"precision": float(precision), "recall": float(recall)}


def density_coverage(real: torch.Tensor, fake: torch.Tensor, k: int = 5) -> dict[str, float]:
    """Density and coverage (Naeem et al. 2020) of feature sets real (N, F) and fake (M, F), with
    balls around the real points only (as wide as each one's k-th nearest real neighbour), which
    makes them robust to outlying fakes. density: balls holding each fake point, summed and
    divided by k M (1 on average when fake matches real, above 1 where fakes crowd the dense
    regions); coverage: share of real balls that hold at least one fake point."""
    real, fake = real.double(), fake.double()
    k = min(k, len(real) - 1)
    inside = torch.cdist(fake, real) <= _knn_radii(real, k)[None, :]  # (M, N)
    return {
        "density": float(inside.sum() / (k * len(fake))),
        "coverage": float(inside.any(dim=0).double().mean()),
    }


def kernel_inception_distance(a: np.ndarray, b: np.ndarray, subsets: int = 100, subset_size: int = 1000,
                              seed: int = 0) -> tuple[float, float]:
    """KID: the unbiased squared MMD between feature sets a (N, F) and b (M, F) under the kernel
    k(x, y) = (x.y / F + 1)^3, as mean and standard deviation over random subsets."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    rng = np.random.default_rng(seed)
    m, d = min(subset_size, len(a), len(b)), a.shape[1]
    values = []
    for _ in range(subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        kxx, kyy, kxy = (x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3
        within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        values.append(within - 2 * kxy.mean())
    return float(np.mean(values)), float(np.std(values))
