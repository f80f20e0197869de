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
from gancli.generator import Generator, even_labels, load, synthesize
from gancli.images import save_grid, save_scatter, save_singles
from gancli.runfolder import find_checkpoint, run_dir_of

log = logging.getLogger(__name__)

CONFIG_NAME = "sample"
GRID_MAX = 256  # images shown in grid.png; every image is also written on its own
INTERP_ROWS, INTERP_STEPS = 8, 10
MIX_SIDE = 5  # the style-mixing grid: 5 row and 5 column sources


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


def sample(cfg: SampleApp) -> Path:
    """Write n samples, grid.png and optionally interpolation.png and mixing.png; returns the
    output folder. Built on `gancli.load`: the pixels are G.sample's for the same seed."""
    G = load(cfg.ckpt, runtime.resolve_device(cfg.device), cfg.use_ema)
    if cfg.mix and not G.w_space:
        raise GancliError(f"mix=true mixes styles in W, and {G.path} holds a model without a W space; "
                          "train model=stylegan2 for it, or leave out mix=true")
    out = Path(cfg.out) if cfg.out else run_dir_of(G.path) / "generated"
    is_image = len(G.shape) == 3
    labels, nrow = None, None
    chosen = G.chosen(cfg.classes)
    if chosen is not None:  # the classes asked for, in equal runs: one class per grid row
        labels, per = even_labels(chosen, cfg.n)
        nrow = per if per > 1 else None

    shown = []
    for start, x in G.batches(cfg.n, cfg.seed, labels, cfg.psi, cfg.cutoff, cfg.batch_size):
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

    gen = torch.Generator().manual_seed(cfg.seed + 1)  # the extras' own noise, apart from the samples'
    if cfg.interpolate:
        if not is_image:
            log.info("interpolate=true applies to images only; no interpolation written for 2-D data")
        else:
            save_grid(_interpolation(G, cfg, chosen, gen), out / "interpolation.png", nrow=INTERP_STEPS)
    if cfg.mix:
        save_grid(_mixing(G, cfg, chosen, gen), out / "mixing.png", nrow=MIX_SIDE + 1)
    if chosen is not None:
        names = G.classes
        write_text(out / "classes.csv", "index,class\n" + "".join(
            f"{i:06d},{names[k] if k < len(names) else k}\n" for i, k in enumerate(labels.tolist())))
    truncation = f", psi {cfg.psi:g}" if cfg.psi != 1 else ""
    log.info("wrote %s of %s from %s (step %d%s) to %s", count(cfg.n, "sample"), G.which, G.path, G.step,
             truncation, out)
    return out


def _row_labels(chosen: Optional[torch.Tensor], rows: int, per_row: int,
                device: torch.device) -> Optional[torch.Tensor]:
    """Each row keeps one of the chosen classes: (rows * per_row,) labels, or None."""
    if chosen is None:
        return None
    return chosen[torch.arange(rows) % len(chosen)].repeat_interleave(per_row).to(device)


@torch.no_grad()
def _interpolation(G: Generator, cfg: SampleApp, chosen: Optional[torch.Tensor], gen: torch.Generator) -> torch.Tensor:
    """(rows * steps, C, H, W): each row walks between two samples, linearly in W where G has a W
    space (truncated by psi), else along the great circle between two noise vectors."""
    ends = torch.randn(2, INTERP_ROWS, G.z_dim, generator=gen).to(G.device)
    t = torch.linspace(0, 1, INTERP_STEPS, device=G.device)
    c_ends = _row_labels(chosen, INTERP_ROWS, 1, G.device)
    if G.w_space:
        w0, w1 = (G.net.mapping(z, c_ends, cfg.psi, cfg.cutoff) for z in ends)  # (rows, num_ws, w_dim) each
        ws = torch.lerp(w0[:, None], w1[:, None], t[None, :, None, None])  # (rows, steps, num_ws, w_dim)
        return G.net.synthesis(ws.flatten(0, 1)).float().cpu()
    z = _slerp(ends[0], ends[1], t).reshape(-1, G.z_dim)  # (rows * steps, z)
    c = _row_labels(chosen, INTERP_ROWS, INTERP_STEPS, G.device)
    return synthesize(G.net, z, c, cfg.psi).float().cpu()


@torch.no_grad()
def _mixing(G: Generator, cfg: SampleApp, chosen: Optional[torch.Tensor], gen: torch.Generator) -> torch.Tensor:
    """StyleGAN's style-mixing grid ((side + 1)^2 images): the top row and the left column are
    samples of their own w; each other cell takes its row's w with the coarse layers (the first
    half, up to the middle resolution) of its column's, so that it keeps the row's detail and
    colour and the column's pose and shape."""
    z = torch.randn(2, MIX_SIDE, G.z_dim, generator=gen).to(G.device)  # the rows' sources, the columns'
    c = _row_labels(chosen, MIX_SIDE, 1, G.device)
    rows, cols = (G.net.mapping(sources, c, cfg.psi, cfg.cutoff) for sources in z)
    coarse = G.net.num_ws // 2
    cells = rows[:, None].repeat(1, MIX_SIDE, 1, 1)  # (rows, cols, num_ws, w_dim)
    cells[:, :, :coarse] = cols[None, :, :coarse]
    images = G.net.synthesis(torch.cat([cols, rows, cells.flatten(0, 1)])).float().cpu()
    top, left, body = images[:MIX_SIDE], images[MIX_SIDE : 2 * MIX_SIDE], images[2 * MIX_SIDE :]
    blank = -torch.ones_like(top[:1])  # black in the corner
    grid = [blank, top]
    for r in range(MIX_SIDE):
        grid += [left[r : r + 1], body[r * MIX_SIDE : (r + 1) * MIX_SIDE]]
    return torch.cat(grid)


def _slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between rows of a and b (R, Z) at fractions t (T,) -> (R, T, Z)."""
    cos = (a * b).sum(1, keepdim=True) / (a.norm(dim=1, keepdim=True) * b.norm(dim=1, keepdim=True))
    omega = torch.arccos(cos.clamp(-1 + 1e-7, 1 - 1e-7))[:, None]  # (R, 1, 1)
    t = t[None, :, None]  # (1, T, 1)
    sin = torch.sin(omega)
    return (torch.sin((1 - t) * omega) * a[:, None] + torch.sin(t * omega) * b[:, None]) / sin

