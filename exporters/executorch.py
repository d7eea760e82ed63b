"""ExecuTorch format: one ``<name>.pte`` program, its compute delegated to XNNPACK, run with ``executorch.runtime``.

The runtime is an optional extra (``pip install 'prokt-deploy[executorch]'``: executorch, which pulls torchao);
``default = False``, so the format is exported where a recipe's ``budget.formats`` or ``--format`` names it.
executorch and torchao are imported inside the functions that use them: ``import exporters`` and
``import prokt_deploy`` never import them, and a missing runtime raises :class:`BackendMissingError` naming the extra.

fp32: ``torch.export.export`` with a dynamic batch dim -> ``to_edge_transform_and_lower(partitioner=[XnnpackPartitioner()])``
-> ``to_executorch()``; the ``.buffer`` is the file. The ops XNNPACK does not take (a flatten's ``view`` between two
delegated blocks, a transformer's embedding and LayerNorm, ...) run on ExecuTorch's portable CPU kernels.

int8: PT2E. The batch-dynamic export's module goes through torchao's ``prepare_pt2e`` with ExecuTorch's
``XNNPACKQuantizer`` (``get_symmetric_quantization_config(is_per_channel=True)``: per-channel symmetric int8 weights,
per-tensor int8 activations), is calibrated on every given real calibration sample (batches of
:data:`CALIBRATION_BATCH`), ``convert_pt2e``, exported again with the same dynamic dims and lowered like fp32: XNNPACK
runs the quantized convolutions / linears as qint8 nodes.

Batches (measured, executorch 1.5.1, torch 2.13): the batch dim is exported dynamic, ``Dim("batch", max=MAX_BATCH)``
(text: batch and sequence, the sequence up to the example's length), and survives quantization and XNNPACK lowering.
ExecuTorch plans memory for the upper bound, so the bound is part of the program: a call with a larger batch is refused
by the runtime ("Attempted to resize a bounded tensor"). The predictor and the harness runner therefore run a batch
larger than the bound in chunks of the bound (validation's 256 is one call; a bigger batch is split). The bound costs no
file bytes (only the program's input/output buffers at the delegate boundaries are planned; XNNPACK sizes its own
intermediates per call). One trap, measured: traced with an example batch below 16, the XNNPACK lowering of a
convolution bounded the batch at 15 whatever ``max`` said (a 32-batch then failed at run time); traced with a batch of
16 or more the bound is ``max``. Every export is therefore traced with :data:`EXPORT_BATCH` samples (the example's,
repeated), and then run at batch 1 and 3 (text: the shapes of ``text_check_shapes``) before it is accepted.

Threads: XNNPACK runs on ExecuTorch's one process-wide threadpool. The Python runtime exposes
``portable_lib._unsafe_reset_threadpool(n)`` (experimental API) and ``_threadpool_get_thread_count()``; the count read back
after a reset equals ``n``. The runner resets it to the harness's ``threads`` in its worker process (one engine per
process) and records the count read back; the predictor resets it when ``threads`` is given (process-wide: it also
applies to any other ExecuTorch program in that process). Its default is the machine's core count.

Text models (packed (B,2,L) int64 input, see ``exporters/_text.py``) are exported through
:class:`~exporters._text.PackedTextAdapter`: two int64 inputs (input_ids, attention_mask), batch and sequence dynamic.
The ``tfm`` students export and run (fp32 and int8: the Linear layers in int8, embedding, LayerNorm and softmax in
fp32). A recurrent layer is refused: ExecuTorch has no LSTM/GRU kernel and ``torch.export`` decomposes ``aten.lstm``
into a loop unrolled over the example's sequence length, so the sequence dimension cannot stay dynamic (an unrolled
fixed-length ``bilstm`` student did export: 180 kB for a 2-layer 32-unit model whose ONNX file is ~90 kB, in 50 s;
not offered). Other unsupported ops are refused in one line naming the op.

Accuracy-aware int8 (:meth:`ExecuTorchExporter.accuracy_aware`): the fewest Conv/Linear modules kept in float that meet
the target, by the ranked search of ``exporters/accuracy_aware.py`` (XNNPACK runs a kept module as an fp32 node; each
step is a full re-export, XNNPACK lowering and validation, 2-7 s per tiny student here). int8 diagnosis (:meth:`ExecuTorchExporter.executed_graph`) reads the program: the
compute nodes of each XNNPACK delegate with their precision, and the ops left on the portable CPU kernels.
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from ._common import Artifact, ExportError, Predictor, as_batch, as_text_batch, move_into, quiet, quiet_native, require
from ._text import PackedTextAdapter, example_text_batch, is_text_input, text_check_shapes
from .registry import Exporter, register

__all__ = ["CALIBRATION_BATCH", "EXPORT_BATCH", "MAX_BATCH", "PIP_EXTRA", "ExecuTorchExporter", "ExecuTorchPredictor", "ExecuTorchRunner"]

#: What a missing runtime asks to install.
PIP_EXTRA = "'prokt-deploy[executorch]'"
#: Upper bound of the exported batch dim (the runtime plans memory for it); larger batches run in chunks of it.
MAX_BATCH = 256
#: Samples the export is traced with (>= 16: below that the XNNPACK lowering bounded the batch at 15, see above).
EXPORT_BATCH = 32
#: Calibration samples per forward pass of the prepared int8 model.
CALIBRATION_BATCH = 32

#: XNNPACK graph nodes that are compute layers (what int8 diagnosis counts).
XNN_COMPUTE = {
    "XNNConv2d",
    "XNNDepthwiseConv2d",
    "XNNConvTranspose2d",
    "XNNFullyConnected",
    "XNNBatchMatrixMultiply",
}
#: XNNPACK graph nodes that convert between precisions or layouts.
XNN_CONVERSIONS = {"XNNConvert", "XNNStaticTranspose"}
#: ExecuTorch operators that are compute layers when they run on the portable CPU kernels (outside XNNPACK).
PORTABLE_COMPUTE = ("convolution", "linear", "addmm", "mm", "bmm", "matmul")


def _require(module: str):  # module
    return require(module, PIP_EXTRA)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("executorch").split("+")[0]
    except PackageNotFoundError:  # pragma: no cover - checked by _require first
        return "?"


def et_runtime() -> str:
    """``"executorch <version>"`` (imports the runtime: a missing one raises :class:`BackendMissingError`)."""
    _require("executorch.runtime")
    return f"executorch {_version()}"


def _load_method(path: Path, threads: int | None):  # executorch.runtime.Method
    with quiet_native():
        runtime = _require("executorch.runtime")
        if threads:
            lib = _require("executorch.extension.pybindings.portable_lib")
            if lib._threadpool_get_thread_count() != int(threads):
                lib._unsafe_reset_threadpool(int(threads))
        try:
            program = runtime.Runtime.get().load_program(str(path))
            return program.load_method("forward")
        except Exception as exc:
            raise ExportError(f"ExecuTorch could not load {path}: {' '.join(str(exc).split())[:300]}") from None


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


class ExecuTorchPredictor:
    """A ``.pte`` program's ``forward`` in ``executorch.runtime``: ``predict(x) -> logits`` (float32), any batch
    (more than the program's batch bound runs in chunks of it)."""

    def __init__(self, path: Path, *, threads: int | None = None) -> None:
        self._method = _load_method(path, threads)
        meta = self._method.metadata
        self._n_inputs = meta.num_inputs()
        first = meta.input_tensor_meta(0)
        #: the exported batch bound (the program's memory plan) and per-sample shape limits
        self.max_batch = int(first.sizes()[0])
        self._sample = tuple(int(d) for d in first.sizes()[1:])
        #: True for a text model (inputs input_ids + attention_mask): predict takes packed (B,2,L) ints.
        self.is_text = self._n_inputs == 2
        self.runtime = f"executorch {_version()}"
        self.path = path

    def _inputs(self, x: np.ndarray) -> tuple[np.ndarray, ...]:
        if self.is_text:
            arr = as_text_batch(x)
            if arr.shape[2] > self._sample[0]:
                raise ExportError(f"this ExecuTorch text program takes at most {self._sample[0]} tokens, got a batch of {arr.shape[2]}")
            return (np.ascontiguousarray(arr[:, 0]), np.ascontiguousarray(arr[:, 1]))
        arr = as_batch(x)
        if tuple(arr.shape[1:]) != self._sample:
            raise ExportError(f"this ExecuTorch program takes (B,{','.join(map(str, self._sample))}) images, got shape {arr.shape}")
        return (arr,)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Run a float32 (B,C,H,W) image batch, or for a text model a packed (B,2,L) integer batch (row 0 input_ids,
        row 1 attention_mask); returns float32 (B,num_classes)."""
        inputs = self._inputs(x)
        outs = []
        for part in _chunks(len(inputs[0]), self.max_batch):
            feed = [torch.from_numpy(np.ascontiguousarray(a[part])) for a in inputs]
            try:
                (out,) = self._method.execute(feed)[:1]
            except Exception as exc:
                raise ExportError(f"ExecuTorch failed to run {self.path}: {' '.join(str(exc).split())[:300]}") from None
            outs.append(out.numpy().astype(np.float32, copy=True))
        return np.concatenate(outs) if len(outs) != 1 else outs[0]


class ExecuTorchRunner:
    """The harness's runner of ``.pte`` files: ``executorch.runtime`` (its pybindings need torch; the XNNPACK delegate
    on CPU), ExecuTorch's process-wide threadpool reset to ``threads``. Self-contained: the harness runs this class's
    source alone (in a worker process, and from a bundle on a board), so it imports its runtime in its methods and uses
    only numpy (``np``) and the harness's ``split_inputs``. A batch larger than the program's exported bound runs in
    chunks (``run``); the timed call (``bind``/``infer``) refuses one."""

    name = "executorch"
    modules = ("executorch.runtime", "torch")  # its pybindings import torch: a board without torch skips these rows
    distribution = "executorch"
    target_key = "device"
    label = "ExecuTorch"

    @classmethod
    def devices(cls) -> list[str]:
        return ["CPU"]

    @classmethod
    def target(cls, device: str, devices: list[str]) -> str | None:
        return "CPU" if device in ("CPU", "AUTO") else None

    @classmethod
    def cpu_target(cls) -> str:
        return "CPU"

    @classmethod
    def fallback(cls, device: str) -> str:
        return f"ExecuTorch (XNNPACK) has no {device} device here: ExecuTorch rows run on CPU"

    def __init__(self, spec: dict, threads: int) -> None:
        from importlib.metadata import version

        import torch
        from executorch.extension.pybindings import portable_lib
        from executorch.runtime import Runtime

        if portable_lib._threadpool_get_thread_count() != threads:
            portable_lib._unsafe_reset_threadpool(threads)
        self._torch = torch
        self._method = Runtime.get().load_program(spec["path"]).load_method("forward")
        meta = self._method.metadata
        self._n_inputs = meta.num_inputs()
        self._max_batch = int(meta.input_tensor_meta(0).sizes()[0])
        self._bound: list = []
        self.runtime = f"executorch {version('executorch').split('+')[0]}"
        self.device = "CPU"
        self.config = {
            "threads": portable_lib._threadpool_get_thread_count(),
            "backends": list(Runtime.get().backend_registry.registered_backend_names),
            "max_batch": self._max_batch,
        }

    def _tensors(self, x: np.ndarray) -> list:
        return [self._torch.from_numpy(np.ascontiguousarray(a)) for a in split_inputs(x, self._n_inputs)]  # noqa: F821 - the harness's

    def run(self, x: np.ndarray) -> np.ndarray:
        outs = [self._method.execute(self._tensors(x[i : i + self._max_batch]))[0].numpy().copy() for i in range(0, len(x), self._max_batch)]
        return outs[0] if len(outs) == 1 else np.concatenate(outs)

    def bind(self, x: np.ndarray) -> None:
        if len(x) > self._max_batch:
            raise ValueError(f"batch {len(x)} exceeds the program's exported batch bound {self._max_batch}")
        self._bound = self._tensors(x)

    def infer(self) -> None:
        self._method.execute(self._bound)


# --- export ----------------------------------------------------------------------------------------------------


def _refused(detail: str, op: str | None = None) -> ExportError:
    """The one-line refusal of a model ExecuTorch cannot export."""
    text = " ".join(detail.split())
    head = f"ExecuTorch cannot export this model: unsupported op {op}" if op else "ExecuTorch export failed"
    return ExportError(f"{head} ({text[:300]})")


_RECURRENT = {torch.nn.LSTM: "aten.lstm", torch.nn.GRU: "aten.gru", torch.nn.RNN: "aten.rnn_tanh"}


def _recurrent_op(model: torch.nn.Module) -> str | None:
    for module in model.modules():
        for cls, op in _RECURRENT.items():
            if isinstance(module, cls):
                return op
    return None


def _op_in(message: str) -> str | None:
    """The first ATen op named in an exporter's error message (``aten.foo.default``, ``aten::foo``)."""
    match = re.search(r"aten(?:\.|::)[A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)?", message)
    return match.group(0) if match else None


