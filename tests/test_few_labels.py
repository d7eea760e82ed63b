"""Few labels and unlabelled data (issue 37): data.labels, the unlabelled pool (data.unlabeled_rest, data.unlabeled),
the transfer batches the distillation methods train on, DKD's loss and ProKT's step on unlabelled samples."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import RECIPES, cli_in_process

from prokt_deploy import apply_overrides, distill, load_recipe
from prokt_deploy.data import LABELS_DRAW, REST, load_data, load_recipe_data, load_unlabeled
from prokt_deploy.errors import DataError
from prokt_deploy.train import distill as distill_module
from prokt_deploy.train.engine import NO_LABEL, TransferBatches
from prokt_deploy.train.losses import dkd_loss, kd_loss, prokt_student_loss, prokt_teacher_loss

TOKENIZER = "all-minilm-l6-v2"


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def test_labels_keep_the_same_number_per_class_and_the_same_indices_for_a_seed():
    full = load_data("digits", seed=0)
    few = load_data("digits", seed=0, labels=100, unlabeled_rest=True)
    assert np.bincount(few.train.y.numpy(), minlength=10).tolist() == [10] * 10
    again = load_data("digits", seed=0, labels=100)
    assert torch.equal(few.train.x, again.train.x) and torch.equal(few.train.y, again.train.y)
    assert again.unlabeled is None and again.n_unlabeled == 0
    other = load_data("digits", seed=1, labels=100)
    assert np.bincount(other.train.y.numpy(), minlength=10).tolist() == [10] * 10
    assert not torch.equal(other.train.y, few.train.y) or not torch.equal(other.train.x, few.train.x)
    # the rest of the training split is the pool: nothing lost, nothing kept twice (raw pixels: the normalisation differs)
    assert few.n_unlabeled == len(full.train) - 100 and few.unlabeled_from == {REST: len(full.train) - 100}
    assert len(few.val) == len(full.val) and len(few.test) == len(full.test)
    # the validation limit a few-label user has
    assert len(load_data("digits", seed=0, labels=100, max_val_samples=50).val) == 50
    # 101 labels on 10 classes: one class gets 11, the others 10
    assert sorted(np.bincount(load_data("digits", seed=0, labels=101).train.y.numpy())) == [10] * 9 + [11]
    with pytest.raises(DataError, match="fewer samples than the 10 classes"):
        load_data("digits", seed=0, labels=5)
    with pytest.raises(DataError, match="more than the .* training samples"):
        load_data("digits", seed=0, labels=100_000)


def _raw_rows(bundle, x: torch.Tensor) -> np.ndarray:
    """A digits bundle's samples back on its raw 0..16 integer scale, one row each (each bundle normalises with its
    own kept training split's statistics, so rows are compared raw)."""
    spec = bundle.input
    raw = x.numpy() * np.array(spec["std"])[None, :, None, None] + np.array(spec["mean"])[None, :, None, None]
    return np.rint(raw * spec["scale"]).astype(np.int64).reshape(len(x), -1)


def _sorted_rows(rows: np.ndarray) -> np.ndarray:
    return rows[np.lexsort(rows.T[::-1])]


