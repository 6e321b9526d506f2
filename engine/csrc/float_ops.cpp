#include "float_ops.h"

#include <algorithm>
#include <cstring>
#include <limits>

#include <stdexcept>
#include <string>
#include <vector>

#include "bitpack.h"
#include "dispatch.h"
#include "threadpool.h"

// The inner loops run along the channels (contiguous) and vectorize; on x86 with GCC each is also compiled for AVX2
// and AVX-512 and picked at load time (function multi-versioning), so this file needs no ISA flags of its own.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define BINPOSE_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define BINPOSE_CLONES
#endif

namespace binpose {

namespace {

inline std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }

// Splits `rows` independent rows into tasks of at least `min_rows` rows for the pool.
template <typename F>
void for_rows(std::int64_t rows, std::int64_t row_elems, F&& f) {
  const std::int64_t min_rows = std::max<std::int64_t>(1, 16384 / std::max<std::int64_t>(1, row_elems));
  const std::int64_t tasks = std::min<std::int64_t>(ceil_div(rows, min_rows), 4 * static_cast<std::int64_t>(get_threads()));
  if (tasks <= 1) {
    f(0, rows);
    return;
  }
  const std::int64_t chunk = ceil_div(rows, tasks);
  parallel_for(ceil_div(rows, chunk), [&](std::int64_t t) { f(t * chunk, std::min(rows, (t + 1) * chunk)); });
}

BINPOSE_CLONES
void act_row(float* __restrict y, std::int64_t pixels, int C, int act, const float* __restrict slope,
             const float* __restrict gamma, const float* __restrict zeta) {
  for (std::int64_t p = 0; p < pixels; ++p, y += C) {
    switch (act) {
      case kActRelu:
        for (int c = 0; c < C; ++c) y[c] = y[c] > 0.0f ? y[c] : 0.0f;
        break;
      case kActPrelu:  // the product is computed unconditionally, so the select vectorizes
        for (int c = 0; c < C; ++c) {
          const float v = y[c], m = slope[c] * v;
          y[c] = v > 0.0f ? v : m;
        }
        break;
      case kActRprelu:
        for (int c = 0; c < C; ++c) {
          const float t = y[c] - gamma[c], m = slope[c] * t;
          y[c] = (t > 0.0f ? t : m) + zeta[c];
        }
        break;
      default:
        break;
    }
  }
}

// One output row of a pooling op: everything inside one multi-versioned function, so the channel loops inline.
BINPOSE_CLONES
void pool_row(const float* __restrict img, const PoolGeometry& g, int oh, bool is_max, bool count_include_pad,
              float* __restrict out) {
  const int C = g.C;
  for (int ow = 0; ow < g.OW; ++ow) {
    float* __restrict o = out + static_cast<std::int64_t>(ow) * C;
    int hs = oh * g.sh - g.pt, ws = ow * g.sw - g.pl;
    if (is_max) {
      for (int c = 0; c < C; ++c) o[c] = -std::numeric_limits<float>::infinity();
      for (int i = 0; i < g.kh; ++i) {
        const int ih = hs + i * g.dh;
        if (ih < 0 || ih >= g.H) continue;
        for (int j = 0; j < g.kw; ++j) {
          const int iw = ws + j * g.dw;
          if (iw < 0 || iw >= g.W) continue;
          const float* __restrict x = img + (static_cast<std::int64_t>(ih) * g.W + iw) * C;
          for (int c = 0; c < C; ++c) o[c] = x[c] > o[c] ? x[c] : o[c];
        }
      }
      continue;
    }
    int he = std::min(hs + g.kh, g.H + g.pt), we = std::min(ws + g.kw, g.W + g.pl);
    const int pool = (he - hs) * (we - ws);
    hs = std::max(hs, 0);
    ws = std::max(ws, 0);
    he = std::min(he, g.H);
    we = std::min(we, g.W);
    for (int c = 0; c < C; ++c) o[c] = 0.0f;
    for (int ih = hs; ih < he; ++ih)
      for (int iw = ws; iw < we; ++iw) {
        const float* __restrict x = img + (static_cast<std::int64_t>(ih) * g.W + iw) * C;
        for (int c = 0; c < C; ++c) o[c] += x[c];
      }
    const int div = count_include_pad ? pool : (he - hs) * (we - ws);
    const float inv = div > 0 ? 1.0f / static_cast<float>(div) : 0.0f;
    for (int c = 0; c < C; ++c) o[c] *= inv;
  }
}

// One output row of sum_upsampled: o = xs[0] + ... + ups at (h / f, w / f), then the activation.
BINPOSE_CLONES
void sum_row(float* o, const float* const* xs, int nx, const float* const* ups, const int* factors, int nup,
             std::int64_t row, int n, int h, int H, int W, int C, const ChannelAct& a) {
  const std::int64_t len = static_cast<std::int64_t>(W) * C;
  int next = 0;
  if (nx >= 1 && o == xs[0] + row) {
    next = 1;  // in place on the first operand
  } else if (nx >= 2) {
    const float* __restrict x0 = xs[0] + row;
    const float* __restrict x1 = xs[1] + row;
    for (std::int64_t i = 0; i < len; ++i) o[i] = x0[i] + x1[i];
    next = 2;
  } else if (nx == 1) {
    std::memcpy(o, xs[0] + row, sizeof(float) * len);
    next = 1;
  } else {
    for (std::int64_t i = 0; i < len; ++i) o[i] = 0.0f;
  }
  for (int k = next; k < nx; ++k) {
    const float* __restrict x = xs[k] + row;
    for (std::int64_t i = 0; i < len; ++i) o[i] += x[i];
  }
  for (int j = 0; j < nup; ++j) {
    const int f = factors[j], hl = H / f, wl = W / f;
    const float* src = ups[j] + ((static_cast<std::int64_t>(n) * hl + h / f) * wl) * C;
    for (int w = 0; w < W; ++w) {
      float* __restrict ow = o + static_cast<std::int64_t>(w) * C;
      const float* __restrict x = src + static_cast<std::int64_t>(w / f) * C;
      for (int c = 0; c < C; ++c) ow[c] += x[c];
    }
  }
  if (a.act != kActNone) act_row(o, W, C, a.act, a.slope, a.gamma, a.zeta);
}

}  // namespace

