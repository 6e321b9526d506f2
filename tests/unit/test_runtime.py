"""PackedModel (engine.load) against the float-simulated module in eval mode, for every registered model.

How the comparison stays honest and robust
------------------------------------------
The binary parts are exact; only the folded float math (alpha x BN into one scale/shift, BN folded into float convs)
rounds differently, by ~1e-7 relative. That is harmless except at a *tie*: a pre-activation ``x + t`` within rounding
distance of 0 may binarize to +1 in one implementation and -1 in the other, and a flipped bit changes the next conv's
output by 2 * scale, which cascades (one flip in a low-resolution HRNet branch changed 47% of the heatmap). Random
inputs of full-size networks hit a few such ties.

So the reference is the float-simulated module run op by op (torch.fx Interpreter over the real modules: BN, PReLU,
RPReLU, pooling, ...), with each BinaryConv2d computed as its forward does, ``conv2d(sgn(x + t), alpha * B(w_c))``,
with one twist: where ``|x + t| < EPS`` (a tie within float noise) the sign is taken from the runtime's packed input
bits. Everywhere else the runtime's bits must equal the reference's signs EXACTLY, the number of ties must be tiny,
and the final outputs must agree to float rounding. A real bug (a wrong threshold, scale, padding, residual, slope,
bit order or layout) shows up as a sign mismatch far from 0 or as an output mismatch; a tie cannot fail the test.
A plain end-to-end check (no tie handling at all) runs on a small model where no tie occurs.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F

import engine
import models
from engine.graph import trace
from engine.pack import pack_model
from models.binarizers import sgn
from models.layers import BinaryConv2d, LearnableBias

EPS = 1e-3  # |x + t| below this is a tie: float noise of the folded math is ~1e-5 at most here

# small but architecture-preserving overrides keep the suite fast; resnet18 also runs at full size below
SMALL: dict[str, dict[str, Any]] = {
    "resnet18": {"input_size": 64},
    "resnet34": {"input_size": 64, "num_classes": 100},
    "resnet18-small": {"width": 16, "weight_binarizer": "mlp-classifier"},  # learned weight classifier, not sgn
    "sbpn-r18": {"input_size": (64, 64), "head_width": 64},
    "sbpn-r34": {"input_size": (64, 32), "head_width": 128},
    "bhrnet-w18": {"input_size": (64, 64)},
    "bhrnet-w32": {"input_size": (64, 32), "modules": (1, 1, 1)},
}


def randomize(model: torch.nn.Module, seed: int, negative_slopes: bool = True) -> torch.nn.Module:
    """Non-trivial eval-mode state: BN statistics and affine, PReLU/RPReLU slopes and shifts, thresholds."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                c = m.num_features
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(c, generator=g) * 2 + 0.3)
                m.weight.copy_(torch.randn(c, generator=g) * 0.5 + 1)
                m.bias.copy_(torch.randn(c, generator=g) * 0.5)
            elif isinstance(m, torch.nn.PReLU):
                lo = -0.25 if negative_slopes else 0.0
                m.weight.copy_(lo + torch.rand(m.weight.shape, generator=g) * (0.5 - lo))
            elif isinstance(m, LearnableBias):
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.3)
    return model.eval()


def _runtime_signs(values: dict[str, Any], name: str) -> torch.Tensor:
    """+-1 NCHW tensor of the packed bits the runtime fed a binary conv."""
    return torch.from_numpy(values[name].unpack()).permute(0, 3, 1, 2)