def test_labels_split_the_training_split_exactly_and_a_subset_keeps_the_same_labels():
    """The kept labels and the pool are the training split, nothing lost or kept twice; validation and test are the
    full run's; a run capped by max_train_samples (the benchmarks' tuning runs) keeps the same N labels and cuts
    only the pool, so it sees no label the full run does not."""
    full = load_data("digits", seed=0)
    few = load_data("digits", seed=0, labels=100, unlabeled_rest=True)
    for name in ("val", "test"):
        a, b = getattr(full, name), getattr(few, name)
        assert torch.equal(a.y, b.y) and np.array_equal(_raw_rows(full, a.x), _raw_rows(few, b.x))
    both = np.concatenate([_raw_rows(few, few.train.x), _raw_rows(few, few.unlabeled)])
    assert np.array_equal(_sorted_rows(both), _sorted_rows(_raw_rows(full, full.train.x)))
    sub = load_data("digits", seed=0, labels=100, unlabeled_rest=True, max_train_samples=400)
    assert torch.equal(sub.train.y, few.train.y) and np.array_equal(_raw_rows(sub, sub.train.x), _raw_rows(few, few.train.x))
    assert sub.n_unlabeled == 300  # the cap counts labelled + pool
    pool = {r.tobytes() for r in _raw_rows(few, few.unlabeled)}
    assert all(r.tobytes() in pool for r in _raw_rows(sub, sub.unlabeled))
    # without labels the cap keeps the first M of the seeded training split, as before
    assert len(load_data("digits", seed=0, max_train_samples=400).train) == 400
    with pytest.raises(DataError, match="max_train_samples 50 is below data.labels 100"):
        load_data("digits", seed=0, labels=100, max_train_samples=50)


def test_unlabelled_npz_and_image_folder_are_read_like_the_labelled_data(tmp_path):
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    np.savez(tmp_path / "labelled.npz", x=d.images.astype(np.float32) / 16, y=d.target)
    data = load_data("npz", path=tmp_path / "labelled.npz", seed=0)
    raw = np.random.default_rng(0).uniform(0, 1, size=(7, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "u.npz", x=raw)  # no y
    u = load_unlabeled(tmp_path / "u.npz", data)
    assert u.shape == (7, 1, 8, 8)
    # normalised with the labelled training statistics (floats: scale 1, then mean and std)
    expected = (raw[:, None] - data.input["mean"][0]) / data.input["std"][0]
    assert torch.allclose(u, torch.from_numpy(expected), atol=1e-5)

    # a folder of images (no class folders; sub-folders are searched too), uint8 like a labelled image folder
    folder = tmp_path / "frames"
    (folder / "day2").mkdir(parents=True)
    for i, where in enumerate([folder, folder, folder / "day2"]):
        Image.fromarray(np.full((8, 8), 40 * i, dtype=np.uint8)).save(where / f"f{i}.png")
    like = load_data("npz", path=_uint8_npz(tmp_path / "uint8.npz"), seed=0)
    assert load_unlabeled(folder, like).shape == (3, 1, 8, 8)


def _uint8_npz(path, size=8, channels=None):
    rng = np.random.default_rng(0)
    shape = (60, size, size) if channels is None else (60, size, size, channels)
    np.savez(path, x=rng.integers(0, 256, size=shape, dtype=np.uint8), y=np.arange(60) % 3)
    return path


def test_unlabelled_data_is_refused_on_the_bad_inputs_data_is(tmp_path):
    from PIL import Image

    data = load_data("npz", path=_uint8_npz(tmp_path / "labelled.npz"), seed=0)  # (1, 8, 8) uint8
    cases = {}
    np.savez(tmp_path / "noy_nox.npz", images=np.zeros((3, 8, 8), np.uint8))
    cases["noy_nox.npz"] = "must contain an array 'x'"
    np.savez(tmp_path / "shape.npz", x=np.zeros((3, 10, 10), np.uint8))
    cases["shape.npz"] = r"shape \(1, 10, 10\) .* labelled ones are \(1, 8, 8\)"
    np.savez(tmp_path / "rgb.npz", x=np.zeros((3, 8, 8, 3), np.uint8))
    cases["rgb.npz"] = r"shape \(3, 8, 8\)"
    np.savez(tmp_path / "float.npz", x=np.zeros((3, 8, 8), np.float32))
    cases["float.npz"] = "scale 0..1 but the labelled data's is 0..255"
    np.savez(tmp_path / "nan.npz", x=np.full((3, 8, 8), np.nan, np.float32))
    cases["nan.npz"] = "NaN or inf"
    np.savez(tmp_path / "empty.npz", x=np.zeros((0, 8, 8), np.uint8))
    cases["empty.npz"] = "holds no samples"
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    cases["bad.npz"] = "cannot read .* as .npz"
    (tmp_path / "nothing").mkdir()
    cases["nothing"] = "no images found"
    (tmp_path / "big").mkdir()
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "big" / "a.png")
    cases["big"] = r"shape \(1, 16, 16\)"
    (tmp_path / "mixed").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "mixed" / "a.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "mixed" / "b.png")
    cases["mixed"] = "images of different kinds"
    (tmp_path / "notes.txt").write_text("a\nb\n")
    cases["notes.txt"] = "expected a .npz file with x or a folder of images"
    cases["missing.npz"] = "does not exist"
    for name, message in cases.items():
        with pytest.raises(DataError, match=message):
            load_unlabeled(tmp_path / name, data)
    # data.image_size converts a folder of another size, as for labelled image folders
    assert load_unlabeled(tmp_path / "big", data, image_size=(8, 8)).shape == (1, 1, 8, 8)


