"""`gancli export`: a trained generator as one file that runs without gancli: ONNX (checked with
onnxruntime against torch before it is written) or TorchScript.

The exported graph takes noise z (B, z_dim) float32, and for a conditional G class labels c (B,)
int64, with B free; it gives images (B, C, H, W) in [-1, 1] (points (B, 2) for 2-D data), with
the truncation of `psi` built in. In eval mode StyleGAN2's noise inputs are its fixed maps, so
the graph is a function of z and c alone.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from pathlib import Path
from typing import Optional

import hydra
import numpy as np
import torch
from omegaconf import DictConfig

from gancli.config import ExportApp, ExportFormat, to_typed
from gancli.errors import GancliError, user_errors
from gancli.files import write_error
from gancli.generator import Generator, load, synthesize
from gancli.runfolder import find_checkpoint, run_dir_of

log = logging.getLogger(__name__)

CONFIG_NAME = "export"
SUFFIX = {ExportFormat.onnx: ".onnx", ExportFormat.torchscript: ".pt"}
EXPORT_EXTRA = "pip install 'gancli[export]'"
CHECK_BATCH = 3  # the check runs at another batch size than the export's example, so B is shown free
EXAMPLE_BATCH = 2


@hydra.main(version_base="1.3", config_path="pkg://gancli.configs", config_name=CONFIG_NAME)
def main(cfg: DictConfig) -> None:
    with user_errors():
        export(to_typed(cfg))


def check(cfg: ExportApp) -> None:
    """Start-up checks that read nothing heavy: the checkpoint exists, the extra is installed."""
    find_checkpoint(cfg.ckpt)
    if cfg.out:
        out = Path(cfg.out).expanduser()
        if out.is_dir():
            raise GancliError(f"out={cfg.out} is a folder; give the file to write (out={out / 'generator'}"
                              f"{SUFFIX[cfg.format]}), or leave out= out")
        parent = next((p for p in out.parents if p.exists()), None)
        if parent is not None and not parent.is_dir():
            raise GancliError(f"out={cfg.out} lies under {parent}, which is a file; give a path in a folder")
    if cfg.format is ExportFormat.onnx:
        _onnx_modules()


class Exported(torch.nn.Module):
    """What the file holds: (z, c) -> G's samples, truncated by psi, images clamped to [-1, 1]."""

    def __init__(self, G: Generator, psi: float, cutoff: Optional[int]):
        super().__init__()
        self.net, self.psi, self.cutoff, self.w_space = G.net, psi, cutoff, G.w_space
        self.images = len(G.shape) == 3

    def forward(self, z: torch.Tensor, c: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = synthesize(self.net, z, c, self.psi, self.cutoff, self.w_space)
        return x.clamp(-1, 1) if self.images else x


def inputs(G: Generator, n: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """(z,) or (z, c) for n samples, drawn from `seed` on the CPU."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, G.z_dim, generator=gen)
    return (z, torch.randint(G.n_classes, (n,), generator=gen)) if G.n_classes else (z,)


def export(cfg: ExportApp) -> Path:
    """Write G (its moving average where the run kept one) to `out` in `format`, after checking
    the file's output against torch's; returns the file."""
    check(cfg)
    G = load(cfg.ckpt, "cpu", cfg.use_ema)
    out = Path(cfg.out).expanduser() if cfg.out else run_dir_of(G.path) / "export" / f"generator{SUFFIX[cfg.format]}"
    model = Exported(G, cfg.psi, cfg.cutoff).eval()
    tmp = out.with_name(f".{out.name}.exporting")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        write = _write_onnx if cfg.format is ExportFormat.onnx else _write_torchscript
        write(model, inputs(G, EXAMPLE_BATCH), tmp)
        check_inputs = inputs(G, CHECK_BATCH, seed=1)
        with torch.no_grad():
            want = model(*check_inputs).numpy()
        got = (_run_onnx if cfg.format is ExportFormat.onnx else _run_torchscript)(tmp, check_inputs)
        diff = float(np.abs(got - want).max())
        if not diff <= cfg.tolerance:
            raise GancliError(f"the exported {cfg.format.value} graph differs from torch's images by up to {diff:.3g}, "
                              f"more than tolerance={cfg.tolerance:g}; nothing written")
        os.replace(tmp, out)
    except OSError as exc:
        raise write_error(out, exc) from None
    finally:
        tmp.unlink(missing_ok=True)
    names = "z (B, %d) float32%s" % (G.z_dim, ", c (B,) int64" if G.n_classes else "")
    truncation = f", psi {cfg.psi:g} built in" if cfg.psi != 1 else ""
    log.info("wrote %s: %s of %s (step %d) as %s, inputs %s -> output %s%s; checked against torch: largest "
             "difference %.2g", out, G.which, G.path, G.step, cfg.format.value, names,
             "images (B, %s) in [-1, 1]" % ", ".join(map(str, G.shape)) if model.images else "points (B, 2)",
             truncation, diff)
    return out


# ---- ONNX ----

def _onnx_modules():
    try:
        import onnx  # noqa: F401
        import onnxruntime
        import onnxscript  # noqa: F401  (torch's ONNX exporter needs it)
    except ImportError as exc:
        raise GancliError(f"format=onnx needs onnx, onnxscript and onnxruntime ({exc.name} is missing): "
                          f"{EXPORT_EXTRA}") from None
    return onnxruntime


def _input_names(example: tuple[torch.Tensor, ...]) -> list[str]:
    return ["z", "c"][: len(example)]


def _write_onnx(model: Exported, example: tuple[torch.Tensor, ...], path: Path) -> None:
    batch = torch.export.Dim("batch", min=1)
    dynamic = tuple({0: batch} for _ in example)
    # the exporter reports its progress on stdout and through warnings and logs: kept off the console
    with warnings.catch_warnings(), _quiet_exporter(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(model, example, dynamo=True, input_names=_input_names(example),
                                        output_names=["images" if model.images else "points"],
                                        dynamic_shapes=dynamic, verbose=False)
        except Exception as exc:  # the exporter's errors are many and long: the first line names the cause
            raise GancliError(f"torch could not export this generator to ONNX: {_first_line(exc)}") from None
        program.save(str(path))


def _run_onnx(path: Path, example: tuple[torch.Tensor, ...]) -> np.ndarray:
    ort = _onnx_modules()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {name: t.numpy() for name, t in zip(_input_names(example), example)})[0]


# ---- TorchScript ----

def _write_torchscript(model: Exported, example: tuple[torch.Tensor, ...], path: Path) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            traced = torch.jit.trace(model, example, check_trace=False)
        except Exception as exc:
            raise GancliError(f"torch could not trace this generator to TorchScript: {_first_line(exc)}") from None
        torch.jit.save(traced, str(path))


def _run_torchscript(path: Path, example: tuple[torch.Tensor, ...]) -> np.ndarray:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        return torch.jit.load(str(path)).eval()(*example).numpy()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


class _quiet_exporter:
    """torch's ONNX exporter logs at INFO: kept off the console."""

    def __enter__(self) -> None:
        names = ("torch.onnx", "onnxscript", "onnx_ir", "torch.export")
        self.levels = {name: logging.getLogger(name).level for name in names}
        for name in self.levels:
            logging.getLogger(name).setLevel(logging.ERROR)

    def __exit__(self, *exc) -> None:
        for name, level in self.levels.items():
            logging.getLogger(name).setLevel(level)
