import math

import numpy as np
import pytest
import torch

from gancli.config import DataConfig, DataName
from gancli.data import load_data
from gancli.metrics import (class_metrics, density_coverage, frechet_distance, kernel_inception_distance,
                            mixture_metrics,
                            precision_recall, stacked_metrics)


@pytest.mark.parametrize("name,k,std", [(DataName.ring, 8, 0.01), (DataName.grid, 25, 0.05)])
def test_true_mixture_covers_every_mode(name, k, std):
    data = load_data(DataConfig(name=name, n=50_000, std=std), seed=3)
    m = mixture_metrics(data.x, data.centres, std)
    assert m["modes"] == k == m["n_modes"]
    assert m["hq"] == pytest.approx(1 - math.exp(-4.5), abs=0.003)  # P(chi2_2 <= 9) = 0.9889
    assert m["reverse_kl"] == pytest.approx(0.0, abs=0.002)


@pytest.mark.parametrize("k,std", [(8, 0.01), (25, 0.05)])
def test_a_sampler_stuck_on_one_centre(k, std):
    gen = torch.Generator().manual_seed(0)  # centres far apart: every other mode is empty
    centres = torch.randn(k, 2, generator=gen) * 10
    samples = centres[2] + std * torch.randn(2500, 2, generator=gen)
    m = mixture_metrics(samples, centres, std)
    assert m["modes"] == 1
    assert m["reverse_kl"] == pytest.approx(math.log(k), abs=1e-9)


def test_samples_far_from_every_centre_are_low_quality():
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    samples = torch.tensor([[5.0, 5.0]] * 10)
    m = mixture_metrics(samples, centres, 0.1)
    assert m["hq"] == 0.0 and m["modes"] == 0


def test_frechet_distance():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2000, 8))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shifted = a + 3.0  # same covariance, mean moved by 3 in each of 8 dimensions
    assert frechet_distance(a, shifted) == pytest.approx(9.0 * 8, rel=1e-6)
    b = rng.normal(size=(2000, 8)) * 2.0  # variance 4: per dimension 1 + 4 - 2*2 = 1
    assert frechet_distance(a, b) == pytest.approx(8.0, rel=0.1)


def test_one_predicted_class():
    real = torch.arange(10).repeat(100)
    m = class_metrics(torch.full((500,), 4), real, 10)
    assert m["classes_covered"] == 1
    assert m["class_kl"] == pytest.approx(math.log(10))
    m = class_metrics(real.clone(), real, 10)
    assert m["classes_covered"] == 10 and m["class_kl"] == pytest.approx(0.0)


def test_stacked_mnist_modes():
    every = torch.stack(torch.meshgrid(torch.arange(10), torch.arange(10), torch.arange(10), indexing="ij"), -1)
    m = stacked_metrics(every.reshape(-1, 3).repeat(3, 1))
    assert m["modes"] == 1000 == m["n_modes"] and m["kl"] == pytest.approx(0.0, abs=1e-12)
    m = stacked_metrics(torch.tensor([[1, 2, 3]] * 50))
    assert m["modes"] == 1 and m["kl"] == pytest.approx(math.log(1000))


def test_kernel_inception_distance():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(400, 16)), rng.normal(size=(400, 16))
    same, spread = kernel_inception_distance(a, b, subsets=20, subset_size=200)
    assert abs(same) < 0.02 and spread >= 0  # unbiased: about 0 for one distribution
    shifted, _ = kernel_inception_distance(a, b + 1.0, subsets=20, subset_size=200)
    assert shifted > 0.5


def test_frechet_distance_is_quiet_about_dead_features():
    import warnings

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(300, 16)), rng.normal(size=(300, 16))
    a[:, :4] = 0.0  # features that never fire: a singular covariance
    b[:, :4] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value = frechet_distance(a, b)
    assert math.isfinite(value) and 0 <= value < 1.0


def test_precision_recall_density_coverage_on_a_line():
    # real points 0..4 (each real ball of radius 1 at k=1); fakes at 0.5 (inside the balls of 0
    # and 1) and at 10 (in none); the two fakes' balls have radius 9.5 and hold every real point
    real = torch.tensor([[0.0], [1.0], [2.0], [3.0], [4.0]])
    fake = torch.tensor([[0.5], [10.0]])
    assert precision_recall(real, fake, k=1) == {"precision": 0.5, "recall": 1.0}
    assert density_coverage(real, fake, k=1) == {"density": 1.0, "coverage": 0.4}


def test_identical_sets_score_perfectly_and_disjoint_ones_zero():
    real = torch.randn(200, 8, generator=torch.Generator().manual_seed(0))
    assert precision_recall(real, real.clone()) == {"precision": 1.0, "recall": 1.0}
    same = density_coverage(real, real.clone(), k=5)
    # each real ball holds its own point and its 5 nearest: 6 fakes each, over k M = 5 M
    assert same["coverage"] == 1.0 and same["density"] == pytest.approx(6 / 5)
    far = real + 100
    assert precision_recall(real, far) == {"precision": 0.0, "recall": 0.0}
    assert density_coverage(real, far) == {"density": 0.0, "coverage": 0.0}


def test_a_dropped_mode_costs_recall_and_coverage_not_precision():
    gen = torch.Generator().manual_seed(1)
    mode_a, mode_b = torch.randn(100, 4, generator=gen), torch.randn(100, 4, generator=gen) + 50
    real, fake = torch.cat([mode_a, mode_b]), mode_a.clone()  # G makes only mode A, perfectly
    assert precision_recall(real, fake) == {"precision": 1.0, "recall": 0.5}
    assert density_coverage(real, fake)["coverage"] == 0.5


def test_neighbourhood_metrics_take_sets_smaller_than_k():
    real, fake = torch.tensor([[0.0], [1.0]]), torch.tensor([[0.25], [3.0]])
    assert precision_recall(real, fake, k=3) == {"precision": 0.5, "recall": 1.0}
    assert density_coverage(real, fake, k=5) == {"density": 1.0, "coverage": 1.0}
