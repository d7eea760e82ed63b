"""The RAM budget (``prokt_deploy/planner/memory.py``, ``--ram-budget`` / ``budget.ram``): the peak activation memory of a
hand-built graph equals the value worked out by hand; a plan keeps only the candidates within the budget (asserted on
the candidates' own figures, not on absolute sizes); a budget nothing meets is exit 5 in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import RECIPES, cli_in_process
from torch import nn

from prokt_deploy.errors import BudgetError
from prokt_deploy.models import create_model
from prokt_deploy.planner import LatencyCache, SizeCache, plan_student
from prokt_deploy.planner.memory import peak_activation_bytes


class TwoConvs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.b = nn.Conv2d(4, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.bn(self.a(x))))


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(2, 8, 1)
        self.b = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.b(self.a(x)).flatten(1).view(x.shape)


def test_peak_of_a_two_layer_model_by_hand() -> None:
    """1x8x8 input (64 elements) -> conv 4 channels (256) -> BN, ReLU (fused: no new tensor) -> conv 2 channels (128).
    At the first conv: input 64 + output 256 = 320 (the input is then dead); at the second: its input 256 + output
    128 = 384, the peak. In bytes: x1 at int8, x4 at fp32."""
    x = torch.zeros(1, 1, 8, 8)
    assert peak_activation_bytes(TwoConvs(), x, 1) == 384
    assert peak_activation_bytes(TwoConvs(), x, 4) == 4 * 384


def test_a_skip_connection_stays_live() -> None:
    """2x4x4 input (32) kept for the add: at conv a, 32 + 8*16 (128) = 160; at conv b, x 32 + a's 128 + b's 32 = 192;
    the views alias b's output; at the add, x 32 + b's 32 + the sum 32 = 96. Peak 192."""
    assert peak_activation_bytes(Residual(), torch.zeros(1, 2, 4, 4), 1) == 192


def test_untraceable_models_have_no_figure() -> None:
    class Branchy(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x if x.sum() > 0 else -x

    assert peak_activation_bytes(Branchy(), torch.zeros(1, 1, 4, 4), 1) is None


def test_ram_budget_keeps_only_the_candidates_within_it(tmp_path: Path) -> None:
    big, small = "pool-w16-d2", "pool-w4-d2"
    figures = {
        a: peak_activation_bytes(create_model(a, num_classes=10, in_channels=1, image_size=(28, 28)), torch.zeros(1, 1, 28, 28), 1)
        for a in (big, small)
    }
    assert figures[big] > figures[small]
    kw = dict(
        family="pool",
        input_shape=(1, 28, 28),
        num_classes=10,
        teacher=create_model("resnet-w24-d1", num_classes=10, in_channels=1),
        teacher_arch="resnet-w24-d1",
        formats=["onnx"],
        candidates=[big, small],
        cache=SizeCache(tmp_path / "sizes.json"),
        latency_cache=LatencyCache(tmp_path / "latency.json"),
    )
    unbounded = plan_student(100_000, **kw)
    assert unbounded.chosen.arch == big and unbounded.chosen.ram_bytes == figures[big]
    bounded = plan_student(100_000, ram_budget_bytes=figures[big] - 1, **kw)
    by_arch = {c.arch: c for c in bounded.candidates}
    assert bounded.chosen.arch == small and by_arch[big].fits is False and bounded.ram_budget_bytes == figures[big] - 1
    assert "peak activation RAM within" in bounded.note
    with pytest.raises(BudgetError, match=rf"least is {small}"):
        plan_student(100_000, ram_budget_bytes=figures[small] - 1, **kw)


def test_cli_flag_and_recipe_key(tmp_path: Path) -> None:
    proc = cli_in_process("plan", "--recipe", str(RECIPES / "digits.yaml"), "--ram-budget", "1B", "--target", "none", cwd=tmp_path)
    assert proc.returncode == 5 and "RAM budget 1 B" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    bad = cli_in_process("plan", "--recipe", str(RECIPES / "digits.yaml"), "--ram-budget", "5XB", cwd=tmp_path)
    assert bad.returncode == 2, bad.stderr
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\ndata: {source: digits}\nbudget: {size: 20KB, ram: lots}\n")
    assert cli_in_process("recipe", "check", str(recipe), cwd=tmp_path).returncode == 3
