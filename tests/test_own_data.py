"""Your own data in one flag: the source from the path (--data), `recipe new`, and train.min_steps."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import RECIPES

from prokt_deploy import apply_overrides, distill, load_recipe
from prokt_deploy.cli.main import main
from prokt_deploy.cli.options import resolve_recipe
from prokt_deploy.data import FASHION_FILES, infer_source
from prokt_deploy.errors import DataError, RecipeError
from prokt_deploy.train.engine import schedule


def _digits_npz(path, n: int):
    from sklearn.datasets import load_digits

    d = load_digits()
    np.savez(path, x=d.images[:n].astype(np.float32), y=d.target[:n])
    return path


def _run(*argv: str) -> int:
    with pytest.raises(SystemExit) as e:
        main(list(argv))
    return e.value.code


def test_each_path_kind_selects_its_source(tmp_path):
    npz = _digits_npz(tmp_path / "d.npz", 40)
    assert infer_source(npz) == "npz"
    for name in ("t.csv", "t.tsv", "t.jsonl"):
        (tmp_path / name).write_text("text,label\n")
        assert infer_source(tmp_path / name) == "text-file"
    for cls in ("cat", "dog"):
        (tmp_path / "images" / cls).mkdir(parents=True)
    assert infer_source(tmp_path / "images") == "image-folder"
    (tmp_path / "fm").mkdir()
    for name in FASHION_FILES:
        (tmp_path / "fm" / name).write_bytes(b"")
    assert infer_source(tmp_path / "fm") == "fashion-mnist"
    (tmp_path / "x.bin").write_bytes(b"0")
    with pytest.raises(DataError, match="found a .bin file"):
        infer_source(tmp_path / "x.bin")

    # the CLI override: the default recipe (source fashion-mnist) takes the path's source; --data-source forces one
    r = resolve_recipe(None, {"data_dir": npz})
    assert (r.data.source, r.data.path, r.task) == ("npz", str(npz), "image-classification")
    assert resolve_recipe(None, {"data_dir": tmp_path / "images", "data_source": "npz"}).data.source == "npz"
    # text data: the default recipe switches to the text defaults; an image recipe named by the user says what to add
    t = resolve_recipe(None, {"data_dir": tmp_path / "t.csv"})
    assert (t.data.source, t.task, t.student.family, t.data.max_train_samples) == ("text-file", "text-classification", "tfm", None)
    with pytest.raises(RecipeError, match="task: text-classification"):
        resolve_recipe(RECIPES / "digits.yaml", {"data_dir": tmp_path / "t.csv"})
    with pytest.raises(RecipeError, match="image-classification"):
        resolve_recipe(RECIPES / "tweets-minilm.yaml", {"data_dir": npz})


def test_recipe_new_passes_recipe_check_and_distills_one_step(tmp_path, capsys):
    npz = _digits_npz(tmp_path / "digits.npz", 300)
    out = tmp_path / "my.yaml"
    assert _run("recipe", "new", "--data", str(npz), "--out", str(out), "--budget", "50KB", "--formats", "ONNX, litert,onnx") == 0
    text = out.read_text()
    assert "# Data: " in text and "10 classes: 0, 1, 2" in text and "train 210 / val 30 / test 60" in text
    assert "input shape (C, H, W) 1 x 8 x 8" in text
    r = load_recipe(out)
    assert (r.data.source, r.data.path, r.budget.size, r.budget.formats) == ("npz", str(npz), "50KB", ["onnx", "litert"])
    assert r.train.min_steps == load_recipe(None).train.min_steps > 0  # the default recipe's schedule rule
    assert _run("recipe", "check", str(out)) == 0
    assert not list(tmp_path.glob(".my.yaml.*"))  # the temporary file is gone
    # never overwritten: one line, the usage-error code, the file as it was
    capsys.readouterr()
    assert _run("recipe", "new", "--data", str(npz), "--out", str(out)) == 2
    assert "already exists" in capsys.readouterr().err and out.read_text() == text
    # a format that is not registered: a usage error naming the registered ones, before anything is written
    assert _run("recipe", "new", "--data", str(npz), "--out", str(tmp_path / "other.yaml"), "--formats", "onnx,tflite") == 2
    assert "--formats 'onnx,tflite': use registered formats, comma-separated: onnx, openvino, litert, executorch" in capsys.readouterr().err
    assert not (tmp_path / "other.yaml").exists()

    # one step, as `distill --recipe my.yaml --epochs 1 --max-train-samples 64 --min-steps 1` would run it; planned
    # against ONNX only with the smallest student pinned: measuring OpenVINO int8 candidates costs minutes on 2 shared cores
    r = apply_overrides(
        r, {"train.epochs": 1, "data.max_train_samples": 64, "train.min_steps": 1, "budget.formats": ["onnx"], "student.arch": "resnet-w4-d1"}
    )
    m = distill(r, out=tmp_path / "run", runs_root=tmp_path).manifest
    assert m["data"]["source"] == "npz" and m["input"]["shape"] == [None, 1, 8, 8]
    assert m["metrics"]["schedule"]["student"] == {"epochs_requested": 1, "epochs": 1, "steps_per_epoch": 1, "steps": 1, "min_steps": 1}
    assert len(m["metrics"]["history"]["student"]) == 1


class _Steps:
    """engine.Progress that counts the optimizer steps actually taken."""

    def __init__(self):
        self.steps = 0

    def start(self, phase, total_steps, completed=0):
        pass

    def step(self, metrics):
        self.steps += 1

    def epoch(self, record):
        pass

    def stop(self):
        pass


def test_min_steps_gives_at_least_its_steps_on_a_500_image_npz(tmp_path):
    assert schedule(5, 1000, 100, 20) == {"epochs_requested": 5, "epochs": 5, "steps_per_epoch": 10, "steps": 50, "min_steps": 20}
    assert schedule(5, 1000, 100, 0)["epochs"] == 5
    npz = _digits_npz(tmp_path / "d500.npz", 500)
    r = apply_overrides(
        load_recipe(RECIPES / "digits.yaml"),
        {
            "data.source": "npz",
            "data.path": str(npz),
            "method": "scratch",
            "train.epochs": 1,
            "train.batch_size": 64,
            "train.min_steps": 20,
            "student.arch": "cnn-w4-d1",
        },
    )
    counter = _Steps()
    res = distill(r, out=tmp_path / "run", runs_root=tmp_path, progress=counter)
    per_epoch = math.ceil(350 / 64)  # 500 images: 350 train
    assert counter.steps >= 20 and counter.steps == math.ceil(20 / per_epoch) * per_epoch
    sched = res.manifest["metrics"]["schedule"]["student"]
    assert res.manifest["metrics"]["epochs"] == sched["epochs"] == 4 and "raised to 4 epochs" in sched["reason"]
    assert len(res.manifest["metrics"]["history"]["student"]) == 4


def test_a_path_of_no_known_kind_is_one_line_exit_4(tmp_path, capsys):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("hello")
    assert _run("plan", "--data", str(tmp_path / "notes")) == 4
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: cannot tell the data source of"), lines
    assert "found a folder of 1 file(s) and no sub-folders" in lines[0] and "expected a .npz file" in lines[0]
