"""The packed runtime: ``engine.load(path) -> PackedModel`` runs a .bnn file's op list (design contract 5).

Needs only the .bnn file: it never imports ``models`` or traces anything. Binary convs (with their fused epilogue)
run in the packed kernels (``engine.kernels``); float ops (stem conv, 1x1 shortcut convs, pooling, upsampling,
heads) run in torch on channels-last tensors, so no layout reorder happens between a kernel and a torch op: a float
value is a torch tensor with NCHW shape and NHWC memory, and its ``permute(0, 2, 3, 1)`` is the kernels' C-contiguous
NHWC array without a copy.

Threads: the binary kernels run on their own pool (``num_threads``, default ``BINPOSE_THREADS`` or all CPUs); torch's
intra-op pool is set to ``torch_threads`` (default 1) when a PackedModel runs. The float glue is small, and an OpenMP
pool that spins after each torch op beside the kernels' pool is exactly the oversubscription that wrecks a 2-core
machine (measured: resnet18 b1 with 2 kernel threads, 47 ms with 1 torch thread vs 459 ms with 2, same run).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from engine import float_ops, kernels
from engine.pack import BnnFile, BnnFormatError, read_bnn

logger = logging.getLogger(__name__)

__all__ = ["PackedModel", "load"]

Env = dict[str, Any]
OpFn = Callable[[Env], None]


def _nhwc(t: torch.Tensor) -> np.ndarray:
    """NHWC float32 C-contiguous numpy view of an NCHW-shaped tensor (a copy only if it is not channels-last)."""
    a = t.permute(0, 2, 3, 1).numpy()
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)


def _from_nhwc(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a).permute(0, 3, 1, 2)


def _cl(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last)


class _Compiler:
    """Turns the JSON op list into closures bound to their tensors."""

    def __init__(self, bnn: BnnFile) -> None:
        self.t = bnn.tensors
        self.where = "graph"

    def arr(self, op: dict[str, Any], key: str) -> np.ndarray:
        name = op["params"].get(key)
        if name is None or name not in self.t:
            raise BnnFormatError(f"{self.where}: op {op['type']} refers to missing tensor {key!r} ({name!r})")
        return np.ascontiguousarray(self.t[name])

    def vec(self, op: dict[str, Any], key: str) -> torch.Tensor:
        return torch.from_numpy(self.arr(op, key).astype(np.float32)).reshape(1, -1, 1, 1)

    def act(self, op: dict[str, Any]) -> kernels.PReLU | kernels.RPReLU | None:
        """The op's per-channel activation (``attrs.act``), as the native kernels take it."""
        kind = op.get("attrs", {}).get("act")
        if kind is None:
            return None
        f32 = lambda key: self.arr(op, key).astype(np.float32).reshape(-1)  # noqa: E731
        if kind == "prelu":
            return kernels.PReLU(f32("act.slope"))
        if kind == "rprelu":
            return kernels.RPReLU(f32("act.gamma"), f32("act.slope"), f32("act.zeta"))
        raise BnnFormatError(f"{self.where}: unknown activation {kind!r}")

    def compile(self, op: dict[str, Any]) -> OpFn:
        fn = getattr(self, f"op_{op['type']}", None)
        if fn is None:
            raise BnnFormatError(f"{self.where}: unknown op type {op['type']!r} (a newer binpose made this file?)")
        result: OpFn = fn(op, op["inputs"], op["outputs"], op.get("attrs", {}))
        return result

    # ------------------------------------------------------------------------------------------- binary ops
    def op_pack(self, op: dict[str, Any], i: dict[str, Any], o: dict[str, Any], a: dict[str, Any]) -> OpFn:
        thr = self.arr(op, "threshold").astype(np.float32)
        x, y = i["x"], o["y"]

        def run(env: Env) -> None:
            env[y] = kernels.pack_activations(_nhwc(env[x]), thr)

        return run

    def op_upsample_bits(self, op: dict[str, Any], i: dict[str, Any], o: dict[str, Any], a: dict[str, Any]) -> OpFn:
        f, x, y = int(a["factor"]), i["x"], o["y"]

        def run(env: Env) -> None:
            p: kernels.PackedActivations = env[x]
            n, h, w, words = p.bits.shape
            b = np.broadcast_to(p.bits[:, :, None, :, None, :], (n, h, f, w, f, words))
            env[y] = kernels.PackedActivations(np.ascontiguousarray(b).reshape(n, h * f, w * f, words), p.channels)

        return run

    def op_bconv(self, op: dict[str, Any], i: dict[str, Any], o: dict[str, Any], a: dict[str, Any]) -> OpFn:
        weights = kernels.PackedConvWeights(self.arr(op, "weight"), int(a["in_channels_per_group"]), int(a["groups"]))
        scale = self.arr(op, "scale").astype(np.float32)
        shift = self.arr(op, "shift").astype(np.float32)
        act = self.act(op)
        thr = self.arr(op, "next_threshold") if o.get("bits") else None
        x, res, y, bits = i["x"], i.get("residual"), o.get("y"), o.get("bits")
        conv = kernels.BConv(weights, a["stride"], a["padding"], a["dilation"], scale, shift, act, thr,
                             want_float=y is not None, want_bits=bits is not None)  # fmt: skip

        def run(env: Env) -> None:
            out = conv(env[x], _nhwc(env[res]) if res is not None else None)
            if y is not None:
                assert out.out is not None
                env[y] = _from_nhwc(out.out)
            if bits is not None:
                env[bits] = out.bits

        return run

    # ------------------------------------------------------------------------------------------- float ops
    def op_conv(self, op: dict[str, Any], i: dict[str, Any], o: dict[str, Any], a: dict[str, Any]) -> OpFn:
        w = _cl(torch.from_numpy(self.arr(op, "weight")))
        b = torch.from_numpy(self.arr(op, "bias"))
        stride, padding, dilation, groups = tuple(a["stride"]), tuple(a["padding"]), tuple(a["dilation"]), a["groups"]
        act = self.act(op)
        x, y = i["x"], o["y"]
        one_by_one = w.shape[2:] == (1, 1) and stride == (1, 1) and padding == (0, 0) and groups == 1
        w2 = w.reshape(w.shape[0], w.shape[1]).t().contiguous() if one_by_one else w
        # Stems (few input channels): the engine's register-tiled direct conv with the activation fused in its
        # epilogue. Against torch's channels-last conv it wins when there is an activation to fuse or the kernel is
        # small, and loses a little on ResNet's bare 7x7 stem (both near the FMA ceiling there).
        small = act is not None or w.shape[2] * w.shape[3] <= 9
        if groups == 1 and w.shape[1] <= 4 and float_ops.has_direct_conv() and small:
            dw = float_ops.DirectConvWeights(self.arr(op, "weight"), self.arr(op, "bias"))

            def run_direct(env: Env) -> None:
                xin = np.ascontiguousarray(env[x].permute(0, 2, 3, 1).contiguous().numpy())
                env[y] = _from_nhwc(float_ops.direct_conv2d(xin, dw, stride, padding, dilation, act))

            return run_direct

        def run(env: Env) -> None:
            xin: torch.Tensor = env[x]
            if one_by_one:  # a 1x1 conv on NHWC memory is one GEMM: [N*H*W, C] x [C, O]
                n, c, h, wd = xin.shape
                out = torch.addmm(b, _cl(xin).permute(0, 2, 3, 1).reshape(-1, c), w2)
                z = out.reshape(n, h, wd, -1).permute(0, 3, 1, 2)
            else:
                z = F.conv2d(_cl(xin), w, b, stride, padding, dilation, groups)
            if act is not None:  # in place on the conv's own fresh output
                za = _nhwc(z)
                z = _from_nhwc(float_ops.channel_act(za, act, out=za))
            env[y] = z

        return run

    def op_act(self, op: dict[str, Any], i: dict[str, Any], o: dict[str, Any], a: dict[str, Any]) -> OpFn:
        act = self.act(op)
        if act is None:
            raise BnnFormatError(f"{self.where}: act op without an activation")
        x, y = i["x"], o["y"]

        def run(env: Env) -> None:
            env[y] = _from_nhwc(float_ops.channel_act(_nhwc(env[x]), act))

        return run

    def op_relu(self, op: dict[str, Any], i: dict[str, Any], o: dict[str, Any], a: dict[str, Any]) -> OpFn:
        x, y = i["x"], o["y"]

        relu = float_ops.ReLU()

        def run(env: Env) -> None:
            env[y] = _from_nhwc(float_ops.channel_act(_nhwc(env[x]), relu))

        return run

    def op_affine(self, op: dict[str, Any], i: dict[str, Any], o: dict[str, Any], a: dict[str, Any]) -> OpFn:
        s, b = self.vec(op, "scale"), self.vec(op, "shift")
        x, y = i["x"], o["y"]

        def run(env: Env) -> None:
            env[y] = torch.addcmul(b, env[x], s)

        return run

    def op_sum(self, op: dict[str, Any], i: dict[str, Any], o: dict[str, Any], a: dict[str, Any]) -> OpFn:
        xs, y = list(i["xs"]), o["y"]
        ups = list(zip(i.get("up", []), a.get("up_factors", []), strict=True))
        act = self.act(op)

        def run(env: Env) -> None:  # one native pass: same-size inputs, nearest-upsampled ones, the activation
            lows = [(_nhwc(env[v]), f) for v, f in ups]
            env[y] = _from_nhwc(float_ops.sum_upsampled([_nhwc(env[v]) for v in xs], lows, act))

        return run

    def op_maxpool(self, op: dict[str, Any], i: dict[str, Any], o: dict[str, Any], a: dict[str, Any]) -> OpFn:
        k, s, p, d, ceil = tuple(a["kernel"]), tuple(a["stride"]), tuple(a["padding"]), tuple(a["dilation"]), a["ceil_mode"]
        x, y = i["x"], o["y"]

        def run(env: Env) -> None:
            env[y] = _from_nhwc(float_ops.max_pool2d(_nhwc(env[x]), k, s, p, d, ceil))

        return run

    def op_avgpool(self, op: dict[str, Any], i: dict[str, Any], o: dict[str, Any], a: dict[str, Any]) -> OpFn:
        k, s, p = tuple(a["kernel"]), tuple(a["stride"]), tuple(a["padding"])
        ceil, incl = bool(a["ceil_mode"]), bool(a["count_include_pad"])
        x, y = i["x"], o["y"]

        def run(env: Env) -> None:
            env[y] = _from_nhwc(float_ops.avg_pool2d(_nhwc(env[x]), k, s, p, ceil, incl))

        return run

    def op_adaptive_avgpool(self, op: dict[str, Any], i: dict[str, Any], o: dict[str, Any], a: dict[str, Any]) -> OpFn:
        size = tuple(a["size"])
        x, y = i["x"], o["y"]

        def run(env: Env) -> None:
            xin: torch.Tensor = env[x]
            env[y] = xin.mean((2, 3), keepdim=True) if size == (1, 1) else F.adaptive_avg_pool2d(xin, size)

        return run

    def op_flatten(self, op: dict[str, Any], i: dict[str, Any], o: dict[str, Any], a: dict[str, Any]) -> OpFn:
        x, y = i["x"], o["y"]

        def run(env: Env) -> None:
            env[y] = torch.flatten(env[x], 1)

        return run

    def op_linear(self, op: dict[str, Any], i: dict[str, Any], o: dict[str, Any], a: dict[str, Any]) -> OpFn:
        w = torch.from_numpy(self.arr(op, "weight"))
        b = torch.from_numpy(self.arr(op, "bias")) if "bias" in op["params"] else None
        x, y = i["x"], o["y"]

        def run(env: Env) -> None:
            env[y] = F.linear(env[x], w, b)

        return run

    def op_channel_pool(self, op: dict[str, Any], i: dict[str, Any], o: dict[str, Any], a: dict[str, Any]) -> OpFn:
        r = int(a["ratio"])
        x, y = i["x"], o["y"]

        def run(env: Env) -> None:
            xin: torch.Tensor = env[x]
            n, c, h, w = xin.shape
            env[y] = _cl(xin).permute(0, 2, 3, 1).reshape(n, h, w, c // r, r).mean(-1).permute(0, 3, 1, 2)

        return run

    def op_upsample(self, op: dict[str, Any], i: dict[str, Any], o: dict[str, Any], a: dict[str, Any]) -> OpFn:
        f = int(a["factor"])
        x, y = i["x"], o["y"]

        def run(env: Env) -> None:
            env[y] = _from_nhwc(float_ops.upsample_nearest(_nhwc(env[x]), f))

        return run


class PackedModel:
    """A .bnn network ready to run. Call it on a float32 NCHW tensor (any batch); it returns what the float-simulated
    module returns in eval mode (same structure, values equal up to float rounding of the folded parameters)."""

    def __init__(
        self, bnn: BnnFile, path: str | None = None, num_threads: int | None = None, torch_threads: int = 1
    ) -> None:
        self.path = path
        self._bnn = bnn
        self.graph = bnn.graph
        self.spec_dict: dict[str, Any] = bnn.spec
        self.complexity: dict[str, Any] = bnn.complexity
        self.provenance: dict[str, Any] = bnn.provenance
        self.sha256: str = bnn.sha256
        self.payload_sha256: str = bnn.payload_sha256
        self.file_bytes: int = bnn.file_bytes
        self.format_version: int = bnn.format_version
        self.num_threads = int(num_threads or os.environ.get("BINPOSE_THREADS") or kernels.get_num_threads())
        self.torch_threads = int(torch_threads)
        try:
            self._inputs: list[str] = list(self.graph["inputs"])
            self._output: Any = self.graph["output"]
            ops = list(self.graph["ops"])
            compiler = _Compiler(bnn)
            self._ops: list[tuple[str, OpFn]] = [(str(op["type"]), compiler.compile(op)) for op in ops]
        except (KeyError, TypeError) as e:
            raise BnnFormatError(f"{path or 'bnn'}: the graph is malformed ({type(e).__name__}: {e})") from e
        self._spec: Any = None
        logger.info("loaded %s: %s, %d ops, %d bytes", path, self.spec_dict.get("name"), len(self._ops), self.file_bytes)

    @property
    def spec(self) -> Any:
        """The model's ``models.spec.ModelSpec`` (imported lazily: only the metadata dataclass, never a network)."""
        if self._spec is None:
            from models.spec import ModelSpec

            self._spec = ModelSpec.from_dict(self.spec_dict)
        return self._spec

    @property
    def name(self) -> str:
        return str(self.spec_dict.get("name", ""))

    def _threads(self) -> None:
        if kernels.get_num_threads() != self.num_threads:
            kernels.set_num_threads(self.num_threads)
        if torch.get_num_threads() != self.torch_threads:
            torch.set_num_threads(self.torch_threads)

    def _check(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"PackedModel expects a torch.Tensor, got {type(x).__name__}")
        c = int(self.spec_dict.get("in_chans", x.shape[1] if x.dim() == 4 else 0))
        if x.dim() != 4 or x.shape[1] != c:
            raise ValueError(f"PackedModel {self.name}: expected float32 NCHW input with {c} channels, got {tuple(x.shape)}")
        return x.detach().to("cpu", torch.float32)

    def _structure(self, s: Any, env: Env) -> Any:
        if isinstance(s, str):
            return env[s].contiguous()
        if isinstance(s, list):
            return [self._structure(v, env) for v in s]
        return {k: self._structure(v, env) for k, v in s.items()}

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> Any:
        return self._structure(self._output, self.values(x))

    @torch.no_grad()
    def values(self, x: torch.Tensor) -> dict[str, Any]:
        """Run the graph and return every named value (float tensors, ``PackedActivations`` bits): for debugging and
        for layer-by-layer checks. Float values are named after the fx nodes of the packed module."""
        self._threads()
        env: Env = {self._inputs[0]: self._check(x)}
        for _, fn in self._ops:
            fn(env)
        return env

    @torch.no_grad()
    def profile(self, x: torch.Tensor, runs: int = 10) -> list[dict[str, Any]]:
        """Per-op wall time (mean ms over ``runs`` after a warm-up) in graph order: [{index, type, ms}]."""
        self._threads()
        total = np.zeros(len(self._ops))
        for r in range(runs + 1):
            env: Env = {self._inputs[0]: self._check(x)}
            for k, (_, fn) in enumerate(self._ops):
                t0 = time.perf_counter()
                fn(env)
                if r:
                    total[k] += time.perf_counter() - t0
        return [{"index": k, "type": t, "ms": float(total[k] / runs * 1e3)} for k, (t, _) in enumerate(self._ops)]

    def __repr__(self) -> str:
        return f"PackedModel({self.name!r}, ops={len(self._ops)}, bytes={self.file_bytes}, sha256={self.sha256[:12]})"


def load(path: str | os.PathLike[str], num_threads: int | None = None, torch_threads: int = 1) -> PackedModel:
    """Load a .bnn file (contract 5). Raises ``BnnFormatError`` (a ValueError) if it is truncated, tampered with or of
    an unknown version, ``FileNotFoundError`` if there is no file. ``num_threads``: the binary kernels' threads;
    ``torch_threads``: torch's intra-op threads for the float glue while the model runs."""
    return PackedModel(read_bnn(path), str(path), num_threads, torch_threads)
