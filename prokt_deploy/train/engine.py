"""The training engine: one loop for every method (``prokt_deploy.train.methods``: scratch, kd, prokt, ...).

Each method is a *step* function that takes one minibatch and updates the models; the loop
around it is the same for all (shuffle, step, NaN check, validate, log), so the methods are
compared in the same engine with the same data order. The pieces a method's step is made of live
here: :class:`Method`, :func:`make_optimizer`, :func:`make_scheduler`, :func:`clip_and_step`,
:func:`soft_targets`, :func:`check_finite`, and :func:`scratch_method` (cross-entropy on the labels,
also the teacher's pre-training phase).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from prokt_deploy.data import DataBundle, Split, trim_padding
from prokt_deploy.errors import TrainingError
from prokt_deploy.recipe import OptimizerConfig
from prokt_deploy.train.augment import step_generator
from prokt_deploy.train.distributed import active, all_ok, is_main, shard, sum_metrics, unwrap
from prokt_deploy.train.losses import kl_to_target

log = logging.getLogger("prokt_deploy")


class Progress(Protocol):
    """What the engine reports to a UI. The CLI implements it with Rich; the default is silent."""

    def start(self, phase: str, total_steps: int, completed: int = 0) -> None: ...
    def step(self, metrics: dict[str, float]) -> None: ...
    def epoch(self, record: dict) -> None: ...
    def stop(self) -> None: ...

    # optional: ``estimate(record)`` once per phase after its first steps (:func:`estimate_record`), if defined


#: optimizer steps timed before a phase says how long it will take (engine.Progress.estimate)
ESTIMATE_AFTER_STEPS = 10


def estimate_record(phase: str, done_steps: int, seconds: float, remaining_steps: int, total_steps: int, per_epoch: int) -> dict:
    """What a phase says after its first :data:`ESTIMATE_AFTER_STEPS` steps: its size, the measured seconds per step
    and the time left for its remaining steps at that pace (validation after each epoch not included)."""
    per_step = seconds / max(1, done_steps)
    return {
        "phase": phase,
        "steps": total_steps,
        "epochs": total_steps // max(1, per_epoch),
        "steps_per_epoch": per_epoch,
        "seconds_per_step": round(per_step, 4),
        "remaining_s": round(per_step * remaining_steps, 1),
    }


def estimate_line(e: dict) -> str:
    """'prokt: 6,330 steps (15 epochs x 422) at 0.210 s/step: about 22 min left' (the CLI's line, from the first steps' pace)."""
    left = e["remaining_s"]
    when = f"{left / 3600:.1f} h" if left >= 5400 else (f"{left / 60:.0f} min" if left >= 90 else f"{left:.0f} s")
    return f"{e['phase']}: {e['steps']:,} steps ({e['epochs']} epochs x {e['steps_per_epoch']:,}) at {e['seconds_per_step']:.3f} s/step: about {when} left"


class SilentProgress:
    def start(self, phase: str, total_steps: int, completed: int = 0) -> None:
        pass

    def step(self, metrics: dict[str, float]) -> None:
        pass

    def epoch(self, record: dict) -> None:
        pass

    def stop(self) -> None:
        pass


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def torch_device(name: str) -> torch.device:
    """'cpu', 'cuda', 'cuda:1' or 'auto' (CUDA when present, else CPU)."""
    from prokt_deploy.errors import UsageError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}; use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {name!r} requested but CUDA is not available here; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"device {name!r} is not supported for training; use cpu, cuda, cuda:N or auto")
    return device


def make_optimizer(params, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.momentum > 0)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_scheduler(opt: torch.optim.Optimizer, cfg: OptimizerConfig, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Warm-up (linear from 0) then linear decay to 0, cosine decay to 0, or constant."""
    warm = cfg.warmup_steps
    decay_steps = max(1, total_steps - warm)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = min(1.0, (step - warm) / decay_steps)
        if cfg.schedule == "linear":
            return 1.0 - t
        if cfg.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * t))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, device: torch.device, batch_size: int = 1024) -> torch.Tensor:
    """Logits of ``model`` in eval mode for all of ``x`` (N, C, H, W) or packed text (N, 2, L), on the CPU.

    Text is run in batches of similar length with the padding trimmed (fewer wasted tokens); the
    logits come back in the order of ``x``.
    """
    was_training = model.training
    model.eval()
    order = None
    if x.dtype == torch.int64 and x.dim() == 3:
        order = torch.argsort(x[:, 1].sum(1), stable=True)
        x = x[order]
        batch_size = min(batch_size, 256)
    out = [model(trim_padding(x[i : i + batch_size]).to(device)).float().cpu() for i in range(0, len(x), batch_size)]
    model.train(was_training)
    logits = torch.cat(out)
    if order is not None:
        logits = logits[torch.argsort(order)]
    return logits


