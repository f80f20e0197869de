"""`gancli sample`: images (or points) from a checkpoint's generator, with no data set present."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Optional

import hydra
import torch
from omegaconf import DictConfig

from gancli import runtime
from gancli.config import SampleApp, to_typed
from gancli.console import count
from gancli.errors import GancliError, user_errors
from gancli.files import check_out_folder, write_text
from gancli.generator import even_labels, generate_batches, load_generator
from gancli.images import save_grid, save_scatter, save_singles
from gancli.runfolder import find_checkpoint, run_dir_of

log = logging.getLogger(__name__)

CONFIG_NAME = "sample"
GRID_MAX = 256  # images shown in grid.png; every image is also written on its own
INTERP_ROWS, INTERP_STEPS = 8, 10


@hydra.main(version_base="1.3", config_path="pkg://gancli.configs", config_name=CONFIG_NAME)
def main(cfg: DictConfig) -> None:
    with user_errors():
        sample(to_typed(cfg))


def check(cfg: SampleApp) -> None:
    """Start-up checks that read nothing: the device and the checkpoint must exist, and `out`
    must be a folder or not exist yet."""
    runtime.resolve_device(cfg.device)
    find_checkpoint(cfg.ckpt)
    check_out_folder(cfg.out)


def class_args(args: list[str]) -> list[str]:
    """`class=3` and `classes=0,1,2` as Hydra reads them, `classes=[3]` and `classes=[0,1,2]`: a
    comma list on Hydra's command line would otherwise be a sweep."""
    out, given = [], []
    for arg in args:
        key = re.match(r"(class|classes)=", arg)
        if key:
            given.append(arg)
        match = re.fullmatch(r"(class|classes)=([^\[].*)", arg)
        out.append(f"classes=[{match.group(2)}]" if match else arg)
    if len(given) > 1:
        raise GancliError(f"{' and '.join(given)} each name the classes to sample; give one of them")
    return out


def chosen_classes(asked: Optional[list[str]], names: list[str], ckpt: Path) -> torch.Tensor:
    """The labels (k,) of the classes asked for by index or by name; every class when none are."""
    if asked is None:
        return torch.arange(len(names))
    labels = []
    for item in asked:
        item = str(item)
        if item in names:
            labels.append(names.index(item))
        elif item.isdigit() and int(item) < len(names):
            labels.append(int(item))
        else:
            shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
            raise GancliError(f"class {item} is not one of the {len(names)} classes of {ckpt} (0..{len(names) - 1} "
                              f"or a name: {shown})")
    if not labels:
        raise GancliError("classes=[] asks for no class; name at least one, or leave classes out for all of them")
    return torch.tensor(labels)


def sample(cfg: SampleApp) -> Path:
    """Write n samples, grid.png and optionally interpolation.png; returns the output folder."""
    device = runtime.resolve_device(cfg.device)
    G, state, path = load_generator(cfg.ckpt, device, cfg.use_ema)
    out = Path(cfg.out) if cfg.out else run_dir_of(path) / "generated"
    is_image = len(state["data_shape"]) == 3
    gen = torch.Generator().manual_seed(cfg.seed)
    names = state.get("classes") or []
    labels, nrow, chosen = None, None, None
    if G.n_classes:  # the classes asked for, in equal runs: one class per grid row
        chosen = chosen_classes(cfg.classes, names, path)
        labels, per = even_labels(chosen, cfg.n)
        nrow = per if per > 1 else None
    elif cfg.classes is not None:
        raise GancliError(f"{path} holds an unconditional G, which draws no classes; leave out classes=")

    shown = []
    for start, x in generate_batches(G, cfg.n, device, gen, cfg.batch_size, labels):
        if is_image:
            save_singles(x, out, start)
            if start < GRID_MAX:  # a copy: a view would keep the whole batch alive
                shown.append(x[: GRID_MAX - start].clone())
        else:
            shown.append(x)
    shown = torch.cat(shown)
    if is_image:
        save_grid(shown, out / "grid.png", nrow=nrow)
    else:
        save_scatter(shown, out / "grid.png", title=count(cfg.n, "sample"))
        write_text(out / "points.csv", "x,y\n" + "".join(f"{a:.6f},{b:.6f}\n" for a, b in shown.tolist()))

    if cfg.interpolate:
        if not is_image:
            log.info("interpolate=true applies to images only; no interpolation written for 2-D data")
        else:
            ends = torch.randn(2, INTERP_ROWS, G.z_dim, generator=gen)
            t = torch.linspace(0, 1, INTERP_STEPS)
            z = _slerp(ends[0], ends[1], t).reshape(-1, G.z_dim).to(device)  # (rows * steps, z)
            c = None
            if chosen is not None:  # each row keeps one class
                c = chosen[torch.arange(INTERP_ROWS) % len(chosen)].repeat_interleave(INTERP_STEPS).to(device)
            with torch.no_grad():
                strip = G(z, c).float().cpu()
            save_grid(strip, out / "interpolation.png", nrow=INTERP_STEPS)
    if chosen is not None:
        write_text(out / "classes.csv", "index,class\n" + "".join(
            f"{i:06d},{names[k] if k < len(names) else k}\n" for i, k in enumerate(labels.tolist())))
    log.info("wrote %s of %s from %s (step %d) to %s", count(cfg.n, "sample"), state["generator"], path, state["step"],
             out)
    return out


def _slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between rows of a and b (R, Z) at fractions t (T,) -> (R, T, Z)."""
    cos = (a * b).sum(1, keepdim=True) / (a.norm(dim=1, keepdim=True) * b.norm(dim=1, keepdim=True))
    omega = torch.arccos(cos.clamp(-1 + 1e-7, 1 - 1e-7))[:, None]  # (R, 1, 1)
    t = t[None, :, None]  # (1, T, 1)
    sin = torch.sin(omega)
    return (torch.sin((1 - t) * omega) * a[:, None] + torch.sin(t * omega) * b[:, None]) / sin

