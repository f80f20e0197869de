import pytest
import torch

from gancli.models import FAMILIES, build_models, classic, dcgan, mlp
from gancli.errors import GancliError
from gancli.models.mlp import Activation

DCGANModel, MLPModel, ClassicModel = dcgan.Config, mlp.Config, classic.Config


def _check(G, D, shape, batch=3):
    z = torch.randn(batch, G.z_dim)
    x = G(z)
    assert x.shape == (batch, *shape)
    logits = D(x)
    assert logits.shape == (batch,)
    assert torch.isfinite(logits).all()
    return x


def test_registry_names():
    """The one list of the families in the tests: every other test takes them from the registry,
    and each family has its YAML and a conditional case."""
    from pathlib import Path

    from test_conditional import FAMILIES as CONDITIONAL_CASES

    assert set(FAMILIES) == {"classic", "dcgan", "mlp", "residual", "resnet", "stylegan2"}
    configs = Path(__file__).resolve().parents[1] / "configs" / "model"
    assert sorted(p.stem for p in configs.glob("*.yaml")) == sorted(FAMILIES)
    assert {cfg.name for cfg, _ in CONDITIONAL_CASES} == set(FAMILIES)


def test_classic_is_the_classic_mnist_gan():
    G, D = build_models(ClassicModel(), (1, 28, 28))
    x = _check(G, D, (1, 28, 28))
    assert x.min() >= -1 and x.max() <= 1  # tanh output
    dense = [m for m in G.modules() if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in dense] == [128, 128, 784]
    convs = [m for m in D.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(m.out_channels, m.kernel_size, m.stride) for m in convs] == [(64, (5, 5), (2, 2)), (128, (5, 5), (2, 2))]
    d_dense = [m for m in D.modules() if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in d_dense] == [1024, 1]


@pytest.mark.parametrize("size", [16, 28, 32, 64, 128])
@pytest.mark.parametrize("channels", [1, 3])
def test_dcgan_shapes(size, channels):
    shape = (channels, size, size)
    G, D = build_models(DCGANModel(g_width=8, d_width=8), shape)
    _check(G, D, shape)


def test_dcgan_widths_are_configurable():
    G, D = build_models(DCGANModel(g_width=16, d_width=4), (3, 64, 64))
    g_convs = [m for m in G.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    d_convs = [m for m in D.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [m.out_channels for m in g_convs] == [128, 64, 32, 16, 3]
    assert [m.out_channels for m in d_convs] == [4, 8, 16, 32, 1]


@pytest.mark.parametrize("shape", [(1, 30, 30), (3, 256, 256), (1, 32, 16), (2,)])
def test_dcgan_rejects_other_shapes(shape):
    with pytest.raises(GancliError, match="data.image_size"):
        build_models(DCGANModel(), shape)


@pytest.mark.parametrize("shape", [(2,), (1, 28, 28), (3, 32, 32)])
@pytest.mark.parametrize("batch_norm", [False, True])
def test_mlp_shapes(shape, batch_norm):
    G, D = build_models(MLPModel(depth=2, width=16, activation=Activation.leaky_relu, batch_norm=batch_norm), shape)
    _check(G, D, shape)
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in G.modules()) == batch_norm


def test_mlp_points_are_unbounded_and_images_are_not():
    G, _ = build_models(MLPModel(depth=1, width=8), (2,))
    assert not any(isinstance(m, torch.nn.Tanh) for m in G.modules())
    G, _ = build_models(MLPModel(depth=1, width=8), (1, 8, 8))
    assert isinstance(list(G.modules())[-1], torch.nn.Tanh)


def test_classic_refuses_points():
    with pytest.raises(GancliError, match="model=mlp"):
        build_models(ClassicModel(), (2,))


def test_same_seed_same_weights():
    torch.manual_seed(3)
    G1, _ = build_models(DCGANModel(g_width=8, d_width=8), (1, 28, 28))
    torch.manual_seed(3)
    G2, _ = build_models(DCGANModel(g_width=8, d_width=8), (1, 28, 28))
    for a, b in zip(G1.state_dict().values(), G2.state_dict().values()):
        assert torch.equal(a, b)


# ---- PacGAN packing ----

@pytest.mark.parametrize("cfg, shape", [
    (DCGANModel(g_width=8, d_width=8, pack=2), (1, 28, 28)),
    (DCGANModel(g_width=8, d_width=8, pack=4), (3, 32, 32)),
    (ClassicModel(g_width=8, d_width=8, d_dense=16, pack=3), (1, 28, 28)),
    (MLPModel(depth=2, width=16, pack=4), (2,)),
])
def test_a_packed_d_scores_consecutive_samples_side_by_side(cfg, shape):
    from gancli.models.base import Packed

    G, D = build_models(cfg, shape)
    m = cfg.pack
    assert isinstance(D, Packed)
    first = next(mod for mod in D.modules() if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear)))
    assert getattr(first, "in_channels", getattr(first, "in_features", None)) == m * shape[0]
    x = G(torch.randn(4 * m, G.z_dim))
    assert x.shape == (4 * m, *shape)  # G is untouched by packing
    D.eval()
    logits = D(x)
    assert logits.shape == (4,)
    # pack i holds samples i m .. i m + m - 1, concatenated along channels (images) or features
    by_hand = torch.cat([x[j::m] for j in range(m)], dim=1)
    assert torch.allclose(logits, D.net(by_hand))