def test_unlabelled_text_files(tmp_path):
    f = tmp_path / "labelled.csv"
    f.write_text("text,label\n" + "".join(f"sample text number {i},{i % 2}\n" for i in range(40)))
    text = {"tokenizer": TOKENIZER, "max_length": 12}
    data = load_data("text-file", path=f, seed=0, text=text)
    (tmp_path / "u.txt").write_text("one more text\n\nand another one that is longer than twelve tokens for sure, really\n")
    u = load_unlabeled(tmp_path / "u.txt", data, text=text)
    assert u.shape == (2, 2, 12) and u.dtype == torch.int64 and int(u[1, 1].sum()) == 12  # truncated like the labelled texts
    (tmp_path / "u.jsonl").write_text('{"text": "a"}\n{"text": "b c"}\n{"text": "d"}\n')
    assert load_unlabeled(tmp_path / "u.jsonl", data, text=text).shape == (3, 2, 12)
    (tmp_path / "wrong.csv").write_text("body\nhello\n")
    with pytest.raises(DataError, match="no column 'text'"):
        load_unlabeled(tmp_path / "wrong.csv", data, text=text)
    (tmp_path / "blank.txt").write_text("\n\n")
    with pytest.raises(DataError, match="holds no texts"):
        load_unlabeled(tmp_path / "blank.txt", data, text=text)
    with pytest.raises(DataError, match="is a directory"):
        load_unlabeled(tmp_path, data, text=text)
    # through load_data: the pool beside the labelled split, tokenised the same way
    both = load_data("text-file", path=f, seed=0, text=text, labels=10, unlabeled_rest=True, unlabeled=tmp_path / "u.txt")
    assert len(both.train) == 10 and both.n_unlabeled == len(data.train) - 10 + 2 and both.unlabeled.shape[1:] == (2, 12)


def test_digits_refuses_an_unlabelled_file_with_the_way_out(tmp_path):
    """digits' values are 0..16, a file's can only be 0..255 or floats: one line that names --unlabeled-rest."""
    np.savez(tmp_path / "u.npz", x=np.random.default_rng(0).uniform(0, 1, size=(5, 8, 8)).astype(np.float32))
    with pytest.raises(DataError, match="use --unlabeled-rest with digits"):
        load_unlabeled(tmp_path / "u.npz", load_data("digits", seed=0))


def test_transfer_batches_are_seeded_mix_labelled_and_unlabelled_and_cover_each_pool():
    tb = TransferBatches(10, 50, 8, 0.25, seed=3)
    assert tb.k == (2, 6)
    labelled = torch.cat([tb.batch(s)[0] for s in range(5)])  # 5 steps x 2 = one pass over the 10 labelled samples
    assert sorted(labelled.tolist()) == list(range(10))
    unlabelled = torch.cat([tb.batch(s)[1] for s in range(25)])  # 25 x 6 = 3 passes over 50
    assert all(sorted(unlabelled[i * 50 : (i + 1) * 50].tolist()) == list(range(50)) for i in range(3))
    again = TransferBatches(10, 50, 8, 0.25, seed=3)
    assert all(torch.equal(a, b) for s in (0, 7, 40) for a, b in zip(tb.batch(s), again.batch(s)))  # a resumed run draws the same
    assert not torch.equal(TransferBatches(10, 50, 8, 0.25, seed=4).batch(0)[1], tb.batch(0)[1])


