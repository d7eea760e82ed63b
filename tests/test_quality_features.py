"""What makes a student worth deploying: best-on-validation weights, augmentation, the label-term
ProKT variant, baselines inside the product (--compare), and the shipped large teacher."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import RECIPES

from prokt_deploy import apply_overrides, compare, distill, load_recipe
from prokt_deploy.data import load_data
from prokt_deploy.errors import RecipeError, UsageError
from prokt_deploy.models import create_model
from prokt_deploy.recipe import OptimizerConfig, Recipe
from prokt_deploy.train.augment import Augmentation, from_recipe, step_generator
from prokt_deploy.train.engine import Method, fit, scratch_method
from prokt_deploy.train.losses import prokt_student_loss

pytestmark = pytest.mark.usefixtures("one_thread")


# --- best-on-validation weights ----------------------------------------------------------------


def test_keep_best_restores_the_better_earlier_epoch():
    data = load_data("digits", seed=0)
    torch.manual_seed(0)
    model = create_model("cnn-w8-d1", num_classes=10, in_channels=1)
    inner = scratch_method(model, OptimizerConfig(lr=3e-3, schedule="constant"), 1000, 1.0)
    seen = {"epoch_steps": 0}
    per_epoch = -(-len(data.train) // 64)
    snapshot = {}

    def step(x, y):
        seen["epoch_steps"] += 1
        if seen["epoch_steps"] <= per_epoch * 2:
            out = inner.step(x, y)
            if seen["epoch_steps"] == per_epoch * 2:
                snapshot.update({k: v.clone() for k, v in model.state_dict().items()})
            return out
        with torch.no_grad():  # epoch 3 ruins the model: every sample gets class 0
            model.head.weight.zero_()
            model.head.bias.copy_(torch.arange(10, 0, -1).float())
        return {"loss": 0.0}

    method = Method("scratch", step, model, optimizers=inner.optimizers)
    history = fit(method, data, epochs=3, batch_size=64, seed=0, device=torch.device("cpu"), keep_best=True)
    assert history[2]["val_student_accuracy"] < history[1]["val_student_accuracy"]
    best = max(range(3), key=lambda i: (history[i]["val_student_accuracy"], -i))
    assert method.best_epoch == best + 1 != 3
    if best == 1:
        for k, v in model.state_dict().items():
            assert torch.equal(v, snapshot[k]), k
    assert model.head.weight.abs().sum() > 0  # not the ruined last epoch


def test_without_keep_best_the_last_epoch_stays():
    data = load_data("digits", seed=0)
    model = create_model("cnn-w4-d1", num_classes=10, in_channels=1)
    method = scratch_method(model, OptimizerConfig(lr=3e-3), 20, 1.0)
    fit(method, data, epochs=2, batch_size=512, seed=0, device=torch.device("cpu"), keep_best=False)
    assert method.best_epoch == 2


def test_manifest_records_best_epoch(tmp_path):
    r = apply_overrides(load_recipe(RECIPES / "digits.yaml"), {"method": "scratch", "train.epochs": 2, "data.max_train_samples": 300})
    manifest = distill(r, out=tmp_path / "run", runs_root=tmp_path).manifest
    m = manifest["metrics"]
    assert m["best_epoch"] in (1, 2) and m["epochs"] == 2
    vals = [h["val_student_accuracy"] for h in m["history"]["student"]]
    assert vals[m["best_epoch"] - 1] == max(vals)
    assert abs(m["student_val_accuracy"] - max(vals)) < 1e-6  # the kept weights are the best epoch's


# --- augmentation ---------------------------------------------------------------------------------


def test_augmentation_is_deterministic_under_a_seed_and_changes_images():
    x = torch.randn(8, 1, 12, 12)
    aug = Augmentation(crop_padding=2, hflip=True, resized_crop=0.7, background=(-1.0,))
    a = aug(x, step_generator(0, 1, 5))
    b = aug(x, step_generator(0, 1, 5))
    c = aug(x, step_generator(0, 1, 6))
    assert a.shape == x.shape and torch.equal(a, b)
    assert not torch.equal(a, c) and not torch.equal(a, x)


def test_padded_crop_shifts_in_background_and_flip_mirrors():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    out = Augmentation(crop_padding=1, background=(-7.0,))(x.repeat(64, 1, 1, 1), torch.Generator().manual_seed(0))
    shifted = [o for o in out if not torch.equal(o, x[0])]
    assert shifted and all((o == -7.0).any() for o in shifted)  # the border is background, never wrapped pixels
    flips = Augmentation(hflip=True)(x.repeat(64, 1, 1, 1), torch.Generator().manual_seed(0))
    assert all(torch.equal(f, x[0]) or torch.equal(f, x[0].flip(-1)) for f in flips)
    assert any(torch.equal(f, x[0].flip(-1)) for f in flips)


def test_augmentation_is_off_where_the_recipe_says_so():
    digits = load_recipe(RECIPES / "digits.yaml")
    assert from_recipe(digits.data.augment, {"mean": [0.5], "std": [0.2]}) is None
    fashion = load_recipe(RECIPES / "fashion-mnist.yaml")
    aug = from_recipe(fashion.data.augment, {"mean": [0.5], "std": [0.25]})
    assert aug is not None and aug.hflip and aug.background == (-2.0,)


# --- ProKT with a label term (prokt.student_label_weight) ---------------------------------------------


def test_student_label_weight_loss_matches_the_formula():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 1.0]])
    p = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    y = torch.tensor([0, 2])
    q = F.softmax(logits, -1)
    kl = (p * (p.log() - q.log())).sum(-1).mean()
    ce = -(q[0, 0].log() + q[1, 2].log()) / 2
    for w in (0.3, 0.5, 1.0):
        assert torch.allclose(prokt_student_loss(logits, p, y, w), (1 - w) * kl + w * ce, atol=1e-6)
    assert torch.equal(prokt_student_loss(logits, p, y, 0.0), prokt_student_loss(logits, p))  # w = 0: the reference, bit for bit


@pytest.mark.parametrize("w", [-0.1, 1.5])
def test_recipe_refuses_label_weight_outside_0_1(tmp_path, w):
    path = tmp_path / "r.yaml"
    path.write_text(f"prokt: {{student_label_weight: {w}}}\n")
    with pytest.raises(RecipeError, match="prokt.student_label_weight"):
        load_recipe(path)


# --- baselines inside the product ----------------------------------------------------------------------


def test_compare_adds_one_row_per_baseline_on_the_same_split_and_student(tmp_path):
    r = apply_overrides(load_recipe(RECIPES / "digits.yaml"), {"train.epochs": 1, "teacher.epochs": 1, "data.max_train_samples": 300})
    run = distill(r, out=tmp_path / "run", runs_root=tmp_path).path
    rows = compare(run, "scratch,kd")
    assert [row["method"] for row in rows] == ["prokt", "scratch", "kd"]
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["compare"]["rows"] == rows
    arch = manifest["student"]["arch"]
    for name in ("scratch", "kd"):
        sub = json.loads((run / "compare" / name / "manifest.json").read_text())
        assert sub["method"] == name and sub["student"]["arch"] == arch
        assert sub["data"] == manifest["data"] and sub["seed"] == manifest["seed"]
        assert sub["metrics"]["epochs"] == manifest["metrics"]["epochs"]
        assert any(a["precision"] == "int8" for a in sub["artifacts"])
    assert all(len(row["val_curve"]) == row["epochs"] for row in rows)  # the report's learning curves of every baseline
    from prokt_deploy.benchmarking.report import curve_series, svg_curves

    series = curve_series({"method": "prokt", "learning_curves": manifest["metrics"]["history"], "compare": manifest["compare"]})
    names = [name for name, _ in series]
    assert names[-2:] == ["student (scratch, baseline)", "student (kd, baseline)"] and "student (prokt)" in names
    assert svg_curves(series).count('class="curve"') == len(series)
    kd = rows[2]
    assert kd["gain_over_scratch_points"] == pytest.approx((kd["student_test_accuracy"] - rows[1]["student_test_accuracy"]) * 100, abs=0.01)
    assert kd["gain_standard_error_points"] > 0 and isinstance(kd["within_noise"], bool)
    assert not (tmp_path / "latest").resolve() == (run / "compare" / "kd").resolve()  # baselines do not move runs/latest
    assert all(row["train_s"] > 0 for row in rows) and rows[1]["train_time_vs_scratch"] == 1.0
    assert kd["train_time_vs_scratch"] == pytest.approx(kd["train_s"] / rows[1]["train_s"], abs=0.01)


def test_compare_table_shows_each_methods_training_time_and_notes_a_costly_one():
    from prokt_deploy.benchmarking.report import compare_cells, compare_markdown

    def row(method, train_s, ratio, gain=None):
        return {
            "method": method,
            "student_arch": "pool-w16-d3",
            "best_epoch": 3,
            "epochs": 3,
            "student_test_accuracy": 0.9,
            "deployed_test_accuracy": 0.9,
            "train_s": train_s,
            "train_time_vs_scratch": ratio,
            "gain_over_scratch_points": gain,
            "gain_standard_error_points": 0.2,
            "within_noise": gain is not None and abs(gain) < 0.4,
        }

    comp = {"format": "onnx", "precision": "int8", "rows": [row("prokt", 300.0, 10.0, 1.0), row("scratch", 30.0, 1.0), row("kd", 40.0, 1.33, 0.1)]}
    header, cells, notes = compare_cells(comp)
    assert header[-1] == "training" and [c[-1] for c in cells] == ["300 s (10.0x scratch)", "30 s", "40 s (1.3x scratch)"]
    assert [n.split(":")[0] for n in notes] == ["Note", "Warning"]  # prokt costs 10x (kd's 1.33x is not noted); kd's gain is noise
    assert "given the same time, scratch could run about 10.0x the epochs" in notes[0]
    md = "\n".join(compare_markdown(comp))
    assert "| training |" in md and "Note: prokt trained 10.0x as long as scratch" in md


def test_compare_refuses_unknown_methods():
    from prokt_deploy.compare import parse_methods

    assert parse_methods("scratch, kd") == ["scratch", "kd"]
    for bad in ("scratch,dk", "", "kd,kd"):
        with pytest.raises(UsageError):
            parse_methods(bad)


# --- the shipped large teacher ---------------------------------------------------------------------------

FASHION = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")


@pytest.mark.skipif(not FASHION.exists(), reason="Fashion-MNIST (Debian dataset-fashion-mnist) is not installed")
def test_shipped_teacher_loads_and_scores_above_a_floor():
    from prokt_deploy.data import load_recipe_data
    from prokt_deploy.train.build import build_teacher

    recipe = load_recipe(RECIPES / "fashion-mnist.yaml")
    assert recipe.teacher.checkpoint and recipe.teacher.checkpoint.startswith("shipped:")
    data = load_recipe_data(recipe)
    as_is = recipe.model_copy(update={"method": "kd", "teacher": recipe.teacher.model_copy(update={"init": "checkpoint"})})
    teacher = build_teacher(as_is, data).eval()  # the checkpoint as it is (the recipe resets its head for ProKT)
    n_params = sum(p.numel() for p in teacher.parameters())
    assert n_params >= 500_000
    with torch.no_grad():
        acc = (teacher(data.test.x[:2000]).argmax(1) == data.test.y[:2000]).float().mean().item()
    assert acc > 0.90, acc


def test_every_recipe_passes_recipe_check():
    for path in sorted(RECIPES.glob("*.yaml")):
        assert isinstance(load_recipe(path), Recipe), path
