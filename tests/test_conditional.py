"""The ResNet and residual families, class-conditional models, and conditional training, sampling
and evaluation end to end (in-process, tiny)."""

from __future__ import annotations

import math

import pytest
import torch

from gancli.errors import GancliError
from gancli.models import build_models, class_rows, classic, dcgan, mlp, residual, resnet, stylegan2
from gancli.models.base import SpectralNorm
from test_config import compose_train


def _count(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


# ---- resnet: SNGAN's layouts ----

def test_resnet_32_is_sngans_cifar_model():
    """SNGAN's CIFAR-10 ResNet: G 256 channels through three up-blocks, D 128 through four blocks
    (two downsampling); 4.3M and 1.1M parameters with RGB images."""
    with torch.device("meta"):
        G, D = build_models(resnet.Config(spectral_norm=SpectralNorm.none), (3, 32, 32))
    assert [b.conv1.out_channels for b in G.blocks] == [256, 256, 256]
    assert [(b.conv1.out_channels, b.down) for b in D.blocks] == [(128, True), (128, True), (128, False), (128, False)]
    assert _count(G) == 4_276_739 and _count(D) == 1_053_825


@pytest.mark.parametrize("side, g_channels, d_channels, downs", [
    (28, [128, 64], [64, 128, 128], 2),
    (48, [256, 128, 64], [64, 128, 256, 512, 1024], 4),  # D: 48 -> 3
    (64, [512, 256, 128, 64], [64, 128, 256, 512, 1024], 5),  # D: 64 -> 2
    (128, [1024, 512, 256, 128, 64], [64, 128, 256, 512, 1024, 1024], 5),
])
def test_resnet_layouts_per_size(side, g_channels, d_channels, downs):
    with torch.device("meta"):  # the widths without allocating the weights
        G, D = build_models(resnet.Config(), (3, side, side))
    assert [b.conv1.out_channels for b in G.blocks] == g_channels
    assert [b.conv1.out_channels for b in D.blocks] == d_channels
    assert sum(b.down for b in D.blocks) == downs
    assert G.base * 2 ** len(G.blocks) == side


@pytest.mark.parametrize("side", [28, 32, 48, 64, 128])
def test_resnet_runs_at_each_size_with_spectral_norm_on_d(side):
    G, D = build_models(resnet.Config(g_width=4, d_width=4, spectral_norm=SpectralNorm.d), (1, side, side))
    x = G(torch.randn(2, G.z_dim))
    assert x.shape == (2, 1, side, side) and x.abs().max() <= 1
    assert D(x).shape == (2,)
    assert any("parametrizations" in name for name, _ in D.named_parameters())
    assert not any("parametrizations" in name for name, _ in G.named_parameters())


def test_resnet_yaml_normalises_d_by_default():
    assert compose_train("model=resnet").model.spectral_norm is SpectralNorm.d


# ---- residual: R3GAN-style, normalisation-free ----

@pytest.mark.parametrize("side, stages", [(28, 3), (32, 4), (64, 5), (256, 7)])
def test_residual_shapes_and_stages(side, stages):
    cfg = residual.Config(width=4, width_max=16, blocks=1, group_size=4)
    G, D = build_models(cfg, (3, side, side))
    assert len(G.stages) == len(D.stages) == stages
    x = G(torch.randn(2, G.z_dim))
    assert x.shape == (2, 3, side, side) and D(x).shape == (2,)
    assert not any(isinstance(m, (torch.nn.BatchNorm2d, torch.nn.GroupNorm)) for m in [*G.modules(), *D.modules()])


def test_residual_blocks_start_as_the_identity_and_use_grouped_convs():
    block = residual.Block(32, residual.Config(expansion=2, group_size=16), n_blocks=4)
    x = torch.randn(2, 32, 8, 8)
    assert torch.equal(block(x), x)  # the last conv starts at zero
    assert block.spatial.groups == 4 and block.expand.out_channels == 64


def test_r3gan_preset_trains_the_residual_family_with_its_objective():
    cfg = compose_train("experiment=r3gan")
    assert cfg.model.name == "residual" and cfg.loss.name.value == "rpgan"
    assert cfg.loss.r1_gamma > 0 and cfg.loss.r2_gamma > 0 and cfg.optimizer.beta1 == 0 and cfg.ema.active


# ---- mlp: PacGAN's D ----

def test_mlp_d_can_differ_from_g_with_maxout():
    cfg = mlp.Config(z_dim=2, depth=4, width=40, batch_norm=True, d_depth=3, d_width=20,
                     d_activation=mlp.Activation.maxout, maxout_pieces=5, init_std=0.02)
    G, D = build_models(cfg, (2,))
    assert [m.out_features for m in G.modules() if isinstance(m, torch.nn.Linear)] == [40, 40, 40, 40, 2]
    maxouts = [m for m in D.modules() if isinstance(m, mlp.Maxout)]
    assert [m.linear.out_features for m in maxouts] == [100, 100, 100]
    assert D(torch.randn(7, 2)).shape == (7,)
    assert abs(float(maxouts[0].linear.weight.detach().std()) - 0.02) < 0.005


def test_maxout_is_the_largest_piece():
    layer = mlp.Maxout(3, 2, pieces=4)
    x = torch.randn(5, 3)
    assert torch.equal(layer(x), layer.linear(x).view(5, 2, 4).amax(2))


def test_pacgan_2d_preset_is_the_papers_setup():
    cfg = compose_train("experiment=pacgan_2d")
    m = cfg.model
    assert (m.z_dim, m.depth, m.width, m.batch_norm, m.d_depth, m.d_width, m.d_activation.value) == \
        (2, 4, 400, True, 3, 200, "maxout")
    assert (cfg.optimizer.lr, cfg.optimizer.beta1, cfg.train.batch_size, cfg.data.n) == (1e-4, 0.8, 100, 100_000)
    assert cfg.eval.every == cfg.train.steps and cfg.eval.n == 2500


# ---- conditional models ----

FAMILIES = [
    (dcgan.Config(g_width=4, d_width=4, conditional=True), (1, 16, 16)),
    (mlp.Config(depth=1, width=8, conditional=True), (2,)),
    (classic.Config(g_width=8, d_width=4, d_dense=8, conditional=True), (1, 12, 12)),
    (resnet.Config(g_width=4, d_width=4, conditional=True), (1, 28, 28)),
    (residual.Config(width=4, width_max=8, blocks=1, group_size=4, conditional=True), (1, 28, 28)),
    (stylegan2.Config(z_dim=8, w_dim=8, mapping_layers=1, width=4, width_max=8, conditional=True), (1, 28, 28)),
]


@pytest.mark.parametrize("cfg, shape", FAMILIES, ids=lambda v: getattr(v, "name", ""))
def test_conditional_outputs_depend_on_the_class(cfg, shape):
    torch.manual_seed(0)
    G, D = build_models(cfg, shape, n_classes=5)
    for net in (G, D):  # train-mode batch norm would mix the batch; the class alone must matter
        net.eval()
        for p in net.parameters():  # residual's zero-initialised convs would hide the class at init
            if p.dim() > 1 and not p.abs().sum():
                torch.nn.init.normal_(p, 0, 0.1)
        for module in net.modules():  # per-class batch-norm scales start equal
            if hasattr(module, "takes_class"):
                torch.nn.init.normal_(module.gain.weight, 0, 0.1)
    assert G.n_classes == 5
    z = torch.randn(1, G.z_dim).repeat(2, 1)
    c = torch.tensor([1, 3])
    x = G(z, c)
    assert x.shape == (2, *shape) and not torch.allclose(x[0], x[1])
    same = x[:1].repeat(2, *[1] * len(shape))
    logits = D(same, c)
    assert logits.shape == (2,) and not torch.allclose(logits[0], logits[1])


@pytest.mark.parametrize("cfg, shape", FAMILIES, ids=lambda v: getattr(v, "name", ""))
def test_unconditional_checkpoint_keys_are_unchanged(cfg, shape):
    """conditional=false builds exactly the networks there were before conditioning existed."""
    plain = type(cfg)(**{**cfg.__dict__, "conditional": False})
    G, D = build_models(plain, shape, n_classes=5)
    assert G.n_classes == 0
    keys = [*G.state_dict(), *D.state_dict()]
    assert not any("embed" in k or "project" in k or ".bn." in k for k in keys)


def test_conditional_batch_norm_starts_as_batch_norm_and_skips_spectral_norm():
    from gancli.models.base import ConditionalBatchNorm

    cbn = ConditionalBatchNorm(6, n_classes=4)
    x = torch.randn(8, 6, 3, 3)
    assert torch.allclose(cbn(x, torch.arange(8) % 4), torch.nn.functional.batch_norm(x, None, None, training=True))
    G, _ = build_models(dcgan.Config(g_width=4, d_width=4, conditional=True, spectral_norm=SpectralNorm.both),
                        (1, 16, 16), n_classes=4)
    assert torch.isfinite(G(torch.randn(3, G.z_dim), torch.tensor([0, 1, 2]))).all()  # no 0/0 from zero maps
    assert not any("parametrizations" in n for n, _ in G.named_parameters() if ".bn" in n or "gain" in n)


def test_conditional_needs_classes_and_refuses_packing():
    with pytest.raises(GancliError, match="number of classes"):
        build_models(dcgan.Config(conditional=True), (1, 28, 28), n_classes=0)
    with pytest.raises(GancliError, match="model.pack=2 cannot be combined with model.conditional=true"):
        dcgan.Config(conditional=True, pack=2)


@pytest.mark.parametrize("overrides, expected", [
    (["data=fake"], "data=fake has none"),
    (["data=folder"], "data.path"),
])
def test_conditional_on_unlabelled_data_is_one_line(overrides, expected, tmp_path):
    from gancli.train import check

    cfg = compose_train("model.conditional=true", "device=cpu", *overrides)
    with pytest.raises(GancliError, match=expected):
        check(cfg)


def test_folder_classes_are_its_subfolders(tmp_path):
    from PIL import Image

    from gancli.data import class_names, load_data
    from gancli.train import check

    for name, n in (("cat", 2), ("dog", 3)):
        (tmp_path / "pets" / name).mkdir(parents=True)
        for i in range(n):
            Image.new("L", (8, 8), color=40 * i).save(tmp_path / "pets" / name / f"{i}.png")
    cfg = compose_train("data=folder", f"data.path={tmp_path / 'pets'}", "data.image_size=16", "model.conditional=true",
                        "device=cpu")
    check(cfg)
    assert class_names(cfg.data) == ["cat", "dog"]
    data = load_data(cfg.data, 0)
    assert data.labels.tolist() == [0, 0, 1, 1, 1] and data.classes == ["cat", "dog"]
    Image.new("L", (8, 8)).save(tmp_path / "pets" / "loose.png")  # an image outside any class folder
    assert class_names(cfg.data) is None and load_data(cfg.data, 0).labels is None


def test_class_rows_put_one_class_per_row():
    labels, cols = class_rows(10, 64)
    assert cols == 6 and labels.tolist() == [k for k in range(10) for _ in range(6)]
    labels, cols = class_rows(1000, 64)  # many classes: the first ten, one row each
    assert cols == 6 and labels.max() == 9
    labels, cols = class_rows(3, 2)
    assert labels.tolist() == [0, 1] and cols == 1


def test_per_class_fd_scores_each_class_apart():
    from gancli.metrics import per_class_fd

    gen = torch.Generator().manual_seed(0)
    real = torch.randn(400, 4, generator=gen)
    labels = torch.arange(400) % 2
    fake = real.clone()
    fake[labels == 1] += 3.0  # class 1 drawn in the wrong place, class 0 exactly right
    fds = per_class_fd(real, labels, fake, labels, n_classes=3)
    assert fds[0] == pytest.approx(0, abs=1e-6) and fds[1] == pytest.approx(4 * 9, rel=1e-3)
    assert math.isnan(fds[2])  # no samples of class 2


def test_class_args_read_class_and_comma_lists():
    from gancli.sample import class_args

    assert class_args(["class=3", "n=8"]) == ["classes=[3]", "n=8"]
    assert class_args(["classes=0,1,2"]) == ["classes=[0,1,2]"]
    assert class_args(["classes=[4,5]", "ckpt=run"]) == ["classes=[4,5]", "ckpt=run"]


def test_class_and_classes_together_are_one_line(tiny_run, capsys):
    from gancli import cli

    with pytest.raises(SystemExit) as info:  # the real dispatcher: not the later value silently
        cli.main(["sample", f"ckpt={tiny_run}", "class=3", "classes=1,2"])
    assert info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "gancli: error: class=3 and classes=1,2 each name the classes to sample; give one of them"]


