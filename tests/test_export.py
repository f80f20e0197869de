"""What people do with a trained generator: truncation, style mixing, the Python API
(`gancli.load`) that `gancli sample` is built on, and ONNX and TorchScript export."""

from __future__ import annotations

import builtins
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import gancli
from gancli.config import ExportApp, ExportFormat, SampleApp
from gancli.errors import GancliError
from gancli.generator import Generator
from gancli.models import build_models, classic, dcgan, erfinv, mlp, residual, resnet, stylegan2, truncate_noise
from test_config import compose_train

STYLEGAN2 = ["experiment=stylegan2", "model.width=8", "model.width_max=16", "model.z_dim=16", "model.w_dim=16",
             "train.batch_size=8", "loss.reg_every=2", "loss.pl_every=2", "ema.half_life_kimg=0.05"]


@pytest.fixture(scope="module")
def sg2_run(tmp_path_factory) -> Path:
    """A tiny conditional StyleGAN2 run on the digits (G_ema kept, w_avg moved)."""
    from gancli.train import train

    run = tmp_path_factory.mktemp("sg2") / "run"
    train(compose_train("device=cpu", *STYLEGAN2, "model.conditional=true", "train.steps=3", "train.sample_every=0",
                        "train.ckpt_every=0"), run)
    return run


# ---- truncation ----

def test_erfinv_matches_torchs():
    x = torch.linspace(-0.9999, 0.9999, 20001)
    assert torch.allclose(erfinv(x), torch.erfinv(x), rtol=1e-6, atol=1e-6)