def _tiny(method: str, **over):
    r = load_recipe(RECIPES / "digits.yaml")
    settings = {
        "method": method,
        "data.labels": 50,
        "data.unlabeled_rest": True,
        "train.epochs": 1,
        "train.batch_size": 64,
        "student.arch": "cnn-w4-d1",
        "teacher.arch": "cnn-w8-d1",
        "teacher.epochs": 1,
    }
    return apply_overrides(r, {**settings, **over})


def test_kd_dkd_and_prokt_train_on_unlabelled_batches_and_scratch_does_not(tmp_path, monkeypatch):
    seen: dict[str, list[torch.Tensor]] = {}
    student_method = distill_module._student_method

    def spy(recipe, *args):
        method = student_method(recipe, *args)
        step, labels = method.step, seen.setdefault(recipe.method, [])

        def recording(x, y):
            labels.append(y.clone())
            return step(x, y)

        method.step = recording
        return method

    monkeypatch.setattr(distill_module, "_student_method", spy)
    manifests = {m: distill(_tiny(m), out=tmp_path / m, runs_root=tmp_path, latest=False).manifest for m in ("kd", "dkd", "prokt", "scratch")}
    n_pool = manifests["kd"].data["unlabelled"]
    assert n_pool > 1000 and manifests["kd"].data["train"] == 50 and manifests["kd"].data["labels_draw"] == LABELS_DRAW
    for m in ("kd", "dkd", "prokt"):
        y = torch.cat(seen[m])
        assert (y == NO_LABEL).sum() > 0 and (y >= 0).sum() > 0, m
        # a quarter of each batch of 64 labelled (train.labeled_share), over one pass of labelled + unlabelled
        assert len(seen[m]) == math.ceil((50 + n_pool) / 64) and all(int((b >= 0).sum()) == 16 for b in seen[m])
        assert manifests[m].metrics["samples_seen"] == {"labelled": int((y >= 0).sum()), "unlabelled": int((y < 0).sum())}
    y = torch.cat(seen["scratch"])
    assert (y >= 0).all() and manifests["scratch"].metrics["samples_seen"]["unlabelled"] == 0
    # the same optimizer steps as the methods that use the pool: scratch's epochs over its 50 labels are raised
    assert len(seen["scratch"]) >= len(seen["kd"]) and "cannot learn from the" in manifests["scratch"].metrics["schedule"]["student"]["reason"]


def test_dkd_loss_equals_a_hand_computed_value():
    s = torch.tensor([[2.0, 1.0, 0.0]])
    t = torch.tensor([[3.0, 0.0, 1.0]])
    T, alpha, beta = 2.0, 1.0, 8.0

    def softmax(z):
        e = [math.exp(v) for v in z]
        return [v / sum(e) for v in e]

    ps, pt = softmax([2 / T, 1 / T, 0 / T]), softmax([3 / T, 0 / T, 1 / T])
    # target class 0: binary (target, rest) distributions, then the distributions over classes 1 and 2 only
    bs, bt = [ps[0], 1 - ps[0]], [pt[0], 1 - pt[0]]
    tckd = sum(b * math.log(b / a) for a, b in zip(bs, bt)) * T**2
    ns, nt = softmax([1 / T, 0 / T]), softmax([0 / T, 1 / T])
    nckd = sum(b * math.log(b / a) for a, b in zip(ns, nt)) * T**2
    got = dkd_loss(s, t, torch.tensor([0]), alpha, beta, T).item()
    assert got == pytest.approx(alpha * tckd + beta * nckd, rel=1e-5)
    # TCKD + NCKD recombine into KD's KL when (1 - p_target) weighs NCKD (the paper's Eq. 3): the decomposition is the right one
    kl = sum(b * math.log(b / a) for a, b in zip(ps, pt)) * T**2
    assert dkd_loss(s, t, torch.tensor([0]), 1.0, 1 - pt[0], T).item() == pytest.approx(kl, rel=1e-5)