@pytest.fixture(scope="module")
def conditional_run(tmp_path_factory, shared_cache_dir):
    """A tiny conditional DCGAN on the digits, evaluated at its end."""
    from gancli.train import train

    run = tmp_path_factory.mktemp("cond") / "run"
    cfg = compose_train("model.conditional=true", "model.g_width=8", "model.d_width=8", "train.steps=4",
                        "train.batch_size=16", "train.log_every=2", "train.sample_every=4", "train.sample_n=20",
                        "eval.every=4", "eval.n=100", "device=cpu", f"eval.cache_dir={shared_cache_dir}")
    summary = train(cfg, run)
    return run, summary


@pytest.mark.slow
def test_conditional_training_saves_class_names_and_scores_asked_classes(conditional_run):
    from gancli.checkpoint import load

    run, summary = conditional_run
    state = load(run / "checkpoints" / "last.pt")
    assert state["classes"] == [str(i) for i in range(10)]
    metrics = summary["metrics"]
    assert 0 <= metrics["class_accuracy"] <= 1 and len(metrics["fd_per_class"]) == 10
    assert metrics["fd_class_mean"] > 0


def test_sample_class_writes_that_class(conditional_run, tmp_path):
    from gancli.config import SampleApp
    from gancli.sample import sample

    run, _ = conditional_run
    out = sample(SampleApp(ckpt=str(run), n=6, classes=["3"], out=str(tmp_path / "three")))
    rows = (out / "classes.csv").read_text().splitlines()
    assert rows[0] == "index,class" and [r.split(",")[1] for r in rows[1:]] == ["3"] * 6
    out = sample(SampleApp(ckpt=str(run), n=7, classes=["0", "2", "9"], out=str(tmp_path / "three_classes")))
    assert [r.split(",")[1] for r in (out / "classes.csv").read_text().splitlines()[1:]] == \
        ["0", "0", "0", "2", "2", "2", "9"]
    assert len(list(out.glob("0*.png"))) == 7
    with pytest.raises(GancliError, match="class 12 is not one of the 10 classes"):
        sample(SampleApp(ckpt=str(run), n=2, classes=["12"], out=str(tmp_path / "bad")))
    assert not (tmp_path / "bad").exists()