def _image_example(example_input: torch.Tensor) -> tuple[torch.Tensor, ...]:
    ex = example_input.detach().to(torch.float32)
    reps = -(-EXPORT_BATCH // len(ex))
    return (ex.repeat(reps, 1, 1, 1)[:EXPORT_BATCH].contiguous(),)


def _text_example(example_input: torch.Tensor) -> tuple[torch.Tensor, ...]:
    ex = example_input.detach().cpu().to(torch.int64).numpy()
    packed = torch.from_numpy(example_text_batch(ex, EXPORT_BATCH, max(3, ex.shape[2])))
    return (packed[:, 0].contiguous(), packed[:, 1].contiguous())


def _spec(model: torch.nn.Module, example_input: torch.Tensor) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...], tuple[dict, ...]]:
    """(module, example args, dynamic_shapes): image (B,C,H,W) batch dynamic; text two int64 (B,L), both dynamic."""
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    if is_text_input(example_input):
        args = _text_example(example_input)
        seq = torch.export.Dim("sequence", min=1, max=int(args[0].shape[1]))
        return PackedTextAdapter(model).eval(), args, ({0: batch, 1: seq}, {0: batch, 1: seq})
    return model, _image_example(example_input), ({0: batch},)


def _calibrate(prepared, calibration: np.ndarray, text: bool, max_len: int) -> None:  # torch.fx.GraphModule
    calib = calibration
    if text:
        if calib.shape[2] > max_len:
            if calib[:, 1, max_len:].any():
                raise ExportError(
                    f"calibration samples have real tokens beyond the example's {max_len}: pass an example as long as the longest input"
                )
            calib = calib[:, :, :max_len]
        if calib.shape[2] < 1:
            raise ExportError("calibration samples have no tokens")
    for part in _chunks(len(calib), CALIBRATION_BATCH):
        chunk = torch.from_numpy(np.ascontiguousarray(calib[part]))
        if text:
            prepared(chunk[:, 0].contiguous(), chunk[:, 1].contiguous())
        else:
            prepared(chunk)


