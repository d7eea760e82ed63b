"""Wide-shallow plain convolutional classifiers for edge latency: 'wide-w{width}-d{depth}'.

``depth`` (1-3) stride-2 conv3x3 -> BN -> ReLU layers with widths (w, 2w, 4w), global average pooling
and a linear ``head``. Why this shape: at batch 1 on a CPU or a small NPU, a call costs a fixed amount
per node (dispatch, layout changes, quantize/requantize) on top of the arithmetic, so a student with few
large layers can beat one with the same parameters spread over many small ones. Measured here (issue
13): the 10-conv ``resnet-w8-d1``, 21x smaller than a 421k-parameter plain teacher, ran at 0.97x the
teacher's ONNX speed. Every layer here halves the resolution first, so the arithmetic also stays small:
at 28x28 ``wide-w32-d2`` (19.6k parameters) has 0.96M MACs, ``resnet-w8-d1`` (19.8k) 2.36M. With few nodes the int8 file also
carries little per-node overhead (scales, zero points, names).
Measured here (onnxruntime 1.32, 1 thread, batch 1, 28x28, AMD EPYC Zen 2, AVX2 only): ``wide-w32-d2``
0.044 ms fp32 / 0.056 ms int8 against ``resnet-w8-d1`` 0.139 / 0.191 ms: 3.2-3.4x faster at the same size.

Capacity against other families is compared on the planner's rule: parameters (see
:func:`prokt_deploy.planner.candidates.capacity`), then MACs.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from prokt_deploy.models.registry import Family, init_conv_weights, register_family

_NAME = re.compile(r"^wide-w(\d+)-d(\d+)$")
WIDTHS = (8, 12, 16, 24, 32, 48, 64, 96, 128)
DEPTHS = (2, 3)
MAX_DEPTH = 3


class WideShallowCNN(nn.Module):
    def __init__(self, width: int, depth: int, num_classes: int, in_channels: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for i in range(depth):
            c_out = width * 2**i
            layers += [nn.Conv2d(c_in, c_out, 3, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, num_classes)
        init_conv_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C, H, W)
        return self.head(self.features(x).mean(dim=(2, 3)))  # (B, num_classes)


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
        name="wide",
        build=lambda o, *, num_classes, in_channels, **_: WideShallowCNN(o["width"], o["depth"], num_classes, in_channels),
        parse=_parse,
        candidates=lambda: [f"wide-w{w}-d{d}" for w in WIDTHS for d in DEPTHS],
        example="wide-w32-d2",
    )
)
