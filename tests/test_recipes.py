"""The modern recipes' pieces: spectral norm, G's moving average, DiffAugment and ADA, graph
capture's fallback, and exact resume with all of their state."""

import contextlib

import pytest
import torch

from gancli import checkpoint
from gancli.augment import Augment, color, cutout, translation
from gancli.config import AugmentConfig, AugmentName, AugmentOp, SampleApp
from gancli.ema import EMA, ema_beta
from gancli.models import build_models, dcgan, mlp
from gancli.models.base import SpectralNorm
from gancli.accel import GraphedStep
from test_config import compose_train


# ---- spectral norm ----

def _weight_matrix(module: torch.nn.Module) -> torch.Tensor:
    """The matrix whose largest singular value spectral norm divides by: (out, everything else)."""
    w = module.weight.detach()
    if isinstance(module, torch.nn.ConvTranspose2d):
        w = w.transpose(0, 1)  # torch normalises a transposed conv along its output channels
    return w.reshape(w.shape[0], -1)


def _normalised(net: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in net.modules() if hasattr(m, "parametrizations") and "weight" in m.parametrizations]


@pytest.mark.parametrize("which", [SpectralNorm.d, SpectralNorm.g, SpectralNorm.both])
def test_spectral_norm_keeps_each_layers_largest_singular_value_near_one(which):
    torch.manual_seed(0)
    G, D = build_models(dcgan.Config(g_width=8, d_width=8, spectral_norm=which), (1, 28, 28))
    for _ in range(30):  # one power iteration per training forward
        D(G(torch.randn(8, G.z_dim)))
    on_d, on_g = which in (SpectralNorm.d, SpectralNorm.both), which in (SpectralNorm.g, SpectralNorm.both)
    for net, on in ((D, on_d), (G, on_g)):
        layers = _normalised(net)
        convs = [m for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
        assert len(layers) == (len(convs) if on else 0)  # every conv of the chosen networks, no other
        for module in layers:
            sigma = torch.linalg.matrix_norm(_weight_matrix(module), ord=2).item()
            assert sigma == pytest.approx(1.0, abs=0.05)


def test_spectral_norm_on_dense_layers_and_on_the_meta_device():
    G, D = build_models(mlp.Config(depth=2, width=16, spectral_norm=SpectralNorm.both), (2,))
    assert len(_normalised(G)) == len(_normalised(D)) == 3  # two hidden layers and the output, each
    with torch.device("meta"):  # the start-up check builds this way
        build_models(dcgan.Config(spectral_norm=SpectralNorm.both), (3, 64, 64))


# ---- G's moving average ----

def test_ema_beta_halves_the_old_weight_every_half_life():
    beta = ema_beta(half_life_kimg=1.0, rampup=0.0, batch_images=100, images_seen=5000)
    assert beta ** 10 == pytest.approx(0.5)  # 10 updates of 100 images = 1 kimg
    assert ema_beta(0.0, 0.0, 64, 0) == 0.0  # no half-life: G_ema is G
    # StyleGAN's ramp-up: the half-life is at most rampup x images seen
    assert ema_beta(10.0, 0.05, 64, 0) == 0.0  # the first update copies G
    assert ema_beta(10.0, 0.05, 64, 1000) == pytest.approx(0.5 ** (64 / 50))
    assert ema_beta(10.0, 0.05, 64, 10**7) == pytest.approx(ema_beta(10.0, 0.0, 64, 0))


def test_ema_update_is_a_lerp_and_copies_batch_norm_statistics():
    torch.manual_seed(0)
    G, _ = build_models(dcgan.Config(g_width=8, d_width=8), (1, 28, 28))
    ema = EMA(G)
    assert not ema.G.training and not any(p.requires_grad for p in ema.G.parameters())
    with torch.no_grad():
        for p in ema.G.parameters():
            p.zero_()
        for p in G.parameters():
            p.fill_(1.0)
    G(torch.randn(8, G.z_dim))  # new running statistics in G
    beta = ema_beta(1.0, 0.0, 100, 0)
    for _ in range(10):
        ema.set_beta(beta)
        ema.update()
    for p in ema.G.parameters():
        assert torch.allclose(p, torch.full_like(p, 0.5), atol=1e-6)  # 1 - beta^10
    for avg, buf in zip(ema.G.buffers(), G.buffers()):
        assert torch.equal(avg, buf)


# ---- DiffAugment and ADA ----

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("op", [color, translation, cutout])
def test_each_op_keeps_shape_and_dtype_and_is_differentiable(op, dtype):
    torch.manual_seed(0)
    x = torch.rand(4, 3, 16, 16).mul(2).sub(1).to(dtype).requires_grad_(True)
    y = op(x)
    assert y.shape == x.shape and y.dtype == dtype
    y.float().sum().backward()
    assert torch.isfinite(x.grad.float()).all() and x.grad.abs().sum() > 0


def test_ops_do_what_they_say():
    torch.manual_seed(0)
    x = torch.rand(64, 1, 16, 16) + 1  # all pixels > 0, so zeros can only be fill
    shifted = translation(x)
    zero_rows_or_cols = (shifted == 0).all(dim=3).any(dim=(1, 2)) | (shifted == 0).all(dim=2).any(dim=(1, 2))
    assert zero_rows_or_cols.float().mean() > 0.5  # most images moved, filling an edge with zeros
    assert ((shifted == 0).flatten(1).sum(1) <= 16 * 16 - 14 * 14).all()  # by at most 2 = 16/8 pixels a side
    holes = (cutout(x) == 0).flatten(1).sum(1)
    assert holes.max() == 8 * 8 and holes.min() > 0  # a square of half the side, clipped at the edges


def _augment(**kw) -> Augment:
    return Augment(AugmentConfig(name=AugmentName.diffaug, **kw))


def test_augment_is_the_identity_at_p_zero_and_changes_every_sample_at_p_one():
    torch.manual_seed(0)
    x = torch.rand(8, 3, 16, 16) * 2 - 1
    assert torch.equal(_augment(p=0.0)(x), x)
    changed = (_augment(p=1.0, policy=[AugmentOp.color])(x) != x).flatten(1).any(1)
    assert changed.all()
    points = _augment(p=0.5, policy=[AugmentOp.cutout])(x)
    assert 0 < (points != x).flatten(1).any(1).sum() < 8  # some samples, not all, at p = 0.5


def test_ada_raises_p_while_d_is_always_right_and_lowers_it_while_always_wrong():
    up = _augment(p=0.5, adaptive=True, speed_kimg=1.0)  # p moves by (images seen) / 1000
    for _ in range(4):
        up.observe(torch.full((50,), 3.0))  # sign +1: D is sure of every real image (r_t = 1 > 0.6)
    up.adjust()
    assert up.p.item() == pytest.approx(0.5 + 200 / 1000)
    assert up.evidence.sum() == 0  # the evidence starts again
    down = _augment(p=0.5, adaptive=True, speed_kimg=1.0)
    down.observe(torch.full((100,), -1.0))  # r_t = -1 < 0.6
    down.adjust()
    assert down.p.item() == pytest.approx(0.4)
    for _ in range(20):
        down.observe(torch.full((100,), -1.0))
        down.adjust()
    assert down.p.item() == 0.0  # clamped to [0, 1]
    fixed = _augment(p=0.5)  # not adaptive: p stays where the config put it
    fixed.observe(torch.ones(10))
    fixed.adjust()
    assert fixed.p.item() == 0.5


def test_augment_refuses_points_and_bad_values_in_one_line():
    from gancli import cli, train
    from gancli.errors import GancliError

    cases = [
        (["augment=diffaug", "data=ring", "model=mlp"], "2-D points"),
        (["augment=diffaug", "augment.policy=[]"], "augment.policy"),
        (["augment=diffaug", "augment.policy=[colour]"], "augment.policy"),
        (["augment.p=1.5"], "augment.p=1.5"),
        (["ema.half_life_kimg=-1"], "ema.half_life_kimg"),
        (["loss.r2_gamma=-1"], "loss.r2_gamma"),
        (["loss.gp_lambda=-0.5"], "loss.gp_lambda"),
        (["loss.reg_every=0"], "loss.reg_every=0"),
        (["loss=hinge2"], "loss=hinge2"),
        (["model.spectral_norm=all"], "model.spectral_norm"),
    ]
    for overrides, expected in cases:
        with pytest.raises(GancliError) as info:
            cli.preflight(train, ["device=cpu", *overrides])
        assert "\n" not in str(info.value) and expected in str(info.value), (overrides, str(info.value))


# ---- CUDA graph capture falls back to eager, said once (torch.cuda mocked on the CPU) ----

@pytest.fixture
def fake_cuda(monkeypatch):
    """Enough of torch.cuda for GraphedStep: streams, synchronize, and graphs that replay a count."""
    state = {"capturing": False, "replays": 0}

    class Stream:
        def wait_stream(self, other):
            pass

    class CUDAGraph:
        def replay(self):
            state["replays"] += 1

    @contextlib.contextmanager
    def graph(g, pool=None):
        state["capturing"] = True
        try:
            yield
        finally:
            state["capturing"] = False

    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda: Stream())
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", CUDAGraph)
    monkeypatch.setattr(torch.cuda, "graph", graph)
    return state


