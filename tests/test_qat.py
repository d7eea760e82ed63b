"""Quantization-aware distillation (``prokt_deploy/train/qat.py``) passes an int8 gate that post-training int8 must miss.

The case is built to fail post-training int8, whatever the seed: in a trained digits student, the first conv's
output channel 0 is made dead (zero weights, BatchNorm shift -1: ReLU gives 0 on every input), and the second conv
gets a weight of 100x its largest on that dead channel for every output channel. In fp32 nothing changes (the weight
multiplies zeros); per-channel int8 sets every channel's step from that weight, so the real weights round to 0 or
+-1 steps. With accuracy-aware int8 off (it would keep the conv in fp32), quantization-aware fine-tuning must bring
the file within the gate (its step starts where the input-weighted rounding error is least, which clips the outlier
on the dead input, and is then learned); the record says which path made it and what it replaced.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import RECIPES, cli_in_process

from prokt_deploy import apply_overrides, distill, export_run, load_recipe
from prokt_deploy.errors import GateFailed
from prokt_deploy.rundir.checkpoint import save_weights
from prokt_deploy.rundir.reader import load_model
from prokt_deploy.train.qat import QMAX, input_power, mse_step, quantization_aware_distill

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dead_channel_run(tmp_path_factory) -> Path:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("qat")
    recipe = apply_overrides(
        load_recipe(RECIPES / "digits.yaml"),
        {"method": "kd", "student.arch": "cnn-w8-d1", "train.epochs": 4, "budget.size": "60000B", "budget.formats": ["onnx"]},
    )
    run = distill(recipe, out=root / "run", runs_root=root / "runs").path
    student = load_model(run, "student")
    first_bn, second = student.features[1], student.features[3]
    x = torch.randn(32, 1, 8, 8)
    with torch.no_grad():
        student.features[0].weight[0] = 0.0
        first_bn.running_mean[0], first_bn.weight[0], first_bn.bias[0] = 0.0, 1.0, -1.0
        before = student(x)
        second.weight[:, 0, 1, 1] = 100 * second.weight.abs().max()
        torch.testing.assert_close(student(x), before)  # the same function in fp32
    save_weights(student, run / "student.safetensors")
    yield run
    torch.set_num_threads(threads)


def test_qat_passes_the_gate_post_training_int8_misses(dead_channel_run: Path, tmp_path: Path) -> None:
    run = Path(shutil.copytree(dead_channel_run, tmp_path / "run"))
    weights = (run / "student.safetensors").read_bytes()
    with pytest.raises(GateFailed, match="accuracy drop"):
        export_run(run, ["onnx"], "int8", accuracy_aware="off", qat="off")
    (record,) = export_run(run, ["onnx"], "int8", accuracy_aware="off")  # qat auto: the post-training miss triggers it
    print("\n" + json.dumps(record.qat, indent=1))
    assert record.passed and record.int8_path == "qat" and record.accuracy_drop <= 1.0 and record.within_budget
    before = record.qat["before"]
    assert before["int8_path"] == "ptq" and before["accuracy_drop"] > 20 and not record.failures
    assert record.qat["teacher"] is True and record.qat["steps"] >= 300  # a kd run keeps its teacher
    assert record.qat["val_accuracy_simulated_after"] > record.qat["val_accuracy_simulated_before"] - 0.01
    assert (run / "student.safetensors").read_bytes() == weights  # the run's student is not changed
    entry = json.loads((run / "manifest.json").read_text())["artifacts"][-1]
    assert entry["int8_path"] == "qat" and entry["qat"]["before"]["accuracy_drop"] == before["accuracy_drop"]


def test_export_qat_flag_and_the_ptq_path_is_recorded(dead_channel_run: Path, tmp_path: Path) -> None:
    run = Path(shutil.copytree(dead_channel_run, tmp_path / "run"))
    proc = cli_in_process("export", str(run), "-f", "onnx", "--qat", "--no-accuracy-aware", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "quantization-aware fine-tuning (asked for)" in proc.stdout, proc.stdout
    entry = json.loads((run / "manifest.json").read_text())["artifacts"][-1]
    assert entry["int8_path"] == "qat" and "before" not in entry["qat"]
    # an fp32 export has no int8 path; the accuracy-aware path is named as such
    (fp32,) = export_run(run, ["onnx"], "fp32")
    assert fp32.int8_path is None and fp32.qat is None
    (aware,) = export_run(run, ["onnx"], "int8", accuracy_aware="on", qat="off")
    assert aware.int8_path == "accuracy-aware" and aware.passed


def test_the_initial_step_keeps_normal_weights_and_clips_an_outlier_only_where_its_input_is_dead() -> None:
    torch.manual_seed(0)
    w = torch.randn(3, 4, 3, 3) * 0.1
    w[1, 2, 1, 1] = 100 * w.abs().max()  # channel 1's range is set by one weight on input channel 2
    top = w.reshape(3, -1).abs().amax(1)
    torch.testing.assert_close(mse_step(w), top / QMAX)  # unweighted: the outlier's own error keeps the full range
    live = torch.ones_like(w)
    torch.testing.assert_close(mse_step(w, live), top / QMAX)
    dead = live.clone()
    dead[:, 2] = 0.0  # input channel 2 is always zero: its weights cost nothing
    step = mse_step(w, dead)
    assert step[1] < top[1] / QMAX / 20  # the outlier clipped: a step near the other weights' range
    assert step[1] * QMAX >= w[1, [0, 1, 3]].abs().max() * 0.9
    torch.testing.assert_close(step[[0, 2]], top[[0, 2]] / QMAX)  # channels without an outlier keep their largest weight
    # the input power of a grouped (depthwise) conv and a Linear: the mean square per input channel / feature
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 2, 3, groups=2), torch.nn.Flatten(), torch.nn.Linear(2, 1))
    x = torch.zeros(5, 2, 3, 3)
    x[:, 1] = 2.0
    power = input_power(model, x)
    torch.testing.assert_close(power[model[0]], torch.tensor([0.0, 4.0]))
    assert power[model[2]].shape == (2,)


def test_quantization_aware_fine_tuning_never_returns_a_worse_model_on_validation() -> None:
    """A learning rate that wrecks the model: the kept model is the start (epoch 0), not the last epoch."""
    torch.manual_seed(0)
    x = torch.randn(256, 4)
    y = (x[:, 0] > 0).long()
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(200):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    tuned, result = quantization_aware_distill(model, (x, 1 - y), (x, y), epochs=3, min_steps=0, lr=1e-1, batch_size=32)
    assert result.val_accuracy_simulated_before > 0.9  # the start is good; training on flipped labels ruins it
    assert result.val_accuracy_simulated_after == result.val_accuracy_simulated_before
    assert (tuned(x).argmax(1) == y).float().mean() > 0.9
