"""Mobile students: inverted-residual blocks (MobileNetV2), 'mobile-w{width}-d{depth}-e{expansion}'.

The block every phone and NPU model is built from: a 1x1 conv expands the channels ``expansion`` times, a 3x3
*depthwise* conv (one 3x3 filter per channel: 9*C parameters where a plain 3x3 conv costs 9*C*C) mixes space, and
a 1x1 conv projects back down with no activation after it (the "linear bottleneck"); the block's input is added
to its output where the shapes match (stride 1, same channels). BatchNorm after every conv, ReLU6 after the
first two (bounded activations quantize well; every format here fuses Conv+BN+ReLU6).

Layout: a plain 3x3 stem conv (``in_channels`` -> ``width``, stride 1: the input has one or three channels, too
few for a depthwise layer to be worth it), then ``depth`` stages; stage ``i`` has ``width * 2**i`` channels and
two blocks, the first with stride 2 (it halves the map, rounding up: 28 -> 14 -> 7 -> 4 at 28x28 with 3 stages), the second
with stride 1 and the residual. The head is the ``pool`` family's spatial head (the last map, averaged down to
about 3x3 when wider than 5, flattened into a linear layer): on Fashion-MNIST where a garment's parts are is much of
its class (``prokt_deploy/models/pool.py``).

Capacity (the planner's one rule, :func:`prokt_deploy.planner.candidates.capacity`): parameters, then MACs; a
depthwise weight counts as one parameter like any other. So at the same bytes a mobile student and a plain one
rank about equal by parameters (int8 bytes follow parameters in both), and the planner's cross-family choice is
decided by the measured rules (bytes, then latency, then RAM where budgets are set), not by a bonus for the block.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from prokt_deploy.errors import ModelError
from prokt_deploy.models import pool
from prokt_deploy.models.registry import Family, init_conv_weights, register_family

_NAME = re.compile(r"^mobile-w(\d+)-d(\d+)-e(\d+)$")
WIDTHS = (8, 12, 16, 20, 24, 32, 48)
DEPTHS = (2, 3)
EXPANSIONS = (2, 4)
MAX_DEPTH = 4
MAX_EXPANSION = 8


def head_grid(image_size: tuple[int, int], depth: int) -> tuple[int, tuple[int, int]]:
    """(average-pool kernel, the head's (H, W) grid) after ``depth`` stride-2 blocks: the pool family's rule, each
    halving rounded up (ceil(n / 2))."""
    return pool.head_grid(image_size, depth, round_up=True)


def _conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(c_out)]
    return [*layers, nn.ReLU6()] if act else layers


class InvertedResidual(nn.Module):
    """1x1 expand -> 3x3 depthwise (``stride``) -> 1x1 linear projection; input added when the shapes match."""

    def __init__(self, c_in: int, c_out: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = c_in * expansion
        layers = _conv_bn(c_in, hidden, 1) if expansion != 1 else []
        layers += _conv_bn(hidden, hidden, 3, stride, groups=hidden)
        layers += _conv_bn(hidden, c_out, 1, act=False)
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.residual else self.block(x)


class MobileNet(nn.Module):
    def __init__(self, width: int, depth: int, expansion: int, num_classes: int, in_channels: int, image_size: tuple[int, int]) -> None:
        super().__init__()
        layers: list[nn.Module] = _conv_bn(in_channels, width, 3)
        c_in = width
        for i in range(depth):
            c_out = width * 2**i
            layers += [InvertedResidual(c_in, c_out, 2, expansion), InvertedResidual(c_out, c_out, 1, expansion)]
            c_in = c_out
        kernel, (gh, gw) = head_grid(tuple(image_size), depth)
        if kernel > 1:
            layers.append(nn.AvgPool2d(kernel))
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in * gh * gw, num_classes)
        init_conv_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C, H, W)
        return self.head(self.features(x).flatten(1))  # (B, num_classes)


def _build(o: dict, *, num_classes: int, in_channels: int, image_size: tuple[int, int] | None = None, **_: object) -> nn.Module:
    if image_size is None:
        raise ModelError("a mobile-* student sizes its head for the input: pass image_size=(H, W) (DataBundle.model_kwargs does)")
    return MobileNet(o["width"], o["depth"], o["expansion"], num_classes, in_channels, image_size)


def _parse(name: str) -> dict | None:
    match = _NAME.match(name)
    if not match:
        return None
    width, depth, expansion = (int(g) for g in match.groups())
    if width < 1 or not 1 <= depth <= MAX_DEPTH or not 1 <= expansion <= MAX_EXPANSION:
        return None
    return {"width": width, "depth": depth, "expansion": expansion}


register_family(
    Family(
        name="mobile",
        build=_build,
        parse=_parse,
        candidates=lambda: [f"mobile-w{w}-d{d}-e{e}" for w in WIDTHS for d in DEPTHS for e in EXPANSIONS],
        example="mobile-w12-d3-e4",
    )
)
