"""The planner's choice rules as pure functions over measured candidates (nothing exported), the tiny-teacher
message, and the latency rule on by default for every recipe (issue 34, items 6 and 8)."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import RECIPES

from prokt_deploy.cli.main import main
from prokt_deploy.errors import BudgetError
from prokt_deploy.planner import Candidate, Entry, plan, rules, timing_target
from prokt_deploy.recipe import TUNED_KEYS, Recipe, apply_overrides, load_recipe, recipe_defaults

BUDGET = 20_000


def _cli(capsys, *argv: str) -> tuple[int, str]:
    """The CLI in this process (no interpreter and torch start-up per call): exit code and stdout."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(list(argv))
    return e.value.code, capsys.readouterr().out


def _entry(arch: str, capacity: int, size: int | None, latency: float | None = None) -> Entry:
    """A measured candidate (``size`` None: not measured); params equal capacity, as for images."""
    c = Candidate(arch, capacity, 0, (size or 10**9) // 2, bytes={"onnx": size} if size is not None else {}, latency_ms=latency)
    return Entry(c, capacity)


def _pool() -> list[Entry]:  # most capable first
    return [_entry("huge", 90_000, None), _entry("big", 50_000, 30_000), _entry("mid", 20_000, 18_000), _entry("small", 5_000, 9_000)]


def test_the_size_rule_takes_the_most_capable_student_that_fits_and_is_smaller_than_the_teacher() -> None:
    entries = _pool()
    binding = rules.is_binding(BUDGET, teacher_bytes=100_000)
    rule = rules.SizeRule(BUDGET, rules.capacity_limit(60_000, binding=binding, max_teacher_fraction=0.25))
    assert binding and rule.capacity_limit == 60_000
    choice = rules.choose_by_size(entries, rule)
    assert choice.arch == "mid"
    assert rules.size_verdicts(entries, rule, choice) == [False, False, True, True]
    # the capacity rule: a teacher of 20,000 parameters leaves only "small"
    rule = rules.SizeRule(BUDGET, rules.capacity_limit(20_000, binding=True, max_teacher_fraction=0.25))
    assert rules.choose_by_size(entries, rule).arch == "small"
    # a pinned architecture skips the capacity rule
    assert rules.choose_by_size(entries, rules.SizeRule(BUDGET, 0, pinned=True)).arch == "mid"


def test_a_budget_that_does_not_bind_takes_the_teacher_fraction_then_falls_back_to_a_student_smaller_than_the_teacher() -> None:
    entries = _pool()
    limit = rules.capacity_limit(100_000, binding=False, max_teacher_fraction=0.25)
    assert rules.choose_by_size(entries, rules.SizeRule(BUDGET, limit)).arch == "mid"  # 20,000 < 25,000
    rule = rules.SizeRule(BUDGET, rules.capacity_limit(16_000, binding=False, max_teacher_fraction=0.25))  # below 4,000: none
    assert rules.choose_by_size(entries, rule) is None
    fallback = rules.fallback(entries, rule, binding=False, teacher_capacity=16_000)
    assert fallback.arch == "small"  # the least capable that fits, still smaller than the teacher
    assert rules.fallback(entries, rule, binding=True, teacher_capacity=16_000) is None  # binding: no fallback
    assert rules.fallback(entries, rule, binding=False, teacher_capacity=5_000) is None  # not smaller than the teacher
    note = rules.size_note(
        budget_bytes=BUDGET, precision="int8", binding=False, teacher_exact=True, teacher_bytes=19_000, max_teacher_fraction=0.25, fell_back=True
    )
    assert "no student has at most 25% of the teacher's parameters" in note


def _no_fit(entries: list[Entry], teacher_capacity: int, *, binding: bool = True) -> str:
    rule = rules.SizeRule(BUDGET, rules.capacity_limit(teacher_capacity, binding=binding, max_teacher_fraction=0.25))
    assert rules.choose_by_size(entries, rule) is None
    return str(
        rules.no_fit_error(
            entries,
            rule,
            precision="int8",
            families=["cnn"],
            student_arch=None,
            teacher_arch="tiny",
            teacher_capacity=teacher_capacity,
            teacher_params=teacher_capacity,
            teacher_bytes=35_000 if binding else 15_000,
            binding=binding,
        )
    )


def test_no_fit_says_which_rule_left_nothing() -> None:
    # nothing fits the bytes: the budget is the reason
    too_big = [_entry("big", 50_000, 30_000), _entry("small", 5_000, 21_000)]
    msg = _no_fit(too_big, 60_000)
    assert "smallest student of family 'cnn' (small) needs 21.0 kB (21000 B); use --budget 21000B or larger" in msg
    # students fit the bytes but none is smaller than the teacher: that is the reason, not the budget
    msg = _no_fit(_pool(), 4_000)
    assert "is smaller than the teacher tiny (4,000 parameters)" in msg
    assert "the 2 that fit have from 5,000 (small) to 20,000 (mid)" in msg and "--student mid" in msg
    assert "use --budget" not in msg and "deploy the teacher itself" not in msg
    msg = _no_fit(_pool(), 4_000, binding=False)
    assert "deploy the teacher itself: its own int8 artifact (15.0 kB) fits the budget" in msg


def test_the_latency_pool_is_the_size_choice_and_everything_less_capable_that_fits() -> None:
    entries = _pool()
    rule = rules.SizeRule(BUDGET, 60_000)
    choice = rules.choose_by_size(entries, rule)
    assert [e.arch for e in rules.timing_pool(entries, rule, choice)] == ["mid", "small"]
    for e, ms in zip(entries[2:], (0.3, 0.1)):
        e.candidate.latency_ms = ms
    assert rules.latency_verdicts(entries[2:], 0.2) == [False, None]  # over the latency budget; unchanged


def test_recipe_files_get_the_default_recipes_tuned_settings_and_shipped_recipes_are_unchanged(tmp_path, capsys) -> None:
    for path in sorted(RECIPES.glob("*.yaml")):  # every shipped recipe: the same values as the schema alone gave
        raw = yaml.safe_load(path.read_text())
        assert load_recipe(path) == Recipe.model_validate(raw), path
        assert "target" in raw["budget"], f"{path.name} must say how it plans (budget.target)"
    mine = tmp_path / "mine.yaml"
    mine.write_text("name: mine\ndata: {source: digits}\nbudget: {size: 20KB, formats: [onnx]}\ntrain: {epochs: 2, keep_best: false}\n")
    r = load_recipe(mine)
    default = load_recipe(None)
    assert (r.train.min_steps, r.train.grad_clip, r.train.keep_best) == (default.train.min_steps, default.train.grad_clip, False)
    assert r.train.min_steps == 1200 and Recipe().train.min_steps == 0  # a recipe file, not the schema
    text = tmp_path / "text.yaml"  # text: the text default recipe's (no floor on steps there)
    text.write_text("task: text-classification\ndata: {source: tweets}\n")
    assert load_recipe(text).train.min_steps == 0
    found = {d.key: d for d in recipe_defaults(mine)}
    assert set(TUNED_KEYS) - {"train.keep_best"} <= set(found) and "train.keep_best" not in found
    assert found["train.min_steps"].value == 1200 and "fashion-mnist.yaml" in found["train.min_steps"].source
    assert found["budget.target"].value == "onnx" and found["prokt.lam"].source == "schema"
    code, out = _cli(capsys, "recipe", "check", str(mine))
    assert code == 0
    out = " ".join(out.split())  # the console wraps long lines
    assert "defaulted: train.min_steps = 1200 (from fashion-mnist.yaml" in out
    assert "defaulted: budget.target = onnx (from the first of budget.formats" in out
    assert "schema defaults for" in out and "prokt.lam" in out


def _digits_without_target(tmp_path) -> Recipe:
    raw = yaml.safe_load((RECIPES / "digits.yaml").read_text())
    del raw["budget"]["target"]
    path = tmp_path / "digits-no-target.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_recipe(path)


def test_a_recipe_without_budget_target_is_never_slower_than_the_teacher_and_none_turns_it_off(tmp_path, capsys) -> None:
    recipe = _digits_without_target(tmp_path)
    assert recipe.budget.target is None and timing_target(recipe)[0] == "onnx"
    timed = plan(recipe, lazy_latency=True)  # as distill plans: the size choice and the teacher's two artifacts
    assert timed.target == "onnx" and set(timed.teacher_latency_ms) == {"fp32", "int8"} and timed.chosen.latency_ms is not None
    assert "latency in onnx (budget.target not set: the first of budget.formats" in timed.note
    assert "faster than the teacher's fastest artifact" in timed.note  # the rule, whichever way it went
    if not timed.note.split("latency in onnx", 1)[1].count("NO student"):
        assert timed.chosen.latency_ms < min(timed.teacher_latency_ms.values())
    off = plan(apply_overrides(recipe, {"budget.target": "none"}))
    assert off.target is None and off.teacher_latency_ms == {} and "latency" not in off.note
    assert off.to_dict() == plan(load_recipe(RECIPES / "digits.yaml")).to_dict()  # the shipped recipe: size alone, as before
    code, out = _cli(capsys, "plan", "--recipe", str(tmp_path / "digits-no-target.yaml"), "--target", "none", "--json")
    assert code == 0 and json.loads(out)["target"] is None


@pytest.fixture(scope="module")
def tiny_hf_teacher(tmp_path_factory):
    """A Hugging Face image classifier with fewer parameters (1,346) than every cnn student, built offline."""
    transformers = pytest.importorskip("transformers", reason="hf: teachers need the 'text' extra (transformers)")
    import torch

    torch.manual_seed(0)
    config = transformers.ResNetConfig(num_channels=3, embedding_size=4, hidden_sizes=[8, 16], depths=[1, 1], num_labels=10)
    path = tmp_path_factory.mktemp("tiny-hf")
    transformers.ResNetForImageClassification(config).save_pretrained(path)
    return path


def test_a_teacher_smaller_than_every_student_says_so_not_that_nothing_fits(tiny_hf_teacher, tmp_path) -> None:
    recipe = apply_overrides(load_recipe(RECIPES / "digits.yaml"), {"teacher.arch": f"hf:{tiny_hf_teacher}"})
    with pytest.raises(BudgetError) as info:
        plan(recipe)
    msg = str(info.value)
    assert "is smaller than the teacher" in msg and "(1,346 parameters)" in msg and "a student must have fewer" in msg
    assert "use --budget" not in msg and "--student cnn-" in msg
    pinned = msg.split("--student ", 1)[1].split()[0]
    p = plan(apply_overrides(recipe, {"student.arch": pinned}))  # what the message says to do works
    assert p.chosen.arch == pinned and p.chosen.estimated_bytes <= recipe.budget.bytes