def _lower(
    model, args, dynamic_shapes, precision: str, calibration: np.ndarray | None, text: bool, keep_float: tuple[str, ...] = ()
):  # ExecutorchProgramManager
    """The lowered program; int8 leaves the modules named in ``keep_float`` in float (accuracy-aware int8)."""
    exir = _require("executorch.exir")
    partition = _require("executorch.backends.xnnpack.partition.xnnpack_partitioner")
    ep = torch.export.export(model, args, dynamic_shapes=dynamic_shapes)
    if precision == "int8":
        assert calibration is not None
        pt2e = _require("torchao.quantization.pt2e.quantize_pt2e")
        xq = _require("executorch.backends.xnnpack.quantizer.xnnpack_quantizer")
        from .accuracy_aware import pt2e_keep_float

        quantizer = xq.XNNPACKQuantizer().set_global(xq.get_symmetric_quantization_config(is_per_channel=True))
        graph = ep.module()
        pt2e_keep_float(quantizer, graph, keep_float, xq.get_module_name_filter)
        prepared = pt2e.prepare_pt2e(graph, quantizer)
        _calibrate(prepared, calibration, text, int(args[0].shape[1]) if text else 0)
        ep = torch.export.export(pt2e.convert_pt2e(prepared), args, dynamic_shapes=dynamic_shapes)
    edge = exir.to_edge_transform_and_lower(ep, partitioner=[partition.XnnpackPartitioner()])
    return edge.to_executorch()