def test_dkd_on_two_classes_is_kd_of_the_binary_distribution_and_says_beta_does_nothing(caplog):
    """With 2 classes NCKD is empty: beta cannot change the loss, TCKD is KD's full KL, and the method warns once."""
    torch.manual_seed(0)
    s, t, y = torch.randn(6, 2), torch.randn(6, 2), torch.tensor([0, 1, 1, 0, 1, 0])
    T = 4.0
    kl = (F.softmax(t / T, -1) * (F.log_softmax(t / T, -1) - F.log_softmax(s / T, -1))).sum(-1).mean() * T**2
    for beta in (0.0, 2.0, 8.0):
        assert dkd_loss(s, t, y, 1.0, beta, T).item() == pytest.approx(kl.item(), rel=1e-5)
    s3, t3 = torch.randn(6, 3), torch.randn(6, 3)
    assert dkd_loss(s3, t3, y, 1.0, 8.0, T).item() != pytest.approx(dkd_loss(s3, t3, y, 1.0, 2.0, T).item())

    from prokt_deploy.recipe import Recipe
    from prokt_deploy.train.methods import dkd
    from prokt_deploy.train.methods.registry import StepSetup

    def method(classes: int):
        student, teacher = torch.nn.Linear(4, classes), torch.nn.Linear(4, classes)
        recipe = apply_overrides(load_recipe(RECIPES / "digits.yaml"), {"method": "dkd"})
        assert isinstance(recipe, Recipe)
        return dkd._step(StepSetup(recipe, student, teacher, total_steps=10, config=recipe.dkd))

    x = torch.randn(6, 4)
    with caplog.at_level("WARNING", logger="prokt_deploy"):
        two = method(2)
        two.step(x, y)
        two.step(x, y)
        method(3).step(x, y)
    warnings = [r.getMessage() for r in caplog.records if "NCKD is 0" in r.getMessage()]
    assert len(warnings) == 1 and "dkd.beta (8)" in warnings[0]


def test_dkd_step_ramps_its_distillation_terms_in_and_decouples_unlabelled_samples_around_the_teachers_class():
    """The DKD step's loss is CE over the labelled samples + min(step / warm-up, 1) * dkd_loss, where an unlabelled
    sample's target class is the teacher's top class (not its -1 label, not class 0)."""
    from prokt_deploy.recipe import Recipe
    from prokt_deploy.train.methods import dkd
    from prokt_deploy.train.methods.registry import StepSetup

    torch.manual_seed(0)
    student, teacher = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    recipe = apply_overrides(load_recipe(RECIPES / "digits.yaml"), {"method": "dkd", "dkd.warmup_fraction": 0.5})
    assert isinstance(recipe, Recipe)
    cfg = recipe.dkd
    method = dkd._step(StepSetup(recipe, student, teacher, total_steps=24, config=cfg))  # warm-up: 12 steps
    x = torch.randn(8, 4)
    y = torch.tensor([0, NO_LABEL, 2, NO_LABEL, 1, NO_LABEL, NO_LABEL, 2])
    with torch.no_grad():
        t_top = teacher(x).argmax(1)
    assert (t_top[y < 0] != 0).any()  # the seed gives an unlabelled sample whose teacher class is not 0
    for k in range(16):
        with torch.no_grad():
            s_logits, t_logits = student(x), teacher(x)
            ce = F.cross_entropy(s_logits[y >= 0], y[y >= 0])
            right = dkd_loss(s_logits, t_logits, torch.where(y >= 0, y, t_top), cfg.alpha, cfg.beta, cfg.temperature)
            wrong = dkd_loss(s_logits, t_logits, y.clamp(min=0), cfg.alpha, cfg.beta, cfg.temperature)
        out = method.step(x, y)
        ramp = min(k / 12, 1.0)
        assert out["dkd"] == pytest.approx(right.item(), rel=1e-5) and out["dkd"] != pytest.approx(wrong.item(), rel=1e-3)
        assert out["loss"] == pytest.approx(ce.item() + ramp * right.item(), rel=1e-5), f"step {k}: ramp {ramp}"
    assert ramp == 1.0 and right.item() > 0