def tie_aware_reference(model: torch.nn.Module, x: torch.Tensor, pm: engine.runtime.PackedModel) -> tuple[Any, dict]:
    """The float-simulated forward op by op, ties resolved as the runtime did (module docstring)."""
    values = pm.values(x)
    bits_of = {op["attrs"]["source"]: op["inputs"]["x"] for op in pm.graph["ops"] if op["type"] == "bconv"}
    stats = {"convs": 0, "signs": 0, "ties": 0, "far_mismatches": 0, "ties_flipped": 0}
    gm = trace(model)

    class Reference(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            if n.op == "call_module":
                m = self.fetch_attr(str(n.target))
                if isinstance(m, BinaryConv2d):
                    (inp,) = self.map_nodes_to_values(n.args, n)
                    pre = inp + m.threshold.bias if m.threshold is not None else inp
                    signs = sgn(pre)
                    rt = _runtime_signs(values, bits_of[n.name])
                    tie = pre.abs() < EPS
                    stats["convs"] += 1
                    stats["signs"] += signs.numel()
                    stats["ties"] += int(tie.sum())
                    stats["ties_flipped"] += int((tie & (rt != signs)).sum())
                    stats["far_mismatches"] += int((~tie & (rt != signs)).sum())
                    signs = torch.where(tie, rt, signs)
                    return F.conv2d(signs, m.binary_weight(), None, m.stride, m.padding, m.dilation, m.groups)
            return super().run_node(n)

    with torch.no_grad():
        out = Reference(gm).run(x)
    return out, stats


def _check_against_reference(model: torch.nn.Module, pm: engine.runtime.PackedModel, x: torch.Tensor) -> None:
    ref, stats = tie_aware_reference(model, x, pm)
    assert stats["convs"] == sum(isinstance(m, BinaryConv2d) for m in model.modules())
    assert stats["far_mismatches"] == 0, f"packed input bits differ from sgn(x + t) away from ties: {stats}"
    assert stats["ties"] <= 0.01 * stats["signs"], f"implausibly many near-zero pre-activations: {stats}"
    out = pm(x)
    assert isinstance(out, torch.Tensor) and out.shape == ref.shape and out.dtype == torch.float32
    scale = float(ref.abs().mean()) + 1e-6
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.parametrize("name", models.list_models())
def test_packed_model_matches_float_simulated_module(name: str, tmp_path: Path) -> None:
    model = randomize(models.build(name, **SMALL.get(name, {})), seed=len(name))
    path = pack_model(model, tmp_path / f"{name}.bnn")
    pm = engine.load(path)
    h, w = model.spec.input_size
    x = torch.randn(2, model.spec.in_chans, h, w, generator=torch.Generator().manual_seed(7))
    _check_against_reference(model, pm, x)
    # batch independence: a single image gives the same result as its row of the batch
    torch.testing.assert_close(pm(x[1:2]), pm(x)[1:2], rtol=1e-5, atol=1e-5)


def test_full_size_resnet18_with_monotone_prelu(tmp_path: Path) -> None:
    """224x224, non-negative PReLU slopes: exercises the stem's max-pool / PReLU swap at full size."""
    model = randomize(models.build("resnet18"), seed=3, negative_slopes=False)
    pm = engine.load(pack_model(model, tmp_path / "r18.bnn"))
    assert [op["type"] for op in pm.graph["ops"][:3]] == ["conv", "maxpool", "act"]
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    _check_against_reference(model, pm, x)


def test_end_to_end_without_tie_handling(tmp_path: Path) -> None:
    """The contract as a user sees it: engine.load(path)(x) == module(x), no help from the runtime's bits."""
    model = randomize(models.build("resnet18-small", width=16), seed=11)
    pm = engine.load(pack_model(model, tmp_path / "small.bnn"))
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = model(x)
    torch.testing.assert_close(pm(x), ref, rtol=1e-4, atol=1e-5)
    assert pm.spec == model.spec
    assert pm.complexity["bops"] > 0 and pm.file_bytes == path_size(tmp_path / "small.bnn")


def path_size(p: Path) -> int:
    return p.stat().st_size


@pytest.mark.parametrize("threads", [1, 2])
def test_thread_counts_agree(tmp_path: Path, threads: int) -> None:
    model = randomize(models.build("sbpn-r18", input_size=(64, 64), head_width=64), seed=2)
    path = pack_model(model, tmp_path / "s.bnn")
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(3))  # 2 threads: images side by side
    a = engine.load(path, num_threads=threads)(x)
    b = engine.load(path, num_threads=1)(x)
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_batches_run_in_chunks_give_the_module_outputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch split into cache-sized chunks (here forced to 2 images) returns what the float module returns."""
    model = randomize(models.build("sbpn-r18", input_size=(64, 32), head_width=64), seed=6)
    x = torch.randn(5, 3, 64, 32, generator=torch.Generator().manual_seed(8))
    pm = engine.load(pack_model(model, tmp_path / "s.bnn"))
    peak = max(v.nbytes for v in pm.values(x[:1]).values() if hasattr(v, "nbytes") and not hasattr(v, "channels"))
    monkeypatch.setattr(engine.runtime, "CHUNK_BYTES", 2 * peak)
    assert pm.chunk_size(x) == 2
    ref, _ = tie_aware_reference(model, x, pm)
    torch.testing.assert_close(pm(x), ref, rtol=1e-4, atol=1e-4)


def test_runtime_needs_only_the_file(tmp_path: Path) -> None:
    """Loading and running a .bnn imports neither models/ nor torch.fx tracing (a fresh interpreter)."""
    model = randomize(models.build("resnet18-small", width=16), seed=4)
    path = pack_model(model, tmp_path / "m.bnn")
    code = (
        "import sys, torch, engine\n"
        f"m = engine.load({str(path)!r})\n"
        "y = m(torch.zeros(1, 3, 32, 32))\n"
        "assert y.shape == (1, 10), y.shape\n"
        "bad = [k for k in sys.modules if k == 'models' or k.startswith('models.') or k == 'engine.graph']\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])


def test_bad_input_is_a_clear_error(tmp_path: Path) -> None:
    pm = engine.load(pack_model(randomize(models.build("resnet18-small", width=16), 1), tmp_path / "m.bnn"))
    with pytest.raises(ValueError, match="3 channels"):
        pm(torch.zeros(1, 1, 32, 32))


def test_profile_lists_every_op(tmp_path: Path) -> None:
    pm = engine.load(pack_model(randomize(models.build("resnet18-small", width=16), 1), tmp_path / "m.bnn"))
    prof = pm.profile(torch.zeros(1, 3, 32, 32), runs=2)
    assert "+".join(p["type"] for p in prof).split("+") == [op["type"] for op in pm.graph["ops"]]  # fused: "a+b"
    assert all(p["ms"] >= 0 for p in prof)


def test_fast_path_fuses_and_reuses_without_touching_input_or_values(tmp_path: Path) -> None:
    """A plain call pools, activates and packs the stem in one op and writes binary convs' float outputs over their
    dead residuals; neither may change the caller's tensor (NCHW or channels-last, whose NHWC view is the caller's
    memory) nor what ``values`` reports."""
    model = randomize(models.build("resnet18"), seed=3, negative_slopes=False)
    pm = engine.load(pack_model(model, tmp_path / "r18.bnn"))
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    assert [p["type"] for p in pm.profile(x, runs=1)][:2] == ["conv", "maxpool+act+pack"]
    ref = pm(x)
    for inp in (x.clone(), x.clone().contiguous(memory_format=torch.channels_last)):
        before = inp.clone()
        torch.testing.assert_close(pm(inp), ref, rtol=0, atol=0)
        assert torch.equal(inp, before)
    residuals = [(op["inputs"]["residual"], op["outputs"]["y"]) for op in pm.graph["ops"]
                 if op["type"] == "bconv" and "residual" in op["inputs"] and "y" in op["outputs"]]  # fmt: skip
    fast = pm._run(x, pm._ops)
    assert any(np.shares_memory(fast[r], fast[y]) for r, y in residuals)  # the reuse is on
    kept = pm.values(x)
    assert not any(np.shares_memory(kept[r], kept[y]) for r, y in residuals)
    again = pm.values(x)
    for name, v in kept.items():
        if isinstance(v, np.ndarray):
            np.testing.assert_array_equal(v, again[name], err_msg=name)


@pytest.mark.parametrize("setting", ["1", "0"])
def test_stem_precision_setting(setting: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """BINPOSE_STEM_BF16: the RGB stem on AMX-BF16 tiles (three bf16 products per term: within 2^-14 of the sum of
    |x * w|, engine/csrc/float_conv_amx.cpp) by default where the CPU has them, in FP32 with 0; both against the
    stem's folded conv in float64."""
    monkeypatch.setenv("BINPOSE_STEM_BF16", setting)
    # monotone PReLU: the packer moves it after the max-pool, so the stem is a bare conv (torch's conv in FP32)
    model = randomize(models.build("resnet18", input_size=(64, 64)), seed=4, negative_slopes=False)
    pm = engine.load(pack_model(model, tmp_path / "r.bnn"))
    op = pm.graph["ops"][0]
    assert op["type"] == "conv" and op["attrs"]["source"] == "backbone_stem_conv" and op["attrs"]["act"] is None
    w = torch.from_numpy(pm._bnn.tensors[op["params"]["weight"]]).double()
    b = torch.from_numpy(pm._bnn.tensors[op["params"]["bias"]]).double()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    got = torch.from_numpy(pm.values(x)[op["outputs"]["y"]]).permute(0, 3, 1, 2).double()
    a = op["attrs"]
    want = F.conv2d(x.double(), w, b, a["stride"], a["padding"])
    magnitude = F.conv2d(x.double().abs(), w.abs(), b.abs(), a["stride"], a["padding"])  # the error's scale
    rel = float(((got - want).abs() / magnitude).max())
    bf16 = setting == "1" and engine.float_ops.has_direct_conv_bf16()
    assert rel < (2.0**-14 if bf16 else 2.0**-20), rel
    if bf16:
        assert rel > 2.0**-22  # the bf16 products did run (FP32 sums are ~100x closer)