def test_truncated_noise_is_the_raw_noise_at_psi_1_zero_at_0_and_bounded_between():
    z = torch.randn(10000, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(truncate_noise(z, 1.0), z)
    assert not truncate_noise(z, 0.0).any()
    for psi, bound in ((0.5, 1.0), (0.7, 0.7 / 0.3)):
        t = truncate_noise(z, psi)
        assert float(t.abs().max()) <= bound + 1e-5 and float(t.abs().max()) > 0.95 * bound
        order = z[:, 0].argsort()
        assert bool((t[order, 0].diff() >= 0).all())  # each value keeps its rank
    # the values in the middle hardly move: it is a truncation of the normal, not a rescaling
    small = z.abs() < 0.3
    assert torch.allclose(truncate_noise(z, 0.7)[small], z[small], atol=0.02)


def test_psi_0_gives_the_average_image_and_psi_1_the_raw_sample(sg2_run, tiny_run):
    for run in (sg2_run, tiny_run):  # StyleGAN2 truncates in W; the DCGAN its noise
        G = gancli.load(run, device="cpu")
        average = G.sample(6, psi=0.0, seed=3)
        if not G.n_classes:
            assert (average == average[:1]).all()
        raw = G.sample(6, psi=1.0, seed=3)
        z, c = _inputs(G, 6, seed=3)
        with torch.no_grad():
            want = G.net(z, c)
        assert torch.equal(raw, _quantise(want))
    G = gancli.load(sg2_run, device="cpu")
    labels = G.labels(6)
    with torch.no_grad():
        ws = G.net.w_avg.expand(6, G.net.num_ws, -1).contiguous()
        at_average = G.net.synthesis(ws)  # in W every class's psi=0 sample is the one at w_avg
    assert torch.equal(G.sample(6, psi=0.0, seed=3), _quantise(at_average))
    assert labels.tolist() == [0, 1, 2, 3, 4, 5] and G.net.w_avg.abs().sum() > 0


def _inputs(G: Generator, n: int, seed: int):
    from gancli.models import latents

    z, c = latents(G.net, n, torch.device("cpu"), torch.Generator().manual_seed(seed))
    return z, (G.labels(n) if c is not None else None)


def _quantise(x: torch.Tensor) -> torch.Tensor:
    return x.float().clamp(-1, 1).add(1).mul(127.5).add(0.5).to(torch.uint8)


# ---- the Python API and gancli sample ----

def test_load_sample_gives_the_pixels_gancli_sample_writes(sg2_run, tmp_path):
    from gancli.sample import sample

    out = sample(SampleApp(ckpt=str(sg2_run), n=7, seed=4, psi=0.7, classes=["3", "5"], out=str(tmp_path / "s")))
    written = np.stack([np.asarray(Image.open(out / f"{i:06d}.png")) for i in range(7)])  # (7, H, W) grey
    G = gancli.load(sg2_run, device="cpu")
    images = G.sample(7, classes=[3, "5"], psi=0.7, seed=4)
    assert images.dtype == torch.uint8 and images.shape == (7, 1, 28, 28)
    assert np.array_equal(images[:, 0].numpy(), written)
    assert (out / "classes.csv").read_text().splitlines()[1:] == [f"{i:06d},{k}" for i, k in
                                                                  enumerate([3, 3, 3, 3, 5, 5, 5])]
    assert G.which == "G_ema" and G.step == 3 and G.classes == [str(k) for k in range(10)]
    assert isinstance(G.net, torch.nn.Module) and not G.net.training
    assert "G_ema at step 3" in repr(G)


def test_mixing_and_interpolation_in_w(sg2_run, tmp_path):
    from gancli.sample import MIX_SIDE, sample

    out = sample(SampleApp(ckpt=str(sg2_run), n=2, mix=True, interpolate=True, out=str(tmp_path / "m")))
    side = MIX_SIDE + 1
    assert Image.open(out / "mixing.png").size == (side * 30 + 2, side * 30 + 2)  # 28 px tiles, 2 px apart
    assert (out / "interpolation.png").is_file()


def test_mix_needs_a_w_space_and_psi_a_truncation(tiny_run, tmp_path):
    from gancli.sample import sample

    with pytest.raises(GancliError, match="mix=true mixes styles in W, and .* holds a model without a W space"):
        sample(SampleApp(ckpt=str(tiny_run), n=2, mix=True, out=str(tmp_path / "m")))
    assert not (tmp_path / "m").exists()
    with pytest.raises(GancliError, match=r"psi=1.5 is not allowed: a number in \[0, 1\]"):
        SampleApp(ckpt=str(tiny_run), psi=1.5)
    with pytest.raises(GancliError, match="device 'gpu' is not one of auto, cpu"):
        gancli.load(tiny_run, device="gpu")
    with pytest.raises(GancliError, match="unconditional G, which draws no classes"):
        gancli.load(tiny_run, device="cpu").sample(2, classes=[1])


# ---- export ----

FAMILIES = [
    (dcgan.Config(g_width=4, d_width=4, conditional=True), (1, 16, 16)),
    (classic.Config(g_width=8, d_width=4, d_dense=8), (1, 28, 28)),
    (resnet.Config(g_width=4, d_width=4, conditional=True), (3, 32, 32)),
    (residual.Config(width=4, width_max=8, blocks=1, group_size=4), (1, 28, 28)),
    (mlp.Config(depth=1, width=8), (2,)),
    (stylegan2.Config(z_dim=8, w_dim=8, mapping_layers=1, width=4, width_max=8, conditional=True), (3, 32, 32)),
]


def _generator(cfg, shape) -> Generator:
    torch.manual_seed(0)
    n_classes = 4 if cfg.conditional else 0
    G, _ = build_models(cfg, shape, n_classes)
    G.train()
    for _ in range(2):  # batch-norm statistics and w_avg away from their start
        with torch.no_grad():
            G(torch.randn(8, G.z_dim), torch.randint(4, (8,)) if n_classes else None)
    state = {"classes": [str(k) for k in range(n_classes)], "data_shape": list(shape), "step": 0, "generator": "G",
             "w_space": cfg.name == "stylegan2"}
    return Generator(G.eval(), state, Path("memory"), torch.device("cpu"))


@pytest.mark.parametrize("fmt", list(ExportFormat), ids=lambda f: f.value)
@pytest.mark.parametrize("cfg, shape", FAMILIES, ids=lambda v: getattr(v, "name", ""))
def test_round_trip_of_every_family(cfg, shape, fmt, tmp_path):
    from gancli import export

    G = _generator(cfg, shape)
    psi = 0.7
    model = export.Exported(G, psi, None).eval()
    path = tmp_path / f"g{export.SUFFIX[fmt]}"
    write, run = ((export._write_onnx, export._run_onnx) if fmt is ExportFormat.onnx
                  else (export._write_torchscript, export._run_torchscript))
    write(model, export.inputs(G, export.EXAMPLE_BATCH), path)
    for n in (1, 5):  # another batch size than the example's: the batch is free
        example = export.inputs(G, n, seed=n)
        got = run(path, example)
        with torch.no_grad():
            want = model(*example)
        assert got.shape == tuple(want.shape) == (n, *shape)
        assert np.abs(got - want.numpy()).max() < 1e-4
    if len(shape) == 3:
        assert np.abs(got).max() <= 1


def test_gancli_export_on_the_command_line(tiny_run, tmp_path):
    from conftest import run_gancli

    proc = run_gancli("export", f"ckpt={tiny_run}", "format=torchscript", f"out={tmp_path / 'g.pt'}", "psi=0.8",
                      cwd=tmp_path)
    said = proc.stdout + proc.stderr
    assert "as torchscript, inputs z (B, " in said and "psi 0.8 built in" in said
    G = gancli.load(tiny_run, device="cpu")
    z = torch.randn(3, G.z_dim)
    with torch.no_grad():
        want = G.net(truncate_noise(z, 0.8)).clamp(-1, 1)
    with warnings.catch_warnings():  # torch deprecates TorchScript, the file format people still load
        warnings.simplefilter("ignore", FutureWarning)
        loaded = torch.jit.load(str(tmp_path / "g.pt"))
    assert torch.allclose(loaded(z), want, atol=1e-5)


def test_export_command_checks_and_writes_the_file(sg2_run, tmp_path, monkeypatch):
    from gancli.export import export

    path = export(ExportApp(ckpt=str(sg2_run), format=ExportFormat.onnx, psi=0.5))
    assert path == sg2_run / "export" / "generator.onnx" and path.stat().st_size > 0
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["z", "c"]
    G = gancli.load(sg2_run, device="cpu")
    z, c = _inputs(G, 3, seed=0)
    with torch.no_grad():
        want = G.net(z, c, psi=0.5).clamp(-1, 1).numpy()
    got = session.run(None, {"z": z.numpy(), "c": c.numpy()})[0]
    assert np.abs(got - want).max() < 1e-4

    # a graph that differs from torch's beyond the tolerance is refused, and nothing is written
    with pytest.raises(GancliError, match="differs from torch's images by up to .*more than tolerance=1e-12; "
                                          "nothing written"):
        export(ExportApp(ckpt=str(sg2_run), format=ExportFormat.onnx, tolerance=1e-12, out=str(tmp_path / "x.onnx")))
    assert list(tmp_path.iterdir()) == []

    real_import = builtins.__import__

    def without_onnxruntime(name, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError("No module named 'onnxruntime'", name="onnxruntime")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_onnxruntime)
    with pytest.raises(GancliError, match=r"format=onnx needs onnx, onnxscript and onnxruntime \(onnxruntime is "
                                          r"missing\): pip install 'gancli\[export\]'"):
        export(ExportApp(ckpt=str(sg2_run), out=str(tmp_path / "y.onnx")))
    assert list(tmp_path.iterdir()) == []