def test_prokt_and_kd_on_a_transfer_batch_follow_the_documented_formula():
    torch.manual_seed(0)
    t_logits, s_logits = torch.randn(4, 3), torch.randn(4, 3)
    q = F.softmax(s_logits, -1)
    y = torch.tensor([2, NO_LABEL, 0, NO_LABEL])
    lam = 0.3

    def kl(target, logits):  # KL(target || softmax(logits)) per sample
        return (target * (target.log() - F.log_softmax(logits, -1))).sum(-1)

    ce_labelled = -(F.log_softmax(t_logits, -1)[[0, 2], [2, 0]]).mean()  # the two labelled samples only
    expected = (1 - lam) * ce_labelled + lam * kl(q, t_logits).mean()  # the KL over all four
    loss, _ = prokt_teacher_loss(t_logits, y, q, lam)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    # the student's step: KL to the updated teacher on every sample, no label needed
    p = F.softmax(t_logits, -1)
    assert prokt_student_loss(s_logits, p, y).item() == pytest.approx(kl(p, s_logits).mean().item(), rel=1e-6)
    # a fully labelled batch is the reference form exactly
    y_full = torch.tensor([2, 1, 0, 1])
    ref = (1 - lam) * F.cross_entropy(t_logits, y_full) + lam * kl(q, t_logits).mean()
    assert prokt_teacher_loss(t_logits, y_full, q, lam)[0].item() == pytest.approx(ref.item(), rel=1e-6)
    # KD: the CE on the labelled samples, the KL on all
    soft = F.softmax(t_logits / 4, -1)
    kd_expected = 0.1 * -(F.log_softmax(s_logits, -1)[[0, 2], [2, 0]]).mean() + 0.9 * 16 * kl(soft, s_logits / 4).mean()
    assert kd_loss(s_logits, t_logits, y, 0.9, 4.0).item() == pytest.approx(kd_expected.item(), rel=1e-6)


def test_cli_flags_and_bad_unlabelled_input_exit_4_in_one_line(tmp_path):
    np.savez(tmp_path / "wrong.npz", x=np.zeros((5, 28, 28), np.float32))
    r = cli_in_process("distill", "--recipe", RECIPES / "digits.yaml", "--labels", "50", "--unlabeled", tmp_path / "wrong.npz", cwd=tmp_path)
    assert r.returncode == 4, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "shape (1, 28, 28)" in lines[0] and "Traceback" not in r.stderr
    assert not (tmp_path / "runs").exists()  # refused before anything was written
    r = cli_in_process("distill", "--recipe", RECIPES / "digits.yaml", "--unlabeled-rest", cwd=tmp_path)
    assert r.returncode == 2 and "data.unlabeled_rest needs data.labels" in r.stderr  # a usage error: the flags given


