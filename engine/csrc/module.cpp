// Python bindings of the packed-binary engine. Arrays cross as numpy arrays (C-contiguous); no torch here.
// The typed, documented Python API is engine/kernels.py; this module is its thin native layer.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <cstdint>
#include <cstring>
#include <new>
#include <optional>
#include <stdexcept>
#include <string>

#include "bconv.h"
#include "bitpack.h"
#include "dispatch.h"
#include "float_ops.h"
#include "threadpool.h"

namespace nb = nanobind;

namespace {

template <typename T, std::size_t D>
using In = nb::ndarray<const T, nb::ndim<D>, nb::c_contig, nb::device::cpu>;
template <typename T, std::size_t D>
using Out = nb::ndarray<nb::numpy, T, nb::ndim<D>>;
using Vec = In<float, 1>;
using MutFloat4 = nb::ndarray<float, nb::ndim<4>, nb::c_contig, nb::device::cpu>;
using FloatMatrix = In<float, 2>;
using WordMatrix = In<std::uint64_t, 2>;

template <typename T, std::size_t D>
Out<T, D> new_array(const std::size_t (&shape)[D], bool zero = false) {
  std::size_t total = 1;
  for (std::size_t s : shape) total *= s;
  // 64-byte aligned: the kernels' full-vector stores then never split a cache line.
  T* data = static_cast<T*>(::operator new(sizeof(T) * (total > 0 ? total : 1), std::align_val_t(64)));
  if (zero) std::memset(data, 0, sizeof(T) * total);
  nb::capsule owner(data, [](void* p) noexcept { ::operator delete(p, std::align_val_t(64)); });
  return Out<T, D>(data, D, shape, owner);
}

std::string str(std::size_t v) { return std::to_string(v); }

Out<std::uint64_t, 2> py_pack_signs(FloatMatrix x) {
  const std::size_t rows = x.shape(0), n = x.shape(1);
  auto out = new_array<std::uint64_t, 2>({rows, binpose::words_for_bits(n)});
  {
    nb::gil_scoped_release release;
    binpose::pack_signs(x.data(), rows, n, out.data());
  }
  return out;
}

Out<float, 2> py_unpack_signs(WordMatrix bits, std::size_t n) {
  const std::size_t rows = bits.shape(0);
  if (bits.shape(1) != binpose::words_for_bits(n)) {
    throw std::invalid_argument("unpack_signs: expected ceil(n / 64) words per row for n = " + str(n) + ", got " +
                                str(bits.shape(1)));
  }
  auto out = new_array<float, 2>({rows, n});
  {
    nb::gil_scoped_release release;
    binpose::unpack_signs(bits.data(), rows, n, out.data());
  }
  return out;
}

Out<std::uint32_t, 4> py_pack_activations(In<float, 4> x, std::optional<Vec> thr) {
  const std::size_t N = x.shape(0), H = x.shape(1), W = x.shape(2), C = x.shape(3);
  if (C == 0) throw std::invalid_argument("pack_activations: need at least one channel");
  if (thr && thr->shape(0) != C)
    throw std::invalid_argument("pack_activations: threshold has " + str(thr->shape(0)) + " entries, input has " +
                                str(C) + " channels");
  auto out = new_array<std::uint32_t, 4>({N, H, W, binpose::words32_for_bits(C)});
  {
    nb::gil_scoped_release release;
    binpose::pack_activations(x.data(), static_cast<std::int64_t>(N * H * W), static_cast<int>(C),
                              thr ? thr->data() : nullptr, out.data());
  }
  return out;
}

Out<float, 4> py_unpack_activations(In<std::uint32_t, 4> bits, std::size_t C) {
  const std::size_t N = bits.shape(0), H = bits.shape(1), W = bits.shape(2), ws = bits.shape(3);
  if (ws < binpose::words32_for_bits(C))
    throw std::invalid_argument("unpack_activations: " + str(ws) + " words per pixel cannot hold " + str(C) + " channels");
  auto out = new_array<float, 4>({N, H, W, C});
  {
    nb::gil_scoped_release release;
    binpose::unpack_rows(bits.data(), N * H * W, C, ws, out.data());
  }
  return out;
}

Out<std::uint32_t, 4> py_pack_weights(In<float, 4> w) {
  const std::size_t O = w.shape(0), I = w.shape(1), KH = w.shape(2), KW = w.shape(3);
  if (O == 0 || I == 0 || KH == 0 || KW == 0) throw std::invalid_argument("pack_weights: empty weight");
  auto out = new_array<std::uint32_t, 4>({O, KH, KW, binpose::words32_for_bits(I)});
  {
    nb::gil_scoped_release release;
    binpose::pack_weights_oihw(w.data(), static_cast<int>(O), static_cast<int>(I), static_cast<int>(KH),
                               static_cast<int>(KW), out.data());
  }
  return out;
}

binpose::ConvWeights* make_weights(In<std::uint32_t, 4> bits, int in_per_group, int groups) {
  if (in_per_group <= 0) throw std::invalid_argument("ConvWeights: in_channels_per_group must be positive");
  if (bits.shape(3) != binpose::words32_for_bits(in_per_group))
    throw std::invalid_argument("ConvWeights: bits must have ceil(in_channels_per_group / 32) = " +
                                str(binpose::words32_for_bits(in_per_group)) + " words per tap, got " +
                                str(bits.shape(3)));
  return new binpose::ConvWeights(bits.data(), static_cast<int>(bits.shape(0)), in_per_group,
                                  static_cast<int>(bits.shape(1)), static_cast<int>(bits.shape(2)), groups);
}

const float* vec_or_throw(const std::optional<Vec>& v, std::size_t n, const char* name, bool required) {
  if (!v) {
    if (required) throw std::invalid_argument(std::string("bconv2d: ") + name + " is required for this activation");
    return nullptr;
  }
  if (v->shape(0) != n)
    throw std::invalid_argument(std::string("bconv2d: ") + name + " must have one entry per output channel (" + str(n) +
                                "), got " + str(v->shape(0)));
  return v->data();
}

nb::tuple py_bconv2d(In<std::uint32_t, 4> x, int in_channels, const binpose::ConvWeights& w, std::vector<int> stride,
                     std::vector<int> padding, std::vector<int> dilation, Vec scale, Vec shift,
                     std::optional<In<float, 4>> residual, int act, std::optional<Vec> slope,
                     std::optional<Vec> gamma, std::optional<Vec> zeta, std::optional<Vec> next_threshold,
                     bool want_float, bool want_bits, std::optional<MutFloat4> out) {
  if (stride.size() != 2 || dilation.size() != 2 || padding.size() != 4)
    throw std::invalid_argument("bconv2d: stride and dilation take 2 values, padding 4 (top, left, bottom, right)");
  if (!want_float && !want_bits) throw std::invalid_argument("bconv2d: ask for float output, bits, or both");
  binpose::ConvGeometry g;
  g.N = static_cast<int>(x.shape(0));
  g.H = static_cast<int>(x.shape(1));
  g.W = static_cast<int>(x.shape(2));
  g.in_words = static_cast<int>(x.shape(3));
  g.C = in_channels;
  g.stride_h = stride[0];
  g.stride_w = stride[1];
  g.pad_top = padding[0];
  g.pad_left = padding[1];
  g.pad_bottom = padding[2];
  g.pad_right = padding[3];
  g.dil_h = dilation[0];
  g.dil_w = dilation[1];
  binpose::conv_output_size(g, w);
  const std::size_t O = static_cast<std::size_t>(w.out_channels);
  const std::size_t N = g.N, OH = g.OH, OW = g.OW;

  binpose::EpilogueParams e;
  e.out_channels = w.out_channels;
  e.scale = vec_or_throw(scale, O, "scale", true);
  e.shift = vec_or_throw(shift, O, "shift", true);
  if (residual) {
    if (residual->shape(0) != N || residual->shape(1) != OH || residual->shape(2) != OW || residual->shape(3) != O)
      throw std::invalid_argument("bconv2d: residual must be float32 NHWC of the output's shape (" + str(N) + ", " +
                                  str(OH) + ", " + str(OW) + ", " + str(O) + ")");
    e.residual = residual->data();
  }
  if (act < binpose::kActNone || act > binpose::kActRprelu) throw std::invalid_argument("bconv2d: unknown activation");
  e.act = act;
  e.slope = vec_or_throw(slope, O, "slope", act != binpose::kActNone);
  e.gamma = vec_or_throw(gamma, O, "gamma", act == binpose::kActRprelu);
  e.zeta = vec_or_throw(zeta, O, "zeta", act == binpose::kActRprelu);
  e.next_thr = vec_or_throw(next_threshold, O, "next_threshold", false);
  e.bits_stride = static_cast<int>(binpose::words32_for_bits(O));

  nb::object out_f = nb::none(), out_b = nb::none();
  std::optional<Out<float, 4>> fo;
  std::optional<Out<std::uint32_t, 4>> bo;
  if (want_float && out) {  // into a caller's array, e.g. the residual's own (each element is read, then written)
    if (out->shape(0) != N || out->shape(1) != OH || out->shape(2) != OW || out->shape(3) != O)
      throw std::invalid_argument("bconv2d: out must be float32 NHWC of the output's shape");
    e.out = out->data();
    out_f = nb::cast(*out);
  } else if (want_float) {
    fo = new_array<float, 4>({N, OH, OW, O});
    e.out = fo->data();
  }
  if (want_bits) {
    bo = new_array<std::uint32_t, 4>({N, OH, OW, static_cast<std::size_t>(e.bits_stride)}, true);
    e.out_bits = bo->data();
  }
  {
    nb::gil_scoped_release release;
    binpose::bconv2d(x.data(), g, w, e);
  }
  if (fo) out_f = nb::cast(*fo);
  if (bo) out_b = nb::cast(*bo);
  return nb::make_tuple(out_f, out_b);
}


// ------------------------------------------------------------------------------------------------ float NHWC ops
using Float4 = In<float, 4>;
binpose::ChannelAct channel_act_params(const char* op, int act, const std::optional<Vec>& slope,
                                       const std::optional<Vec>& gamma, const std::optional<Vec>& zeta,
                                       std::size_t C) {
  if (act < binpose::kActNone || act > binpose::kActRelu) throw std::invalid_argument(std::string(op) + ": unknown activation");
  auto vec = [&](const std::optional<Vec>& v, const char* name, bool required) -> const float* {
    if (!v) {
      if (required) throw std::invalid_argument(std::string(op) + ": " + name + " is required for this activation");
      return nullptr;
    }
    if (v->shape(0) != C)
      throw std::invalid_argument(std::string(op) + ": " + name + " must have one entry per channel (" + str(C) +
                                  "), got " + str(v->shape(0)));
    return v->data();
  };
  binpose::ChannelAct a;
  a.act = act;
  a.slope = vec(slope, "slope", act == binpose::kActPrelu || act == binpose::kActRprelu);
  a.gamma = vec(gamma, "gamma", act == binpose::kActRprelu);
  a.zeta = vec(zeta, "zeta", act == binpose::kActRprelu);
  return a;
}

void check_nonempty(const char* op, std::size_t N, std::size_t H, std::size_t W, std::size_t C) {
  if (N == 0 || H == 0 || W == 0 || C == 0) throw std::invalid_argument(std::string(op) + ": empty input");
}

nb::object py_channel_act(Float4 x, int act, std::optional<Vec> slope, std::optional<Vec> gamma,
                          std::optional<Vec> zeta, std::optional<MutFloat4> out) {
  const std::size_t N = x.shape(0), H = x.shape(1), W = x.shape(2), C = x.shape(3);
  const binpose::ChannelAct a = channel_act_params("channel_act", act, slope, gamma, zeta, C);
  float* dst = nullptr;
  nb::object result = nb::none();
  std::optional<Out<float, 4>> fresh;
  if (out) {
    for (int d = 0; d < 4; ++d)
      if (out->shape(d) != x.shape(d)) throw std::invalid_argument("channel_act: out must have the input's shape");
    dst = out->data();
  } else {
    fresh = new_array<float, 4>({N, H, W, C});
    dst = fresh->data();
  }
  {
    nb::gil_scoped_release release;
    binpose::channel_act(x.data(), dst, static_cast<std::int64_t>(N * H * W), static_cast<int>(C), a);
  }
  if (fresh) result = nb::cast(*fresh);
  return result;
}

binpose::PoolGeometry pool_geometry(const char* op, const Float4& x, std::vector<int> k, std::vector<int> s,
                                    std::vector<int> p, std::vector<int> d, std::vector<int> out_hw) {
  if (k.size() != 2 || s.size() != 2 || p.size() != 2 || d.size() != 2 || out_hw.size() != 2)
    throw std::invalid_argument(std::string(op) + ": kernel, stride, padding, dilation and output size take 2 values");
  check_nonempty(op, x.shape(0), x.shape(1), x.shape(2), x.shape(3));
  binpose::PoolGeometry g{static_cast<int>(x.shape(0)), static_cast<int>(x.shape(1)), static_cast<int>(x.shape(2)),
                          static_cast<int>(x.shape(3)), k[0], k[1], s[0], s[1], p[0], p[1], d[0], d[1],
                          out_hw[0], out_hw[1]};
  if (g.kh < 1 || g.kw < 1 || g.sh < 1 || g.sw < 1 || g.dh < 1 || g.dw < 1 || g.pt < 0 || g.pl < 0)
    throw std::invalid_argument(std::string(op) + ": kernel, stride and dilation must be >= 1, padding >= 0");
  if (g.OH < 1 || g.OW < 1) throw std::invalid_argument(std::string(op) + ": output size must be positive");
  return g;
}

// Returns the pooled array, or (pooled, bits) when `pack` is set.
nb::object py_maxpool2d(Float4 x, std::vector<int> k, std::vector<int> s, std::vector<int> p, std::vector<int> d,
                        std::vector<int> out_hw, int act, std::optional<Vec> slope, std::optional<Vec> gamma,
                        std::optional<Vec> zeta, bool pack, std::optional<Vec> thr) {
  const binpose::PoolGeometry g = pool_geometry("maxpool2d", x, k, s, p, d, out_hw);
  const std::size_t C = x.shape(3);
  const binpose::ChannelAct a = channel_act_params("maxpool2d", act, slope, gamma, zeta, C);
  if (thr && thr->shape(0) != C)
    throw std::invalid_argument("maxpool2d: threshold has " + str(thr->shape(0)) + " entries, input has " + str(C) +
                                " channels");
  const std::size_t OH = static_cast<std::size_t>(g.OH), OW = static_cast<std::size_t>(g.OW);
  auto out = new_array<float, 4>({x.shape(0), OH, OW, C});
  std::optional<Out<std::uint32_t, 4>> bits;
  if (pack) bits = new_array<std::uint32_t, 4>({x.shape(0), OH, OW, binpose::words32_for_bits(C)});
  {
    nb::gil_scoped_release release;
    binpose::maxpool2d(x.data(), g, out.data(), a, thr ? thr->data() : nullptr, bits ? bits->data() : nullptr);
  }
  if (bits) return nb::make_tuple(out, *bits);
  return nb::cast(out);
}

Out<float, 4> py_avgpool2d(Float4 x, std::vector<int> k, std::vector<int> s, std::vector<int> p,
                           std::vector<int> out_hw, bool count_include_pad) {
  const binpose::PoolGeometry g = pool_geometry("avgpool2d", x, k, s, p, {1, 1}, out_hw);
  auto out = new_array<float, 4>({x.shape(0), static_cast<std::size_t>(g.OH), static_cast<std::size_t>(g.OW), x.shape(3)});
  {
    nb::gil_scoped_release release;
    binpose::avgpool2d(x.data(), g, count_include_pad, out.data());
  }
  return out;
}

Out<float, 4> py_sum_upsampled(std::vector<Float4> xs, std::vector<Float4> ups, std::vector<int> factors, int act,
                               std::optional<Vec> slope, std::optional<Vec> gamma, std::optional<Vec> zeta) {
  if (xs.empty()) throw std::invalid_argument("sum_upsampled: need at least one full-resolution input");
  if (ups.size() != factors.size()) throw std::invalid_argument("sum_upsampled: one factor per upsampled input");
  const std::size_t N = xs[0].shape(0), H = xs[0].shape(1), W = xs[0].shape(2), C = xs[0].shape(3);
  check_nonempty("sum_upsampled", N, H, W, C);
  std::vector<const float*> xp, up;
  for (const auto& v : xs) {
    for (int d = 0; d < 4; ++d)
      if (v.shape(d) != xs[0].shape(d)) throw std::invalid_argument("sum_upsampled: inputs must have the same shape");
    xp.push_back(v.data());
  }
  for (std::size_t j = 0; j < ups.size(); ++j) {
    const int f = factors[j];
    if (f < 1 || H % f != 0 || W % f != 0 || ups[j].shape(0) != N || ups[j].shape(1) * f != H ||
        ups[j].shape(2) * f != W || ups[j].shape(3) != C)
      throw std::invalid_argument("sum_upsampled: upsampled input " + str(j) + " must be (N, H/f, W/f, C) for f = " +
                                  std::to_string(f));
    up.push_back(ups[j].data());
  }
  const binpose::ChannelAct a = channel_act_params("sum_upsampled", act, slope, gamma, zeta, C);
  auto out = new_array<float, 4>({N, H, W, C});
  {
    nb::gil_scoped_release release;
    binpose::sum_upsampled(xp.data(), static_cast<int>(xp.size()), up.data(), factors.data(),
                           static_cast<int>(up.size()), static_cast<int>(N), static_cast<int>(H), static_cast<int>(W),
                           static_cast<int>(C), a, out.data());
  }
  return out;
}

Out<float, 4> py_float_conv2d(Float4 x, In<float, 4> w, Vec bias, int out_channels, std::vector<int> stride,
                              std::vector<int> padding, std::vector<int> dilation, int act, std::optional<Vec> slope,
                              std::optional<Vec> gamma, std::optional<Vec> zeta,
                              std::optional<In<std::uint16_t, 5>> bf16) {
  if (stride.size() != 2 || dilation.size() != 2 || padding.size() != 4)
    throw std::invalid_argument("float_conv2d: stride and dilation take 2 values, padding 4 (top, left, bottom, right)");
  binpose::FloatConvGeometry g{};
  g.N = static_cast<int>(x.shape(0));
  g.H = static_cast<int>(x.shape(1));
  g.W = static_cast<int>(x.shape(2));
  g.Cin = static_cast<int>(x.shape(3));
  g.KH = static_cast<int>(w.shape(0));
  g.KW = static_cast<int>(w.shape(1));
  if (w.shape(2) != x.shape(3))
    throw std::invalid_argument("float_conv2d: weights are [KH, KW, Cin, OCp] with Cin = " + str(x.shape(3)));
  g.OC = out_channels;
  g.OCp = static_cast<int>(w.shape(3));
  if (bias.shape(0) != w.shape(3)) throw std::invalid_argument("float_conv2d: bias must have OCp entries");
  g.sh = stride[0];
  g.sw = stride[1];
  g.pt = padding[0];
  g.pl = padding[1];
  g.pb = padding[2];
  g.pr = padding[3];
  g.dh = dilation[0];
  g.dw = dilation[1];
  binpose::float_conv_output_size(g);
  const binpose::ChannelAct a = channel_act_params("float_conv2d", act, slope, gamma, zeta, static_cast<std::size_t>(g.OC));
  const std::uint16_t* tiles = nullptr;
  if (bf16) {
    const auto& t = *bf16;
    if (t.shape(0) != (w.shape(0) * w.shape(1) * w.shape(2) + 31) / 32 || t.shape(1) * 16 != w.shape(3) ||
        t.shape(2) != 2 || t.shape(3) != 16 || t.shape(4) != 32)
      throw std::invalid_argument("float_conv2d: bf16 tiles must be [ceil(KH * KW * Cin / 32), OCp / 16, 2, 16, 32]");
    tiles = t.data();
  }
  auto out = new_array<float, 4>({x.shape(0), static_cast<std::size_t>(g.OH), static_cast<std::size_t>(g.OW),
                                  static_cast<std::size_t>(g.OC)});
  {
    nb::gil_scoped_release release;
    binpose::float_conv2d(x.data(), g, w.data(), bias.data(), a, out.data(), tiles);
  }
  return out;
}

Out<float, 4> py_upsample_nearest(Float4 x, int f) {
  if (f < 1) throw std::invalid_argument("upsample_nearest: factor must be >= 1");
  const std::size_t N = x.shape(0), H = x.shape(1), W = x.shape(2), C = x.shape(3);
  check_nonempty("upsample_nearest", N, H, W, C);
  auto out = new_array<float, 4>({N, H * f, W * f, C});
  {
    nb::gil_scoped_release release;
    binpose::upsample_nearest(x.data(), static_cast<int>(N), static_cast<int>(H), static_cast<int>(W),
                              static_cast<int>(C), f, out.data());
  }
  return out;
}

}  // namespace