def test_same_noise_other_class_gives_other_images(conditional_run, tmp_path):
    from gancli.generator import load_generator

    run, _ = conditional_run
    G, _, _ = load_generator(run, torch.device("cpu"))
    z = torch.randn(2, G.z_dim)
    with torch.no_grad():
        a, b = G(z, torch.tensor([1, 1])), G(z, torch.tensor([7, 7]))
    assert not torch.allclose(a, b)


def test_unconditional_checkpoint_refuses_classes(tiny_run, tmp_path):
    from gancli.config import SampleApp
    from gancli.sample import sample

    with pytest.raises(GancliError, match="unconditional G"):
        sample(SampleApp(ckpt=str(tiny_run), n=2, classes=["1"], out=str(tmp_path / "x")))
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("overrides", [
    ["model=resnet", "model.conditional=true", "model.g_width=4", "model.d_width=4"],
    ["experiment=r3gan", "model.width=4", "model.width_max=8", "model.group_size=4", "data.image_size=32"],
    ["experiment=stylegan2", "model.width=4", "model.width_max=8", "data.image_size=32", "model.conditional=true"],
])
def test_new_families_pass_start_up_checks_and_count_flops(overrides):
    from gancli.flops import step_flops
    from gancli.train import check

    cfg = compose_train("device=cpu", "train.batch_size=4", *overrides)
    check(cfg)  # built on the meta device
    assert step_flops(cfg, (1, cfg.data.image_size, cfg.data.image_size)) > 0
