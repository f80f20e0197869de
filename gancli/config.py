"""Typed config schemas behind the YAML in configs/, registered in Hydra's ConfigStore.

Hydra composes the YAML onto these dataclasses, so a wrong type or an unknown key fails at
composition; `__post_init__` checks ranges when the config is turned into objects once, at
start-up, by `to_typed`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf, open_dict

from gancli.errors import GancliError, at_least, require
from gancli.datasets import DATASETS
from gancli.models import FAMILIES, RENAMED


# one member per data set of datasets.DATASETS, where each states its traits
DataName = Enum("DataName", {name: name for name in DATASETS}, module=__name__)


class Split(Enum):
    train = "train"
    test = "test"


class Fit(Enum):
    """How a folder's non-square image becomes square."""

    crop = "crop"  # the largest centred square (StyleGAN's dataset_tool --transform=center-crop)
    pad = "pad"  # the whole image, centred on black


class OptimizerName(Enum):
    adam = "adam"
    sgd = "sgd"
    rmsprop = "rmsprop"


class LossName(Enum):
    ns = "ns"
    minimax = "minimax"
    hinge = "hinge"
    wasserstein = "wasserstein"
    lsgan = "lsgan"
    rpgan = "rpgan"


class AugmentName(Enum):
    none = "none"
    diffaug = "diffaug"


class AugmentOp(Enum):
    color = "color"  # brightness, saturation and contrast
    translation = "translation"  # a shift of up to 1/8 of the side, zero-padded
    cutout = "cutout"  # a square of half the side set to zero