def accuracy(model: nn.Module, split: Split, device: torch.device) -> float:
    return (predict_logits(model, split.x, device).argmax(1) == split.y).float().mean().item()


def clip_and_step(model: nn.Module, opt: torch.optim.Optimizer, sched, loss: torch.Tensor, grad_clip: float | None) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip is not None:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    sched.step()


@torch.no_grad()
def soft_targets(model: nn.Module, x: torch.Tensor, batch_stats: bool = False) -> torch.Tensor:
    """Eval-mode (dropout off, BN running stats), detached probabilities.

    ``batch_stats``: batch-norm layers normalise with this batch's statistics instead (train-mode
    normalisation, momentum 0 so the running statistics do not move); dropout stays off.
    """
    model.eval()
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)] if batch_stats else []
    saved = [(m.momentum, m.num_batches_tracked.clone()) for m in bns]
    for m in bns:
        m.train()
        m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch
    try:
        return F.softmax(model(x), dim=-1)
    finally:
        for m, (momentum, n) in zip(bns, saved):
            m.momentum = momentum
            m.num_batches_tracked.copy_(n)
            m.eval()


class FrozenOutputs:
    """A frozen teacher's logits for a training batch, each distinct input computed once and kept.

    A frozen teacher in eval mode (KD, DKD) gives a sample the same logits every epoch as long as the sample
    reaches it unchanged, i.e. without augmentation (text; images with ``data.augment`` off): from the second
    epoch on its forward passes are pure repetition, and with a large teacher (MiniLM on tweets, an ImageNet
    backbone) they are most of a step's cost. ``cache=True`` keys each row by its content (a text row by its
    tokens up to its own length, so a different batch padding is the same key), runs the teacher on the rows
    it has not seen and keeps their logits on the CPU, up to ``max_bytes``; rows beyond that are computed each
    time. The result equals ``teacher(x)`` up to float rounding (a row computed in a batch of another size);
    ``cache=False`` is ``teacher(x)``. ``computed`` counts the rows the teacher ran on.
    """

    def __init__(self, teacher: nn.Module, cache: bool, max_bytes: int = 512 * 2**20) -> None:
        self.teacher, self.cache, self.max_bytes = teacher, cache, max_bytes
        self.index: dict[bytes, int] = {}  # a row's key -> its row in ``kept``
        self.kept: torch.Tensor | None = None  # (capacity, classes) float32 on the CPU, grown by doubling
        self.computed = 0

    @staticmethod
    def _key(row: torch.Tensor) -> bytes:
        import hashlib

        if row.dtype == torch.int64 and row.dim() == 2 and row.shape[0] == 2:  # packed text: (ids, mask)
            row = row[0, : int(row[1].sum())]
        return hashlib.blake2b(row.contiguous().numpy().tobytes(), digest_size=16).digest()

    def _keep(self, keys: list[bytes], logits: torch.Tensor) -> None:
        limit = self.max_bytes // (4 * logits.shape[1])  # rows that fit max_bytes
        n = len(self.index)
        take = min(len(keys), limit - n)
        if take <= 0:
            return
        if self.kept is None or n + take > len(self.kept):
            grown = torch.empty(min(limit, max(1024, 2 * (n + take))), logits.shape[1])
            if self.kept is not None:
                grown[:n] = self.kept[:n]
            self.kept = grown
        self.kept[n : n + take] = logits[:take]
        self.index.update(zip(keys[:take], range(n, n + take)))

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.cache:
            self.computed += len(x)
            return self.teacher(x)
        keys = [self._key(row) for row in x.cpu()]
        first: dict[bytes, int] = {}
        for i, k in enumerate(keys):
            if k not in self.index:
                first.setdefault(k, i)  # a row twice in one batch (or two equal samples) is computed once
        fresh: dict[bytes, torch.Tensor] = {}
        if first:
            missing = list(first.values())
            out = self.teacher(trim_padding(x[missing]) if len(missing) < len(x) else x).float().cpu()
            self.computed += len(missing)
            fresh = dict(zip(first, out))
            self._keep(list(first), out)
        rows = [self.kept[self.index[k]] if k in self.index else fresh[k] for k in keys]
        return torch.stack(rows).to(x.device)


