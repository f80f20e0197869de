"""The convolutions' share of a DCGAN step, and the speed-up they alone allow: each convolution of
DCGAN's G and D timed by itself (forward, input gradient, weight gradient, both gradients) in
the arithmetic of the usual PyTorch loop (fp32, NCHW, torch's own layers) and in gancli's on the
CPU (bf16 autocast, channels_last, gancli's layers), then summed the way each loop calls them in
one training step.

    python docs/conv_rates.py [--side 64] [--channels 3] [--batch 64] [--repeats 15]

The usual loop (pytorch/examples dcgan) per step: G forward once; D forward on the real batch,
on G's detached samples and on the same samples for G's loss; D's backward with its weight
gradients all three times; G's backward. gancli: G forward twice (held fixed in D's update,
fresh noise in G's); D forward three times; D's weight gradients in D's update only (D is
frozen in G's, which needs only its input gradients); G's backward. Both count the same FLOPs.
Elementwise work (batch norm, activations, casts, the optimizer) is left out on purpose: the sum
is what the convolutions alone cost.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from gancli.models import dcgan

CONVS = (nn.Conv2d, nn.ConvTranspose2d)


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    for _ in range(3):  # oneDNN builds its kernels on the first calls
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def conv_inputs(net: nn.Module, x: torch.Tensor) -> tuple[list[tuple[nn.Module, torch.Size]], torch.Tensor]:
    """Each convolution of `net` in call order with the shape of its input, and net's output."""
    seen: list[tuple[nn.Module, torch.Size]] = []
    hooks = [m.register_forward_pre_hook(lambda m, args: seen.append((m, args[0].shape)))
             for m in net.modules() if isinstance(m, CONVS)]
    with torch.no_grad():
        out = net(x)
    for h in hooks:
        h.remove()
    return seen, out


def plain(layer: nn.Module) -> nn.Module:
    """The layer as torch's own nn.Conv2d / nn.ConvTranspose2d, same weights."""
    cls = nn.ConvTranspose2d if isinstance(layer, nn.ConvTranspose2d) else nn.Conv2d
    twin = cls(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding, bias=False)
    twin.load_state_dict(layer.state_dict())
    return twin


def time_layer(layer: nn.Module, shape: torch.Size, gancli: bool, repeats: int) -> dict[str, float]:
    """ms of forward, input gradient, weight gradient and both, for one layout and precision."""
    layout = torch.channels_last if gancli else torch.contiguous_format
    layer = layer.to(memory_format=layout)
    x = torch.randn(shape).contiguous(memory_format=layout).requires_grad_(True)
    with torch.autocast("cpu", torch.bfloat16, enabled=gancli):
        with FlopCounterMode(display=False) as counter:
            y = layer(x)
        g = torch.randn_like(y)
        w = layer.weight
        out = {"gflop": counter.get_total_flops() / 1e9,
               "fwd": median_ms(lambda: layer(x), repeats)}
        for name, wrt in (("in", (x,)), ("w", (w,)), ("both", (x, w))):
            out[name] = median_ms(lambda wrt=wrt: torch.autograd.grad(y, wrt, g, retain_graph=True), repeats)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=64)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    torch.manual_seed(0)
    shape = (args.channels, args.side, args.side)
    G, D = dcgan.build(dcgan.Config(), shape)
    g_convs, fake = conv_inputs(G, torch.randn(args.batch, G.z_dim))
    d_convs, _ = conv_inputs(D, fake)

    totals = {"usual loop (fp32, NCHW)": 0.0, "gancli (bf16, channels_last)": 0.0}
    print(f"DCGAN {args.side}x{args.side}x{args.channels}, batch {args.batch}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; ms (GFLOP/s)")
    print(f"{'layer':10} {'arithmetic':30} {'fwd':>16} {'grad in':>16} {'grad w':>16} {'both':>16}")
    for net, convs in (("G", g_convs), ("D", d_convs)):
        for k, (layer, in_shape) in enumerate(convs):
            first = k == 0
            for name, gancli in zip(totals, (False, True)):
                t = time_layer(layer if gancli else plain(layer), in_shape, gancli, args.repeats)
                flops = {"fwd": 1, "in": 1, "w": 1, "both": 2}  # each gradient costs a forward's FLOPs
                rate = {key: f"{t[key]:7.2f} ({n * t['gflop'] / t[key] * 1e3:4.0f})" for key, n in flops.items()}
                rates = " ".join(f"{rate[key]:>16}" for key in ("fwd", "in", "w", "both"))
                print(f"{net}{k + 1:<9} {name:30} {rates}")
                if net == "G":  # G's first layer takes noise: no input gradient
                    backward = t["w"] if first else t["both"]
                    totals[name] += (2 if gancli else 1) * t["fwd"] + backward
                else:  # D's first layer takes images: an input gradient only on the way to G
                    d_update = t["w"] if first else t["both"]
                    g_update = t["in"] if gancli else t["both"]
                    totals[name] += 3 * t["fwd"] + 2 * d_update + g_update
    usual, ours = totals.values()
    for name, ms in totals.items():
        print(f"convolutions of one step, {name}: {ms:.1f} ms")
    print(f"ratio: {usual / ours:.2f}x (the speed-up over the usual loop that the convolutions alone allow)")


if __name__ == "__main__":
    main()
