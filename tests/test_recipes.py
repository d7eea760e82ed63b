from pathlib import Path

import pytest

from prokt_deploy.errors import RecipeError, UsageError
from prokt_deploy.recipe import DEFAULT_RECIPE, apply_overrides, load_recipe

RECIPES = sorted((Path(__file__).resolve().parent.parent / "recipes").glob("*.yaml"))


def test_recipes_are_shipped():
    names = {p.name for p in RECIPES}
    assert {"digits.yaml", "fashion-mnist.yaml"} <= names
    assert DEFAULT_RECIPE.name == "fashion-mnist.yaml"


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_validates(path):
    recipe = load_recipe(path)
    assert recipe.name == path.stem


def test_typo_fails_with_its_location(tmp_path):
    text = (RECIPES[0].read_text()).replace("epochs:", "epoch:", 1)
    bad = tmp_path / "typo.yaml"
    bad.write_text(text)
    with pytest.raises(RecipeError, match=r"train\.epoch: Extra inputs are not permitted"):
        load_recipe(bad)


@pytest.mark.parametrize(
    "text,match",
    [
        ("data: [unclosed", "not valid YAML at line"),
        ("", "empty"),
        ("- a\n- b\n", "must be a mapping"),
        ("method: distil\n", "method"),
        ("budget: {size: 5XB}\n", "budget.size"),
        ("train: {epochs: 0}\n", "train.epochs"),
        ("prokt: {lam: 1.5}\n", "prokt.lam"),
        ("teacher: {init: pretrain, checkpoint: t.safetensors}\n", "teacher: teacher.checkpoint is set but teacher.init is 'pretrain'"),
        ("!!python/object/apply:os.system ['echo hacked']\n", "not valid YAML"),
        ("budget: {target: tflite}\n", "unknown budget.target 'tflite'"),
        ("budget: {latency: soon}\n", "budget.latency 'soon' is not a positive latency"),
    ],
)
def test_bad_recipes(tmp_path, text, match):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(RecipeError, match=match):
        load_recipe(bad)


def test_missing_recipe():
    with pytest.raises(RecipeError, match="not found"):
        load_recipe("no/such/recipe.yaml")


def test_overrides_win_and_are_validated():
    r = apply_overrides(load_recipe(RECIPES[0]), {"train.epochs": 3, "budget.size": "1MB", "seed": None})
    assert r.train.epochs == 3 and r.budget.size == "1MB"
    with pytest.raises(UsageError, match="method"):
        apply_overrides(r, {"method": "nonsense"})