StepFn = Callable[[torch.Tensor, torch.Tensor], dict[str, float]]


@dataclass
class Method:
    """A method: its step function and the models it trains (for NaN checks and validation)."""

    name: str
    step: StepFn
    student: nn.Module
    teacher: nn.Module | None = None
    state: dict = field(default_factory=dict)  # e.g. the dual variable beta of constrained ProKT
    optimizers: dict[str, tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]] = field(default_factory=dict)
    trains_teacher: bool = False
    best_epoch: int | None = None  # set by fit: the epoch whose weights the models hold at the end

    def state_dict(self) -> dict:
        """Everything needed to continue: models, optimizers, schedulers, method state."""
        out = {"student": unwrap(self.student).state_dict(), "state": dict(self.state)}
        if self.teacher is not None:
            out["teacher"] = unwrap(self.teacher).state_dict()
        for name, (opt, sched) in self.optimizers.items():
            out[f"opt_{name}"] = opt.state_dict()
            out[f"sched_{name}"] = sched.state_dict()
        return out

    def load_state_dict(self, state: dict) -> None:
        unwrap(self.student).load_state_dict(state["student"])
        if self.teacher is not None and "teacher" in state:
            unwrap(self.teacher).load_state_dict(state["teacher"])
        for name, (opt, sched) in self.optimizers.items():
            opt.load_state_dict(state[f"opt_{name}"])
            sched.load_state_dict(state[f"sched_{name}"])
        self.state.clear()
        self.state.update(state["state"])


