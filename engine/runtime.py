"""The packed runtime: ``engine.load(path) -> PackedModel`` runs a .bnn file's op list (design contract 5).

Needs only the .bnn file: it never imports ``models`` or traces anything. Every value between two ops stays in NHWC:
float tensors as C-contiguous float32 numpy arrays, bits as ``kernels.PackedActivations``. Binary convs (with their
fused epilogue) run in the packed kernels (``engine.kernels``); the float glue (pooling, branch sums, upsampling,
activations, the stems' direct conv, on AMX-BF16 tiles where the CPU has them unless ``BINPOSE_STEM_BF16=0``) runs in
the native float ops (``engine.float_ops``) on the same thread pool;
what remains for torch (1x1 convs as one GEMM, other float convs, the classifier) sees zero-copy channels-last views.

Threads: the binary kernels run on their own pool (``num_threads``, default ``BINPOSE_THREADS`` or all CPUs); torch's
intra-op pool is set to ``torch_threads`` (default 1) when a PackedModel runs. The float glue is small, and an OpenMP
pool that spins after each torch op beside the kernels' pool is exactly the oversubscription that wrecks a 2-core
machine (measured: resnet18 b1 with 2 kernel threads, 47 ms with 1 torch thread vs 459 ms with 2, same run).
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
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

# Largest float activation (bytes) one run may hold before a batch is split into chunks: about 1.5x one core's L2
# here (2 MiB); found by timing batches 1, 4 and 8 of sbpn-r18 at 128x96 and 256x192 (runs in chunks: 128x96 -> 4,
# 256x192 -> 1).
CHUNK_BYTES = 3 << 20


def stem_bf16() -> bool:
    """Whether float convs with few input channels (the stems) may run on AMX-BF16 tiles with three bf16 products
    per term (about 1e-5 relative error against FP32's 1e-7; docs/engine.md): ``BINPOSE_STEM_BF16``, default 1."""
    value = os.environ.get("BINPOSE_STEM_BF16", "1").strip().lower()
    if value not in ("0", "1", "false", "true", "no", "yes", "off", "on"):
        raise ValueError(f"BINPOSE_STEM_BF16 must be 0 or 1, got {value!r}")
    return value in ("1", "true", "yes", "on")


def _concat(parts: list[Any]) -> Any:
    """Joins per-chunk outputs of the same structure along the batch."""
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(parts)
    if isinstance(first, list):
        return [_concat([p[i] for p in parts]) for i in range(len(first))]
    return {k: _concat([p[k] for p in parts]) for k in first}


def _to_nchw(a: np.ndarray) -> torch.Tensor:
    """NCHW-shaped torch view of a float NHWC array (channels-last memory, no copy)."""
    return torch.from_numpy(a).permute(0, 3, 1, 2)


def _to_nhwc(t: torch.Tensor) -> np.ndarray:
    """C-contiguous float32 NHWC array of an NCHW-shaped tensor (no copy when it is channels-last)."""
    a = t.permute(0, 2, 3, 1).numpy()
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)


def _op_inputs(op: dict[str, Any]) -> list[str]:
    return [name for v in op["inputs"].values() for name in ([v] if isinstance(v, str) else v)]


def _names(s: Any) -> list[str]:
    """The value names in a graph output structure (a name, or lists and dicts of them)."""
    if isinstance(s, str):
        return [s]
    return [n for v in (s if isinstance(s, list) else s.values()) for n in _names(v)]