@pytest.mark.parametrize("capture_fails", [False, True])
def test_a_failed_capture_runs_the_update_eagerly_and_says_so(fake_cuda, capture_fails, caplog):
    runs = []

    def update():
        if fake_cuda["capturing"] and capture_fails:
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing\ndetail")
        if not fake_cuda["capturing"]:
            runs.append(1)

    notes: list[str] = []
    step = GraphedStep(update, warmup=2, name="D's update", notes=notes)
    for _ in range(5):
        step()
    assert step.ready
    if capture_fails:
        assert len(runs) == 5 and fake_cuda["replays"] == 0  # every call ran, two warm-up and three eager
        assert len(notes) == 1 and "cuda_graphs off for D's update" in notes[0] and "\n" not in notes[0]
        assert "capture failed" in caplog.text
    else:
        assert len(runs) == 2 and fake_cuda["replays"] == 3 and notes == []  # capture call replays too


# ---- everything a resumed run needs is in the checkpoint ----

RECIPE = ["loss=rpgan", "loss.r1_gamma=1", "loss.r2_gamma=1", "loss.reg_every=3", "train.d_steps=2",
          "ema.half_life_kimg=0.05", "ema.rampup=0.05", "augment=ada", "augment.interval=2",
          "augment.speed_kimg=0.5", "augment.target=0.01"]


