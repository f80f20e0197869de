"""Devices, precisions and the accel variants, on the CPU (CUDA and MPS mocked where needed)."""

import json
import os
from pathlib import Path

import pytest
import torch

from conftest import TINY, is_png, read_json, run_gancli
from gancli import checkpoint, cli, runtime, train
from gancli.accel import plan_accel, plan_for
from gancli.config import AccelConfig, AccelName, CompileMode, DeviceConfig, DeviceType, Precision
from gancli.errors import GancliError
from gancli.flops import step_flops
from gancli.state import TrainState
from gancli.step import Executor
from gancli.timing import SectionTimer
from test_config import compose_train

CPU = torch.device("cpu")


def test_cpu_precisions():
    runtime.check_precision(CPU, Precision.fp32)
    runtime.check_precision(CPU, Precision.bf16)
    with pytest.raises(GancliError, match="fp16"):
        runtime.check_precision(CPU, Precision.fp16)
    with pytest.raises(GancliError, match="tf32"):
        runtime.check_precision(CPU, Precision.tf32)


def test_autocast_per_precision():
    assert not isinstance(runtime.autocast(CPU, Precision.fp32), torch.autocast)
    with runtime.autocast(CPU, Precision.bf16):
        y = torch.nn.Linear(4, 4)(torch.randn(2, 4))
    assert y.dtype == torch.bfloat16
    assert not runtime.grad_scaler(CPU, Precision.bf16).is_enabled()