def _missing_kernels(program) -> list[str]:  # executorch.exir.schema.Program
    """Operators the program calls outside a delegate that this runtime has no kernel for."""
    runtime = _require("executorch.runtime")
    with quiet_native():
        known = set(runtime.Runtime.get().operator_registry.operator_names)
    names = []
    for plan in program.execution_plan:
        for op in plan.operators:
            full = f"{op.name}.{op.overload}" if op.overload else op.name
            if full not in known and op.name not in known and not op.name.startswith("executorch_prim::"):
                names.append(full)
    return names


def _check_runs(path: Path, example_input: torch.Tensor, text: bool) -> None:
    """Run the program at new shapes (image batch 1 and 3; text the ``text_check_shapes``): a bound or a fixed dim
    that the export's metadata does not show breaks here, not in the bench."""
    predictor = ExecuTorchPredictor(path, threads=None)
    sample = example_input.detach().cpu().numpy()
    if text:
        shapes = text_check_shapes(predictor._sample[0])
        batches = [example_text_batch(sample, b, n) for b, n in shapes]
    else:
        batches = [np.repeat(sample[:1], b, axis=0).astype(np.float32) for b in (1, 3)]
    for xb in batches:
        try:
            with quiet_native():
                out = predictor.predict(xb)
        except ExportError as exc:
            raise ExportError(f"the ExecuTorch program does not run at input shape {xb.shape}: {exc}") from None
        if out.shape[0] != len(xb):
            raise ExportError(f"the ExecuTorch program gave output shape {out.shape} for a batch of {len(xb)}")