def _tiny(tmp_path, name, steps, *extra):
    from gancli.train import train

    cfg = compose_train("device=cpu", "model.g_width=8", "model.d_width=8", "train.batch_size=16",
                        f"train.steps={steps}", "train.log_every=2", "train.sample_every=0", "train.ckpt_every=0",
                        *RECIPE, *extra)
    return train(cfg, tmp_path / name)


def test_resume_with_ema_augment_and_lazy_regularisation_is_exact(tmp_path):
    _tiny(tmp_path, "straight", 8)
    _tiny(tmp_path, "resumed", 4)
    summary = _tiny(tmp_path, "resumed", 8, "train.resume=auto")
    assert summary["resumed_from"].endswith("last.pt")
    straight = checkpoint.load(tmp_path / "straight" / "checkpoints" / "last.pt")
    resumed = checkpoint.load(tmp_path / "resumed" / "checkpoints" / "last.pt")
    assert {"G_ema", "augment"} <= set(straight)
    assert straight["augment"]["p"] > 0  # ADA moved p, so its state is part of what is compared
    for key in ("G", "D", "G_ema", "augment"):
        for name, value in straight[key].items():
            assert torch.equal(value, resumed[key][name]), f"{key}.{name} differs after resume"
    assert straight["opt_d"]["state"][0]["exp_avg"].equal(resumed["opt_d"]["state"][0]["exp_avg"])
    stats = summary["stats"]
    assert {"r1", "r2", "augment_p", "loss_d", "loss_g"} <= set(stats)


def test_resume_without_the_saved_ema_is_one_clear_line(tmp_path):
    from gancli.errors import GancliError

    _tiny(tmp_path, "run", 2, "ema.half_life_kimg=0")
    with pytest.raises(GancliError, match=r"lacks G_ema; resume with the ema"):
        _tiny(tmp_path, "run", 4, "train.resume=auto")


def test_sample_uses_g_ema_unless_asked_for_the_raw_g(tmp_path):
    from gancli.generator import load_generator
    from gancli.sample import sample

    _tiny(tmp_path, "run", 4)
    path = tmp_path / "run" / "checkpoints" / "last.pt"
    G_ema, state, _ = load_generator(path, torch.device("cpu"))
    G_raw, raw_state, _ = load_generator(path, torch.device("cpu"), use_ema=False)
    assert state["generator"] == "G_ema" and raw_state["generator"] == "G"
    z = torch.randn(4, G_ema.z_dim)
    assert not torch.equal(G_ema(z), G_raw(z))
    out = sample(SampleApp(ckpt=str(path), n=4, out=str(tmp_path / "out"), use_ema=False))
    assert (out / "grid.png").is_file()


def test_ada_counts_images_not_packs_when_d_scores_packs():
    one, packed = _augment(adaptive=True, p=0.0, speed_kimg=1), _augment(adaptive=True, p=0.0, speed_kimg=1)
    one.observe(torch.ones(64))  # 64 images, one logit each
    packed.observe(torch.ones(16), images=64)  # the same 64 images in packs of 4
    one.adjust()
    packed.adjust()
    assert packed.p.item() == one.p.item() == pytest.approx(64 / 1000)
