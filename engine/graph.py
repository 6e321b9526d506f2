"""The traced op list and its fusion plan: an eval-mode float-simulated network -> a flat list of ops + tensors.

Used at pack time only (it imports torch.fx and ``models``); the runtime reads the resulting JSON op list and never
traces again. The network is traced with ``torch.fx`` (BinaryConv2d, RPReLU, ChannelPool and torch.nn modules as
leaves), then lowered into ops that work on named values. Two kinds of values exist:

- float values: float32 tensors kept channels-last (NHWC in memory) from the stem to the head;
- bits values: sign bits packed along channels (``engine.kernels.PackedActivations``), the input of binary convs.

Fusions (all exact up to float rounding of the folded parameters):

- binary conv + BatchNorm (+ residual add + PReLU/RPReLU) -> one ``bconv`` kernel call: ``alpha`` and BN fold into a
  per-channel scale and shift; an add tree whose leaf is the conv's BN takes the sum of the other leaves as residual;
- the next binary conv's input bits come from the same epilogue (``next_threshold``) when the float output feeds a
  binary conv, also through nearest upsampling (sgn commutes with it: bits are upsampled, not floats);
- float conv + BatchNorm (+ PReLU) -> one conv with folded weights and bias, then the activation;
- a monotone PReLU (all slopes >= 0) followed by max-pooling is swapped so the activation runs on 4x fewer pixels;
- a channel pool after a nearest upsampling runs before it (they commute), on 4x fewer pixels;
- a nearest upsampling read only by a sum (HRNet fusion) is added as a broadcast view, never materialized;
- dead float values (e.g. a float upsample whose only consumer was a binary conv) are removed.
"""

from __future__ import annotations

import logging
import operator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from engine import kernels
from models.binarizers import MLPClassifier, sgn
from models.layers import BinaryConv2d, ChannelPool, LearnableBias, RPReLU

logger = logging.getLogger(__name__)

Tensors = dict[str, np.ndarray]

__all__ = ["Plan", "build_plan", "trace"]


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, BinaryConv2d | RPReLU | ChannelPool | LearnableBias):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def trace(model: nn.Module) -> fx.GraphModule:
    """fx-trace ``model`` with the binary layers as leaves."""
    graph = _Tracer().trace(model)
    return fx.GraphModule(model, graph)


@dataclass
class Plan:
    """The lowered network: ``graph`` (JSON-able: inputs, outputs, ops) and the named tensors its ops refer to."""

    graph: dict[str, Any]
    tensors: Tensors = field(default_factory=dict)


def _f32(t: torch.Tensor | np.ndarray) -> np.ndarray:
    a = t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else t
    return np.ascontiguousarray(a, dtype=np.float32)


def _pair(v: Any) -> list[int]:
    if isinstance(v, int):
        return [v, v]
    return [int(x) for x in v]


def _bn_affine(bn: nn.BatchNorm2d) -> tuple[np.ndarray, np.ndarray]:
    """Eval-mode BN as y = a * x + b (float64)."""
    if bn.running_mean is None or bn.running_var is None:
        raise NotImplementedError("BatchNorm without running statistics cannot be folded; pack an eval-mode model")
    mean = bn.running_mean.detach().double().numpy()
    var = bn.running_var.detach().double().numpy()
    inv = 1.0 / np.sqrt(var + bn.eps)
    gamma = bn.weight.detach().double().numpy() if bn.weight is not None else np.ones_like(mean)
    beta = bn.bias.detach().double().numpy() if bn.bias is not None else np.zeros_like(mean)
    a = gamma * inv
    return a, beta - a * mean


def _channels_vec(p: torch.Tensor, channels: int) -> np.ndarray:
    v = p.detach().double().reshape(-1).numpy()
    if v.shape[0] == 1:
        v = np.repeat(v, channels)
    if v.shape[0] != channels:
        raise ValueError(f"per-channel parameter has {v.shape[0]} values for {channels} channels")
    return v