class DeviceType(Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    mps = "mps"


class Precision(Enum):
    auto = "auto"  # bf16 where the device computes it natively and fast, else fp32 (runtime.resolve_precision)
    fp32 = "fp32"
    tf32 = "tf32"
    bf16 = "bf16"
    fp16 = "fp16"


class AccelName(Enum):
    baseline = "baseline"
    eager = "eager"
    fast = "fast"


class CompileMode(Enum):
    off = "off"
    default = "default"
    reduce_overhead = "reduce-overhead"
    max_autotune = "max-autotune"


class NanPolicy(Enum):
    stop = "stop"  # one line, a non-zero exit, the last good checkpoint kept
    rollback = "rollback"  # reload the last good checkpoint and go on with fresh noise


class RampShape(Enum):
    constant = "constant"  # the key's own value throughout
    linear = "linear"
    cosine = "cosine"  # half a cosine: slow at both ends (R3GAN)


class ExportFormat(Enum):
    onnx = "onnx"
    torchscript = "torchscript"


class LoggerName(Enum):
    none = "none"
    tensorboard = "tensorboard"  # event files in the run folder (extra: gancli[tensorboard])


# ---- model group: one schema per family, kept beside its model in gancli/models/ ----

MODEL_SCHEMAS: dict[str, type] = {name: fam.Config for name, fam in FAMILIES.items()}


@dataclass
class DataConfig:
    name: DataName = DataName.digits
    root: str = "data"  # where torchvision data sets are read from or downloaded to
    split: Split = Split.train
    image_size: int = 28  # images are resized to image_size x image_size
    channels: int = 1  # 1 (grey) or 3 (RGB); fixed by the data set except for `folder`
    path: Optional[str] = None  # `folder`: the folder of images
    cache_dir: Optional[str] = None  # `folder`'s prepared sets; null: $GANCLI_CACHE/data or ~/.cache/gancli/data
    fit: Fit = Fit.crop  # `folder`: crop or pad a non-square image to a square
    xflip: bool = False  # mirror each real image left-right at random, each epoch anew (StyleGAN's --mirror)
    # where training batches come from: true, a copy of the whole data set on the device; false,
    # streamed from host memory or a prepared set's file by a background reader; auto, on the
    # device when the data set's pixels fit on_device_gb
    on_device: str = "auto"
    on_device_gb: float = 4.0
    n: int = 20000  # `ring`/`grid`: points drawn; `stacked_mnist`, `fake`: images made
    std: float = 0.01  # `ring`/`grid`: standard deviation of each Gaussian
    radius: float = 1.0  # `ring`: radius of the circle of centres

    def __post_init__(self) -> None:
        require(self.image_size >= 4, "data.image_size", self.image_size, "a whole number >= 4")
        require(self.channels in (1, 3), "data.channels", self.channels, "1 or 3")
        at_least(self, "data", 1, "n")
        require(self.std > 0, "data.std", self.std, "a number > 0")
        require(self.radius > 0, "data.radius", self.radius, "a number > 0")
        self.on_device = str(self.on_device).lower()  # the command line's true/false arrive as True/False
        require(self.on_device in ("auto", "true", "false"), "data.on_device", self.on_device, "auto, true or false")
        require(self.on_device_gb >= 0, "data.on_device_gb", self.on_device_gb, "a number of GB >= 0")
        if self.path is not None and not self.path.strip():
            raise GancliError("data.path is empty; give the folder of images, data.path=<folder>")


@dataclass
class OptimizerConfig:
    name: OptimizerName = OptimizerName.adam
    lr: float = 2e-4  # for both networks unless lr_g / lr_d is set
    lr_g: Optional[float] = None
    lr_d: Optional[float] = None
    beta1: float = 0.5  # adam
    beta2: float = 0.999  # adam
    momentum: float = 0.0  # sgd, rmsprop
    alpha: float = 0.99  # rmsprop smoothing
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        for key in ("lr", "lr_g", "lr_d"):
            value = getattr(self, key)
            require(value is None or value > 0, f"optimizer.{key}", value, "a number > 0")
        for key in ("beta1", "beta2", "alpha"):
            value = getattr(self, key)
            require(0 <= value < 1, f"optimizer.{key}", value, "a number in [0, 1)")
        require(self.momentum >= 0, "optimizer.momentum", self.momentum, "a number >= 0")
        require(self.weight_decay >= 0, "optimizer.weight_decay", self.weight_decay, "a number >= 0")


@dataclass
class LossConfig:
    """The adversarial loss and the penalties added to D's loss (losses.py has the math)."""

    name: LossName = LossName.ns
    # R1 penalty (Mescheder et al. 2018): gamma/2 * E||grad_x D(x)||^2 at real images, added to
    # D's loss; 0 = off. It keeps D from growing so sharp that G collapses onto one mode.
    r1_gamma: float = 0.0
    r2_gamma: float = 0.0  # the same zero-centred penalty at G's samples (R3GAN pairs it with R1)
    gp_lambda: float = 0.0  # WGAN-GP: lambda * E(||grad D(x_hat)|| - 1)^2 on real/fake interpolates
    reg_every: int = 1  # lazy regularisation: the penalties on every N-th D step only, weighted by N
    # StyleGAN2's regularisers of G, for a model with a W space (model=stylegan2):
    # path length (Karras et al. 2020): pl_weight * E(||J_w^T y|| - a)^2, a a moving average of the
    # lengths, on every pl_every-th G step only (weighted by pl_every), on batches pl_batch_shrink times smaller
    pl_weight: float = 0.0
    pl_every: int = 4
    pl_decay: float = 0.01  # how fast the target a follows the lengths
    pl_batch_shrink: int = 2
    # style mixing: with this probability a batch of G's samples switches to a second w from a random layer on
    style_mixing: float = 0.0

    def __post_init__(self) -> None:
        for key in ("r1_gamma", "r2_gamma", "gp_lambda", "pl_weight"):
            value = getattr(self, key)
            require(value >= 0, f"loss.{key}", value, "a number >= 0 (0 turns the penalty off)")
        at_least(self, "loss", 1, "reg_every", "pl_every", "pl_batch_shrink")
        require(0 < self.pl_decay <= 1, "loss.pl_decay", self.pl_decay, "a number in (0, 1]")
        require(0 <= self.style_mixing <= 1, "loss.style_mixing", self.style_mixing, "a probability in [0, 1]")

    @property
    def penalised(self) -> bool:
        """Whether D's loss has any gradient penalty."""
        return self.r1_gamma > 0 or self.r2_gamma > 0 or self.gp_lambda > 0

    @property
    def double_backward(self) -> bool:
        """Whether an update differentiates a gradient (read by the accel plan): every penalty does,
        G's path-length penalty too."""
        return self.penalised or self.pl_weight > 0

    @property
    def in_w_space(self) -> list[str]:
        """The keys turned on that need a model with a W space."""
        return [f"loss.{key}={getattr(self, key)}" for key in ("pl_weight", "style_mixing") if getattr(self, key) > 0]


@dataclass
class AugmentConfig:
    """Differentiable augmentation of everything D sees (Zhao et al. 2020), optionally adaptive
    (Karras et al. 2020): each op is applied to each sample with probability p."""

    name: AugmentName = AugmentName.none
    policy: list[AugmentOp] = field(default_factory=lambda: [AugmentOp.color, AugmentOp.translation, AugmentOp.cutout])
    p: float = 1.0  # probability per sample and op; with adaptive, where p starts
    adaptive: bool = False  # move p so that E[sign(D(real))] approaches `target` (ADA)
    target: float = 0.6  # ADA's r_t target
    speed_kimg: float = 500.0  # thousands of real images over which p can move from 0 to 1
    interval: int = 4  # steps between adjustments of p

    def __post_init__(self) -> None:
        require(0 <= self.p <= 1, "augment.p", self.p, "a probability in [0, 1]")
        require(0 < self.target < 1, "augment.target", self.target, "a number in (0, 1)")
        require(self.speed_kimg > 0, "augment.speed_kimg", self.speed_kimg, "a number > 0")
        at_least(self, "augment", 1, "interval")
        if self.name is AugmentName.diffaug and not self.policy:
            raise GancliError("augment.policy is empty; list ops from color, translation, cutout, or use augment=none")

    @property
    def active(self) -> bool:
        return self.name is not AugmentName.none


@dataclass
class EMAConfig:
    """An exponential moving average of G's weights, which grids, evaluation and sampling use."""

    half_life_kimg: float = 0.0  # the average's weight halves every this many thousand images; 0 = off
    rampup: float = 0.0  # StyleGAN's ramp-up: a half-life of at most rampup x images seen; 0 = none

    def __post_init__(self) -> None:
        require(self.half_life_kimg >= 0, "ema.half_life_kimg", self.half_life_kimg, "a number >= 0 (0 turns it off)")
        require(self.rampup >= 0, "ema.rampup", self.rampup, "a number >= 0 (0 turns it off)")

    @property
    def active(self) -> bool:
        return self.half_life_kimg > 0


@dataclass
class Ramp:
    """One scheduled value (schedule.py): `start` -> `end` over `kimg` thousand images, after an
    optional warm-up from `warmup_start`; `end` held afterwards."""

    shape: RampShape = RampShape.constant  # constant: the key's own value (start and end unused)
    start: Optional[float] = None  # null: the value its key sets (optimizer.lr, loss.r1_gamma, ...)
    end: Optional[float] = None  # null: the value its key sets
    kimg: Optional[float] = None  # the ramp's length after the warm-up; null: the rest of the run
    warmup_kimg: float = 0.0  # a straight line from warmup_start up to start first; 0 = none
    warmup_start: float = 0.0


# what each schedulable value may be, as a check and its wording (a learning rate may ramp to 0)
_RAMP_RANGES = {
    "lr_g": (lambda v: v >= 0, "a number >= 0"),
    "lr_d": (lambda v: v >= 0, "a number >= 0"),
    "beta2": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "r1_gamma": (lambda v: v >= 0, "a number >= 0"),
    "r2_gamma": (lambda v: v >= 0, "a number >= 0"),
    "ema_half_life_kimg": (lambda v: v >= 0, "a number >= 0"),
    "augment_p": (lambda v: 0 <= v <= 1, "a probability in [0, 1]"),
}


@dataclass
class ScheduleConfig:
    """Values that ramp during training (R3GAN's schedules); every one constant by default."""

    lr_g: Ramp = field(default_factory=Ramp)  # G's learning rate (optimizer.lr_g, else optimizer.lr)
    lr_d: Ramp = field(default_factory=Ramp)  # D's learning rate (optimizer.lr_d, else optimizer.lr)
    beta2: Ramp = field(default_factory=Ramp)  # Adam's beta2, both networks (optimizer.beta2)
    r1_gamma: Ramp = field(default_factory=Ramp)  # loss.r1_gamma
    r2_gamma: Ramp = field(default_factory=Ramp)  # loss.r2_gamma
    ema_half_life_kimg: Ramp = field(default_factory=Ramp)  # ema.half_life_kimg
    augment_p: Ramp = field(default_factory=Ramp)  # augment.p, the augmentation's probability

    def __post_init__(self) -> None:
        for key, ramp in vars(self).items():
            name = f"schedule.{key}"
            allowed, wording = _RAMP_RANGES[key]
            for end in ("start", "end"):
                value = getattr(ramp, end)
                require(value is None or allowed(value), f"{name}.{end}", value, f"{wording} (null: the key's value)")
            require(ramp.warmup_start == 0 or allowed(ramp.warmup_start), f"{name}.warmup_start", ramp.warmup_start,
                    f"0 or {wording}")
            require(ramp.kimg is None or ramp.kimg > 0, f"{name}.kimg", ramp.kimg, "a number > 0 (null: the whole run)")
            require(ramp.warmup_kimg >= 0, f"{name}.warmup_kimg", ramp.warmup_kimg, "a number >= 0 (0: no warm-up)")
            if ramp.shape is not RampShape.constant and ramp.start is None and ramp.end is None:
                raise GancliError(f"{name}.shape={ramp.shape.value} ramps from start to end: give {name}.start or "
                                  f"{name}.end (the other is the key's own value)")


@dataclass
class DeviceConfig:
    type: DeviceType = DeviceType.auto
    index: Optional[int] = None  # which GPU of several (cuda only)

    def __post_init__(self) -> None:
        require(self.index is None or self.index >= 0, "device.index", self.index, "a whole number >= 0")


@dataclass
class PrecisionConfig:
    name: Precision = Precision.auto


@dataclass
class AccelConfig:
    """How a step runs; the variants differ in speed, not in the model they train."""

    name: AccelName = AccelName.fast
    dataloader: bool = False  # batches through a torch DataLoader over host memory
    host_syncs: bool = False  # read losses and D's outputs with .item() every step
    fused_optimizer: bool = True  # fused (else foreach) optimizer kernels where the device has them
    # NHWC activations for the conv models; null = where measured to help (the CPU, CUDA in bf16/fp16)
    channels_last: Optional[bool] = None
    cuda_graphs: bool = True  # capture the whole D and G steps as CUDA graphs (CUDA only)
    compile: CompileMode = CompileMode.off  # torch.compile G and D with this mode
    warmup_steps: int = 3  # eager steps before a CUDA graph is captured

    def __post_init__(self) -> None:
        at_least(self, "accel", 1, "warmup_steps")


@dataclass
class LoopConfig:
    steps: int = 500  # generator updates in all (about 35 s of the default recipe on 2 CPU cores)
    batch_size: int = 64
    d_steps: int = 1  # discriminator updates per generator update
    log_every: int = 50  # steps between log lines and timing.jsonl rows
    sample_every: int = 250  # steps between sample grids; 0 = only at the end
    ckpt_every: int = 500  # steps between kept checkpoints; 0 = only last.pt
    sample_n: int = 64  # images in each sample grid (2-D data plots 2,000 points)
    # stop at the first step past this many minutes of training (set-up, file writes and
    # evaluations excluded); train.steps is then not used, and schedules span the budget
    minutes: Optional[float] = None
    resume: Optional[str] = None  # auto | a checkpoint file | a run folder
    nan_policy: NanPolicy = NanPolicy.stop  # what a diverged run does: stop | rollback
    max_rollbacks: int = 3  # rollback: give up (as stop) after this many
    # a logged loss or D output beyond +-this counts as diverged, as NaN does; 0 = NaN and inf only
    divergence_limit: float = 1e6

    def __post_init__(self) -> None:
        at_least(self, "train", 1, "steps", "batch_size", "d_steps", "log_every", "sample_n", "max_rollbacks")
        at_least(self, "train", 0, "sample_every", "ckpt_every", off=True)
        require(self.divergence_limit >= 0, "train.divergence_limit", self.divergence_limit,
                "a number >= 0 (0 counts only NaN and inf as diverged)")
        require(self.resume != "", "train.resume", "''", "auto, a checkpoint file or a run folder (or leave it out)")
        require(self.minutes is None or self.minutes > 0, "train.minutes", self.minutes,
                "a number > 0 (or leave it out to train for train.steps)")


@dataclass
class EvalConfig:
    """Quality metrics during training (see `gancli eval`)."""

    every: int = 0  # steps between evaluations into metrics.jsonl; 0 = off
    n: int = 2500  # generated samples per evaluation
    cache_dir: Optional[str] = None  # where reference classifiers are kept; null: $GANCLI_CACHE or ~/.cache/gancli
    inception_weights: Optional[str] = None  # torch-fidelity's InceptionV3 weights file, for FID/KID

    def __post_init__(self) -> None:
        at_least(self, "eval", 0, "every", off=True)
        at_least(self, "eval", 2, "n")


@dataclass
class LoggerConfig:
    """Where training curves go besides timing.jsonl and metrics.jsonl."""

    name: LoggerName = LoggerName.none


@dataclass
class TrainApp:
    """Root of `gancli train`."""

    model: Any = MISSING  # one family's Config (MODEL_SCHEMAS), chosen by the model group
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    device: DeviceConfig = field(default_factory=DeviceConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    accel: AccelConfig = field(default_factory=AccelConfig)
    train: LoopConfig = field(default_factory=LoopConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    seed: int = 0  # seeds weights, noise and data order

    def __post_init__(self) -> None:
        _check_schedule(self)


@dataclass
class BenchConfig:
    """The matrix `gancli bench` times: every accel x precision x batch size."""

    accel: list[str] = field(default_factory=lambda: ["baseline", "eager", "fast"])
    # fp32 beside what `gancli train` runs by default (precision=auto: bf16 where the device computes it natively)
    precision: list[str] = field(default_factory=lambda: ["fp32", "auto"])
    batch_size: list[int] = field(default_factory=lambda: [64])
    warmup: int = 10  # untimed steps per variant (CUDA graphs are captured here)
    steps: int = 30  # timed steps per repeat
    repeats: int = 3  # timed repeats per variant; the median is reported

    def __post_init__(self) -> None:
        for key in ("accel", "precision", "batch_size"):
            require(len(getattr(self, key)) >= 1, f"bench.{key}", getattr(self, key), "at least one value")
        at_least(self, "bench", 1, "warmup", "steps", "repeats")


@dataclass
class BenchApp(TrainApp):
    """Root of `gancli bench`: a training config plus the matrix to time."""

    bench: BenchConfig = field(default_factory=BenchConfig)


@dataclass
class SampleApp:
    """Root of `gancli sample`."""

    ckpt: str = MISSING  # a checkpoint file or a run folder (its last checkpoint)
    n: int = 64  # samples to write
    out: Optional[str] = None  # default: <run folder>/generated
    seed: int = 0
    batch_size: int = 256  # samples generated at once, to bound memory
    interpolate: bool = False  # also write interpolation.png
    use_ema: bool = True  # sample from G's moving average where the checkpoint has one
    # a conditional G's classes, by index or name (`class=3`, `classes=0,1,2`); null: all, evenly
    classes: Optional[list[str]] = None
    # truncation toward the average sample, 1 = none: in W for StyleGAN2 (w_avg + psi (w - w_avg)),
    # for the other families a truncated normal noise at psi / (1 - psi) standard deviations
    psi: float = 1.0
    cutoff: Optional[int] = None  # StyleGAN2: truncate only the layers before this one (null: every layer)
    mix: bool = False  # StyleGAN2: also write mixing.png, a style-mixing grid
    device: DeviceConfig = field(default_factory=DeviceConfig)

    def __post_init__(self) -> None:
        at_least(self, "", 1, "n", "batch_size")
        require(0 <= self.psi <= 1, "psi", self.psi, "a number in [0, 1] (1: no truncation)")
        require(self.cutoff is None or self.cutoff >= 1, "cutoff", self.cutoff, "a layer number >= 1 (or null)")


@dataclass
class ExportApp:
    """Root of `gancli export`."""

    ckpt: str = MISSING  # a checkpoint file or a run folder (its last checkpoint)
    format: ExportFormat = ExportFormat.onnx  # onnx (checked with onnxruntime) | torchscript
    out: Optional[str] = None  # the file to write; default: <run folder>/export/generator.onnx (or .pt)
    psi: float = 1.0  # truncation built into the graph, as `gancli sample psi=` (1: none)
    cutoff: Optional[int] = None  # StyleGAN2: truncate only the layers before this one (null: every layer)
    use_ema: bool = True  # export G's moving average where the checkpoint has one
    tolerance: float = 1e-3  # the largest difference from torch's images (in [-1, 1]) the check accepts

    def __post_init__(self) -> None:
        require(0 <= self.psi <= 1, "psi", self.psi, "a number in [0, 1] (1: no truncation)")
        require(self.cutoff is None or self.cutoff >= 1, "cutoff", self.cutoff, "a layer number >= 1 (or null)")
        require(self.tolerance > 0, "tolerance", self.tolerance, "a number > 0")


@dataclass
class EvalApp:
    """Root of `gancli eval`."""

    ckpt: str = MISSING  # a checkpoint file or a run folder (its last checkpoint)
    n: int = 2500  # generated samples
    out: Optional[str] = None  # default: the run folder
    seed: int = 0
    cache_dir: Optional[str] = None  # where reference classifiers are kept; null: $GANCLI_CACHE or ~/.cache/gancli
    inception_weights: Optional[str] = None  # torch-fidelity's InceptionV3 weights file, for FID/KID
    use_ema: bool = True  # evaluate G's moving average where the checkpoint has one
    device: DeviceConfig = field(default_factory=DeviceConfig)

    def __post_init__(self) -> None:
        at_least(self, "", 2, "n")


@dataclass
class PrepareApp:
    """Root of `gancli prepare`."""

    data: DataConfig = field(default_factory=DataConfig)


def _check_schedule(cfg: TrainApp) -> None:
    """A schedule shapes a value its key turns on; it never turns a feature on or off itself."""
    sched = cfg.schedule
    for key, switch, on in (("r1_gamma", "loss.r1_gamma", cfg.loss.r1_gamma > 0),
                            ("r2_gamma", "loss.r2_gamma", cfg.loss.r2_gamma > 0),
                            ("ema_half_life_kimg", "ema.half_life_kimg", cfg.ema.active)):
        if getattr(sched, key).shape is not RampShape.constant and not on:
            raise GancliError(f"schedule.{key} ramps a value that {switch}=0 turns off; set {switch} to the value "
                              "the ramp starts or ends at")
    if sched.beta2.shape is not RampShape.constant and cfg.optimizer.name is not OptimizerName.adam:
        raise GancliError(f"schedule.beta2 ramps Adam's beta2, and optimizer={cfg.optimizer.name.value} has none; "
                          "use optimizer=adam or drop the schedule")
    if sched.augment_p.shape is not RampShape.constant:
        if not cfg.augment.active:
            raise GancliError("schedule.augment_p ramps the augmentation's probability, and augment=none has none; "
                              "use augment=diffaug or drop the schedule")
        if cfg.augment.adaptive:
            raise GancliError("schedule.augment_p and augment.adaptive=true (ADA) both move augment.p; keep one")


# ${mul:a,b} = a b, ${div:a,b} = a / b, ${pow:a,b} = a^b, ${floordiv:a,b} = a // b (a whole
# number), ${min:a,b}, ${max:a,b}, ${ifge:a,b,x,y} = x if a >= b else y
RESOLVERS = {
    "mul": lambda a, b: float(a) * float(b),
    "div": lambda a, b: float(a) / float(b),
    "pow": lambda a, b: float(a) ** float(b),
    "floordiv": lambda a, b: int(a) // int(b),
    "min": min,
    "max": max,
    "ifge": lambda a, b, x, y: x if float(a) >= float(b) else y,
}


def register() -> None:
    """Put the schemas in Hydra's ConfigStore (the YAML files name them in their defaults), and the
    arithmetic the YAML shows its derived values with (schedule/r3gan.yaml's ends,
    experiment/stylegan2.yaml's auto settings)."""
    for name, fn in RESOLVERS.items():
        OmegaConf.register_new_resolver(name, fn, replace=True)
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainApp)
    cs.store(name="sample_schema", node=SampleApp)
    cs.store(name="bench_schema", node=BenchApp)
    cs.store(name="eval_schema", node=EvalApp)
    cs.store(name="export_schema", node=ExportApp)
    cs.store(name="prepare_schema", node=PrepareApp)
    for name, schema in MODEL_SCHEMAS.items():
        # kept out of the model group, so that `--help` lists only the models
        cs.store(name=f"model_{name}_schema", node=schema)


def to_typed(cfg: DictConfig) -> Any:
    """Turn a composed config into its dataclasses, running every range check once."""
    _type_model(cfg)
    typed = OmegaConf.to_object(cfg)
    _check_finite(typed)
    return typed


def _type_model(cfg: DictConfig) -> None:
    """A model file of a user's config folder that does not name its schema (`name: dcgan` and
    its keys, as the shipped files read) is typed by the family it names, so its keys and values
    are checked like the shipped ones."""
    node = cfg.get("model") if isinstance(cfg, DictConfig) and "model" in cfg else None
    if not isinstance(node, DictConfig) or OmegaConf.get_type(node) is not dict:
        return
    name = node.get("name")
    schema = MODEL_SCHEMAS.get(RENAMED.get(name, name)) if isinstance(name, str) else None
    if schema is None:
        raise GancliError(f"model.name={name} is not a model family; a model file names one of: "
                          f"{', '.join(MODEL_SCHEMAS)}")
    typed = OmegaConf.structured(schema)
    for key in node:
        if key not in typed:
            known = ", ".join(f"model.{f.name}" for f in dataclasses.fields(schema))
            raise GancliError(f"unknown key 'model.{key}' for model {name}; its keys are: {known}")
    with open_dict(cfg):
        cfg.model = OmegaConf.merge(typed, node)


def _check_finite(obj: Any, prefix: str = "") -> None:
    """No number in a config is NaN or infinite, whatever its own range check says."""
    for f in dataclasses.fields(obj):
        value, key = getattr(obj, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            _check_finite(value, f"{key}.")
        elif isinstance(value, float) and not math.isfinite(value):
            raise GancliError(f"{key}={value} is not allowed: a finite number")


def to_plain(cfg: Any) -> dict:
    """A config as plain data (enums as strings), for JSON, YAML and checkpoints."""

    def convert(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: convert(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, Enum):
            return value.value
        if isinstance(value, (list, tuple)):
            return [convert(v) for v in value]
        return value

    return convert(cfg)


def train_config_from_plain(plain: dict) -> TrainApp:
    """Rebuild a TrainApp from `to_plain` output, e.g. the config stored in a checkpoint; keys
    added since it was written take their defaults."""
    plain = dict(plain)
    model_plain = dict(plain.pop("model"))
    model_plain["name"] = RENAMED.get(model_plain.get("name", ""), model_plain.get("name", ""))
    schema = MODEL_SCHEMAS.get(model_plain["name"])
    if schema is None:
        raise GancliError(f"unknown model '{model_plain['name']}'; known: {', '.join(MODEL_SCHEMAS)}")
    root = OmegaConf.merge(OmegaConf.structured(TrainApp), plain)
    root.model = OmegaConf.merge(OmegaConf.structured(schema), model_plain)
    return to_typed(root)


register()
