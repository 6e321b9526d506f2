// Float NHWC operations of the runtime's glue (pooling, sums of branches, activations, nearest upsampling).
//
// Binary convs leave float tensors in NHWC; these ops keep them there, run on the kernels' thread pool and write into
// caller-owned outputs, so the glue between two binary layers never reorders memory or wakes a second thread pool.
// Every op is checked against torch's own in tests/unit/test_float_ops.py.
//
// Layouts: x [N][H][W][C] float32, C-contiguous; per-channel vectors [C].
#pragma once
#include <cstdint>

#include "epilogue.h"

namespace binpose {

constexpr int kActRelu = 3;  // float ops only (the binary epilogue takes kActNone, kActPrelu, kActRprelu)

struct ChannelAct {
  int act = kActNone;             // kActNone | kActPrelu | kActRprelu | kActRelu
  const float* slope = nullptr;   // [C] (prelu, rprelu)
  const float* gamma = nullptr;   // [C] (rprelu)
  const float* zeta = nullptr;    // [C] (rprelu)
};

struct PoolGeometry {
  int N, H, W, C;
  int kh, kw, sh, sw, pt, pl, dh, dw;
  int OH, OW;  // from torch's pooling output formula (ceil_mode included), computed by the caller
};

// out = act(x) per channel; out may be x (in place).
void channel_act(const float* x, float* out, std::int64_t pixels, int C, const ChannelAct& a);

// Max pooling, implicit -inf padding (torch.nn.functional.max_pool2d); NaN inputs are not propagated. Then, in the
// same pass over each output row: out = act(out) when a.act is set, and when `bits` is given the row's sign bits in
// the convolution layout (bit = (out + thr) < 0, thr may be null) into bits [N][OH][OW][ceil(C / 32)].
void maxpool2d(const float* x, const PoolGeometry& g, float* out, const ChannelAct& a = {}, const float* thr = nullptr,
               std::uint32_t* bits = nullptr);

// Average pooling (dilation 1) with torch's divisor rules: count_include_pad divides by the window clipped to the
// padded input, otherwise by the number of input pixels in the window.
void avgpool2d(const float* x, const PoolGeometry& g, bool count_include_pad, float* out);

// out[n, h, w, c] = act(sum_i xs[i][n, h, w, c] + sum_j ups[j][n, h / f_j, w / f_j, c]); xs[i] are [N][H][W][C],
// ups[j] are [N][H / f_j][W / f_j][C] (H, W divisible by f_j). out may alias xs[0].
void sum_upsampled(const float* const* xs, int nx, const float* const* ups, const int* factors, int nup, int N, int H,
                   int W, int C, const ChannelAct& a, float* out);

struct FloatConvGeometry {
  int N, H, W, Cin;
  int KH, KW, sh, sw, pt, pl, pb, pr, dh, dw;
  int OC, OCp;  // OCp: OC rounded up to 16
  int OH, OW;   // filled by float_conv2d
};

// Whether the active ISA has a direct float conv (float_conv2d throws otherwise).
bool has_float_conv();
// Fills g.OH, g.OW; throws std::invalid_argument for a bad geometry.
void float_conv_output_size(FloatConvGeometry& g);
// Whether the active ISA runs float_conv2d on AMX-BF16 tiles when given `bf16` weight tiles.
bool has_float_conv_bf16();
// out [N][OH][OW][OC] = act(conv(x, w) + bias) for NHWC x; w [KH][KW][Cin][OCp], bias [OCp] (zero past OC).
// With `bf16` (the same weights as AMX-BF16 tiles, kernels.h) the AMX-BF16 kernel runs where the ISA and the
// geometry allow it, otherwise the FP32 kernel.
void float_conv2d(const float* x, const FloatConvGeometry& g, const float* w, const float* bias, const ChannelAct& a,
                  float* out, const std::uint16_t* bf16 = nullptr);

// Nearest upsampling by an integer factor: out [N][H*f][W*f][C].
void upsample_nearest(const float* x, int N, int H, int W, int C, int f, float* out);

}  // namespace binpose