NB_MODULE(_native, m) {
  m.doc() = "binpose packed-binary engine (C++ core); use engine.kernels for the documented Python API";
  m.def("pack_signs", &py_pack_signs, nb::arg("x"),
        "Pack each row of a float32 matrix into sign bits (bit 1 = negative), 64 per uint64 word.");
  m.def("unpack_signs", &py_unpack_signs, nb::arg("bits"), nb::arg("n"),
        "Inverse of pack_signs: uint64 words -> float32 +1/-1 matrix with n columns.");
  m.def("pack_activations", &py_pack_activations, nb::arg("x"), nb::arg("threshold").none() = nb::none(),
        "float32 NHWC -> uint32 [N, H, W, ceil(C/32)] bits, bit = (x + threshold[c]) < 0.");
  m.def("unpack_activations", &py_unpack_activations, nb::arg("bits"), nb::arg("channels"),
        "uint32 [N, H, W, words] bits -> float32 NHWC of +1/-1 with `channels` channels.");
  m.def("pack_weights", &py_pack_weights, nb::arg("weight"),
        "float32 OIHW -> uint32 [O, KH, KW, ceil(I/32)] sign bits (OHWI order, bit = w < 0).");
  nb::class_<binpose::ConvWeights>(m, "ConvWeights")
      .def("__init__",
           [](binpose::ConvWeights* self, In<std::uint32_t, 4> bits, int in_per_group, int groups) {
             binpose::ConvWeights* tmp = make_weights(bits, in_per_group, groups);
             new (self) binpose::ConvWeights(std::move(*tmp));
             delete tmp;
           },
           nb::arg("bits"), nb::arg("in_channels_per_group"), nb::arg("groups") = 1)
      .def_ro("out_channels", &binpose::ConvWeights::out_channels)
      .def_ro("in_channels_per_group", &binpose::ConvWeights::in_per_group)
      .def_ro("kernel_h", &binpose::ConvWeights::kh)
      .def_ro("kernel_w", &binpose::ConvWeights::kw)
      .def_ro("groups", &binpose::ConvWeights::groups);
  m.def("bconv2d", &py_bconv2d, nb::arg("x"), nb::arg("in_channels"), nb::arg("weights"), nb::arg("stride"),
        nb::arg("padding"), nb::arg("dilation"), nb::arg("scale"), nb::arg("shift"),
        nb::arg("residual").none() = nb::none(), nb::arg("act") = 0, nb::arg("slope").none() = nb::none(),
        nb::arg("gamma").none() = nb::none(), nb::arg("zeta").none() = nb::none(),
        nb::arg("next_threshold").none() = nb::none(), nb::arg("want_float") = true, nb::arg("want_bits") = false,
        nb::arg("out").none() = nb::none(),
        "Packed binary conv2d with the fused epilogue; returns (float NHWC or None, uint32 bits or None). The float "
        "output goes into `out` when given (it may be the residual itself).");
  m.def("channel_act", &py_channel_act, nb::arg("x"), nb::arg("act"), nb::arg("slope").none() = nb::none(),
        nb::arg("gamma").none() = nb::none(), nb::arg("zeta").none() = nb::none(), nb::arg("out").none() = nb::none(),
        "Per-channel activation of float NHWC (0 none, 1 PReLU, 2 RPReLU, 3 ReLU); into `out` (None returned) or new.");
  m.def("maxpool2d", &py_maxpool2d, nb::arg("x"), nb::arg("kernel"), nb::arg("stride"), nb::arg("padding"),
        nb::arg("dilation"), nb::arg("out_hw"), nb::arg("act") = 0, nb::arg("slope").none() = nb::none(),
        nb::arg("gamma").none() = nb::none(), nb::arg("zeta").none() = nb::none(), nb::arg("pack") = false,
        nb::arg("threshold").none() = nb::none(),
        "Max pooling of float NHWC (-inf padding), then the activation; (pooled, bits) when pack is set.");
  m.def("avgpool2d", &py_avgpool2d, nb::arg("x"), nb::arg("kernel"), nb::arg("stride"), nb::arg("padding"),
        nb::arg("out_hw"), nb::arg("count_include_pad"), "Average pooling of float NHWC (torch's divisor rules).");
  m.def("sum_upsampled", &py_sum_upsampled, nb::arg("xs"), nb::arg("ups"), nb::arg("factors"), nb::arg("act") = 0,
        nb::arg("slope").none() = nb::none(), nb::arg("gamma").none() = nb::none(), nb::arg("zeta").none() = nb::none(),
        "act(sum of same-shape float NHWC inputs + nearest-upsampled lower-resolution ones).");
  m.def("upsample_nearest", &py_upsample_nearest, nb::arg("x"), nb::arg("factor"), "Nearest upsampling of float NHWC.");
  m.def("has_float_conv", &binpose::has_float_conv, "Whether the active ISA has the direct float conv.");
  m.def("float_conv2d", &py_float_conv2d, nb::arg("x"), nb::arg("weight"), nb::arg("bias"), nb::arg("out_channels"),
        nb::arg("stride"), nb::arg("padding"), nb::arg("dilation"), nb::arg("act") = 0,
        nb::arg("slope").none() = nb::none(), nb::arg("gamma").none() = nb::none(), nb::arg("zeta").none() = nb::none(),
        nb::arg("bf16").none() = nb::none(),
        "Direct float conv of NHWC x with [KH, KW, Cin, OCp] weights, + bias, activation (few input channels); "
        "with bf16 weight tiles [ceil(KH * KW * Cin / 32), OCp / 16, 2, 16, 32] on AMX-BF16 where available.");
  m.def("has_float_conv_bf16", &binpose::has_float_conv_bf16,
        "Whether the active ISA runs the direct float conv on AMX-BF16 tiles.");
  m.def("available_isas", &binpose::available_isas, "ISAs usable on this CPU and build, best first.");
  m.def("active_isa", [] { return std::string(binpose::active_isa().name); }, "The ISA the kernels use now.");
  m.def("set_isa", &binpose::set_isa, nb::arg("name"), "Force an ISA (amx | avx512 | avx2 | scalar).");
  m.def("set_amx_min_pixels", &binpose::set_amx_min_pixels, nb::arg("n"),
        "Smallest conv (output pixels, batch included) the amx ISA runs on the AMX tiles.");
  m.def("get_amx_min_pixels", &binpose::get_amx_min_pixels);
  m.def("get_num_threads", &binpose::get_threads, "Threads of the kernel pool (including the caller).");
  m.def("set_num_threads", &binpose::set_threads, nb::arg("n"), "Resize the kernel pool (n >= 1).");
  m.def("set_thread_inline", &binpose::set_thread_inline, nb::arg("on"),
        "on: kernels called from the calling thread run on it alone, without the pool.");
}