def test_train_teacher_keeps_the_labels_and_a_teacher_from_other_labels_is_warned_about(tmp_path, caplog):
    """`train-teacher --labels N` trains on the N labels a few-label run keeps and says so in its manifest; a run with
    data.labels given a converged teacher that was not (another seed, all labels, no manifest) warns once."""
    from prokt_deploy.train import build

    r = cli_in_process(
        "train-teacher", "--recipe", RECIPES / "digits.yaml", "--labels", "50", "--max-val-samples", "100",
        "--epochs", "1", "--min-steps", "0", "--out", tmp_path / "t", cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    manifest = json.loads((tmp_path / "t" / "manifest.json").read_text())
    assert (manifest["data"]["train"], manifest["data"]["labels_kept"], manifest["data"]["labels_seed"]) == (50, 50, 0)
    ckpt = str(tmp_path / "t" / "teacher.safetensors")
    recipe = load_recipe(tmp_path / "t" / "recipe.yaml")

    def warnings(**over):
        build._WARNED.clear()
        caplog.clear()
        r2 = apply_overrides(recipe, {"method": "kd", "teacher.init": "checkpoint", "teacher.checkpoint": ckpt, **over})
        with caplog.at_level("WARNING", logger="prokt_deploy"):
            build.build_teacher(r2, load_recipe_data(r2))
        return [m.getMessage() for m in caplog.records if "was not trained on the" in m.getMessage()]

    assert warnings() == []
    assert len(warnings(seed=1)) == 1 and "train-teacher --labels 50 --seed 1" in warnings(seed=1)[0]
    assert len(warnings(**{"data.labels": 100})) == 1
    (tmp_path / "t" / "manifest.json").unlink()
    assert "no manifest beside it" in warnings()[0]


def test_the_report_says_what_each_method_drew_and_that_scratch_cannot_use_the_pool():
    from prokt_deploy.benchmarking.report import compare_cells, data_text

    row = {"student_arch": "cnn-w4-d1", "best_epoch": 3, "epochs": 3, "student_test_accuracy": 0.9, "deployed_test_accuracy": 0.9, "train_s": 10.0}
    comp = {
        "format": "onnx",
        "precision": "int8",
        "labelled": 1000,
        "unlabelled": 53000,
        "rows": [
            {**row, "method": "prokt", "samples_seen": {"labelled": 201_000, "unlabelled": 609_000}},
            {**row, "method": "scratch", "samples_seen": {"labelled": 810_000, "unlabelled": 0}},
        ],
    }
    header, cells, notes = compare_cells(comp)
    assert header[-1] == "samples drawn (labelled + unlabelled)" and cells[0][-1] == "201k + 609k" and cells[1][-1] == "810k + 0"
    assert any(n.startswith("Note: scratch cannot learn from the 53,000 unlabelled samples") for n in notes)
    # without a pool: no column, no note
    plain = {**comp, "unlabelled": 0, "rows": [{**r, "samples_seen": {"labelled": 5, "unlabelled": 0}} for r in comp["rows"]]}
    header, cells, notes = compare_cells(plain)
    assert "samples drawn (labelled + unlabelled)" not in header and not any("cannot learn" in n for n in notes)
    data = {"labelled": 1000, "labels_kept": 1000, "unlabelled": 53000, "unlabelled_from": {REST: 53000}}
    assert "1,000 labelled" in data_text({**data, "samples_seen": {"labelled": 9, "unlabelled": 27}}, "prokt")
    assert "prokt learned from both (9 labelled + 27 unlabelled" in data_text({**data, "samples_seen": {"labelled": 9, "unlabelled": 27}}, "prokt")
    assert "scratch cannot learn from unlabelled samples" in data_text({**data, "samples_seen": {"labelled": 9, "unlabelled": 0}}, "scratch")
    assert data_text({"labelled": 54000, "unlabelled": 0}, "prokt") is None
    # a manifest without the counter (older runs): the method registry says which methods use the pool
    assert "kd learns from both (the samples it drew are not recorded" in data_text(data, "kd")
    assert "prokt+label learns from both" in data_text(data, "prokt+label")
    assert "scratch cannot learn from unlabelled samples" in data_text(data, "scratch")
    old = {**comp, "rows": [{k: v for k, v in r.items() if k != "samples_seen"} for r in comp["rows"]]}
    notes = compare_cells(old)[2]
    assert any(n.startswith("Note: scratch cannot learn") for n in notes) and not any("prokt" in n and "cannot learn" in n for n in notes)


def test_text_trains_on_a_transfer_set(tmp_path):
    """Text with few labels and the rest unlabelled: the transfer batches mix padded token sequences of both kinds."""
    recipe = tmp_path / "few-text.yaml"
    recipe.write_text(
        "name: few-text\ntask: text-classification\nmethod: prokt\n"
        "data: {source: tweets, max_length: 24, max_train_samples: 96, tokenizer: all-minilm-l6-v2, labels: 20, unlabeled_rest: true}\n"
        "teacher: {arch: bert-h64-l1}\nstudent: {family: bilstm, arch: bilstm-e32-h32}\n"
        "budget: {size: 1.3MB, precision: int8, formats: [onnx], target: none}\ntrain: {epochs: 1, batch_size: 16}\n"
    )
    m = distill(load_recipe(recipe), out=tmp_path / "run", runs_root=tmp_path, latest=False).manifest
    assert (m.data["train"], m.data["unlabelled"]) == (20, 76)
    assert m.metrics["samples_seen"] == {"labelled": 4 * 6, "unlabelled": 12 * 6}  # 6 steps of 16: a quarter labelled


def test_a_frozen_teachers_logits_are_computed_once_per_unaugmented_sample(tmp_path, monkeypatch):
    """KD/DKD over a transfer set: without augmentation each sample reaches the frozen teacher unchanged every epoch,
    so its logits are computed once (engine.FrozenOutputs) and equal the teacher's own; with augmentation every
    batch is new and the teacher runs on each."""
    from prokt_deploy.train import engine

    made: list[engine.FrozenOutputs] = []

    class Recording(engine.FrozenOutputs):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(engine, "FrozenOutputs", Recording)
    seen: list[torch.Tensor] = []
    student_method = distill_module._student_method

    def spy(recipe, *args):
        method = student_method(recipe, *args)
        step = method.step
        method.step = lambda x, y: (seen.append(x.clone()), step(x, y))[1]
        return method

    monkeypatch.setattr(distill_module, "_student_method", spy)
    distill(_tiny("dkd", **{"train.epochs": 2}), out=tmp_path / "plain", runs_root=tmp_path, latest=False)
    (cached,) = made
    rows = torch.cat(seen)
    distinct = len({r.numpy().tobytes() for r in rows})
    assert cached.cache and cached.computed == distinct < len(rows)  # 2 epochs: most rows came back in epoch 2
    teacher = cached.teacher.eval()  # frozen: the weights the run distilled from
    with torch.no_grad():
        assert torch.allclose(cached(rows[:200]), teacher(rows[:200]), atol=1e-5)
    assert cached.computed == distinct  # all 200 were kept

    made.clear(), seen.clear()
    distill(_tiny("kd", **{"data.augment.crop_padding": 2}), out=tmp_path / "aug", runs_root=tmp_path, latest=False)
    (direct,) = made
    assert not direct.cache and direct.computed == len(torch.cat(seen))


def test_frozen_outputs_key_text_rows_by_their_tokens_not_their_padding():
    from prokt_deploy.train.engine import FrozenOutputs

    calls: list[int] = []

    def teacher(x):  # a mask-pooled "model": the sum of the ids a row's mask keeps
        calls.append(len(x))
        return (x[:, 0] * x[:, 1]).sum(1, keepdim=True).float().repeat(1, 3)

    ids = torch.tensor([[5, 6, 7, 0, 0], [8, 9, 0, 0, 0]])
    packed = torch.stack([ids, (ids > 0).long()], 1)  # (2, 2, 5)
    f = FrozenOutputs(teacher, cache=True)
    first = f(packed)
    again = f(packed[:, :, :3])  # the same rows, padded to another length
    assert torch.equal(first, again) and f.computed == 2 and calls == [2]
    mixed = f(torch.stack([packed[0, :, :3], torch.tensor([[4, 0, 0], [1, 0, 0]])]))
    assert f.computed == 3 and calls == [2, 1] and mixed[1].tolist() == [4.0] * 3
    assert torch.equal(FrozenOutputs(teacher, cache=True, max_bytes=0)(packed), first)  # nothing kept: computed each time
    one = FrozenOutputs(teacher, cache=True, max_bytes=4 * 3)  # room for one row of 3 logits
    assert torch.equal(one(packed), first) and torch.equal(one(packed), first) and one.computed == 3  # row 2 twice