class _Compiler:
    """Turns the JSON op list into closures bound to their tensors.

    Values between ops: float tensors are C-contiguous float32 NHWC numpy arrays (2-D after a flatten), bits are
    ``kernels.PackedActivations``; torch sees a float value only inside an op that needs it, as a zero-copy view."""

    def __init__(self, bnn: BnnFile) -> None:
        self.t = bnn.tensors
        self.where = "graph"
        self.reusable: set[str] = set()  # values whose array the op reading them last (last_use) may overwrite
        self.last_use: dict[str, int] = {}
        self.index = 0  # of the op being compiled

    def arr(self, op: dict[str, Any], key: str) -> np.ndarray:
        name = op["params"].get(key)
        if name is None or name not in self.t:
            raise BnnFormatError(f"{self.where}: op {op['type']} refers to missing tensor {key!r} ({name!r})")
        return np.ascontiguousarray(self.t[name])

    def f32(self, op: dict[str, Any], key: str) -> np.ndarray:
        return np.ascontiguousarray(self.arr(op, key), dtype=np.float32).reshape(-1)

    def act(self, op: dict[str, Any]) -> kernels.PReLU | kernels.RPReLU | None:
        """The op's per-channel activation (``attrs.act``), as the native kernels take it."""
        kind = op.get("attrs", {}).get("act")
        if kind is None:
            return None
        if kind == "prelu":
            return kernels.PReLU(self.f32(op, "act.slope"))
        if kind == "rprelu":
            return kernels.RPReLU(self.f32(op, "act.gamma"), self.f32(op, "act.slope"), self.f32(op, "act.zeta"))
        raise BnnFormatError(f"{self.where}: unknown activation {kind!r}")

    def compile_all(self, ops: list[dict[str, Any]], output: Any, in_place: bool = True) -> list[tuple[str, OpFn]]:
        """Every op as (type, closure), with what the file does not spell out:

        - max-pooling, the activation that is its only use, and the packing of that activation's output (as in
          ResNet's stem) run as one pass over each pooled row (the pooled pre-activation value is never stored);
        - ``in_place``: a binary conv whose residual has no later use writes its float output into the residual's
          array instead of a fresh one (fewer bytes through the caches: 15-35% of a 56x56x64 layer's time).
        """
        uses: dict[str, int] = {}
        last: dict[str, int] = {}
        for k, op in enumerate(ops):
            for name in _op_inputs(op):
                uses[name] = uses.get(name, 0) + 1
                last[name] = k
        for name in _names(output):
            uses[name] = uses.get(name, 0) + 1
            last[name] = len(ops)
        # Only arrays an op made itself may be overwritten: not the input (it may share the caller's memory), nor a
        # flatten's input (its output may be a view of it), nor anything a later op or the output still reads.
        fresh = {n for op in ops if op["type"] != "flatten" for n in op["outputs"].values()}
        for op in reversed(ops):
            if op["type"] == "flatten":
                src, view = op["inputs"]["x"], op["outputs"]["y"]
                last[src] = max(last.get(src, 0), last.get(view, 0))
        self.reusable = fresh if in_place else set()
        self.last_use = last
        out: list[tuple[str, OpFn]] = []
        k = 0
        while k < len(ops):
            self.index = k
            op = ops[k]
            nxt = ops[k + 1] if k + 1 < len(ops) else None
            if (op["type"] == "maxpool" and nxt is not None and nxt["type"] == "act"
                    and nxt["inputs"]["x"] == op["outputs"]["y"] and uses.get(op["outputs"]["y"]) == 1):  # fmt: skip
                pack = ops[k + 2] if k + 2 < len(ops) else None
                if pack is not None and not (pack["type"] == "pack" and pack["inputs"]["x"] == nxt["outputs"]["y"]):
                    pack = None
                out.append(("maxpool+act" + ("+pack" if pack else ""), self.maxpool_act(op, nxt, pack)))
                k += 3 if pack else 2
                continue
            out.append((str(op["type"]), self.compile(op)))
            k += 1
        return out

    def compile(self, op: dict[str, Any]) -> OpFn:
        fn = getattr(self, f"op_{op['type']}", None)
        if fn is None:
            raise BnnFormatError(f"{self.where}: unknown op type {op['type']!r} (a newer binpose made this file?)")
        result: OpFn = fn(op, op["inputs"], op["outputs"], op.get("attrs", {}))
        return result

    # ------------------------------------------------------------------------------------------- binary ops
    def op_pack(self, op: dict[str, Any], i: dict[str, Any], o: dict[str, Any], a: dict[str, Any]) -> OpFn:
        thr = self.f32(op, "threshold")
        x, y = i["x"], o["y"]

        def run(env: Env) -> None:
            env[y] = kernels.pack_activations(env[x], thr)

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
        thr = self.f32(op, "next_threshold") if o.get("bits") else None
        x, res, y, bits = i["x"], i.get("residual"), o.get("y"), o.get("bits")
        reuse = res is not None and res in self.reusable and self.last_use.get(res) == self.index
        conv = kernels.BConv(weights, a["stride"], a["padding"], a["dilation"], self.f32(op, "scale"),
                             self.f32(op, "shift"), self.act(op), thr, want_float=y is not None,
                             want_bits=bits is not None)  # fmt: skip

        def run(env: Env) -> None:
            out = conv(env[x], env[res] if res is not None else None, reuse)
            if y is not None:
                env[y] = out.out
            if bits is not None:
                env[bits] = out.bits

        return run

    # ------------------------------------------------------------------------------------------- float ops
    def op_conv(self, op: dict[str, Any], i: dict[str, Any], o: dict[str, Any], a: dict[str, Any]) -> OpFn:
        wn, bn = self.arr(op, "weight"), self.arr(op, "bias")
        stride, padding, dilation, groups = tuple(a["stride"]), tuple(a["padding"]), tuple(a["dilation"]), a["groups"]
        act = self.act(op)
        x, y = i["x"], o["y"]
        # The engine's register-tiled direct conv, activation fused in its epilogue: measured in the networks, it beats
        # torch's calls for the stems and the many small 1x1 convs (bhrnet-w32 b1 t1: 10.4-12.0 -> 8.7-9.7 ms over
        # three alternating runs), and loses a little only on ResNet's bare 7x7 stem in FP32 (both near the FMA
        # ceiling); on AMX-BF16 tiles (3-channel stems, float_conv_amx.cpp; BINPOSE_STEM_BF16=0 keeps them in FP32) it
        # beats torch there too.
        direct = groups == 1 and float_ops.has_direct_conv()
        dw = float_ops.DirectConvWeights(wn, bn, bf16=stem_bf16()) if direct else None
        if dw is not None and (act is not None or wn.shape[2] * wn.shape[3] <= 9 or dw.bf16 is not None):

            def run_direct(env: Env) -> None:
                env[y] = float_ops.direct_conv2d(env[x], dw, stride, padding, dilation, act)

            return run_direct

        b = torch.from_numpy(bn)
        if wn.shape[2:] == (1, 1) and stride == (1, 1) and padding == (0, 0) and groups == 1:
            w2 = torch.from_numpy(np.ascontiguousarray(wn.reshape(wn.shape[0], wn.shape[1]).T))

            def run_gemm(env: Env) -> None:  # a 1x1 conv on NHWC memory is one GEMM: [N*H*W, C] x [C, O]
                xin: np.ndarray = env[x]
                z = torch.addmm(b, torch.from_numpy(xin).reshape(-1, xin.shape[3]), w2).numpy()
                z = z.reshape(*xin.shape[:3], -1)
                env[y] = float_ops.channel_act(z, act, out=z) if act is not None else z

            return run_gemm

        w = torch.from_numpy(wn).contiguous(memory_format=torch.channels_last)

        def run(env: Env) -> None:
            z = _to_nhwc(F.conv2d(_to_nchw(env[x]), w, b, stride, padding, dilation, groups))
            env[y] = float_ops.channel_act(z, act, out=z) if act is not None else z

        return run

    def op_act(self, op: dict[str, Any], i: dict[str, Any], o: dict[str, Any], a: dict[str, Any]) -> OpFn:
        act = self.act(op)
        if act is None:
            raise BnnFormatError(f"{self.where}: act op without an activation")
        x, y = i["x"], o["y"]

        def run(env: Env) -> None:
            env[y] = float_ops.channel_act(env[x], act)

        return run

    def op_relu(self, op: dict[str, Any], i: dict[str, Any], o: dict[str, Any], a: dict[str, Any]) -> OpFn:
        x, y = i["x"], o["y"]
        relu = float_ops.ReLU()

        def run(env: Env) -> None:
            env[y] = float_ops.channel_act(env[x], relu)

        return run

    def op_affine(self, op: dict[str, Any], i: dict[str, Any], o: dict[str, Any], a: dict[str, Any]) -> OpFn:
        s, b = self.f32(op, "scale"), self.f32(op, "shift")
        x, y = i["x"], o["y"]

        def run(env: Env) -> None:
            z = env[x] * s
            z += b
            env[y] = z

        return run

    def op_sum(self, op: dict[str, Any], i: dict[str, Any], o: dict[str, Any], a: dict[str, Any]) -> OpFn:
        xs, y = list(i["xs"]), o["y"]
        ups = list(zip(i.get("up", []), a.get("up_factors", []), strict=True))
        act = self.act(op)

        def run(env: Env) -> None:  # one native pass: same-size inputs, nearest-upsampled ones, the activation
            env[y] = float_ops.sum_upsampled([env[v] for v in xs], [(env[v], f) for v, f in ups], act)

        return run

    def op_maxpool(self, op: dict[str, Any], i: dict[str, Any], o: dict[str, Any], a: dict[str, Any]) -> OpFn:
        k, s, p, d, ceil = tuple(a["kernel"]), tuple(a["stride"]), tuple(a["padding"]), tuple(a["dilation"]), a["ceil_mode"]
        x, y = i["x"], o["y"]

        def run(env: Env) -> None:
            env[y] = float_ops.max_pool2d(env[x], k, s, p, d, ceil)

        return run

    def maxpool_act(self, pool: dict[str, Any], act_op: dict[str, Any], pack: dict[str, Any] | None) -> OpFn:
        """A maxpool op, the act op on its output and optionally the pack op on the act's output, in one native call."""
        a = pool.get("attrs", {})
        k, s, p, d, ceil = tuple(a["kernel"]), tuple(a["stride"]), tuple(a["padding"]), tuple(a["dilation"]), a["ceil_mode"]
        act = self.act(act_op)
        if act is None:
            raise BnnFormatError(f"{self.where}: act op without an activation")
        x, y = pool["inputs"]["x"], act_op["outputs"]["y"]
        if pack is None:

            def run(env: Env) -> None:
                env[y] = float_ops.max_pool2d(env[x], k, s, p, d, ceil, act)

            return run
        thr, bits = self.f32(pack, "threshold"), pack["outputs"]["y"]

        def run_pack(env: Env) -> None:
            env[y], env[bits] = float_ops.max_pool2d_pack(env[x], k, s, p, d, ceil, act, thr)

        return run_pack

    def op_avgpool(self, op: dict[str, Any], i: dict[str, Any], o: dict[str, Any], a: dict[str, Any]) -> OpFn:
        k, s, p = tuple(a["kernel"]), tuple(a["stride"]), tuple(a["padding"])
        ceil, incl = bool(a["ceil_mode"]), bool(a["count_include_pad"])
        x, y = i["x"], o["y"]

        def run(env: Env) -> None:
            env[y] = float_ops.avg_pool2d(env[x], k, s, p, ceil, incl)

        return run

    def op_adaptive_avgpool(self, op: dict[str, Any], i: dict[str, Any], o: dict[str, Any], a: dict[str, Any]) -> OpFn:
        size = tuple(a["size"])
        x, y = i["x"], o["y"]

        def run(env: Env) -> None:
            xin: np.ndarray = env[x]
            if size == (1, 1):  # global average pooling: one native window over the whole map
                env[y] = float_ops.avg_pool2d(xin, xin.shape[1:3])
            else:
                env[y] = _to_nhwc(F.adaptive_avg_pool2d(_to_nchw(xin), size))

        return run

    def op_flatten(self, op: dict[str, Any], i: dict[str, Any], o: dict[str, Any], a: dict[str, Any]) -> OpFn:
        x, y = i["x"], o["y"]

        def run(env: Env) -> None:  # torch.flatten(NCHW, 1) order: channel-major
            xin: np.ndarray = env[x]
            flat = xin if xin.shape[1] * xin.shape[2] == 1 else xin.transpose(0, 3, 1, 2)
            env[y] = np.ascontiguousarray(flat).reshape(xin.shape[0], -1)

        return run

    def op_linear(self, op: dict[str, Any], i: dict[str, Any], o: dict[str, Any], a: dict[str, Any]) -> OpFn:
        w = torch.from_numpy(self.arr(op, "weight"))
        b = torch.from_numpy(self.arr(op, "bias")) if "bias" in op["params"] else None
        x, y = i["x"], o["y"]

        def run(env: Env) -> None:
            env[y] = F.linear(torch.from_numpy(env[x]), w, b).numpy()

        return run

    def op_channel_pool(self, op: dict[str, Any], i: dict[str, Any], o: dict[str, Any], a: dict[str, Any]) -> OpFn:
        r = int(a["ratio"])
        x, y = i["x"], o["y"]

        def run(env: Env) -> None:
            xin: np.ndarray = env[x]
            n, h, w, c = xin.shape
            env[y] = xin.reshape(n, h, w, c // r, r).mean(axis=-1, dtype=np.float32)

        return run

    def op_upsample(self, op: dict[str, Any], i: dict[str, Any], o: dict[str, Any], a: dict[str, Any]) -> OpFn:
        f = int(a["factor"])
        x, y = i["x"], o["y"]

        def run(env: Env) -> None:
            env[y] = float_ops.upsample_nearest(env[x], f)

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
            self._ops: list[tuple[str, OpFn]] = _Compiler(bnn).compile_all(list(self.graph["ops"]), self._output)
            self._kept_ops: list[tuple[str, OpFn]] | None = None  # values(): no value overwritten in place
        except (KeyError, TypeError) as e:
            raise BnnFormatError(f"{path or 'bnn'}: the graph is malformed ({type(e).__name__}: {e})") from e
        self._spec: Any = None
        self._chunks: dict[tuple[int, ...], int] = {}
        self._pool: ThreadPoolExecutor | None = None  # runs a batch's images side by side (num_threads > 1)
        self._pool_threads = 0
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

    def _start(self, x: torch.Tensor) -> Env:
        """Threads set, and the environment holding the input as a float32 NHWC array."""
        self._threads()
        return {self._inputs[0]: self._check(x).permute(0, 2, 3, 1).contiguous().numpy()}

    def _structure(self, s: Any, env: Env) -> Any:
        if isinstance(s, str):
            v: np.ndarray = env[s]  # NHWC (or 2-D) float32 -> the module's NCHW contiguous tensor
            return torch.from_numpy(np.ascontiguousarray(v.transpose(0, 3, 1, 2)) if v.ndim == 4 else v)
        if isinstance(s, list):
            return [self._structure(v, env) for v in s]
        return {k: self._structure(v, env) for k, v in s.items()}

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> Any:
        """Run the network on a float32 NCHW batch. A large batch runs in chunks whose activations fit the caches
        (``chunk_size``): the kernels gain nothing from batching, and a batch whose activations spill out of L2
        runs slower per image than one image at a time (sbpn-r18 256x192, 1 thread: 16.5 vs 12.5 ms per image at
        batch 4 on the development machine). With ``num_threads`` > 1 and several images, the chunks run side by side
        on that many threads, each running its kernels alone (no per-layer synchronization)."""
        x = self._check(x)
        n = x.shape[0]
        workers = min(self.num_threads, n)
        chunk = self.chunk_size(x)
        if workers > 1:  # images side by side, one thread each: no sync per layer, one core's caches per image
            chunk = min(chunk, -(-n // workers))
        if n <= chunk:
            return self._structure(self._output, self._run(x, self._ops))
        run = lambda i: self._structure(self._output, self._run(x[i : i + chunk], self._ops))  # noqa: E731
        starts = range(0, n, chunk)
        if workers > 1:
            return _concat(list(self._executor().map(run, starts)))
        return _concat([run(i) for i in starts])

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None or self._pool_threads != self.num_threads:
            if self._pool is not None:
                self._pool.shutdown(wait=False)
            self._pool = ThreadPoolExecutor(self.num_threads, "binpose-images", kernels.set_thread_inline, (True,))
            self._pool_threads = self.num_threads
        return self._pool

    def chunk_size(self, x: torch.Tensor) -> int:
        """Images per run for inputs of this size: as many as keep the largest float activation of a run within
        ``CHUNK_BYTES`` (measured once per input size, on one image)."""
        key = tuple(int(v) for v in x.shape[1:])
        if key not in self._chunks:
            env = self._run(x[:1], self._ops)
            peak = max((v.nbytes for v in env.values() if isinstance(v, np.ndarray)), default=1)
            self._chunks[key] = max(1, CHUNK_BYTES // max(1, peak))
        return self._chunks[key]

    @torch.no_grad()
    def values(self, x: torch.Tensor) -> dict[str, Any]:
        """Run the graph and return every named value (float NHWC numpy arrays, ``PackedActivations`` bits): for
        debugging and for layer-by-layer checks. Float values are named after the fx nodes of the packed module.
        (A plain call lets some ops overwrite values nothing reads later; this run keeps every value as computed.)"""
        if self._kept_ops is None:
            self._kept_ops = _Compiler(self._bnn).compile_all(list(self.graph["ops"]), self._output, in_place=False)
        return self._run(x, self._kept_ops)

    def _run(self, x: torch.Tensor, ops: list[tuple[str, OpFn]]) -> Env:
        env = self._start(x)
        for _, fn in ops:
            fn(env)
        return env

    @torch.no_grad()
    def profile(self, x: torch.Tensor, runs: int = 10) -> list[dict[str, Any]]:
        """Per-op wall time (mean ms over ``runs`` after a warm-up) in graph order: [{index, type, ms}]."""
        total = np.zeros(len(self._ops))
        for r in range(runs + 1):
            env = self._start(x)
            for k, (_, fn) in enumerate(self._ops):
                t0 = time.perf_counter()
                fn(env)
                if r:
                    total[k] += time.perf_counter() - t0
        return [{"index": k, "type": t, "ms": float(total[k] / runs * 1e3)} for k, (t, _) in enumerate(self._ops)]

    def __repr__(self) -> str:
        return f"PackedModel({self.name!r}, ops={len(self._ops)}, bytes={self.file_bytes}, sha256={self.sha256[:12]})"


# glibc's mallopt parameters and the values keep_freed_memory sets.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_BYTES = 32 << 20  # glibc's largest on 64-bit
_TRIM_THRESHOLD_BYTES = 512 << 20
_malloc_kept: bool | None = None


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep and reuse freed large blocks in this process (``mallopt``: blocks up to 32 MiB come
    from the heap, and the heap's free top is kept up to 512 MiB); returns whether it is in effect.

    Every op returns a fresh array and the activations of a batch are megabytes each. With glibc's defaults, blocks
    over 128 KiB start out as their own mappings and the free top of the heap is given back to the kernel, so,
    depending on the history of sizes, a run could fault in every page of its activations again: sbpn-r18 at 128x96,
    batch 4, 1 thread, fell into that at times (2.9-3.0 ms per crop against 2.2-2.3; three of six fresh processes),
    and never with these settings. Called by ``load``; ``BINPOSE_MALLOC_KEEP=0`` leaves malloc as it is. The price:
    the process keeps the memory of its largest batch. Only where the C library is glibc (elsewhere: False)."""
    global _malloc_kept
    if _malloc_kept is None:
        _malloc_kept = False
        if os.environ.get("BINPOSE_MALLOC_KEEP", "1").strip() != "0" and platform.libc_ver()[0] == "glibc":
            try:
                mallopt = ctypes.CDLL(None).mallopt
            except (OSError, AttributeError):
                return False
            ok = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES) == 1
            _malloc_kept = mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES) == 1 and ok
    return _malloc_kept


def load(path: str | os.PathLike[str], num_threads: int | None = None, torch_threads: int = 1) -> PackedModel:
    """Load a .bnn file (contract 5). Raises ``BnnFormatError`` (a ValueError) if it is truncated, tampered with or of
    an unknown version, ``FileNotFoundError`` if there is no file. ``num_threads``: the binary kernels' threads;
    ``torch_threads``: torch's intra-op threads for the float glue while the model runs. Sets malloc to reuse freed
    activations (``keep_freed_memory``)."""
    model = PackedModel(read_bnn(path), str(path), num_threads, torch_threads)
    keep_freed_memory()
    return model