def scratch_method(student: nn.Module, opt_cfg: OptimizerConfig, total_steps: int, grad_clip: float | None) -> Method:
    opt = make_optimizer(student.parameters(), opt_cfg)
    sched = make_scheduler(opt, opt_cfg, total_steps)

    def step(x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        student.train()
        logits = student(x)  # (B, K)
        loss = F.cross_entropy(logits, y)
        check_finite(loss, "cross-entropy")
        clip_and_step(student, opt, sched, loss, grad_clip)
        return {"loss": loss.item(), "acc": (logits.argmax(1) == y).float().mean().item()}

    return Method("scratch", step, student, optimizers={"student": (opt, sched)})


def check_finite(loss: torch.Tensor, what: str) -> None:
    if not torch.isfinite(loss):
        raise TrainingError(f"{what} loss became {loss.item()}; lower the learning rate or check the data")


def steps_per_epoch(n_samples: int, batch_size: int) -> int:
    return math.ceil(n_samples / batch_size)


def schedule(epochs: int, n_samples: int, batch_size: int, min_steps: int = 0) -> dict:
    """The epochs a training phase runs: ``epochs``, raised to ceil(min_steps / steps per epoch) when
    ``epochs`` would give fewer than ``min_steps`` optimizer steps (recipe ``train.min_steps``).

    Why: epoch counts tuned on 54,000 images give a 7,000-image dataset an eighth of the steps, too
    few to converge; a floor in steps carries over between dataset sizes. Returns the record the
    manifest keeps (``reason`` only when the epochs were raised).
    """
    per_epoch = steps_per_epoch(n_samples, batch_size)
    run = max(epochs, math.ceil(min_steps / per_epoch)) if min_steps else epochs
    record = {"epochs_requested": epochs, "epochs": run, "steps_per_epoch": per_epoch, "steps": run * per_epoch, "min_steps": min_steps}
    if run != epochs:
        record["reason"] = f"{epochs} epochs x {per_epoch} steps = {epochs * per_epoch} < train.min_steps {min_steps}: raised to {run} epochs"
    return record


class Interrupted(Exception):
    """Raised at a step boundary after Ctrl-C, once the checkpoint holding that step is saved."""


#: Text batches are drawn from windows of this many batches sorted by length (see bucket_by_length).
BUCKET_BATCHES = 32


def bucket_by_length(order: torch.Tensor, lengths: torch.Tensor, batch_size: int, gen: torch.Generator) -> torch.Tensor:
    """Reorder a random permutation so each batch holds texts of similar length, batches in random order.

    The permutation is cut into windows of ``BUCKET_BATCHES`` batches; each window is sorted by
    length and cut into batches; then the full batches are shuffled (a last, partial batch stays
    last). With padding trimmed per batch, a batch of short tweets then costs a short tweet's compute
    (measured on the tweets: ~1.7x fewer padded tokens per epoch). Deterministic given ``gen``.
    """
    window = BUCKET_BATCHES * batch_size
    parts = []
    for start in range(0, len(order), window):
        chunk = order[start : start + window]
        parts.append(chunk[torch.argsort(lengths[chunk], stable=True)])
    order = torch.cat(parts)
    full = len(order) // batch_size
    batches = list(order[: full * batch_size].view(full, batch_size)) if full else []
    perm = torch.randperm(len(batches), generator=gen).tolist()
    tail = [order[full * batch_size :]] if len(order) % batch_size else []
    return torch.cat([batches[i] for i in perm] + tail) if batches else order


@dataclass
class Resume:
    """Where an interrupted ``fit`` stopped: restored into the method before the loop continues."""

    epoch: int
    step: int  # steps already taken within ``epoch``
    sums: dict[str, float]
    count: int
    history: list[dict]
    method_state: dict
    torch_rng: torch.Tensor
    best: dict | None = None  # the best-on-validation weights so far (keep_best)


SaveFn = Callable[[dict], None]


def use_channels_last(data: DataBundle, device: torch.device) -> bool:
    """Whether ``fit`` trains in channels-last (NHWC) memory format: images on the CPU, one process.

    oneDNN's convolutions run faster on NHWC tensors than on NCHW ones here:
    ``benchmarks/distill_throughput.py`` (the default recipe's vgg-w32 teacher and pool-w16-d3 student,
    batch 128, 2 threads, AMD EPYC with AVX2, both layouts interleaved) measured 1.51x the samples/s for
    ProKT steps, 1.52x for KD and 1.44x for scratch; a whole ProKT epoch of ``make demo`` went from
    213-227 s to 178 s. The arithmetic is the same up to float rounding (another convolution algorithm),
    so results are not bit-identical to NCHW training. Not used on CUDA (not measured there) nor with
    several processes (DDP's gradient buckets expect the parameters' layout at wrap time), and off when
    the environment sets ``PROKT_DEPLOY_CHANNELS_LAST=0``. A model that cannot run channels-last (e.g. a
    user's ``x.view(B, -1)`` on a feature map) is caught by a probe in :func:`fit`, which then trains in NCHW.
    """
    if os.environ.get("PROKT_DEPLOY_CHANNELS_LAST", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    return device.type == "cpu" and not active() and data.train.x.dim() == 4 and data.train.x.is_floating_point()


@torch.no_grad()
def _runs_channels_last(models: list[nn.Module], x: torch.Tensor) -> bool:
    """One eval-mode forward of each model on a channels-last batch: False when one of them raises
    (a ``view`` that needs contiguous NCHW memory, a custom op); nothing is updated (eval, no grad)."""
    x = x.contiguous(memory_format=torch.channels_last)
    for m in models:
        was_training = m.training
        m.eval()
        try:
            m(x)
        except RuntimeError as exc:
            log.info("training in NCHW: %s cannot run channels-last (%s)", type(m).__name__, str(exc).splitlines()[0][:200])
            return False
        finally:
            m.train(was_training)
    return True


@contextlib.contextmanager
def _layout(method: Method, channels_last: bool, example: torch.Tensor):
    """The models of ``method`` in channels-last format while training (when ``channels_last`` and every
    model runs in it on ``example``); back to the default layout after. Yields whether it is used."""
    models = [unwrap(m) for m in (method.student, method.teacher) if m is not None]
    if channels_last:
        for m in models:
            m.to(memory_format=torch.channels_last)
        if not _runs_channels_last(models, example):
            for m in models:
                m.to(memory_format=torch.contiguous_format)
            channels_last = False
    try:
        yield channels_last
    finally:
        if channels_last:
            for m in models:
                m.to(memory_format=torch.contiguous_format)


def fit(
    method: Method,
    data: DataBundle,
    *,
    epochs: int,
    batch_size: int,
    seed: int,
    device: torch.device,
    progress: Progress | None = None,
    phase: str = "train",
    save: SaveFn | None = None,
    resume: Resume | None = None,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
    keep_best: bool = False,
    unlabeled: torch.Tensor | None = None,
    labeled_share: float = 0.25,
) -> list[dict]:
    """Run ``method`` for ``epochs`` over the training split; validate after each epoch.

    The data order depends only on ``seed`` and the epoch, so every method sees the same batches
    and a resumed run continues on exactly the batches it would have seen. ``save(state)`` is
    called at the end of every epoch and, after Ctrl-C, at the next step boundary (then
    :class:`Interrupted` is raised). ``augment(x, gen)`` transforms each training batch with a
    generator that depends only on (seed, epoch, step). ``keep_best``: at the end the models hold
    the weights of the epoch with the best validation accuracy of ``method.student`` (ties keep the
    earlier epoch), and ``method.best_epoch`` says which; otherwise the last epoch's. Returns the
    per-epoch history.

    ``unlabeled`` (a transfer set: inputs without labels, for a method whose step handles label -1): each batch
    is ``labeled_share`` labelled samples and the rest unlabelled ones (label -1), each drawn from its own
    seeded stream (:class:`TransferBatches`); an epoch is as many steps as one pass over both together.
    """
    progress = progress or SilentProgress()
    train = data.train
    transfer = TransferBatches(len(train), len(unlabeled), batch_size, labeled_share, seed) if unlabeled is not None and len(unlabeled) else None
    n = len(train) + (len(unlabeled) if transfer else 0)
    per_epoch = steps_per_epoch(n, batch_size)
    history: list[dict] = list(resume.history) if resume else []
    first_epoch = resume.epoch if resume else 0
    best: dict | None = resume.best if resume else None
    if resume:
        method.load_state_dict(resume.method_state)
        torch.set_rng_state(resume.torch_rng)

    def checkpoint(epoch: int, step: int, sums: dict, count: int) -> None:
        # Metric totals are summed over ranks (a collective: every rank calls this at the same
        # step) and kept by rank 0 alone, which restores them on resume.
        sums, count = sum_metrics(sums, count)
        if save is not None and is_main():
            save(
                {
                    "phase": phase,
                    "epoch": epoch,
                    "step": step,
                    "sums": dict(sums),
                    "count": count,
                    "history": list(history),
                    "method": method.state_dict(),
                    "torch_rng": torch.get_rng_state(),
                    "best": best,
                }
            )

    layout = _layout(method, use_channels_last(data, device), train.x[:2].to(device))
    with _sigint_flag() as stop, layout as channels_last:
        progress.start(phase, epochs * per_epoch, completed=first_epoch * per_epoch + (resume.step if resume else 0))
        timed, t_timed = 0, time.perf_counter()  # steps of this invocation, for the estimate
        try:
            for epoch in range(first_epoch, epochs):
                order = None  # a transfer set draws its batches from TransferBatches
                if transfer is None:
                    gen = torch.Generator().manual_seed(seed * 1000 + epoch)
                    order = torch.randperm(n, generator=gen)
                    if train.x.dtype == torch.int64 and train.x.dim() == 3:
                        order = bucket_by_length(order, train.x[:, 1].sum(1), batch_size, gen)
                start = time.perf_counter()
                sums: dict[str, float] = {}
                count, first_step = 0, 0
                if resume and epoch == first_epoch:
                    first_step = resume.step
                    if is_main():
                        sums, count = dict(resume.sums), resume.count
                for step in range(first_step, per_epoch):
                    if timed == ESTIMATE_AFTER_STEPS:  # the phase's size and pace, once, before most of it runs
                        done = epoch * per_epoch + step
                        est = estimate_record(phase, timed, time.perf_counter() - t_timed, epochs * per_epoch - done, epochs * per_epoch, per_epoch)
                        log.info("%s", estimate_line(est))
                        if hasattr(progress, "estimate"):
                            progress.estimate(est)
                    timed += 1
                    if not all_ok(not stop.is_set()):  # all ranks stop at the same step
                        checkpoint(epoch, step, sums, count)
                        raise Interrupted(f"interrupted in {phase} epoch {epoch + 1}, step {step}")
                    if transfer is None:
                        idx = shard(order[step * batch_size : (step + 1) * batch_size])  # this rank's part
                        x = trim_padding(train.x[idx]).to(device, non_blocking=True)  # (B, C, H, W) or text (B, 2, L)
                        y = train.y[idx].to(device, non_blocking=True)  # (B,)
                    else:
                        li, ui = (shard(i) for i in transfer.batch(epoch * per_epoch + step))
                        x = trim_padding(torch.cat([train.x[li], unlabeled[ui]])).to(device, non_blocking=True)
                        y = torch.cat([train.y[li], torch.full((len(ui),), NO_LABEL, dtype=train.y.dtype)]).to(device, non_blocking=True)
                        sums["unlabelled_samples"] = sums.get("unlabelled_samples", 0.0) + len(ui)
                    if augment is not None:
                        x = augment(x, step_generator(seed, epoch, step))
                    if channels_last:
                        x = x.contiguous(memory_format=torch.channels_last)
                    metrics = method.step(x, y)
                    for k, v in metrics.items():
                        sums[k] = sums.get(k, 0.0) + v * len(y)
                    count += len(y)
                    progress.step({**metrics, "epoch": epoch + 1})
                total_sums, total_count = sum_metrics(sums, count)
                record = {"epoch": epoch + 1, "seconds": round(time.perf_counter() - start, 3), "train_samples": total_count}
                unlabelled = total_sums.pop("unlabelled_samples", None)
                if unlabelled is not None:
                    record["train_unlabelled_samples"] = int(unlabelled)
                record.update({f"train_{k}": round(v / total_count, 6) for k, v in total_sums.items()})
                record.update(validate(method, data, device))
                if keep_best and (best is None or record["val_student_accuracy"] > best["val"]):
                    best = {"epoch": epoch + 1, "val": record["val_student_accuracy"], "state": _model_weights(method)}
                history.append(record)
                checkpoint(epoch + 1, 0, {}, 0)  # an epoch boundary: nothing to carry over
                log.info("%s epoch %d: %s", phase, epoch + 1, record)
                progress.epoch(record)
        finally:
            progress.stop()
    method.best_epoch = len(history)
    if keep_best and best is not None:
        method.best_epoch = best["epoch"]
        if best["epoch"] != len(history):
            unwrap(method.student).load_state_dict(best["state"]["student"])
            if "teacher" in best["state"]:
                unwrap(method.teacher).load_state_dict(best["state"]["teacher"])
            log.info("%s: keeping epoch %d (best validation accuracy %.4f) of %d", phase, best["epoch"], best["val"], len(history))
    return history


#: the label of an unlabelled sample in a transfer batch (a method's label terms skip it: losses.labelled_ce)
NO_LABEL = -1


class TransferBatches:
    """The batches of a transfer set: per step, ``round(batch_size * share)`` (at least 1, at most batch_size - 1)
    labelled samples and the rest unlabelled, each from an endless stream of seeded permutations of its own
    (pass ``p`` of a stream is a permutation seeded by (seed, stream, p)). A batch depends only on the seed and the
    global step, so a resumed run draws the batches it would have drawn, and every method with the same seed
    sees the same batches. Why two streams at a fixed share and not one shuffled union: with 1,000 labels beside
    53,000 unlabelled samples a batch of the union holds 2 or 3 labels, too few for the label terms of KD and of
    ProKT's teacher step; a fixed share is what semi-supervised training does (FixMatch's 1:7)."""

    def __init__(self, n_labelled: int, n_unlabelled: int, batch_size: int, share: float, seed: int) -> None:
        if batch_size < 2:
            raise TrainingError("a transfer set (unlabelled data) needs train.batch_size of at least 2: a labelled and an unlabelled sample")
        self.n = (n_labelled, n_unlabelled)
        self.k_labelled = min(batch_size - 1, max(1, round(batch_size * share)))
        self.k = (self.k_labelled, max(0, batch_size - self.k_labelled))
        self.seed = seed
        self._perms: dict[tuple[int, int], torch.Tensor] = {}

    def _perm(self, stream: int, p: int) -> torch.Tensor:
        key = (stream, p)
        if key not in self._perms:
            if len(self._perms) > 8:
                self._perms.clear()
            # one independent stream per (seed, stream, pass): no two of them share a seed
            gen = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, stream, p]).generate_state(1, np.uint64)[0] >> 1))
            self._perms[key] = torch.randperm(self.n[stream], generator=gen)
        return self._perms[key]

    def _take(self, stream: int, global_step: int) -> torch.Tensor:
        n, k = self.n[stream], self.k[stream]
        start, parts, got = global_step * k, [], 0
        while got < k:
            p, off = divmod(start, n)
            take = min(k - got, n - off)
            parts.append(self._perm(stream, p)[off : off + take])
            start, got = start + take, got + take
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)

    def batch(self, global_step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(labelled indices, unlabelled indices) of a global step (epoch * steps per epoch + step)."""
        return self._take(0, global_step), self._take(1, global_step)


def labelled_accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    """Accuracy over the labelled samples of a batch (a transfer batch's unlabelled ones have label -1); 0 for a
    batch without one (a distributed shard can have none; the epoch's train_acc is then slightly low)."""
    mask = y >= 0
    return (logits[mask].argmax(1) == y[mask]).float().mean().item() if mask.any() else 0.0


def _model_weights(method: Method) -> dict:
    """A detached copy of the weights ``keep_best`` restores: the student, and a teacher it trains."""
    out = {"student": {k: v.detach().clone() for k, v in unwrap(method.student).state_dict().items()}}
    if method.trains_teacher and method.teacher is not None:
        out["teacher"] = {k: v.detach().clone() for k, v in unwrap(method.teacher).state_dict().items()}
    return out


def validate(method: Method, data: DataBundle, device: torch.device) -> dict[str, float]:
    """Validation accuracy of both models and the teacher-student KL on the validation split."""
    y = data.val.y
    s_logits = predict_logits(method.student, data.val.x, device)  # one forward per model, reused below
    out = {"val_student_accuracy": round((s_logits.argmax(1) == y).float().mean().item(), 6)}
    if method.teacher is not None:
        t_logits = predict_logits(method.teacher, data.val.x, device)
        out["val_teacher_accuracy"] = round((t_logits.argmax(1) == y).float().mean().item(), 6)
        out["val_kl_teacher_student"] = round(kl_to_target(F.softmax(t_logits, -1), s_logits).item(), 6)
    if "beta" in method.state:
        out["beta"] = method.state["beta"]
    return out


@contextlib.contextmanager
def _sigint_flag():
    """Turn the first Ctrl-C into a flag checked at step boundaries (a second one interrupts at once)."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag.is_set():
            raise KeyboardInterrupt
        flag.set()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)