def _export_pte(
    model: torch.nn.Module,
    precision: str,
    example_input: torch.Tensor,
    calibration: np.ndarray | None,
    path: Path,
    keep_float: tuple[str, ...] = (),
) -> None:
    text = is_text_input(example_input)
    recurrent = _recurrent_op(model) if text else None
    if recurrent:
        raise ExportError(
            f"ExecuTorch cannot export this model: unsupported op {recurrent} (no ExecuTorch kernel; torch.export unrolls it "
            "over a fixed sequence length, so the sequence dimension cannot stay dynamic); use onnx or openvino for it"
        )
    module, args, dynamic_shapes = _spec(model, example_input)
    with quiet_native():
        _require("executorch.exir")  # a missing runtime is BackendMissingError, before any tracing
        try:
            program = _lower(module, args, dynamic_shapes, precision, calibration, text, keep_float)
        except ExportError:
            raise
        except Exception as exc:
            message = str(exc)
            raise _refused(message.strip().splitlines()[0] if message.strip() else type(exc).__name__, _op_in(message)) from None
    missing = _missing_kernels(program.executorch_program)
    if missing:
        raise ExportError(
            f"ExecuTorch cannot export this model: unsupported op {missing[0]} (not delegated to XNNPACK and no portable kernel in "
            f"executorch {_version()}{'; also ' + ', '.join(missing[1:4]) if len(missing) > 1 else ''})"
        )
    path.write_bytes(program.buffer)
    _check_runs(path, example_input, text)


# --- int8 diagnosis: the program's delegates and the ops left on the portable kernels -------------------------


def _xnn_graphs(pte: bytes) -> list[dict]:
    """Each XNNPACK delegate's graph as JSON (its flatbuffer decoded by the ``flatc`` that ships with executorch)."""
    ser = _require("executorch.exir._serialize._program")
    fb = _require("executorch.exir._serialize._flatbuffer")
    xs = _require("executorch.backends.xnnpack.serialization")
    program = ser.deserialize_pte_binary(pte)
    program = getattr(program, "program", program)
    schema = Path(list(xs.__path__)[0]) / "schema.fbs"
    plan = program.execution_plan[0]
    graphs = []
    with tempfile.TemporaryDirectory(prefix="exporters-et-graph-") as tmp:
        for i, delegate in enumerate(plan.delegates):
            if delegate.id != "XnnpackBackend":
                graphs.append({"backend": delegate.id, "xnodes": [], "xvalues": []})
                continue
            data = bytes(program.backend_delegate_data[delegate.processed.index].data)
            if data[4:8] != b"XH00":
                raise ExportError("unexpected XNNPACK delegate header")
            offset, size = int.from_bytes(data[10:14], "little"), int.from_bytes(data[14:18], "little")
            blob = Path(tmp) / f"d{i}.bin"
            blob.write_bytes(data[offset : offset + size])
            subprocess.run(
                [fb._get_flatc_path(), "--json", "--strict-json", "--raw-binary", "-o", tmp, str(schema), "--", str(blob)],
                check=True,
                capture_output=True,
            )
            # flatc writes bare inf/nan for clamp bounds: not JSON
            text = re.sub(r"(?<![\w\"])-?(?:inf|nan)(?![\w\"])", "null", (Path(tmp) / f"d{i}.json").read_text())
            graphs.append({"backend": delegate.id, **json.loads(text)})
    operators = [f"{o.name}.{o.overload}" if o.overload else o.name for o in plan.operators]
    return [{"operators": operators}, *graphs]