void channel_act(const float* x, float* out, std::int64_t pixels, int C, const ChannelAct& a) {
  for_rows(pixels, C, [&](std::int64_t p0, std::int64_t p1) {
    float* y = out + p0 * C;
    if (out != x) std::memcpy(y, x + p0 * C, sizeof(float) * (p1 - p0) * C);
    act_row(y, p1 - p0, C, a.act, a.slope, a.gamma, a.zeta);
  });
}

namespace {

// Each output row is pooled, then (max pooling only) activated and packed while it is still in L1.
void pool2d(const float* x, const PoolGeometry& g, bool is_max, bool count_include_pad, float* out,
            const ChannelAct& a = {}, const float* thr = nullptr, std::uint32_t* bits = nullptr) {
  const IsaTable* isa = bits != nullptr ? &active_isa() : nullptr;
  const std::size_t ws = words32_for_bits(static_cast<std::size_t>(g.C));
  for_rows(static_cast<std::int64_t>(g.N) * g.OH, static_cast<std::int64_t>(g.OW) * g.C * g.kh * g.kw,
           [&](std::int64_t r0, std::int64_t r1) {
             for (std::int64_t r = r0; r < r1; ++r) {
               const std::int64_t n = r / g.OH;
               float* row = out + r * g.OW * g.C;
               pool_row(x + n * g.H * g.W * g.C, g, static_cast<int>(r % g.OH), is_max, count_include_pad, row);
               if (a.act != kActNone) act_row(row, g.OW, g.C, a.act, a.slope, a.gamma, a.zeta);
               if (isa != nullptr)
                 isa->pack_rows(row, static_cast<std::size_t>(g.OW), static_cast<std::size_t>(g.C),
                                static_cast<std::size_t>(g.C), thr, bits + r * g.OW * ws, ws);
             }
           });
}

}  // namespace

void maxpool2d(const float* x, const PoolGeometry& g, float* out, const ChannelAct& a, const float* thr,
               std::uint32_t* bits) {
  pool2d(x, g, true, false, out, a, thr, bits);
}

void avgpool2d(const float* x, const PoolGeometry& g, bool count_include_pad, float* out) {
  pool2d(x, g, false, count_include_pad, out);
}

void sum_upsampled(const float* const* xs, int nx, const float* const* ups, const int* factors, int nup, int N, int H,
                   int W, int C, const ChannelAct& a, float* out) {
  for_rows(static_cast<std::int64_t>(N) * H, static_cast<std::int64_t>(W) * C * (nx + nup),
           [&](std::int64_t r0, std::int64_t r1) {
             for (std::int64_t r = r0; r < r1; ++r) {
               const std::int64_t row = r * W * C;
               sum_row(out + row, xs, nx, ups, factors, nup, row, static_cast<int>(r / H), static_cast<int>(r % H), H, W,
                       C, a);
             }
           });
}

