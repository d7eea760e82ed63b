"""Peak activation memory (RAM) of a model's deployed graph at batch 1: what a microcontroller's tensor arena must hold.

The rule (an arena planner's view, without fragmentation or alignment): walk the model's operations in execution order
(``torch.fx`` trace of the module); each operation's output tensor is allocated when it runs and freed after its last
reader ran; the model's input is live until its last reader. The figure is the largest sum of live tensors at any
operation, counting the operation's inputs and its output together (a runtime cannot overwrite an input while
computing from it). Elements cost the deploy precision's bytes (int8: 1, fp16: 2, fp32: 4); weights are not counted
(they are read from flash). Operations a deployed graph fuses into the producer or runs in place allocate nothing:
BatchNorm (folded into the conv), activations (fused), dropout, and views (flatten, reshape, squeeze, ...), whose
output aliases their input and extends its life. A residual ``add`` allocates its output (in-place adds exist in some
runtimes; not assumed).

None when the model cannot be traced (external or scripted teachers, text models whose forward branches on data):
the plan then shows no RAM figure and a RAM budget does not filter that candidate.

Compared with a runtime: none installed here reports its arena use (TFLite Micro's ``arena_used_bytes()`` is a C++ API
on the device; the LiteRT Python interpreter, ONNX Runtime and OpenVINO expose no peak-activation figure), so the rule is
checked by hand on small graphs (tests/test_ram_budget.py) and is a lower bound of what an arena planner achieves.
"""

from __future__ import annotations

import operator

import torch
from torch import nn
from torch.fx import GraphModule, Node
from torch.fx.passes.shape_prop import ShapeProp

#: modules a deployed graph fuses into the producing conv/linear or runs in place: no new tensor
_IN_PLACE_MODULES = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.ReLU,
    nn.ReLU6,
    nn.GELU,
    nn.SiLU,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Sigmoid,
    nn.Tanh,
    nn.LeakyReLU,
    nn.Dropout,
    nn.Identity,
    nn.Flatten,
)
_IN_PLACE_FUNCTIONS = {torch.relu, torch.nn.functional.relu, torch.nn.functional.relu6, torch.flatten, torch.squeeze, torch.reshape}
_IN_PLACE_METHODS = {"relu", "relu_", "flatten", "view", "reshape", "squeeze", "unsqueeze", "contiguous"}


def _aliases(gm: GraphModule, node: Node) -> bool:
    """Whether ``node``'s output is its first input's storage in a deployed graph (fused or in place)."""
    if node.op == "call_module":
        return isinstance(gm.get_submodule(str(node.target)), _IN_PLACE_MODULES)
    if node.op == "call_function":
        return node.target in _IN_PLACE_FUNCTIONS
    if node.op == "call_method":
        return node.target in _IN_PLACE_METHODS
    return False


def _numel(node: Node) -> int:
    meta = node.meta.get("tensor_meta")
    if meta is None or not hasattr(meta, "shape"):
        return 0  # not a tensor (shapes, sizes, tuples of them)
    n = 1
    for s in meta.shape:
        n *= int(s)
    return n


def peak_activation_bytes(model: nn.Module, example: torch.Tensor, bytes_per_element: int) -> int | None:
    """The peak of live activation bytes over ``model``'s execution order on ``example`` (batch 1; see the module
    docstring for the rule), or None when the model cannot be traced."""
    try:
        gm = torch.fx.symbolic_trace(model)
        was_training = gm.training
        gm.eval()
        with torch.no_grad():
            ShapeProp(gm).propagate(example[:1])
        gm.train(was_training)
    except Exception:  # noqa: BLE001 - tracing fails in many ways for models that branch on data; the figure is optional
        return None
    nodes = list(gm.graph.nodes)
    order = {n: i for i, n in enumerate(nodes)}
    storage: dict[Node, Node] = {}  # node -> the node that allocated its tensor
    for n in nodes:
        src = n.args[0] if n.args and isinstance(n.args[0], Node) else None
        storage[n] = storage[src] if src is not None and _aliases(gm, n) else n
    last_read: dict[Node, int] = {}
    for n in nodes:
        for user in n.users:
            owner = storage[n]
            last_read[owner] = max(last_read.get(owner, -1), order[user])
    live: dict[Node, int] = {}
    peak = 0
    for i, n in enumerate(nodes):
        if n.op == "output":
            break
        if storage[n] is n and n.op != "get_attr" and not (n.op == "call_function" and n.target is operator.getitem):
            live[n] = _numel(n) * bytes_per_element
        peak = max(peak, sum(live.values()))
        for owner in [o for o in live if last_read.get(o, len(nodes)) <= i]:
            del live[owner]
    return peak
