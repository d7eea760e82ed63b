"""Training in channels-last memory format (engine.use_channels_last): used for images on the CPU,
the models are back in the default layout afterwards, and the numbers match NCHW training up to
float rounding."""

from __future__ import annotations

import pytest
import torch

from prokt_deploy.data import load_data
from prokt_deploy.models import create_model
from prokt_deploy.recipe import OptimizerConfig
from prokt_deploy.train import engine
from prokt_deploy.train.engine import Method, fit, scratch_method, use_channels_last

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = torch.device("cpu")


def _convs(model: torch.nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1]


def test_images_train_in_channels_last_and_the_layout_is_restored():
    data = load_data("digits", seed=0)
    assert use_channels_last(data, CPU)
    assert not use_channels_last(data, torch.device("cuda"))  # not measured on CUDA: left as it is
    model = create_model("cnn-w8-d1", num_classes=10, in_channels=1)
    inner = scratch_method(model, OptimizerConfig(lr=3e-3), 100, 1.0)
    seen = []

    def step(x, y):
        seen.append(all(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous() for w in _convs(model)))
        return inner.step(x, y)

    fit(Method("scratch", step, model, optimizers=inner.optimizers), data, epochs=1, batch_size=256, seed=0, device=CPU)
    assert seen and all(seen)  # every step ran on NHWC weights
    assert all(w.is_contiguous() for w in _convs(model))  # the default layout again: export and saving see plain tensors


def _train(monkeypatch, channels_last: bool) -> tuple[list[dict], dict]:
    monkeypatch.setattr(engine, "use_channels_last", lambda data, device: channels_last)
    data = load_data("digits", seed=0)
    torch.manual_seed(0)
    model = create_model("cnn-w8-d1", num_classes=10, in_channels=1)
    method = scratch_method(model, OptimizerConfig(lr=3e-3), 12, 1.0)
    history = fit(method, data, epochs=2, batch_size=256, seed=0, device=CPU)
    return history, {k: v.clone() for k, v in model.state_dict().items()}


def test_channels_last_matches_nchw_training_up_to_rounding(monkeypatch):
    h_nchw, w_nchw = _train(monkeypatch, False)
    h_nhwc, w_nhwc = _train(monkeypatch, True)
    for a, b in zip(h_nchw, h_nhwc):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3)
        assert abs(a["val_student_accuracy"] - b["val_student_accuracy"]) <= 0.01
    for k, v in w_nchw.items():
        # Adam turns rounding-level gradient differences into steps of up to lr (3e-3) on near-zero gradients
        assert torch.allclose(v.float(), w_nhwc[k].float(), rtol=0, atol=2e-3), k


class _ViewNet(torch.nn.Module):
    """A user's model in the old style: ``view`` on a feature map needs NCHW-contiguous memory."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.head = torch.nn.Linear(4 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = torch.relu(self.conv(x))
        return self.head(f.view(f.size(0), -1))


def test_a_model_that_cannot_run_channels_last_trains_in_nchw():
    data = load_data("digits", seed=0)
    with pytest.raises(RuntimeError, match="view"):  # what the probe protects against
        _ViewNet().to(memory_format=torch.channels_last)(data.train.x[:2].contiguous(memory_format=torch.channels_last))
    model = _ViewNet()
    inner = scratch_method(model, OptimizerConfig(lr=3e-3), 20, 1.0)
    history = fit(inner, data, epochs=1, batch_size=256, seed=0, device=CPU)
    assert history[0]["val_student_accuracy"] > 0.2 and model.conv.weight.is_contiguous()


def test_channels_last_can_be_switched_off(monkeypatch):
    data = load_data("digits", seed=0)
    monkeypatch.setenv("PROKT_DEPLOY_CHANNELS_LAST", "0")
    assert not use_channels_last(data, CPU)
    monkeypatch.setenv("PROKT_DEPLOY_CHANNELS_LAST", "1")
    assert use_channels_last(data, CPU)