def _act_params(m: nn.Module, channels: int) -> tuple[str, dict[str, np.ndarray]]:
    if isinstance(m, nn.PReLU):
        return "prelu", {"slope": _channels_vec(m.weight, channels)}
    if isinstance(m, RPReLU):
        return "rprelu", {
            "gamma": _channels_vec(m.shift_in.bias, channels),
            "slope": _channels_vec(m.prelu.weight, channels),
            "zeta": _channels_vec(m.shift_out.bias, channels),
        }
    raise TypeError(f"not an activation: {type(m).__name__}")


@dataclass
class _Node:
    name: str
    kind: str
    args: list[str]
    module: nn.Module | None = None
    attrs: dict[str, Any] = field(default_factory=dict)


class _Lowering:
    """fx graph -> ops. Values are named by the fx node that makes them."""

    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm = gm
        self.nodes: dict[str, _Node] = {}
        self.order: list[str] = []
        self.users: dict[str, list[str]] = {}
        self.inputs: list[str] = []
        self.output: Any = None
        self.ops: list[dict[str, Any]] = []
        self.tensors: Tensors = {}
        self.channels: dict[str, int] = {}  # float value -> channels (for bits and params)
        self.absorbed: set[str] = set()
        self._read()

    # ---------------------------------------------------------------------------------------------- reading fx
    def _read(self) -> None:
        for n in self.gm.graph.nodes:
            if n.op == "placeholder":
                self.inputs.append(n.name)
                self._add(_Node(n.name, "input", []))
            elif n.op == "output":
                self.output = self._structure(n.args[0])
            elif n.op == "call_module":
                m = self.gm.get_submodule(str(n.target))
                self._add(_Node(n.name, self._module_kind(m), [self._arg(a) for a in n.args[:1]], m))
                if len(n.args) != 1 or n.kwargs:
                    raise NotImplementedError(f"module call {n.target} with {len(n.args)} args is not supported")
            elif n.op in ("call_function", "call_method"):
                self._add(self._function_node(n))
            else:
                raise NotImplementedError(f"cannot pack fx node {n.op} {n.target}")
        for name in self.order:
            for a in self.nodes[name].args:
                self.users.setdefault(a, []).append(name)
        for v in self._output_values(self.output):
            self.users.setdefault(v, []).append("<output>")

    def _structure(self, a: Any) -> Any:
        if isinstance(a, fx.Node):
            return self._resolve(a.name)
        if isinstance(a, list | tuple):
            return [self._structure(x) for x in a]
        if isinstance(a, dict):
            return {str(k): self._structure(v) for k, v in a.items()}
        raise NotImplementedError(f"unsupported output element {a!r}")

    def _output_values(self, s: Any) -> list[str]:
        if isinstance(s, str):
            return [s]
        if isinstance(s, list):
            return [v for x in s for v in self._output_values(x)]
        return [v for x in s.values() for v in self._output_values(x)]

    def _resolve(self, name: str) -> str:
        node = self.nodes[name]
        while node.kind == "identity":
            node = self.nodes[node.args[0]]
        return node.name

    def _arg(self, a: Any) -> str:
        if not isinstance(a, fx.Node):
            raise NotImplementedError(f"expected a tensor argument, got {a!r}")
        return self._resolve(a.name)

    def _add(self, node: _Node) -> None:
        self.nodes[node.name] = node
        self.order.append(node.name)

    @staticmethod
    def _module_kind(m: nn.Module) -> str:
        kinds: list[tuple[type[nn.Module], str]] = [
            (BinaryConv2d, "bconv"), (nn.Conv2d, "conv"), (nn.BatchNorm2d, "bn"), (nn.PReLU, "act"),
            (RPReLU, "act"), (nn.MaxPool2d, "maxpool"), (nn.AvgPool2d, "avgpool"),
            (nn.AdaptiveAvgPool2d, "adaptive_avgpool"), (nn.Linear, "linear"), (ChannelPool, "channel_pool"),
            (nn.Identity, "identity"), (nn.ReLU, "relu"), (nn.Flatten, "flatten"), (LearnableBias, "bias"),
        ]  # fmt: skip
        for cls, kind in kinds:
            if isinstance(m, cls):
                return kind
        raise NotImplementedError(f"cannot pack module {type(m).__name__}; the engine supports {[k for _, k in kinds]}")

    def _function_node(self, n: fx.Node) -> _Node:
        t = n.target
        if t in (operator.add, torch.add) or (n.op == "call_method" and t == "add"):
            if len(n.args) != 2 or not all(isinstance(a, fx.Node) for a in n.args) or n.kwargs:
                raise NotImplementedError(f"only tensor + tensor adds are supported, got {n.format_node()}")
            return _Node(n.name, "add", [self._arg(a) for a in n.args])
        if t is torch.flatten or (n.op == "call_method" and t == "flatten"):
            start = n.args[1] if len(n.args) > 1 else n.kwargs.get("start_dim", 0 if n.op == "call_method" else 0)
            if start != 1 or (len(n.args) > 2 and n.args[2] != -1):
                raise NotImplementedError(f"only flatten(x, 1) is supported, got {n.format_node()}")
            return _Node(n.name, "flatten", [self._arg(n.args[0])])
        if t is F.interpolate:
            mode: Any = n.kwargs.get("mode", n.args[3] if len(n.args) > 3 else "nearest")
            scale: Any = n.kwargs.get("scale_factor", n.args[2] if len(n.args) > 2 else None)
            size: Any = n.kwargs.get("size", n.args[1] if len(n.args) > 1 else None)
            if mode != "nearest" or size is not None or scale is None or float(scale) != int(scale):
                raise NotImplementedError(f"only nearest upsampling by an integer scale_factor is supported: {n}")
            return _Node(n.name, "upsample", [self._arg(n.args[0])], attrs={"factor": int(scale)})
        if t in (torch.relu, F.relu):
            return _Node(n.name, "relu", [self._arg(n.args[0])])
        raise NotImplementedError(f"cannot pack function {n.format_node()}")

    # ---------------------------------------------------------------------------------------------- helpers
    def _single_user(self, name: str) -> str | None:
        us = self.users.get(name, [])
        return us[0] if len(us) == 1 and us[0] != "<output>" else None

    def _param(self, op_index: int, key: str, value: np.ndarray | torch.Tensor) -> str:
        name = f"op{op_index}.{key}"
        arr = value if isinstance(value, np.ndarray) and value.dtype == np.uint32 else _f32(value)
        self.tensors[name] = arr
        return name

    def _emit(self, op: dict[str, Any], params: dict[str, np.ndarray | torch.Tensor] | None = None) -> dict[str, Any]:
        idx = len(self.ops)
        op.setdefault("attrs", {})
        op["params"] = {k: self._param(idx, k, v) for k, v in (params or {}).items()}
        self.ops.append(op)
        return op

    # ---------------------------------------------------------------------------------------------- lowering
    def lower(self) -> dict[str, Any]:
        self.bconv_ops: dict[str, dict[str, Any]] = {}  # bconv node name -> its op (for input bits)
        self.fused_out: dict[str, dict[str, Any]] = {}  # float value -> fused bconv op that makes it
        for name in self.order:
            if name in self.absorbed:
                continue
            node = self.nodes[name]
            getattr(self, f"_lower_{node.kind}")(node)
        self._assign_input_bits()
        self._prune()
        self._upsample_into_sums()
        self._prune()
        return {"inputs": self.inputs, "output": self.output, "ops": self.ops}

    def _lower_input(self, node: _Node) -> None:
        pass

    def _lower_identity(self, node: _Node) -> None:
        pass

    def _lower_bconv(self, node: _Node) -> None:
        chain = self._chain_after(node.name)
        last = chain[-1].name if chain else node.name
        u = self._single_user(last)
        if (not chain or chain[-1].kind == "bn") and u is not None and self.nodes[u].kind == "add":
            self.absorbed.update(c.name for c in chain)
            return  # deferred: the add tree it feeds fuses it (or lowers it plainly)
        self._fused_bconv(node, chain, residual=None, out=None)

    def _chain_after(self, bconv: str) -> list[_Node]:
        """BN and act nodes that directly follow a binary conv, each the single user of the previous."""
        chain: list[_Node] = []
        cur = bconv
        for kind in ("bn", "act"):
            u = self._single_user(cur)
            if u is None or self.nodes[u].kind != kind:
                if kind == "bn":
                    continue
                break
            chain.append(self.nodes[u])
            cur = u
        return chain

    def _fused_bconv(self, node: _Node, chain: list[_Node], residual: str | None, out: str | None,
                     act_node: _Node | None = None) -> None:
        m = node.module
        assert isinstance(m, BinaryConv2d)
        if isinstance(m.act_binarizer, MLPClassifier):
            raise NotImplementedError(
                f"{node.name}: activation binarizer mlp-classifier is not a sign function; the engine packs sign "
                "activations only (use it for weights)"
            )
        if m.padding_mode != "zeros" or isinstance(m.padding, str):
            raise NotImplementedError(f"{node.name}: only explicit zero padding is supported")
        with torch.no_grad():
            w = m.weight.detach().float()
            dims = tuple(range(1, w.dim()))
            centered = w - w.mean(dim=dims, keepdim=True)
            alpha = centered.abs().mean(dim=dims).double().numpy()
            wb = m.weight_binarizer(centered)
        if not bool(((wb == 1) | (wb == -1)).all()):
            raise ValueError(f"{node.name}: the weight binarizer did not return +-1 values in eval mode")
        bits = kernels.PackedConvWeights.from_float(wb.numpy(), groups=m.groups).bits
        scale, shift = alpha.copy(), np.zeros_like(alpha)
        for c in chain:
            if c.kind == "bn":
                assert isinstance(c.module, nn.BatchNorm2d)
                a, b = _bn_affine(c.module)
                scale, shift = scale * a, shift * a + b
        acts = [c for c in chain if c.kind == "act"]
        if act_node is not None:
            acts.append(act_node)
        cout = m.out_channels
        params: dict[str, np.ndarray | torch.Tensor] = {"weight": bits, "scale": scale, "shift": shift}
        attrs: dict[str, Any] = {
            "in_channels_per_group": m.in_channels // m.groups, "groups": m.groups,
            "stride": _pair(m.stride), "padding": _pair(m.padding), "dilation": _pair(m.dilation), "act": None,
            "source": node.name,
        }  # fmt: skip
        if acts:
            assert acts[0].module is not None
            kind, ap = _act_params(acts[0].module, cout)
            attrs["act"] = kind
            params.update({f"act.{k}": v for k, v in ap.items()})
        out_name = out or (chain[-1].name if chain else node.name)
        if act_node is not None:
            out_name = act_node.name
        ins = {"x": f"{node.args[0]}@bits:{node.name}"}
        if residual is not None:
            ins["residual"] = residual
        op = self._emit({"type": "bconv", "inputs": ins, "outputs": {"y": out_name, "bits": None}, "attrs": attrs},
                        params)
        op["_node"] = node.name
        self.bconv_ops[node.name] = op
        self.fused_out[out_name] = op
        self.channels[out_name] = cout
        for c in chain:
            self.absorbed.add(c.name)

    def _lower_bn(self, node: _Node) -> None:
        src = self.nodes[node.args[0]]
        assert isinstance(node.module, nn.BatchNorm2d)
        a, b = _bn_affine(node.module)
        self._emit({"type": "affine", "inputs": {"x": src.name}, "outputs": {"y": node.name}}, {"scale": a, "shift": b})
        self.channels[node.name] = a.shape[0]

    def _lower_conv(self, node: _Node) -> None:
        m = node.module
        assert isinstance(m, nn.Conv2d)
        if m.padding_mode != "zeros" or isinstance(m.padding, str):
            raise NotImplementedError(f"{node.name}: only explicit zero padding is supported")
        w = m.weight.detach().double().numpy()
        b = m.bias.detach().double().numpy() if m.bias is not None else np.zeros(m.out_channels)
        out = node.name
        u = self._single_user(out)
        act_params: dict[str, np.ndarray] = {}
        act = None
        if u is not None and self.nodes[u].kind == "bn":
            bn = self.nodes[u].module
            assert isinstance(bn, nn.BatchNorm2d)
            a, s = _bn_affine(bn)
            w = w * a[:, None, None, None]
            b = b * a + s
            self.absorbed.add(u)
            out = u
            u = self._single_user(out)
        if u is not None and self.nodes[u].kind == "act":
            act_module = self.nodes[u].module
            assert act_module is not None
            act, act_params = _act_params(act_module, m.out_channels)
            self.absorbed.add(u)
            out = u
        attrs = {"stride": _pair(m.stride), "padding": _pair(m.padding), "dilation": _pair(m.dilation),
                 "groups": m.groups, "act": act, "source": node.name}
        params: dict[str, Any] = {"weight": w, "bias": b, **{f"act.{k}": v for k, v in act_params.items()}}
        op = self._emit({"type": "conv", "inputs": {"x": node.args[0]}, "outputs": {"y": out}, "attrs": attrs}, params)
        self.channels[out] = m.out_channels
        # a monotone activation commutes with a following max-pool: pool first, activate 4x fewer pixels
        pool = self._single_user(out)
        if (act is not None and pool is not None and self.nodes[pool].kind == "maxpool"
                and all((v >= 0).all() for k, v in act_params.items() if k == "slope")
                and act == "prelu"):
            op["attrs"]["act"] = None
            for k in [k for k in op["params"] if k.startswith("act.")]:
                del self.tensors[op["params"].pop(k)]
            pre = f"{pool}#pre"
            self._lower_maxpool(self.nodes[pool], out=pre)
            self.absorbed.add(pool)
            self._emit({"type": "act", "inputs": {"x": pre}, "outputs": {"y": pool}, "attrs": {"act": act}},
                       {f"act.{k}": v for k, v in act_params.items()})
            self.channels[pool] = m.out_channels

    def _lower_act(self, node: _Node) -> None:
        assert node.module is not None
        m = node.module
        width = (m.weight if isinstance(m, nn.PReLU) else m.prelu.weight).numel() if isinstance(m, nn.PReLU | RPReLU) else 1
        c = width if width > 1 else self.channels.get(node.args[0])
        if c is None:
            raise NotImplementedError(f"{node.name}: activation on a value of unknown width")
        kind, ap = _act_params(node.module, c)
        self._emit({"type": "act", "inputs": {"x": node.args[0]}, "outputs": {"y": node.name}, "attrs": {"act": kind}},
                   {f"act.{k}": v for k, v in ap.items()})
        self.channels[node.name] = c

    def _lower_relu(self, node: _Node) -> None:
        self._emit({"type": "relu", "inputs": {"x": node.args[0]}, "outputs": {"y": node.name}})
        self.channels[node.name] = self.channels.get(node.args[0], 0)

    def _lower_bias(self, node: _Node) -> None:
        assert isinstance(node.module, LearnableBias)
        c = node.module.bias.numel()
        self._emit({"type": "affine", "inputs": {"x": node.args[0]}, "outputs": {"y": node.name}},
                   {"scale": np.ones(c), "shift": _channels_vec(node.module.bias, c)})
        self.channels[node.name] = c

    def _add_leaves(self, name: str) -> list[str]:
        node = self.nodes[name]
        leaves: list[str] = []
        for a in node.args:
            if self.nodes[a].kind == "add" and self._single_user(a) == name:
                leaves += self._add_leaves(a)
                self.absorbed.add(a)
            else:
                leaves.append(a)
        return leaves

    def _bconv_of(self, leaf: str) -> tuple[_Node, list[_Node]] | None:
        """If ``leaf`` is the single-use result of bconv (+ BN), return the bconv and its chain."""
        node = self.nodes[leaf]
        chain: list[_Node] = []
        if node.kind == "bn":
            prev = self.nodes[node.args[0]]
            if prev.kind != "bconv" or self._single_user(prev.name) != leaf:
                return None
            chain, node = [node], prev
        if node.kind != "bconv":
            return None
        return node, chain

    def _lower_add(self, node: _Node) -> None:
        u = self._single_user(node.name)
        if u is not None and self.nodes[u].kind == "add":
            return  # an inner node of an add tree: its root gathers the leaves
        leaves = self._add_leaves(node.name)
        act_node = self.nodes[u] if u is not None and self.nodes[u].kind == "act" else None
        out = act_node.name if act_node is not None else node.name
        candidates = [(i, f) for i, leaf in enumerate(leaves)
                      if self._single_user(leaf) is not None and (f := self._bconv_of(leaf)) is not None
                      and f[0].name not in self.bconv_ops]
        # deferred binary convs that are not fused here are lowered plainly first
        for _, (bconv, chain) in candidates[1:]:
            self._fused_bconv(bconv, chain, residual=None, out=None)
        # the fused conv comes last: the residual (sum of the other leaves) is ready before it
        for i, (bconv, chain) in candidates[:1]:
            rest = leaves[:i] + leaves[i + 1 :]
            residual = rest[0] if len(rest) == 1 else f"{node.name}#residual"
            if len(rest) > 1:
                self._emit({"type": "sum", "inputs": {"xs": rest}, "outputs": {"y": residual}, "attrs": {"act": None}})
                self.channels[residual] = self.channels.get(rest[0], 0)
            self.absorbed.add(bconv.name)
            self._fused_bconv(bconv, chain, residual=residual, out=out, act_node=act_node)
            if act_node is not None:
                self.absorbed.add(act_node.name)
            return
        c = next((self.channels[v] for v in leaves if v in self.channels), 0)
        op = self._emit({"type": "sum", "inputs": {"xs": leaves}, "outputs": {"y": out}, "attrs": {"act": None}})
        if act_node is not None and act_node.module is not None:
            kind, ap = _act_params(act_node.module, c)
            op["attrs"]["act"] = kind
            op["params"] = {f"act.{k}": self._param(len(self.ops) - 1, f"act.{k}", v) for k, v in ap.items()}
            self.absorbed.add(act_node.name)
        self.channels[out] = c

    def _lower_maxpool(self, node: _Node, out: str | None = None) -> None:
        m = node.module
        assert isinstance(m, nn.MaxPool2d)
        if m.return_indices:
            raise NotImplementedError("max-pool with indices is not supported")
        attrs = {"kernel": _pair(m.kernel_size), "stride": _pair(m.stride or m.kernel_size), "padding": _pair(m.padding),
                 "dilation": _pair(m.dilation), "ceil_mode": bool(m.ceil_mode)}
        self._emit({"type": "maxpool", "inputs": {"x": node.args[0]}, "outputs": {"y": out or node.name},
                    "attrs": attrs})
        self._inherit(node)

    def _lower_avgpool(self, node: _Node) -> None:
        m = node.module
        assert isinstance(m, nn.AvgPool2d)
        if m.divisor_override is not None:
            raise NotImplementedError("avg-pool with divisor_override is not supported")
        attrs = {"kernel": _pair(m.kernel_size), "stride": _pair(m.stride or m.kernel_size), "padding": _pair(m.padding),
                 "ceil_mode": bool(m.ceil_mode), "count_include_pad": bool(m.count_include_pad)}
        self._emit({"type": "avgpool", "inputs": {"x": node.args[0]}, "outputs": {"y": node.name}, "attrs": attrs})
        self._inherit(node)

    def _lower_adaptive_avgpool(self, node: _Node) -> None:
        m = node.module
        assert isinstance(m, nn.AdaptiveAvgPool2d)
        size = _pair(m.output_size) if m.output_size is not None else [1, 1]
        self._emit({"type": "adaptive_avgpool", "inputs": {"x": node.args[0]}, "outputs": {"y": node.name},
                    "attrs": {"size": size}})
        self._inherit(node)

    def _lower_flatten(self, node: _Node) -> None:
        self._emit({"type": "flatten", "inputs": {"x": node.args[0]}, "outputs": {"y": node.name}})

    def _lower_linear(self, node: _Node) -> None:
        m = node.module
        assert isinstance(m, nn.Linear)
        params: dict[str, Any] = {"weight": m.weight}
        if m.bias is not None:
            params["bias"] = m.bias
        self._emit({"type": "linear", "inputs": {"x": node.args[0]}, "outputs": {"y": node.name}}, params)

    def _lower_channel_pool(self, node: _Node) -> None:
        m = node.module
        assert isinstance(m, ChannelPool)
        src = self.nodes[node.args[0]]
        if src.kind == "upsample":
            # both are linear and act on different axes: pool the channels first, upsample r x fewer values
            pre = f"{node.name}#pre"
            self._emit({"type": "channel_pool", "inputs": {"x": src.args[0]}, "outputs": {"y": pre},
                        "attrs": {"ratio": int(m.ratio)}})
            self._emit({"type": "upsample", "inputs": {"x": pre}, "outputs": {"y": node.name},
                        "attrs": {"factor": src.attrs["factor"]}})
        else:
            self._emit({"type": "channel_pool", "inputs": {"x": node.args[0]}, "outputs": {"y": node.name},
                        "attrs": {"ratio": int(m.ratio)}})
        if node.args[0] in self.channels:
            self.channels[node.name] = self.channels[node.args[0]] // m.ratio

    def _lower_upsample(self, node: _Node) -> None:
        self._emit({"type": "upsample", "inputs": {"x": node.args[0]}, "outputs": {"y": node.name},
                    "attrs": {"factor": node.attrs["factor"]}})
        self._inherit(node)

    def _inherit(self, node: _Node) -> None:
        if node.args[0] in self.channels:
            self.channels[node.name] = self.channels[node.args[0]]

    # ---------------------------------------------------------------------------------------------- bits
    def _assign_input_bits(self) -> None:
        """Give every bconv its input bits: from a producer's epilogue, through bit upsampling, or a pack op."""
        new_ops: list[dict[str, Any]] = []
        made: dict[tuple[str, bytes], str] = {}  # (float value, threshold bytes) -> bits value
        producer = {v: op for op in self.ops for v in self._op_outputs(op)}
        pending: dict[int, list[dict[str, Any]]] = {}  # op index -> ops to insert before it

        def threshold_of(bconv: str) -> np.ndarray:
            m = self.nodes[bconv].module
            assert isinstance(m, BinaryConv2d)
            if m.threshold is None:
                return np.zeros(m.in_channels, dtype=np.float32)
            return _f32(m.threshold.bias.reshape(-1))

        def bits_for(value: str, thr: np.ndarray, before: int, tag: str) -> str:
            key = (value, thr.tobytes())
            if key in made:
                return made[key]
            prod = producer.get(value)
            name = f"{value}@bits:{tag}"
            if prod is not None and prod["type"] == "upsample":
                src = bits_for(prod["inputs"]["x"], thr, before, tag)
                pending.setdefault(before, []).append(
                    {"type": "upsample_bits", "inputs": {"x": src}, "outputs": {"y": name},
                     "attrs": {"factor": prod["attrs"]["factor"]}, "params": {}})
            elif prod is not None and prod["type"] == "bconv" and prod["outputs"]["bits"] is None:
                prod["outputs"]["bits"] = name
                prod["params"]["next_threshold"] = self._param(self.ops.index(prod), "next_threshold", thr)
            else:
                idx = len(self.tensors)
                tname = f"pack{idx}.threshold"
                self.tensors[tname] = thr
                pending.setdefault(before, []).append(
                    {"type": "pack", "inputs": {"x": value}, "outputs": {"y": name}, "attrs": {},
                     "params": {"threshold": tname}})
            made[key] = name
            return name

        for i, op in enumerate(self.ops):
            if op["type"] == "bconv":
                node = op["_node"]
                value = self.nodes[node].args[0]
                op["inputs"]["x"] = bits_for(value, threshold_of(node), i, node)
        for i, op in enumerate(self.ops):
            new_ops += pending.get(i, [])
            op.pop("_node", None)
            new_ops.append(op)
        self.ops = new_ops

    @staticmethod
    def _op_outputs(op: dict[str, Any]) -> list[str]:
        return [v for v in op["outputs"].values() if v is not None]

    @staticmethod
    def _op_inputs(op: dict[str, Any]) -> list[str]:
        vs: list[str] = []
        for v in op["inputs"].values():
            vs += v if isinstance(v, list) else [v]
        return vs

    def _upsample_into_sums(self) -> None:
        """A float upsampling read only by a sum is added as a broadcast view instead of being materialized."""
        producer = {v: op for op in self.ops for v in self._op_outputs(op)}
        readers: dict[str, int] = {}
        for op in self.ops:
            for v in self._op_inputs(op):
                readers[v] = readers.get(v, 0) + 1
        outputs = set(self._output_values(self.output))
        for op in self.ops:
            if op["type"] != "sum":
                continue
            full, up, factors = [], [], []
            for v in op["inputs"]["xs"]:
                prod = producer.get(v)
                if prod is not None and prod["type"] == "upsample" and readers.get(v) == 1 and v not in outputs:
                    up.append(prod["inputs"]["x"])
                    factors.append(int(prod["attrs"]["factor"]))
                else:
                    full.append(v)
            if up and full:
                op["inputs"] = {"xs": full, "up": up}
                op["attrs"]["up_factors"] = factors

    def _prune(self) -> None:
        """Drop float outputs nobody reads and ops whose outputs are all dead."""
        changed = True
        while changed:
            changed = False
            needed = set(self._output_values(self.output))
            for op in self.ops:
                needed.update(self._op_inputs(op))
            kept = []
            for op in self.ops:
                if op["type"] == "bconv" and op["outputs"]["y"] is not None and op["outputs"]["y"] not in needed:
                    if op["outputs"]["bits"] is not None:
                        op["outputs"]["y"] = None
                        changed = True
                if not any(v in needed for v in self._op_outputs(op)):
                    for t in op["params"].values():
                        self.tensors.pop(t, None)
                    changed = True
                    continue
                kept.append(op)
            self.ops = kept
        for op in self.ops:
            if op["type"] == "bconv":
                op["attrs"]["want_float"] = op["outputs"]["y"] is not None


def build_plan(model: nn.Module) -> Plan:
    """Trace an eval-mode float-simulated network and lower it into the fused op list and its tensors."""
    if model.training:
        raise ValueError("build_plan needs an eval-mode model (call model.eval())")
    with torch.no_grad():
        gm = trace(model)
        lowering = _Lowering(gm)
        graph = lowering.lower()
    n_bconv = sum(op["type"] == "bconv" for op in graph["ops"])
    logger.info("lowered %d ops (%d fused binary convs)", len(graph["ops"]), n_bconv)
    return Plan(graph=graph, tensors=lowering.tensors)


def reference_sign(x: torch.Tensor) -> torch.Tensor:
    """sgn as the models define it (re-exported for tests of the plan)."""
    return sgn(x)