def test_pack_one_is_the_plain_d_and_packs_must_divide_the_batch():
    from gancli import bench, cli, train
    from gancli.models.base import Packed

    _, D = build_models(DCGANModel(g_width=8, d_width=8), (1, 28, 28))
    assert not isinstance(D, Packed)  # checkpoints of unpacked runs keep their keys
    cases = [
        (train, ["model.pack=3"], "model.pack=3 must divide train.batch_size=64"),
        (train, ["model.pack=0"], "model.pack=0"),
        (bench, ["model.pack=2", "bench.batch_size=[64,5]"], "model.pack=2 must divide train.batch_size=5"),
    ]
    for command, overrides, expected in cases:
        with pytest.raises(GancliError) as info:
            cli.preflight(command, ["device=cpu", *overrides])
        assert "\n" not in str(info.value) and expected in str(info.value), (overrides, str(info.value))
    # bench checks the batch sizes it times, not train.batch_size (64, which 3 does not divide)
    cli.preflight(bench, ["device=cpu", "model.pack=3", "bench.batch_size=[48]"])


@pytest.mark.parametrize("overrides", [
    ["experiment=ring", "model.pack=2", "loss=rpgan", "loss.r1_gamma=1", "loss.r2_gamma=1", "train.batch_size=32"],
    ["model.g_width=8", "model.d_width=8", "model.pack=4", "augment=diffaug", "loss.r1_gamma=1", "train.batch_size=16"],
])
def test_packed_training_runs_with_penalties_and_augmentation(tmp_path, overrides):
    from gancli.train import train
    from test_config import compose_train

    cfg = compose_train("device=cpu", "train.steps=4", "train.log_every=2", "train.sample_every=0",
                        "train.ckpt_every=0",
                        *overrides)
    summary = train(cfg, tmp_path / "run")
    assert summary["status"] == "completed" and summary["steps"] == 4
    assert all(torch.isfinite(torch.tensor(float(summary["stats"][key]))) for key in ("loss_d", "loss_g", "r1"))


def _as_torch_computes_it(layer: torch.nn.Module) -> torch.nn.Module:
    """The same layer as plain nn.Conv2d / nn.ConvTranspose2d, with the same weights."""
    from gancli.models.base import ConvToPoint, ConvTransposeFromPoint

    plain = {ConvToPoint: torch.nn.Conv2d, ConvTransposeFromPoint: torch.nn.ConvTranspose2d}[type(layer)]
    twin = plain(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                 bias=layer.bias is not None)
    twin.load_state_dict(layer.state_dict())
    return twin


@pytest.mark.parametrize("kind", ["from_point", "to_point"])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("bias", [False, True])
def test_the_matrix_product_layers_compute_their_convolution(kind, layout, bias):
    # the same outputs, input gradients and weight gradients as torch's convolution, in any layout
    from gancli.models.base import ConvToPoint, ConvTransposeFromPoint

    torch.manual_seed(0)
    if kind == "from_point":  # G's first layer: (B, 6, 1, 1) -> (B, 5, 4, 4)
        layer, x = ConvTransposeFromPoint(6, 5, 4, 1, 0, bias=bias), torch.randn(3, 6, 1, 1)
    else:  # D's last: (B, 6, 4, 4) -> (B, 2, 1, 1)
        layer, x = ConvToPoint(6, 2, 4, 1, 0, bias=bias), torch.randn(3, 6, 4, 4)
    twin = _as_torch_computes_it(layer)
    layer.to(memory_format=layout)
    outs, grads = [], []
    for net in (layer, twin):
        xi = x.clone().contiguous(memory_format=layout).requires_grad_(True)
        y = net(xi)
        y.pow(2).sum().backward()
        outs.append(y)
        grads.append([xi.grad] + [p.grad for p in net.parameters()])
    assert outs[0].shape == outs[1].shape
    torch.testing.assert_close(outs[0], outs[1])
    for mine, theirs in zip(*grads):
        torch.testing.assert_close(mine, theirs)
    assert type(layer).__mro__[1] is type(twin)  # a checkpoint of either loads into the other


def test_the_matrix_product_layers_fall_back_to_the_convolution_elsewhere():
    from gancli.models.base import ConvToPoint, ConvTransposeFromPoint

    torch.manual_seed(0)
    up, down = ConvTransposeFromPoint(3, 2, 4, 2, 1), ConvToPoint(3, 2, 4, 1, 0)
    x = torch.randn(2, 3, 5, 5)  # not 1x1, not the kernel's size
    torch.testing.assert_close(up(x), _as_torch_computes_it(up)(x))
    torch.testing.assert_close(down(x), _as_torch_computes_it(down)(x))


def test_dcgan_uses_the_matrix_product_layers_at_its_ends():
    from gancli.models.base import ConvToPoint, ConvTransposeFromPoint

    G, D = build_models(DCGANModel(g_width=8, d_width=8), (3, 64, 64))
    assert isinstance(G.net[0], ConvTransposeFromPoint) and isinstance(D.net[-1], ConvToPoint)
    assert [type(m) for m in G.modules()].count(ConvTransposeFromPoint) == 1
