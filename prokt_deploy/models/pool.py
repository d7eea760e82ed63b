"""Pooled plain convolutional classifiers with a spatial head: 'pool-w{width}-d{depth}'.

``depth`` (2-3) stages of conv3x3 -> BN -> ReLU -> 2x2 max pooling with widths (w, 2w, 4w); the last
feature map (28 -> 14 -> 7 -> 3 at 28x28 with 3 stages) is flattened into a linear ``head``. The head is
sized for the input resolution, so the model needs ``image_size`` (the data's (H, W), which
:meth:`prokt_deploy.data.DataBundle.model_kwargs` passes); a map wider than 5 is first averaged with a
fixed kernel of ``side // 3`` (a static AveragePool, which quantizes and exports like the rest; an
adaptive pool over a size it does not divide exports as gathers and divisions that stay in float).
Two choices set it apart from the other student families:

- **A spatial head.** The cnn, resnet and wide families average the last feature map to one vector,
  which keeps only *what* was seen, not *where*. On Fashion-MNIST the layout of a garment is much of
  its class (a shirt and a pullover differ in where the sleeves and collar are). Measured on the default
  recipe (3 epochs, its schedule and augmentation, test accuracy): ``pool-w20-d3`` (43.7k parameters)
  89.90% from scratch and 90.30% with ProKT, against 86.31% / 86.59% for ``resnet-w8-d1`` (19.8k) and
  78.67% from scratch for ``wide-w64-d2`` (76k); docs/results.md.
- **Few nodes, early downsampling.** Every stage halves the resolution right after its one conv, so a
  call is 3 convs, 3 pools and one matmul: at batch 1 on a CPU (where a call costs a fixed amount per
  node on top of the arithmetic) it is faster than a ResNet of the same bytes: ``pool-w20-d3`` int8 ONNX
  0.074 ms batch-1 p50 against 0.119 ms for ``resnet-w8-d1`` (onnxruntime, 1 thread, Intel Xeon with
  AVX-512/VNNI/AMX, the same ``plan --family pool,resnet`` run).

Capacity against other families is compared on the planner's rule: parameters (see
:func:`prokt_deploy.planner.candidates.capacity`), then MACs.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from prokt_deploy.errors import ModelError
from prokt_deploy.models.registry import Family, init_conv_weights, register_family

_NAME = re.compile(r"^pool-w(\d+)-d(\d+)$")
WIDTHS = (4, 6, 8, 12, 16, 20, 24, 32, 48)
DEPTHS = (2, 3)
MAX_DEPTH = 3
MAX_SIDE = 5  # a last map wider than this is averaged down to about 3x3 before the head


def head_grid(image_size: tuple[int, int], depth: int, *, round_up: bool = False) -> tuple[int, tuple[int, int]]:
    """(average-pool kernel, the head's (H, W) grid) after ``depth`` 2x2 max pools of ``image_size`` (``round_up``:
    after ``depth`` stride-2 convs with padding 1, each ceil(n / 2), as the mobile family's blocks)."""
    side = list(image_size)
    for _ in range(depth):
        side = [(s + 1) // 2 if round_up else s // 2 for s in side]
    if min(side) < 1:
        raise ModelError(f"pool-*-d{depth} needs images of at least {2**depth}x{2**depth} pixels, got {image_size[0]}x{image_size[1]}")
    kernel = max(1, max(side) // 3) if max(side) > MAX_SIDE else 1
    kernel = min(kernel, *side)
    return kernel, (side[0] // kernel, side[1] // kernel)


class PooledCNN(nn.Module):
    def __init__(self, width: int, depth: int, num_classes: int, in_channels: int, image_size: tuple[int, int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for i in range(depth):
            c_out = width * 2**i
            layers += [nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2)]
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
        raise ModelError("a pool-* student sizes its head for the input: pass image_size=(H, W) (DataBundle.model_kwargs does)")
    return PooledCNN(o["width"], o["depth"], num_classes, in_channels, image_size)


def _parse(name: str) -> dict | None:
    match = _NAME.match(name)
    if not match:
        return None
    width, depth = int(match.group(1)), int(match.group(2))
    if width < 1 or not 1 <= depth <= MAX_DEPTH:
        return None
    return {"width": width, "depth": depth}


register_family(
    Family(
        name="pool",
        build=_build,
        parse=_parse,
        candidates=lambda: [f"pool-w{w}-d{d}" for w in WIDTHS for d in DEPTHS],
        example="pool-w16-d3",
    )
)
