"""LiteRT format (TensorFlow Lite's successor): one ``<name>.tflite``; int8 adds ``<name>.quant.json``.

Optional runtime (``default = False``): exported where ``budget.formats`` / ``--format`` names ``litert``; needs
``pip install 'prokt-deploy[litert]'`` (``litert-torch`` converts, ``ai-edge-litert`` runs). Both are imported lazily
here (``litert_torch`` pulls jax: ``import exporters`` and ``import prokt_deploy`` never import it); a missing one
raises :class:`BackendMissingError` naming that extra.

fp32: ``litert_torch.convert(model, (x,))`` of the eval model; image models with a dynamic batch dimension
(``torch.export.Dim``). The file takes NCHW input as the PyTorch model does (the converter inserts the transposes).

int8: full-integer post-training quantization: ``torch.export`` -> torchao ``prepare_pt2e`` with litert_torch's
``PT2EQuantizer`` (symmetric int8, per-channel weights) -> calibration on the given real samples (batches of
:data:`CALIBRATION_BATCH`) -> ``convert_pt2e`` -> ``litert_torch.convert(quant_config=...)``. The converter makes the
input and output tensors int8 themselves (the quantize/dequantize at the graph's edges are folded into them), which
is what TFLite Micro on a microcontroller runs; there is no separate option for it: every int8 ``.tflite`` has int8
I/O. Their quantization parameters are written beside it in ``<name>.quant.json`` (:data:`QUANT_SUFFIX`, one of the
artifact's files, counted in its size, ~0.4 kB)::

    {"format": "litert", "layout": "NCHW", "formula": "q = clip(round(x / scale) + zero_point, qmin, qmax); x = (q - zero_point) * scale",
     "inputs": [{"name": ..., "dtype": "int8", "scale": 0.0039, "zero_point": -128, "shape": [-1, 1, 8, 8]}],
     "outputs": [{"name": ..., "dtype": "int8", "scale": 0.19, "zero_point": 14, "shape": [-1, 10]}]}

A board quantizes its preprocessed float input with the input's scale/zero point and dequantizes the logits with
the output's (for top-1 it may skip that: the map is monotonic). The predictor (accuracy gate) and the harness
runner (:class:`LiteRTRunner`, bench and bundles) do exactly that with the parameters the file itself declares,
so the gate is on float logits like every other format's (int8 judged by accuracy drop).

Batches: an image ``.tflite`` has a dynamic batch (shape signature -1); the runner resizes the input (and
re-allocates) only when the batch size changes, so validation's batches of up to 256 and bench's 1 and 32 run
as one call each. Where the converter cannot lower the dynamic batch (the ``pool`` and ``vgg`` families: their
``flatten(1)`` of a spatial feature map becomes an ``aten.view`` with a symbolic size, which the jax lowering
rejects), the file is converted at a static batch 1 (int8: quantized and calibrated once, on the dynamic graph) and
the runner invokes it once per sample (bench's batch 32 is then 32 invokes). Text models (packed (B,2,L) input, two int32 inputs ``input_ids`` + ``attention_mask``: the
converter downcasts int64) convert only with static shapes here (a dynamic batch fails in ``torch.export`` for the
BiLSTM and in the jax lowering for the transformer; a static file cannot be resized, its Reshapes are baked), so a
text file is exported at batch 1 and the example's sequence length L: the runner right-pads (mask 0) or cuts each
sample to L and runs the samples one at a time.

A model the converter cannot take is refused with one :class:`ExportError` line naming the op it could not lower
(``unsupported op aten.erfinv.default``), or the converter's own one-line message where it names no op.

Accuracy-aware int8 (:meth:`LiteRTExporter.accuracy_aware`): the fewest Conv/Linear modules kept in float that meet
the target, by the ranked search of ``exporters/accuracy_aware.py`` (each step a full quantize-convert-validate; a
kept module's weights are stored in fp32 and the converter places int8<->float conversions around it).

Not here: int8 diagnosis (the interpreter exposes no executed-graph precisions; XNNPACK delegates the whole graph).
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import tempfile
from pathlib import Path

import numpy as np
import torch

from ._common import Artifact, ExportError, Predictor, move_into, quiet_native, require
from ._text import PackedTextAdapter, example_export_batch, is_text_input
from .registry import Exporter, register

__all__ = ["CALIBRATION_BATCH", "PIP_EXTRA", "QUANT_SUFFIX", "LiteRTExporter", "LiteRTRunner", "litert_runtime", "quant_params"]

#: what a missing runtime's error tells to install
PIP_EXTRA = "'prokt-deploy[litert]'"
#: the int8 artifact's quantization parameters file, beside ``<name>.tflite``
QUANT_SUFFIX = ".quant.json"
#: calibration samples per forward pass of the observed model
CALIBRATION_BATCH = 32

#: model classes (module.qualname) whose batch-dynamic conversion failed in this process and that converted at batch 1
_STATIC_ONLY: set[str] = set()

_OP = re.compile(r"\b(aten\.[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)?|tfl\.[A-Za-z0-9_]+|torch\.ops\.[A-Za-z0-9_.]+)")


def split_inputs(x: np.ndarray, n_inputs: int) -> list[np.ndarray]:
    """The graph inputs of one batch (as the harness's ``runners.split_inputs``, which replaces this one where the
    harness runs :class:`LiteRTRunner`): an image batch as is; a packed text batch (B,2,L) as ids and mask (B,L)."""
    if n_inputs == 2 and x.ndim == 3 and x.shape[1] == 2:
        return [np.ascontiguousarray(x[:, 0], dtype=np.int64), np.ascontiguousarray(x[:, 1], dtype=np.int64)]
    return [x]


class LiteRTRunner:
    """The harness's runner of ``.tflite`` files: ``ai_edge_litert.interpreter.Interpreter(num_threads=threads)`` with
    its default XNNPACK delegate, on CPU. Self-contained (the harness runs this class's source alone, in worker
    processes and on boards): it imports its runtime in its methods and uses only numpy and ``split_inputs``.

    ``run(x)`` takes a float (B,C,H,W) batch or a packed (B,2,L) integer batch and returns float32 logits: an int8
    file's input is quantized and its output dequantized with the parameters the file declares. An image file
    (dynamic batch) is resized when the batch size changes; a text file (static batch 1, length L) runs sample by
    sample, each right-padded or cut to L. ``bind`` prepares the input once (quantized, set in the interpreter),
    so the timed ``infer`` is ``invoke()`` alone (an int8 board's input arrives as int8)."""

    name = "litert"
    modules = ("ai_edge_litert",)
    distribution = "ai-edge-litert"
    target_key = "device"
    label = "LiteRT"

    @classmethod
    def devices(cls) -> list[str]:
        return ["CPU"]

    @classmethod
    def target(cls, device: str, devices: list[str]) -> str | None:
        return "CPU" if device == "CPU" else None

    @classmethod
    def cpu_target(cls) -> str:
        return "CPU"

    def __init__(self, spec: dict, threads: int | None) -> None:
        import importlib.metadata

        from ai_edge_litert.interpreter import Interpreter

        self._it = Interpreter(model_path=str(spec["path"]), num_threads=threads if threads else None)
        self._it.allocate_tensors()
        # text files: args_0 (input_ids), args_1 (attention_mask), in name order
        self._inputs = sorted(self._it.get_input_details(), key=lambda d: d["name"])
        self._output = self._it.get_output_details()[0]
        sig = self._inputs[0]["shape_signature"]
        self._text = len(self._inputs) == 2
        self._dynamic = bool(len(sig)) and int(sig[0]) == -1
        self._static = tuple(int(s) for s in self._inputs[0]["shape"])
        self._shape = self._static
        self._bound: list = []
        try:
            version = importlib.metadata.version("ai-edge-litert")
        except importlib.metadata.PackageNotFoundError:
            version = "?"
        self.runtime = f"litert {version}"
        self.device = "CPU"
        self.config = {"num_threads": threads, "delegate": "XNNPACK (default)", "dynamic_batch": self._dynamic}

    def _feeds(self, x: np.ndarray) -> list[list[np.ndarray]]:
        """The input tensors of each invoke for the batch ``x``: one invoke for a dynamic-batch file, one per sample
        for a static file (text: each sample right-padded with zeros, id 0 and mask 0, or cut to the file's L)."""
        arrays = split_inputs(np.asarray(x), len(self._inputs))
        if self._text:
            length = self._static[1]
            arrays = [np.pad(a[:, :length], ((0, 0), (0, max(0, length - a.shape[1])))) for a in arrays]
        if self._dynamic:
            return [[self._convert(d, a) for d, a in zip(self._inputs, arrays)]]
        return [[self._convert(d, a[i : i + 1]) for d, a in zip(self._inputs, arrays)] for i in range(len(arrays[0]))]

    @staticmethod
    def _convert(d: dict, a: np.ndarray) -> np.ndarray:
        dtype = np.dtype(d["dtype"])
        scale, zero = d["quantization"]
        if scale and np.issubdtype(dtype, np.integer) and np.issubdtype(a.dtype, np.floating):
            info = np.iinfo(dtype)
            return np.ascontiguousarray(np.clip(np.round(a / scale) + zero, info.min, info.max).astype(dtype))
        return np.ascontiguousarray(a, dtype=dtype)

    def _set(self, feed: list[np.ndarray]) -> None:
        shape = tuple(feed[0].shape)
        if shape != self._shape:
            if not self._dynamic:
                raise ValueError(f"this .tflite takes input of shape {self._shape}, not {shape}")
            for d, a in zip(self._inputs, feed):
                self._it.resize_tensor_input(d["index"], list(a.shape), strict=True)
            self._it.allocate_tensors()
            self._shape = shape
        for d, a in zip(self._inputs, feed):
            self._it.set_tensor(d["index"], a)

    def _get(self) -> np.ndarray:
        o = self._it.get_tensor(self._output["index"])
        scale, zero = self._output["quantization"]
        if scale and np.issubdtype(o.dtype, np.integer):
            return ((o.astype(np.float32) - zero) * np.float32(scale)).astype(np.float32)
        return np.array(o, dtype=np.float32, copy=True)

    def run(self, x: np.ndarray) -> np.ndarray:
        results = []
        for feed in self._feeds(x):
            self._set(feed)
            self._it.invoke()
            results.append(self._get())
        return results[0] if len(results) == 1 else np.concatenate(results)

    def bind(self, x: np.ndarray) -> None:
        self._bound = self._feeds(x)
        self._set(self._bound[0])

    def infer(self) -> None:
        if len(self._bound) == 1:
            self._it.invoke()
            return
        for feed in self._bound:  # static text file: one invoke per sample
            self._set(feed)
            self._it.invoke()


def litert_runtime() -> str:
    """``"litert <ai-edge-litert version>"`` (raises :class:`BackendMissingError` naming the extra when it is missing)."""
    require("ai_edge_litert", PIP_EXTRA)
    return f"litert {importlib.metadata.version('ai-edge-litert')}"


def _litert_torch():  # module
    lt = require("litert_torch", PIP_EXTRA)
    lt.config.show_progress = False
    return lt


class LiteRTPredictor:
    """The accuracy gate's view of a ``.tflite``: ``predict`` is :meth:`LiteRTRunner.run` (the code bench times)."""

    def __init__(self, path: Path, threads: int | None) -> None:
        require("ai_edge_litert.interpreter", PIP_EXTRA)
        try:
            with quiet_native():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
                self._runner = LiteRTRunner({"path": str(path), "device": "CPU"}, threads)
        except (ValueError, RuntimeError) as exc:
            raise ExportError(f"LiteRT cannot open {path}: {' '.join(str(exc).split())[:300]}") from None
        self.runtime = litert_runtime()
        self.path = path

    def predict(self, x: np.ndarray) -> np.ndarray:
        """float32 logits of a float (B,C,H,W) batch, or a packed (B,2,L) integer batch for a text model."""
        return self._runner.run(x)


def quant_params(path: Path) -> dict:
    """The quantization parameters of a ``.tflite``'s input and output tensors (what ``<name>.quant.json`` holds)."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))

    def describe(details: list[dict]) -> list[dict]:
        out = []
        for d in sorted(details, key=lambda d: d["name"]):
            scale, zero = d["quantization"]
            out.append(
                {
                    "name": d["name"],
                    "dtype": np.dtype(d["dtype"]).name,
                    "scale": float(scale),
                    "zero_point": int(zero),
                    "shape": [int(s) for s in d["shape_signature"]],
                }
            )
        return out

    return {
        "format": "litert",
        "layout": "NCHW",
        "formula": "q = clip(round(x / scale) + zero_point, qmin, qmax); x = (q - zero_point) * scale",
        "inputs": describe(it.get_input_details()),
        "outputs": describe(it.get_output_details()),
    }


def _failing_op(exc: BaseException) -> str | None:
    """The torch op the converter was lowering when ``exc`` was raised: the ``target`` of the innermost
    ``call_function`` frame of litert_torch's lowering interpreter, else an op named in the message."""
    found = None
    tb = exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code.co_name == "call_function" and "litert_torch" in frame.f_code.co_filename and "target" in frame.f_locals:
            found = str(frame.f_locals["target"])
        tb = tb.tb_next
    if found is None:
        ops = _OP.findall(" ".join(str(exc).split()))
        found = ops[0] if ops else None
    return found


def _refusal(exc: BaseException, what: str) -> ExportError:
    """One line naming the op the converter could not take (when it can be found)."""
    text = " ".join(str(exc).split()).split(" While executing ")[0]
    op = _failing_op(exc)
    if op is not None:
        return ExportError(f"LiteRT cannot convert this model ({what}): unsupported op {op} ({type(exc).__name__}: {text[:150]})")
    return ExportError(f"LiteRT cannot convert this model ({what}): {type(exc).__name__}: {text[:300]}")


@register
class LiteRTExporter(Exporter):
    """``litert``: ``<name>.tflite`` in fp32 or full-integer int8 (int8 I/O, parameters in ``<name>.quant.json``)."""

    name = "litert"
    precisions = ("fp32", "int8")
    main_suffix = ".tflite"
    runner = LiteRTRunner
    default = False

    def export(
        self,
        model: torch.nn.Module,
        precision: str,
        out_dir: Path,
        *,
        example_input: torch.Tensor,
        calibration: np.ndarray | None,
        name: str,
        opset: int,
        fp32_onnx: Path | None = None,
    ) -> Artifact:
        with quiet_native():  # the converter's and TensorFlow's native logging, jax's root log handler
            return self._export(model, precision, out_dir, example_input=example_input, calibration=calibration, name=name)

    def accuracy_aware(
        self,
        model: torch.nn.Module,
        out_dir: Path,
        *,
        example_input: torch.Tensor,
        calibration: np.ndarray,
        validation_x: np.ndarray,
        validation_y: np.ndarray,
        max_accuracy_drop: float,
        name: str,
        opset: int,
    ):  # AccuracyAwareResult
        """The fewest Conv/Linear modules kept in float (PT2E, ``exporters/accuracy_aware.py``) that meet the target."""
        from .accuracy_aware import pt2e_search

        def build(precision: str, kept: tuple[str, ...], where: Path) -> list[Path]:
            return self._export(model, precision, where, example_input=example_input, calibration=calibration, name=name, keep_float=kept).files

        with quiet_native():
            return pt2e_search(
                self,
                model,
                example_input=example_input,
                build=build,
                validation_x=validation_x,
                validation_y=validation_y,
                target=max_accuracy_drop,
                out_dir=out_dir,
                method="litert-torch PT2E, Conv/Linear modules kept in float, ranked by validation accuracy",
            )

    def _export(
        self, model, precision: str, out_dir: Path, *, example_input: torch.Tensor, calibration, name: str, keep_float: tuple[str, ...] = ()
    ) -> Artifact:
        lt = _litert_torch()
        litert_runtime()
        text = is_text_input(example_input)
        if text:  # static (1, L): see the module docstring
            ids, mask = example_export_batch(example_input)
            module: torch.nn.Module = PackedTextAdapter(model).eval()
            args: tuple = (ids[:1].contiguous(), mask[:1].contiguous())
            dynamic = None
        else:
            x = example_input if len(example_input) >= 2 else example_input.repeat(2, 1, 1, 1)
            module, args = model, (x[:2].contiguous(),)
            dynamic = ({0: torch.export.Dim("batch")},)
        with tempfile.TemporaryDirectory(prefix="exporters-litert-") as tmp_str:
            tmp = Path(tmp_str)
            path = tmp / f"{name}{self.main_suffix}"
            self._convert(lt, module, args, dynamic, precision, calibration, text, path, keep_float)
            self._check_runs(path, example_input, text)
            files = [path]
            if precision == "int8":
                quant = tmp / f"{name}{QUANT_SUFFIX}"
                quant.write_text(json.dumps(quant_params(path), separators=(",", ":")))
                files.append(quant)
            files = move_into(files, out_dir)
        return Artifact(format=self.name, precision=precision, files=files, runtime=self.runtime())

    def _convert(self, lt, module, args, dynamic, precision: str, calibration, text: bool, path: Path, keep_float: tuple[str, ...]) -> None:
        """Convert (int8: quantize first, once, the modules ``keep_float`` left in float) with a dynamic batch; where
        the converter cannot lower the dynamic batch (a ``flatten(1)`` of a spatial map), at a static batch 1 (the
        runner then loops). A model class that needed the static fallback once goes static at once for the rest of
        the process (:data:`_STATIC_ONLY`: the failed dynamic lowering costs seconds, and the planner converts many
        candidates of one family)."""
        quant_config = None
        kind = f"{type(module).__module__}.{type(module).__qualname__}"
        if precision == "int8":
            assert calibration is not None
            try:
                module, quant_config = self._quantized(module, args, dynamic, calibration, text, keep_float)
            except ExportError:
                if dynamic is None:
                    raise
                args, dynamic = (args[0][:1].contiguous(),), None  # torch.export cannot make the batch dynamic
                module, quant_config = self._quantized(module, args, dynamic, calibration, text, keep_float)
        if dynamic is not None and kind in _STATIC_ONLY:
            dynamic, args = None, (args[0][:1].contiguous(),)  # this model class failed the dynamic lowering before
        try:
            lt.convert(module, args, dynamic_shapes=dynamic, quant_config=quant_config).export(str(path))
            return
        except Exception as exc:
            if dynamic is None:
                raise _refusal(exc, f"{precision} conversion") from None
            try:
                lt.convert(module, (args[0][:1].contiguous(),), quant_config=quant_config).export(str(path))
            except Exception as exc:
                raise _refusal(exc, f"{precision} conversion") from None
            _STATIC_ONLY.add(kind)

    @staticmethod
    def _quantized(module, args, dynamic, calibration: np.ndarray, text: bool, keep_float: tuple[str, ...] = ()):
        """The PT2E-quantized (converted, not folded) module and its ``QuantConfig``, calibrated on ``calibration``;
        the modules named in ``keep_float`` stay in float (accuracy-aware int8)."""
        require("litert_torch", PIP_EXTRA)
        from litert_torch.quantize import pt2e_quantizer as pq
        from litert_torch.quantize.quant_config import QuantConfig
        from torchao.quantization.pt2e import quantize_pt2e

        from .accuracy_aware import pt2e_keep_float

        quantizer = pq.PT2EQuantizer().set_global(pq.get_symmetric_quantization_config(is_per_channel=True))
        try:
            graph = torch.export.export(module, args, dynamic_shapes=dynamic).module()
        except Exception as exc:
            raise _refusal(exc, "int8 preparation") from None
        pt2e_keep_float(quantizer, graph, keep_float, pq._get_module_name_filter)
        try:
            observed = quantize_pt2e.prepare_pt2e(graph, quantizer)
        except Exception as exc:
            raise _refusal(exc, "int8 preparation") from None
        if text:
            length = args[0].shape[1]
            packed = np.pad(calibration[:, :, :length], ((0, 0), (0, 0), (0, max(0, length - calibration.shape[2]))))
            batches = [tuple(torch.from_numpy(np.ascontiguousarray(packed[i : i + 1, r])) for r in (0, 1)) for i in range(len(packed))]
        else:
            step = CALIBRATION_BATCH if dynamic is not None else 1  # a static graph takes its own batch size only
            batches = [(torch.from_numpy(calibration[i : i + step]),) for i in range(0, len(calibration), step)]
        try:
            for batch in batches:
                observed(*batch)
            converted = quantize_pt2e.convert_pt2e(observed, fold_quantize=False)
        except Exception as exc:
            raise _refusal(exc, "int8 calibration") from None
        return converted, QuantConfig(pt2e_quantizer=quantizer)

    @staticmethod
    def _check_runs(path: Path, example_input: torch.Tensor, text: bool) -> None:
        """Run the new file at two batch sizes (image: a dynamic batch that is only declared would fail here)."""
        ex = example_input.detach().cpu().numpy()
        try:
            runner = LiteRTRunner({"path": str(path), "device": "CPU"}, 1)
            for b in (1, 3):
                out = runner.run(np.resize(ex, (b, *ex.shape[1:])))
                if out.shape[0] != b or not np.isfinite(out).all():
                    raise ValueError(f"batch {b} gave output of shape {out.shape}")
        except Exception as exc:
            raise ExportError(f"the converted .tflite does not run: {' '.join(str(exc).split())[:300]}") from None

    def load(self, files: list[Path], *, device: str, threads: int | None) -> Predictor:
        if device.upper() != "CPU":
            raise ExportError(f"litert runs on CPU here (XNNPACK), not {device!r}")
        return LiteRTPredictor(self.main_file(files), threads)

    def runtime(self) -> str:
        return litert_runtime()
