"""A method is one file plus one registration line: a trivial extra method registered here, in the test module
(the ``ce-smooth`` block below is that whole file), shows up in ``recipe check`` (its section validated),
``distill --method``, ``run --compare`` (the compare table) and the report. The CLI runs in this process
(``prokt_deploy.cli.main.main``): a registration does not reach a subprocess."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import RECIPES
from pydantic import Field

from prokt_deploy.cli.main import main
from prokt_deploy.errors import UsageError
from prokt_deploy.recipe import Section, apply_overrides, load_recipe
from prokt_deploy.train import methods
from prokt_deploy.train.methods import MethodSpec, StepSetup

# --- the method: one file's worth --------------------------------------------------------------------------


class CeSmoothConfig(Section):
    smoothing: float = Field(0.1, ge=0, lt=1)


SEEN: list[float] = []  # the smoothing each built step got (the recipe's section reached the step)


def ce_smooth_step(s: StepSetup):  # engine.Method
    import torch.nn.functional as F

    from prokt_deploy.train.engine import Method, check_finite, clip_and_step, make_optimizer, make_scheduler

    cfg, student = s.recipe.train.student_optimizer, s.student
    opt = make_optimizer(student.parameters(), cfg)
    sched = make_scheduler(opt, cfg, s.total_steps)
    SEEN.append(s.config.smoothing)

    def step(x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        student.train()
        logits = student(x)
        loss = F.cross_entropy(logits, y, label_smoothing=s.config.smoothing)
        check_finite(loss, "ce-smooth")
        clip_and_step(student, opt, sched, loss, s.recipe.train.grad_clip)
        return {"loss": loss.item(), "acc": (logits.argmax(1) == y).float().mean().item()}

    return Method("ce-smooth", step, student, optimizers={"student": (opt, sched)})


CE_SMOOTH = MethodSpec(
    name="ce-smooth",
    step=ce_smooth_step,
    teacher="none",
    label="label-smoothed CE",
    description="Label-smoothed cross-entropy, no teacher (a method registered by a test).",
    section="ce_smooth",
    config=CeSmoothConfig,
    shown=("smoothing",),
)

# -------------------------------------------------------------------------------------------------------------

DIGITS = str(RECIPES / "digits.yaml")
FAST = ["--runs", "20", "--warmup", "3", "--repeats", "1", "--batch", "8"]


@pytest.fixture(scope="module", autouse=True)
def ce_smooth():
    methods.register(CE_SMOOTH)  # the registration line
    yield CE_SMOOTH
    methods.unregister("ce-smooth")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """The CLI in this process: exit code, stdout, stderr."""
    with pytest.raises(SystemExit) as exit_:
        main(list(args))
    out = capsys.readouterr()
    return exit_.value.code, out.out, out.err


def test_recipe_check_validates_the_methods_section(tmp_path, capsys):
    good = tmp_path / "good.yaml"
    good.write_text("name: smooth\nmethod: ce-smooth\nce_smooth: {smoothing: 0.2}\n")
    code, out, err = cli(capsys, "recipe", "check", str(good))
    assert code == 0 and "ce-smooth" in out, err
    assert load_recipe(good).ce_smooth.smoothing == 0.2 and load_recipe(DIGITS).ce_smooth.smoothing == 0.1  # defaults when absent
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: ce-smooth\nce_smooth: {smoothing: 1.5, smooth: 1}\n")
    code, _, err = cli(capsys, "recipe", "check", str(bad))
    assert code == 3 and "ce_smooth.smoothing" in err and "ce_smooth.smooth: Extra inputs" in err, err
    with pytest.raises(UsageError, match="known methods: prokt, kd, dkd, scratch, ce-smooth"):
        apply_overrides(load_recipe(DIGITS), {"method": "smooth"})


def test_distill_trains_with_the_registered_method(tmp_path, capsys):
    SEEN.clear()
    out = tmp_path / "run"
    code, _, err = cli(capsys, "distill", "--recipe", DIGITS, "--method", "ce-smooth", "--student", "cnn-w8-d1", "--epochs", "1", "--out", str(out))
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["method"] == "ce-smooth" and SEEN == [0.1]
    assert len(manifest["metrics"]["history"]["student"]) == 1 and 0 <= manifest["metrics"]["student_test_accuracy"] <= 1
    assert manifest["teacher"]["weights"] is None and not (out / "teacher.safetensors").exists()  # teacher "none": not kept
    assert "ce_smooth" in (out / "recipe.yaml").read_text()


def test_compare_and_the_report_show_the_registered_method(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["run", "--recipe", DIGITS, "--method", "scratch", "--compare", "ce-smooth", "--student", "cnn-w8-d1", "--epochs", "1"]
    code, _, err = cli(capsys, *args, "--budget", "64KB", "--out", str(out), *FAST)
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    rows = manifest["compare"]["rows"]
    assert [r["method"] for r in rows] == ["scratch", "ce-smooth"] and "gain_over_scratch_points" in rows[1]
    sub = json.loads((Path(out) / "compare" / "ce-smooth" / "manifest.json").read_text())
    assert sub["method"] == "ce-smooth" and sub["student"]["arch"] == manifest["student"]["arch"]
    md = (out / "report.md").read_text()
    assert any(line.startswith("| ce-smooth | cnn-w8-d1 |") for line in md.splitlines()), md  # the compare table
    assert "student (ce-smooth, baseline)" in (out / "report.html").read_text()  # its learning curve
    # the headline answers "did distillation help?" from the comparison (a scratch run: the compared method's gain)
    assert f"**Distillation**: ce-smooth {rows[1]['gain_over_scratch_points']:+.2f} points over scratch" in md.split("# Benchmark")[0]


def test_a_variant_is_its_base_method_with_fixed_settings():
    """prokt+label (prokt_deploy/train/methods/prokt.py) is compared as prokt with prokt.student_label_weight 0.3."""
    from prokt_deploy.compare import baseline_recipe, parse_methods

    assert parse_methods("scratch,prokt+label,ce-smooth") == ["scratch", "prokt+label", "ce-smooth"]
    r = baseline_recipe(load_recipe(DIGITS), "prokt+label", "cnn-w8-d1")
    assert r.method == "prokt" and r.prokt.student_label_weight == 0.3 and r.student.arch == "cnn-w8-d1"
    kd = baseline_recipe(load_recipe(DIGITS), "kd", "cnn-w8-d1")
    assert kd.teacher.init == "pretrain" and methods.get("kd").pretrains_teacher(kd)  # a frozen teacher is trained first
    with pytest.raises(ValueError, match="already registered"):
        methods.register(CE_SMOOTH)
