"""CUDA paths, skipped where there is no CUDA GPU: the graphs, with the penalties' double
backward, G_ema's update and DiffAugment captured in them, train the model eager trains."""

import json

import pytest
import torch

from test_config import compose_train

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _losses(tmp_path, name, *overrides):
    from gancli.train import train

    cfg = compose_train("device=cuda", "precision=bf16", "train.steps=40", "train.log_every=5", "train.sample_every=0",
                        "train.ckpt_every=0", *overrides)
    summary = train(cfg, tmp_path / name)
    rows = [json.loads(line) for line in (tmp_path / name / "timing.jsonl").read_text().splitlines()]
    return summary, rows


@pytest.mark.parametrize("recipe", [
    [],
    ["model=classic"],  # R1's double backward
    ["experiment=rpgan", "ema.half_life_kimg=1", "augment=diffaug"],  # R1 + R2, G_ema and DiffAugment
    ["experiment=wgan_gp", "loss.reg_every=2"],  # the gradient penalty, lazily: two D graphs
    # StyleGAN2: lazy R1 and path length (two D and two G graphs), style mixing, w_avg and noise inside them
    ["experiment=stylegan2", "model.width=16", "model.width_max=64", "model.z_dim=64", "model.w_dim=64",
     "loss.reg_every=4", "loss.pl_every=2"],
], ids=["dcgan", "classic_r1", "rpgan_ema_diffaug", "wgan_gp_lazy", "stylegan2"])
def test_graphs_train_the_eager_model(tmp_path, recipe):
    _, eager = _losses(tmp_path, "eager", "accel=eager", *recipe)
    summary, fast = _losses(tmp_path, "fast", "accel=fast", *recipe)
    assert summary["accel"]["cuda_graphs"] and not any("capture failed" in n for n in summary["accel"]["notes"])
    # GAN training is chaotic: the two roundings follow one trajectory for the first steps only
    for a, b in zip(eager[:4], fast[:4]):
        for key in ("loss_d", "loss_g"):
            assert b[key] == pytest.approx(a[key], rel=0.02, abs=0.02), (a["step"], key)


def test_a_loaded_checkpoint_replays_in_the_graphs_it_was_captured_for(tmp_path):
    """Resume and rollback load a checkpoint into the state the graphs captured: no second capture,
    and the replayed steps end where they ended the first time."""
    from gancli import checkpoint
    from gancli.run import setup

    run = setup(compose_train("device=cuda", "precision=bf16", "experiment=rpgan", "ema.half_life_kimg=1",
                              "augment=diffaug", "train.batch_size=32"))
    for _ in range(8):  # warm-up and capture
        run.execute()
    captures = run.execute.captures()
    assert captures == 2  # D's update (its penalties on every step) and G's
    checkpoint.save(run.checkpoint(), tmp_path / "step_8.pt")
    for _ in range(4):
        run.execute()
    first = [t.float().clone() for t in run.state.G.state_dict().values()]
    run.state.load_state_dict(checkpoint.load(tmp_path / "step_8.pt"))
    for _ in range(4):
        run.execute()
    assert run.execute.captures() == captures and run.state.step == 12
    for a, b in zip(first, run.state.G.state_dict().values()):
        assert torch.allclose(a, b.float(), rtol=1e-2, atol=1e-3)


def test_schedules_move_inside_the_graphs_without_a_recapture():
    """G's learning rate ramps to 0 over 8 steps, beta2, gamma and the augmentation's p move too:
    the captured steps read the values a schedule writes, so G stops changing once its rate is 0
    (a rate baked in at capture would keep it moving), with no second capture."""
    from gancli.run import setup

    batch = 32
    run = setup(compose_train("device=cuda", "precision=bf16", "model=classic", f"train.batch_size={batch}",
                              "train.steps=100", "schedule.lr_g.shape=linear", "schedule.lr_g.end=0",
                              f"schedule.lr_g.kimg={8 * batch / 1000}", "schedule.beta2.shape=cosine",
                              "schedule.beta2.start=0.9", "schedule.r1_gamma.shape=cosine", "schedule.r1_gamma.end=1",
                              "augment=diffaug", "schedule.augment_p.shape=linear", "schedule.augment_p.start=0"))
    assert run.plan.cuda_graphs and not run.plan.fused_optimizer  # a scheduled beta2: foreach kernels
    for _ in range(9):
        run.execute()
    captures = run.execute.captures()
    assert captures == 2
    before = [p.detach().clone() for p in run.state.G.parameters()]
    d_before = [p.detach().clone() for p in run.state.D.parameters()]
    for _ in range(4):
        run.execute()
    assert float(run.state.opt_g.param_groups[0]["lr"]) == 0.0
    assert all(torch.equal(a, b) for a, b in zip(before, run.state.G.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(d_before, run.state.D.parameters()))
    assert run.execute.captures() == captures


def test_streamed_batches_reach_the_gpu_equal_to_the_device_resident_ones(tmp_path):
    from gancli.data import Batches, Data, StreamBatches

    x = torch.randint(0, 256, (200, 3, 16, 16), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    file = tmp_path / "images.u8"
    x.numpy().tofile(file)  # a prepared set's pixel file
    data = Data(x=x, labels=torch.arange(200) % 7, classes=list("abcdefg"), file=file)
    cuda = torch.device("cuda")
    resident = Batches(data, 32, seed=1, device=cuda, labels=True, xflip=True)
    streamed = StreamBatches(data, 32, seed=1, device=cuda, labels=True, xflip=True)
    assert streamed.threaded and all(b.is_pinned() for b in streamed._buffers)  # pinned: copies need not block
    for k in [*range(20), 3, 4, 40]:  # on, back (a rollback) and ahead (a resume)
        a, b = resident(k), streamed(k)
        assert b.x.device.type == "cuda" and torch.equal(a.x, b.x) and torch.equal(a.c, b.c), k
    streamed.close()