void upsample_nearest(const float* x, int N, int H, int W, int C, int f, float* out) {
  const int OW = W * f;
  for_rows(static_cast<std::int64_t>(N) * H * f, static_cast<std::int64_t>(OW) * C, [&](std::int64_t r0, std::int64_t r1) {
    for (std::int64_t r = r0; r < r1; ++r) {
      const std::int64_t n = r / (static_cast<std::int64_t>(H) * f), h = (r % (static_cast<std::int64_t>(H) * f)) / f;
      const float* src = x + ((n * H + h) * W) * C;
      float* o = out + r * OW * C;
      for (int w = 0; w < OW; ++w) std::memcpy(o + static_cast<std::int64_t>(w) * C, src + (w / f) * C, sizeof(float) * C);
    }
  });
}

bool has_float_conv() { return active_isa().float_conv_rows != nullptr; }

bool has_float_conv_bf16() { return active_isa().float_conv_bf16 != nullptr; }

void float_conv_output_size(FloatConvGeometry& g) {
  if (g.N <= 0 || g.H <= 0 || g.W <= 0 || g.Cin <= 0 || g.OC <= 0)
    throw std::invalid_argument("float_conv2d: empty input or no output channels");
  if (g.KH < 1 || g.KW < 1 || g.sh < 1 || g.sw < 1 || g.dh < 1 || g.dw < 1 || g.pt < 0 || g.pl < 0 || g.pb < 0 ||
      g.pr < 0)
    throw std::invalid_argument("float_conv2d: kernel, stride and dilation must be >= 1, padding >= 0");
  if (g.OCp != (g.OC + 15) / 16 * 16) throw std::invalid_argument("float_conv2d: weights must be padded to 16 channels");
  const int eh = g.dh * (g.KH - 1) + 1, ew = g.dw * (g.KW - 1) + 1;
  const int hp = g.H + g.pt + g.pb, wp = g.W + g.pl + g.pr;
  if (hp < eh || wp < ew) throw std::invalid_argument("float_conv2d: the padded input is smaller than the kernel");
  g.OH = (hp - eh) / g.sh + 1;
  g.OW = (wp - ew) / g.sw + 1;
}

void float_conv2d(const float* x, const FloatConvGeometry& g, const float* w, const float* bias, const ChannelAct& act,
                  float* out, const std::uint16_t* bf16) {
  const IsaTable& isa = active_isa();
  if (!isa.float_conv_rows) throw std::runtime_error(std::string("float_conv2d: not available on ISA ") + isa.name);
  if (bf16 && isa.float_conv_bf16 && isa.float_conv_bf16(x, g, bf16, bias, act, out)) return;
  const int Hp = g.H + g.pt + g.pb, Wp = g.W + g.pl + g.pr, C = g.Cin;
  // With padding, a zero-padded copy of the input, so the kernel never tests bounds.
  std::vector<float> xp;
  if (g.pt || g.pl || g.pb || g.pr) {
    xp.assign(static_cast<std::size_t>(g.N) * Hp * Wp * C, 0.0f);
    for (int n = 0; n < g.N; ++n)
      for (int h = 0; h < g.H; ++h)
        std::memcpy(xp.data() + ((static_cast<std::size_t>(n) * Hp + h + g.pt) * Wp + g.pl) * C,
                    x + ((static_cast<std::size_t>(n) * g.H + h) * g.W) * C, sizeof(float) * g.W * C);
  }
  FloatConvArgs a{xp.empty() ? x : xp.data(), Hp, Wp, C, g.KH, g.KW, g.sh, g.sw, g.dh, g.dw, g.OH, g.OW, g.OC, g.OCp,
                  w, bias, act, out};
  const std::int64_t rows = static_cast<std::int64_t>(g.N) * g.OH;
  const std::int64_t tasks = std::min<std::int64_t>(rows, 8 * static_cast<std::int64_t>(get_threads()));
  const std::int64_t chunk = ceil_div(rows, tasks);
  parallel_for(ceil_div(rows, chunk), [&](std::int64_t t) {
    isa.float_conv_rows(a, t * chunk, std::min(rows, (t + 1) * chunk));
  });
}

}  // namespace binpose