def test_stem_precision_setting_rejects_other_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = pack_model(randomize(models.build("resnet18", input_size=(64, 64)), seed=4), tmp_path / "r.bnn")
    monkeypatch.setenv("BINPOSE_STEM_BF16", "fast")
    with pytest.raises(ValueError, match="BINPOSE_STEM_BF16 must be 0 or 1"):
        engine.load(path)


MALLINFO_PROBE = """
import ctypes, sys, numpy as np, torch, engine
class MallInfo2(ctypes.Structure):
    _fields_ = [(f, ctypes.c_size_t) for f in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
m = engine.load(sys.argv[1])
m(torch.zeros(1, 3, 32, 32))
before = libc.mallinfo2().hblks
block = np.ones(8 << 18, np.float32)  # 8 MiB
print(libc.mallinfo2().hblks - before, engine.runtime.keep_freed_memory())
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc settings are glibc's")
@pytest.mark.parametrize("keep", ["1", "0"])
def test_load_makes_malloc_reuse_freed_activations(keep: str, tmp_path: Path) -> None:
    """After engine.load, an 8 MiB array comes from the heap (glibc's own count of mapped blocks, mallinfo2, does not
    grow), so freed activations are reused instead of mapped and faulted in again; BINPOSE_MALLOC_KEEP=0 leaves
    glibc's default (a block that large gets a mapping of its own). Fresh interpreters: the setting is per process."""
    path = pack_model(randomize(models.build("resnet18-small", width=16), seed=4), tmp_path / "m.bnn")
    env = {**os.environ, "BINPOSE_MALLOC_KEEP": keep}
    out = subprocess.run([sys.executable, "-c", MALLINFO_PROBE, str(path)], check=True, capture_output=True, text=True,
                         env=env, cwd=Path(__file__).resolve().parents[2]).stdout.split()  # fmt: skip
    assert out == (["0", "True"] if keep == "1" else ["1", "False"])