def test_absent_devices_are_errors_not_fallbacks(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert runtime.resolve_device(DeviceConfig(type=DeviceType.auto)) == CPU
    with pytest.raises(GancliError, match="device=cuda"):
        runtime.resolve_device(DeviceConfig(type=DeviceType.cuda))
    with pytest.raises(GancliError, match="device=mps"):
        runtime.resolve_device(DeviceConfig(type=DeviceType.mps))


def test_cuda_index_is_checked(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert runtime.resolve_device(DeviceConfig(type=DeviceType.cuda, index=1)) == torch.device("cuda", 1)
    with pytest.raises(GancliError, match="device.index=2"):
        runtime.resolve_device(DeviceConfig(type=DeviceType.cuda, index=2))


def test_cuda_colon_index_spelling():
    assert cli._device_index("device=cuda:3") == ["device=cuda", "device.index=3"]
    assert cli._device_index("device=cpu") == ["device=cpu"]


def test_mps_selection_and_precisions_with_the_backend_mocked(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    mps = runtime.resolve_device(DeviceConfig(type=DeviceType.auto))
    assert mps == torch.device("mps") == runtime.resolve_device(DeviceConfig(type=DeviceType.mps))
    runtime.check_precision(mps, Precision.fp16)
    with pytest.raises(GancliError, match="tf32"):
        runtime.check_precision(mps, Precision.tf32)
    monkeypatch.setattr(torch.backends.mps, "is_macos_or_newer", lambda major, minor: False, raising=False)
    with pytest.raises(GancliError, match="macOS 14"):
        runtime.check_precision(mps, Precision.bf16)
    monkeypatch.setattr(torch.backends.mps, "is_macos_or_newer", lambda major, minor: True, raising=False)
    runtime.check_precision(mps, Precision.bf16)
    plan = plan_accel(AccelConfig(), mps, Precision.fp16, has_convs=True)
    assert not plan.cuda_graphs and any("mps" in note for note in plan.notes)


@pytest.mark.parametrize(
    "device,precision,accel,expected",
    [
        ("cpu", Precision.fp32, AccelConfig(), "not CUDA"),
        ("cuda", Precision.fp16, AccelConfig(), "fp16"),
        ("cuda", Precision.bf16, AccelConfig(host_syncs=True), "host syncs"),
        ("cuda", Precision.bf16, AccelConfig(compile=CompileMode.reduce_overhead), "makes CUDA graphs itself"),
        ("cuda", Precision.bf16, AccelConfig(compile=CompileMode.max_autotune), "makes CUDA graphs itself"),
    ],
)
def test_graphs_say_why_they_are_off(device, precision, accel, expected):
    plan = plan_accel(accel, torch.device(device), precision, has_convs=True)
    assert not plan.cuda_graphs
    assert len(plan.notes) == 1 and expected in plan.notes[0]
    assert plan.used()["cuda_graphs"] is False


def test_graphs_planned_on_cuda_bf16():
    plan = plan_accel(AccelConfig(), torch.device("cuda"), Precision.bf16, has_convs=True)
    assert plan.cuda_graphs and plan.notes == []
    # compile's default mode makes no graphs of its own: the compiled step is captured in ours
    plan = plan_accel(AccelConfig(compile=CompileMode.default), torch.device("cuda"), Precision.bf16,
                              has_convs=True)
    assert plan.cuda_graphs and plan.compile == "default" and plan.notes == []
    plan = plan_accel(AccelConfig(channels_last=True), CPU, Precision.fp32, has_convs=False)
    assert not plan.channels_last and "channels_last" in plan.notes[-1]


@pytest.mark.parametrize(
    "device,precision,has_convs,expected",
    [
        ("cuda", Precision.bf16, True, True),
        ("cuda", Precision.fp16, True, True),
        ("cuda", Precision.fp32, True, False),
        ("cuda", Precision.tf32, True, False),
        ("cuda", Precision.bf16, False, False),
        ("cpu", Precision.bf16, True, True),
        ("cpu", Precision.fp32, True, True),
        ("cpu", Precision.fp32, False, False),
        ("mps", Precision.fp16, True, False),
    ],
)
def test_channels_last_left_open_turns_on_where_it_helps(device, precision, has_convs, expected):
    plan = plan_accel(AccelConfig(channels_last=None), torch.device(device), precision, has_convs=has_convs)
    assert plan.channels_last is expected and not any("channels_last" in note for note in plan.notes)
    forced = plan_accel(AccelConfig(channels_last=False), torch.device(device), precision, has_convs=has_convs)
    assert forced.channels_last is False


def test_accel_presets():
    baseline = compose_train("accel=baseline").accel
    assert baseline.name is AccelName.baseline and baseline.dataloader and baseline.host_syncs
    assert not (baseline.fused_optimizer or baseline.cuda_graphs)
    fast = compose_train().accel  # the default
    assert fast.name is AccelName.fast and fast.fused_optimizer and fast.cuda_graphs and not fast.host_syncs
    assert fast.channels_last is None  # decided by plan_accel from the device and precision
    assert compose_train("accel=eager").accel.channels_last is False
    assert compose_train("accel.channels_last=true").accel.channels_last is True
    assert compose_train("accel.compile=reduce_overhead").accel.compile is CompileMode.reduce_overhead


def _train(tmp_path, name, *overrides):
    from gancli.train import train

    cfg = compose_train("device=cpu", "model.g_width=8", "model.d_width=8", "train.batch_size=32",
                        "train.log_every=5", "train.sample_every=0", "train.ckpt_every=0", *overrides)
    summary = train(cfg, tmp_path / name)
    rows = [json.loads(line) for line in (tmp_path / name / "timing.jsonl").read_text().splitlines()]
    return summary, rows


@pytest.mark.parametrize("accel", ["baseline", "eager", "fast"])
def test_each_variant_trains(tmp_path, accel):
    summary, rows = _train(tmp_path, accel, f"accel={accel}", "train.steps=6", "train.log_every=3")
    assert summary["status"] == "completed" and summary["steps"] == 6
    assert summary["accel"]["name"] == accel and summary["accel"]["cuda_graphs"] is False
    assert summary["accel"]["dataloader"] == (accel == "baseline")
    assert [r["step"] for r in rows] == [3, 6] and all(0 < r["mfu"] < 1 for r in rows)
    assert is_png(tmp_path / accel / "samples" / "step_000006.png")


def test_fast_trains_the_same_model_as_eager(tmp_path):
    _, eager = _train(tmp_path, "eager", "accel=eager", "train.steps=40")
    _, fast = _train(tmp_path, "fast", "accel=fast", "train.steps=40")
    assert len(eager) == len(fast) == 8
    for a, b in zip(eager, fast):
        assert a["loss_d"] == pytest.approx(b["loss_d"], rel=1e-3, abs=1e-3)
        assert a["loss_g"] == pytest.approx(b["loss_g"], rel=1e-3, abs=1e-3)


def test_baseline_reads_five_values_per_step():
    cfg = compose_train("experiment=none", "device=cpu", "accel=baseline", "model=mlp", "model.width=8", "data=ring",
                        "train.batch_size=8")
    from gancli.data import load_data

    plan = plan_accel(cfg.accel, CPU, Precision.fp32, has_convs=False)
    step_fn = _executor(cfg, load_data(cfg.data, 0), plan)
    calls = []
    original = torch.Tensor.item
    # count reads of values computed by the step (the optimizers' own CPU step counters are not syncs)
    torch.Tensor.item = lambda self: (self.grad_fn is not None and calls.append(1)) or original(self)
    try:
        step_fn()
    finally:
        torch.Tensor.item = original
    assert len(calls) == 5
    assert set(step_fn.take_stats()) == {"loss_d", "loss_g", "d_real", "d_fake", "d_fake_after"}


def _executor(cfg, data, plan):
    """An executor over a new state for `cfg`, as set-up builds them."""
    state = TrainState(cfg, data.shape, len(data.classes or []) if cfg.model.conditional else 0, CPU, plan)
    return Executor(cfg, state, data, plan, SectionTimer(CPU))


def test_scalers_round_trip_through_a_checkpoint(tmp_path):
    cfg = compose_train("device=cpu", "model=mlp", "model.width=8", "data=ring", "train.batch_size=8")
    from gancli.data import load_data

    data = load_data(cfg.data, 0)
    plan = plan_accel(cfg.accel, CPU, Precision.fp32, has_convs=False)
    step_fn = TrainState(cfg, data.shape, 0, CPU, plan)
    # the scalers fp16 uses (CUDA/MPS), built on the CPU here with a scale of their own
    step_fn.scaler_g = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=7)
    step_fn.scaler_d = torch.amp.GradScaler("cpu", init_scale=64.0)
    step_fn.scaler_g.scale(torch.ones(()))  # the scale tensor exists once used
    step_fn.scaler_d.scale(torch.ones(()))
    checkpoint.save({"config": {}, "data_shape": [2], **step_fn.state_dict()}, tmp_path / "c.pt")
    restored = TrainState(cfg, data.shape, 0, CPU, plan)
    restored.scaler_g = torch.amp.GradScaler("cpu")
    restored.scaler_d = torch.amp.GradScaler("cpu")
    restored.load_state_dict(checkpoint.load(tmp_path / "c.pt"))
    assert restored.scaler_g.get_scale() == 1024.0 and restored.scaler_g.get_growth_interval() == 7
    assert restored.scaler_d.get_scale() == 64.0


def test_step_flops_scale_with_batch_and_d_steps():
    cfg = compose_train("model=classic", "loss.r1_gamma=0")
    one = step_flops(cfg, (1, 28, 28))
    assert one > 0
    cfg.train.batch_size *= 2
    assert step_flops(cfg, (1, 28, 28)) == 2 * one
    cfg.train.d_steps = 2
    assert step_flops(cfg, (1, 28, 28)) > 2 * one


def test_bench_writes_its_table(tmp_path):
    proc = run_gancli("bench", "model=mlp", "model.width=16", "data.n=256", "train.batch_size=8,16",
                      "accel=baseline,fast", "precision=fp32", "bench.warmup=1", "bench.steps=2", "bench.repeats=2",
                      "device=cpu",
                      f"hydra.run.dir={tmp_path / 'bench'}", cwd=tmp_path)
    rows = read_json(tmp_path / "bench" / "bench.json")
    assert [(r["variant"], r["batch_size"]) for r in rows] == [("baseline", 8), ("fast", 8), ("baseline", 16),
                                                               ("fast", 16)]
    for row in rows:
        assert set(row) >= {"variant", "batch_size", "precision", "ms_per_step", "img_per_s", "speedup", "mfu",
                            "peak_mem_mb"}
        assert row["ms_per_step"] > 0 and row["img_per_s"] > 0 and row["mfu"] > 0
        assert row["img_per_s"] == pytest.approx(row["batch_size"] / row["ms_per_step"] * 1000, rel=0.01)
    assert rows[0]["speedup"] == 1.0 and rows[2]["speedup"] == 1.0
    assert (tmp_path / "bench" / "bench.csv").read_text().splitlines()[0].startswith("variant,batch_size,precision")
    assert "img_per_s" in proc.stdout


def test_bench_refuses_a_bad_variant_before_timing(tmp_path):
    proc = run_gancli("bench", "accel=baseline,turbo", "device=cpu", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "accel=turbo" in proc.stderr and "Traceback" not in proc.stderr
    from gancli import bench
    from gancli.errors import GancliError

    with pytest.raises(GancliError, match="fp16"):
        cli.preflight(bench, bench.split_axes(["precision=fp32,fp16", "device=cpu"]))


def test_bench_times_the_rest_when_a_variant_fails(tmp_path, monkeypatch):
    from hydra import compose, initialize_config_module

    from gancli import bench
    from gancli.config import to_typed
    from gancli.errors import GancliError

    real_time_variant = bench.time_variant

    def capture_fails_for_fast(cfg, *args, **kwargs):
        if cfg.accel.name.value == "fast":
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing\nmore detail")
        return real_time_variant(cfg, *args, **kwargs)

    monkeypatch.setattr(bench, "time_variant", capture_fails_for_fast)
    overrides = ["model=mlp", "model.width=16", "data.n=64", "device=cpu"]
    with initialize_config_module("gancli.configs", version_base="1.3"):
        cfg = to_typed(compose("bench", overrides=[*overrides, "bench.accel=[baseline,fast,eager]",
                                                   "bench.precision=[fp32]", "bench.batch_size=[8]",
                                                   "bench.warmup=1", "bench.steps=1",
                                                   "bench.repeats=1"]))
        with pytest.raises(GancliError, match="1 of 3 variants failed"):
            bench.bench(cfg, tmp_path, overrides)
    rows = read_json(tmp_path / "bench.json")
    assert [r["variant"] for r in rows] == ["baseline", "fast", "eager"]
    assert rows[1]["error"] == "RuntimeError: CUDA error: operation not permitted when stream is capturing"
    assert rows[1]["ms_per_step"] is None and rows[1]["speedup"] is None
    assert rows[2]["ms_per_step"] > 0 and rows[2]["speedup"] is not None  # timed; its ratio can round to 0
    assert "error" in (tmp_path / "bench.csv").read_text().splitlines()[0]
    assert "Traceback" in (tmp_path / "bench_errors.txt").read_text()


def test_r1_penalty_counts_in_the_step_flops_and_is_tried_in_graphs():
    plain = step_flops(compose_train("experiment=none", "model=classic", "loss.r1_gamma=0"), (1, 28, 28))
    # classic's own gamma is 10
    assert step_flops(compose_train("experiment=none", "model=classic"), (1, 28, 28)) > plain
    # the double backward is captured like the rest of the step (GraphedStep runs it eagerly,
    # with a note, should its capture fail)
    cfg = compose_train("experiment=none", "model=classic", "device=cpu")
    assert cfg.loss.double_backward
    assert plan_for(cfg, torch.device("cuda")).cuda_graphs
    # torch.compile cannot differentiate a gradient again: the plan leaves it out, and says why
    compiled = plan_for(compose_train("model=classic", "accel.compile=default"), torch.device("cuda"))
    assert compiled.compile is None and compiled.cuda_graphs
    assert "compile off" in compiled.notes[0] and "gradient penalty" in compiled.notes[0]
    assert plan_for(compose_train("experiment=none", "accel.compile=default"), CPU).compile == "default"


def test_r1_penalty_lowers_the_discriminators_input_gradient(tmp_path):
    """Training D with the penalty leaves it flatter at the real images than training without."""
    from gancli.data import load_data

    def grad_norm(gamma):
        cfg = compose_train("model=classic", f"loss.r1_gamma={gamma}", "train.batch_size=16", "device=cpu")
        data = load_data(cfg.data, 0)
        runtime.seed_everything(0)
        step_fn = _executor(cfg, data, plan_for(cfg, CPU))
        for _ in range(30):
            step_fn()
        real = step_fn.batches(0).x.requires_grad_(True)
        (grad,) = torch.autograd.grad(step_fn.state.D(real).sum(), real)
        return grad.pow(2).flatten(1).sum(1).mean().item()
    assert grad_norm(10) < 0.5 * grad_norm(0)


# ---- precision=auto and the CPU's threads ----

@pytest.mark.parametrize("device, probe, expected, why", [
    ("cpu", "AMX", Precision.bf16, "this CPU computes bf16 natively (AMX)"),
    ("cpu", "AVX512-BF16", Precision.bf16, "this CPU computes bf16 natively (AVX512-BF16)"),
    ("cpu", None, Precision.fp32, "neither AMX nor AVX512-BF16"),
    ("cuda", (8, 0), Precision.bf16, "compute capability 8.0 has bf16 tensor cores"),
    ("cuda", (7, 5), Precision.fp32, "compute capability 7.5 is older than 8.0"),
    ("mps", None, Precision.fp32, "bf16 on mps has not been measured faster"),
])
def test_auto_precision_is_bf16_where_the_device_computes_it_natively(monkeypatch, device, probe, expected, why):
    monkeypatch.setattr(runtime, "cpu_bf16_feature", lambda: probe)  # (the real one is cached)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: probe)
    precision, reason = runtime.resolve_precision(torch.device(device), Precision.auto)
    assert precision is expected and why in reason
    assert runtime.resolve_precision(torch.device(device), Precision.fp32) == (Precision.fp32, "asked for")


def test_auto_is_the_default_and_a_run_records_what_it_chose(tmp_path):
    assert compose_train().precision.name is Precision.auto
    run = [a for a in TINY if not a.startswith("precision=")]
    summary = train.train(compose_train(*run), tmp_path / "run")
    expected, why = runtime.resolve_precision(torch.device("cpu"), Precision.auto)
    assert summary["precision"] == expected.value and summary["precision_reason"] == why
    assert read_json(tmp_path / "run" / "summary.json")["precision_reason"] == why
    assert f"name: {expected.value}" in (tmp_path / "run" / "config.yaml").read_text()  # the concrete precision


def test_cpu_bf16_probe_agrees_with_linux_cpu_flags():
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else None
    if flags is None:
        pytest.skip("no /proc/cpuinfo here")
    has = "amx_bf16" in flags.split() or "avx512_bf16" in flags.split()
    assert (runtime.cpu_bf16_feature() is not None) == has


def _cores_in_cpuinfo() -> int | None:
    """Distinct (physical id, core id) pairs in Linux's /proc/cpuinfo, or None where it has none."""
    path = Path("/proc/cpuinfo")
    if not path.is_file():
        return None
    cores, package = set(), None
    for line in path.read_text().splitlines():
        key, _, value = (part.strip() for part in line.partition(":"))
        if key == "physical id":
            package = value
        elif key == "core id":
            cores.add((package, value))
    return len(cores) or None


def test_cpu_threads_default_to_the_physical_cores(monkeypatch):
    cores = runtime.physical_cores()
    listed = _cores_in_cpuinfo()
    ours = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    if listed is not None and ours == os.cpu_count():  # every CPU is ours: all its cores count
        assert cores == listed  # the topology files and /proc/cpuinfo agree
    else:
        assert cores >= 1
    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS")
        runtime.configure_backends(torch.device("cpu"), Precision.fp32)
        assert torch.get_num_threads() == cores
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        torch.set_num_threads(1)
        runtime.configure_backends(torch.device("cpu"), Precision.fp32)  # the user's setting stands
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("feature, expected", [("AVX512-BF16", [("fp32", "fp32"), ("auto", "bf16")]),
                                               (None, [("fp32", "fp32")])])
def test_bench_times_what_train_runs_beside_fp32(monkeypatch, feature, expected):
    """By default bench times fp32 and precision=auto, the precision `gancli train` picks; on a CPU
    without native bf16, auto is fp32, timed once."""
    from gancli import bench

    monkeypatch.setattr(runtime, "cpu_bf16_feature", lambda: feature)
    cfg = compose_train_bench("device=cpu")
    assert cfg.bench.precision == ["fp32", "auto"] and cfg.precision.name is Precision.auto
    assert bench._precisions(cfg) == expected


def compose_train_bench(*overrides):
    from hydra import compose, initialize_config_module

    from gancli.config import to_typed

    with initialize_config_module("gancli.configs", version_base="1.3"):
        return to_typed(compose("bench", overrides=list(overrides)))