def executorch_executed_graph(path: Path, *, threads: int) -> dict:
    """Compute layers of the program by precision: XNNPACK nodes (qint8 weights: int8) and compute ops left on the
    portable CPU kernels (always fp32); conversions are XNNPACK's Convert (quantize/dequantize) and layout transposes."""
    head, *graphs = _xnn_graphs(Path(path).read_bytes())
    int8, fp, conversions = 0, [], Counter()
    for d, graph in enumerate(graphs):
        values = graph.get("xvalues", [])

        def quantized(value_id: int | None, values: list = values) -> bool:
            if value_id is None or not 0 <= value_id < len(values):
                return False
            return values[value_id].get("xvalue_union_type") == "XNNQuantizedTensorValue"

        for node in graph.get("xnodes", []):
            kind, body = node.get("xnode_union_type", "?"), node.get("xnode_union", {})
            if kind in XNN_COMPUTE:
                weight = body.get("filter_id", body.get("input2_id"))
                if quantized(weight) or quantized(body.get("input1_id")):
                    int8 += 1
                else:
                    fp.append(f"xnnpack{d}/{kind}#{node.get('debug_handle', '?')} (XNNPACK, fp32)")
            elif kind in XNN_CONVERSIONS:
                conversions[kind] += 1
    portable = [op for op in head["operators"] if op.split("::")[-1].split(".")[0] in PORTABLE_COMPUTE]
    fp += [f"{op} (portable kernel, fp32)" for op in portable]
    # in an int8 program every op left on the portable kernels runs in fp32 between an XNNPACK dequantize and quantize
    between = [op for op in head["operators"] if int8 and op.split("::")[0] == "aten" and op not in portable and "sym_size" not in op]
    return {
        "runtime": "executorch",
        "int8_layers": int8,
        "float_layers": fp,
        "portable_ops": [op for op in head["operators"] if not op.startswith("executorch_prim::")],
        "float_ops_between_qdq": [f"{op} (portable kernel)" for op in between],
        "delegates": len(graphs),
        "conversions": dict(conversions),
        "threads_used": threads,
    }


@register
class ExecuTorchExporter(Exporter):
    """``executorch``: one ``<name>.pte`` (XNNPACK delegate) in fp32 or PT2E int8, run with ``executorch.runtime``."""

    name = "executorch"
    precisions = ("fp32", "int8")
    main_suffix = ".pte"
    runner = ExecuTorchRunner
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
        with tempfile.TemporaryDirectory(prefix="exporters-et-") as tmp:
            final = Path(tmp) / f"{name}.pte"
            _export_pte(model, precision, example_input, calibration, final)
            files = move_into([final], out_dir)
        return Artifact(format=self.name, precision=precision, files=files, runtime=self.runtime())

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
        """The fewest Conv/Linear modules kept in float (PT2E, ``exporters/accuracy_aware.py``) that meet the target;
        XNNPACK runs a kept module as an fp32 node."""
        from .accuracy_aware import pt2e_search

        def build(precision: str, kept: tuple[str, ...], where: Path) -> list[Path]:
            path = where / f"{name}.pte"
            _export_pte(model, precision, example_input, calibration if precision == "int8" else None, path, kept)
            return [path]

        return pt2e_search(
            self,
            model,
            example_input=example_input,
            build=build,
            validation_x=validation_x,
            validation_y=validation_y,
            target=max_accuracy_drop,
            out_dir=out_dir,
            method="ExecuTorch XNNPACKQuantizer PT2E, Conv/Linear modules kept in float, ranked by validation accuracy",
        )

    def load(self, files: list[Path], *, device: str, threads: int | None) -> Predictor:
        pte = [f for f in files if Path(f).name.endswith(self.main_suffix)]
        if len(pte) != 1:
            raise ExportError(f"an executorch artifact needs exactly one .pte file, got {[str(f) for f in files]}")
        if device.upper() not in ("CPU", "AUTO"):
            raise ExportError(f"unknown ExecuTorch device {device!r}: the XNNPACK delegate runs on 'CPU'")
        return ExecuTorchPredictor(pte[0], threads=threads)

    def runtime(self) -> str:
        return et_runtime()

    def executed_graph(self, path: Path, *, target: object, threads: int) -> dict | None:
        with quiet():
            return executorch_executed_graph(path, threads=threads)
