"""The mobile student family (``prokt_deploy/models/mobile.py``): inverted-residual blocks with depthwise 3x3 convs,
the residual where shapes allow, the pool family's spatial head; its names, its parameters counted by hand, and the
planner's capacity rule over it. Its exports: every format and precision with the gates (tests/test_export_run.py for
ONNX/OpenVINO, tests/test_litert.py, tests/test_executorch.py)."""

from __future__ import annotations

import pytest
import torch

from prokt_deploy.errors import ModelError
from prokt_deploy.models import count_params, create_model, get_family
from prokt_deploy.models.mobile import InvertedResidual, head_grid
from prokt_deploy.planner.candidates import capacity


def test_names_parse_and_candidates_are_valid():
    fam = get_family("mobile")
    assert fam.parse("mobile-w12-d3-e4") == {"width": 12, "depth": 3, "expansion": 4}
    for bad in ("mobile-w12-d3", "mobile-w12-d9-e4", "mobile-w0-d2-e2", "mobile-w12-d2-e99", "pool-w12-d3"):
        assert fam.parse(bad) is None, bad
    assert all(fam.parse(c) for c in fam.candidates()) and fam.parse(fam.example)
    with pytest.raises(ModelError, match="image_size"):
        create_model("mobile-w8-d2-e2", num_classes=10, in_channels=1)


def test_blocks_are_depthwise_with_residuals_where_shapes_allow():
    model = create_model("mobile-w8-d3-e4", num_classes=10, in_channels=1, image_size=(28, 28))
    blocks = [m for m in model.modules() if isinstance(m, InvertedResidual)]
    assert len(blocks) == 6 and [b.residual for b in blocks] == [False, True] * 3  # stride-2 first block of each stage
    depthwise = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    assert len(depthwise) == 6 and all(m.groups == m.in_channels == m.out_channels for m in depthwise)
    assert all(isinstance(b.block[-1], torch.nn.BatchNorm2d) for b in blocks)  # the linear bottleneck: no activation
    assert head_grid((28, 28), 3) == (1, (4, 4)) and head_grid((32, 32), 2) == (2, (4, 4))
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


def test_parameters_counted_by_hand():
    """mobile-w4-d1-e2 on 8x8 grey: stem 3x3 conv 1->4 (36) + BN (8); two blocks 4 -> 8 -> 4 of expand 1x1 (32) + BN
    (16), depthwise 3x3 (72) + BN (16), project 1x1 (32) + BN (8) = 176 each; head on the 4x4 map: 4*16*10 + 10 = 650."""
    model = create_model("mobile-w4-d1-e2", num_classes=10, in_channels=1, image_size=(8, 8))
    assert count_params(model) == 36 + 8 + 2 * 176 + 650 == capacity(model)  # a depthwise weight counts as one parameter
