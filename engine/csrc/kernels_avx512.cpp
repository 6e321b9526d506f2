// AVX-512 micro-kernel with VPOPCNTDQ (compiled only with -mavx512f -mavx512bw -mavx512vl -mavx512vpopcntdq -mfma).
//
// Register tile: P output pixels x B blocks of 16 output channels, one zmm accumulator each (P * B <= 24).
// Inner step (one 32-bit word k of one tap t): load B weight vectors (16 channels x 32 bits), then for every pixel
// broadcast its 32 input bits and do vpxord + vpopcntd + vpaddd into the B accumulators of that pixel.
#include <immintrin.h>

#include <array>
#include <cstring>
#include <utility>

#include "bitpack.h"
#include "kernels.h"

namespace binpose {

namespace {

// CW > 0: words per tap known at compile time (the inner loop unrolls fully); CW == 0: a.cw at run time.
template <int P, int B, int CW = 0>
void micro_tile(const MicroArgs& a) {
  __m512i acc[P][B];
  for (int p = 0; p < P; ++p)
    for (int b = 0; b < B; ++b) acc[p][b] = _mm512_setzero_si512();
  const std::uint32_t* px[P];
  for (int p = 0; p < P; ++p) px[p] = a.px[p];
  const std::ptrdiff_t ws = a.w_block_stride;
  const std::uint32_t* wk = a.w;
  const int cw = CW > 0 ? CW : a.cw;
  for (int t = 0; t < a.taps; ++t) {
    const std::ptrdiff_t off = a.tap_off[t];
    for (int k = 0; k < cw; ++k, wk += kLanes) {
      __m512i w[B];
      for (int b = 0; b < B; ++b) w[b] = _mm512_loadu_si512(wk + b * ws);
      for (int p = 0; p < P; ++p) {
        const __m512i x = _mm512_set1_epi32(static_cast<int>(px[p][off + k]));
        for (int b = 0; b < B; ++b)
          acc[p][b] = _mm512_add_epi32(acc[p][b], _mm512_popcnt_epi32(_mm512_xor_si512(x, w[b])));
      }
    }
  }
  for (int p = 0; p < P; ++p)
    for (int b = 0; b < B; ++b) _mm512_storeu_si512(a.pop + static_cast<std::ptrdiff_t>(p) * a.ld + b * kLanes, acc[p][b]);
}

using TileFn = void (*)(const MicroArgs&);

template <int B, int... Ps>
constexpr auto make_row(std::integer_sequence<int, Ps...>) {
  return std::array<TileFn, sizeof...(Ps)>{&micro_tile<Ps + 1, B>...};
}


void micro_avx512(const MicroArgs& a, int npix, int nblk) {
  static const auto r1 = make_row<1>(std::make_integer_sequence<int, 8>{});
  static const auto r2 = make_row<2>(std::make_integer_sequence<int, 8>{});
  static const auto r3 = make_row<3>(std::make_integer_sequence<int, 8>{});
  static const auto r4 = make_row<4>(std::make_integer_sequence<int, 6>{});
  if (npix == 6 && nblk == 4) {  // the full tile: an unrolled variant for 64 input channels per group
    if (a.cw == 2 && false) return micro_tile<6, 4, 2>(a);
  }
  switch (nblk) {
    case 1: r1[npix - 1](a); break;
    case 2: r2[npix - 1](a); break;
    case 3: r3[npix - 1](a); break;
    default: r4[npix - 1](a); break;
  }
}

// Channel chunk outer, pixels inner: per-channel parameters are loaded once per tile. Bits are gathered per pixel
// into whole 32-bit words (relative to oc0) and OR-ed into the zeroed output once per word.
void epilogue_avx512(const EpilogueParams& ep, const std::int32_t* pop, int ld, const std::int32_t* const* corr_rows,
                     const std::int64_t* q, int npix, int oc0, int n, int K) {
  const EpilogueParams e = ep;  // a local copy: the compiler then knows stores to the output cannot change it
  const std::int64_t C = e.out_channels;
  const __m512i vK = _mm512_set1_epi32(K);
  const __m512 zero = _mm512_setzero_ps();
  std::uint32_t words[kMaxTile][4] = {};
  float* outp[kMaxTile];
  const float* resp[kMaxTile];
  for (int p = 0; p < npix; ++p) {
    outp[p] = e.out ? e.out + q[p] * C + oc0 : nullptr;
    resp[p] = e.residual ? e.residual + q[p] * C + oc0 : nullptr;
  }
  for (int i = 0; i < n; i += kLanes) {
    const int cnt = n - i < kLanes ? n - i : kLanes;
    const __mmask16 m = static_cast<__mmask16>(cnt == kLanes ? 0xFFFFu : (1u << cnt) - 1u);
    const int o = oc0 + i;
    const __m512 sc = _mm512_maskz_loadu_ps(m, e.scale + o);
    const __m512 sh = _mm512_maskz_loadu_ps(m, e.shift + o);
    __m512 slope = zero, gamma = zero, zeta = zero, thr = zero;
    if (e.act != kActNone) slope = _mm512_maskz_loadu_ps(m, e.slope + o);
    if (e.act == kActRprelu) {
      gamma = _mm512_maskz_loadu_ps(m, e.gamma + o);
      zeta = _mm512_maskz_loadu_ps(m, e.zeta + o);
    }
    if (e.next_thr) thr = _mm512_maskz_loadu_ps(m, e.next_thr + o);
    for (int p = 0; p < npix; ++p) {
      __m512i d = _mm512_sub_epi32(vK, _mm512_slli_epi32(_mm512_loadu_si512(pop + p * ld + i), 1));
      if (corr_rows && corr_rows[p]) d = _mm512_sub_epi32(d, _mm512_loadu_si512(corr_rows[p] + i));
      __m512 y = _mm512_fmadd_ps(sc, _mm512_cvtepi32_ps(d), sh);
      if (e.residual) y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(m, resp[p] + i));
      if (e.act == kActPrelu) {
        const __mmask16 pos = _mm512_cmp_ps_mask(y, zero, _CMP_GT_OQ);
        y = _mm512_mask_blend_ps(pos, _mm512_mul_ps(slope, y), y);
      } else if (e.act == kActRprelu) {
        __m512 t = _mm512_sub_ps(y, gamma);
        const __mmask16 pos = _mm512_cmp_ps_mask(t, zero, _CMP_GT_OQ);
        y = _mm512_add_ps(_mm512_mask_blend_ps(pos, _mm512_mul_ps(slope, t), t), zeta);
      }
      if (e.out) _mm512_mask_storeu_ps(outp[p] + i, m, y);
      if (e.out_bits) {
        const std::uint32_t bits = _mm512_mask_cmp_ps_mask(m, _mm512_add_ps(y, thr), zero, _CMP_LT_OQ);
        words[p][i >> 5] |= bits << (i & 31);
      }
    }
  }
  if (e.out_bits) {
    const int nw = (n + 31) >> 5;
    for (int p = 0; p < npix; ++p) {
      std::uint32_t* row = e.out_bits + q[p] * e.bits_stride;
      for (int j = 0; j < nw; ++j) or_bits(row, oc0 + 32 * j, words[p][j], n - 32 * j < 32 ? n - 32 * j : 32);
    }
  }
}

void pack_rows_avx512(const float* x, std::size_t rows, std::size_t n, std::size_t x_stride, const float* thr,
                      std::uint32_t* out, std::size_t out_stride) {
  const std::size_t words = words32_for_bits(n);
  const __m512 zero = _mm512_setzero_ps();
  for (std::size_t r = 0; r < rows; ++r) {
    const float* row = x + r * x_stride;
    std::uint32_t* o = out + r * out_stride;
    for (std::size_t w = 0; w < words; ++w) {
      std::uint32_t bits = 0;
      for (int h = 0; h < 2; ++h) {
        const std::size_t i = w * 32 + h * 16;
        if (i >= n) break;
        const std::size_t cnt = n - i < 16 ? n - i : 16;
        const __mmask16 m = static_cast<__mmask16>(cnt == 16 ? 0xFFFFu : (1u << cnt) - 1u);
        __m512 v = _mm512_maskz_loadu_ps(m, row + i);
        if (thr) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, thr + i));
        bits |= static_cast<std::uint32_t>(_mm512_mask_cmp_ps_mask(m, v, zero, _CMP_LT_OQ)) << (16 * h);
      }
      o[w] = bits;
    }
  }
}


// ---------------------------------------------------------------------------------------------- direct float conv
// Register tile: P consecutive output pixels of one row x B blocks of 16 output channels (P * B <= 24 zmm
// accumulators). Inner step (one tap, one input channel): B weight vectors, then per pixel one broadcast input value
// and B FMAs. The epilogue adds the bias, applies the activation and stores with a mask for the channel tail.
template <int P, int B>
void fconv_tile(const FloatConvArgs& a, const float* row0, int ow0, int oc0, float* out_px) {
  __m512 acc[P][B];
  for (int p = 0; p < P; ++p)
    for (int b = 0; b < B; ++b) acc[p][b] = _mm512_setzero_ps();
  const std::ptrdiff_t xstep = static_cast<std::ptrdiff_t>(a.sw) * a.Cin;  // floats between neighbouring pixels
  const std::ptrdiff_t rstride = static_cast<std::ptrdiff_t>(a.Wp) * a.Cin;
  for (int kh = 0; kh < a.KH; ++kh) {
    const float* xr = row0 + static_cast<std::ptrdiff_t>(kh) * a.dh * rstride +
                      static_cast<std::ptrdiff_t>(ow0) * xstep;
    for (int kw = 0; kw < a.KW; ++kw) {
      const float* xk = xr + static_cast<std::ptrdiff_t>(kw) * a.dw * a.Cin;
      const float* wk = a.w + (static_cast<std::ptrdiff_t>(kh * a.KW + kw) * a.Cin) * a.OCp + oc0;
      for (int ci = 0; ci < a.Cin; ++ci, wk += a.OCp) {
        __m512 w[B];
        for (int b = 0; b < B; ++b) w[b] = _mm512_loadu_ps(wk + 16 * b);
        for (int p = 0; p < P; ++p) {
          const __m512 x = _mm512_set1_ps(xk[p * xstep + ci]);
          for (int b = 0; b < B; ++b) acc[p][b] = _mm512_fmadd_ps(x, w[b], acc[p][b]);
        }
      }
    }
  }
  const __m512 zero = _mm512_setzero_ps();
  for (int b = 0; b < B; ++b) {
    const int o = oc0 + 16 * b;
    const int cnt = a.OC - o < 16 ? a.OC - o : 16;
    if (cnt <= 0) break;
    const __mmask16 m = static_cast<__mmask16>(cnt == 16 ? 0xFFFFu : (1u << cnt) - 1u);
    const __m512 bias = _mm512_loadu_ps(a.bias + o);
    __m512 slope = zero, gamma = zero, zeta = zero;
    if (a.act.act == kActPrelu || a.act.act == kActRprelu) slope = _mm512_maskz_loadu_ps(m, a.act.slope + o);
    if (a.act.act == kActRprelu) {
      gamma = _mm512_maskz_loadu_ps(m, a.act.gamma + o);
      zeta = _mm512_maskz_loadu_ps(m, a.act.zeta + o);
    }
    for (int p = 0; p < P; ++p) {
      __m512 y = _mm512_add_ps(acc[p][b], bias);
      if (a.act.act == kActRelu) {
        y = _mm512_max_ps(y, zero);
      } else if (a.act.act == kActPrelu) {
        y = _mm512_mask_mul_ps(y, _mm512_cmp_ps_mask(y, zero, _CMP_LE_OQ), y, slope);
      } else if (a.act.act == kActRprelu) {
        __m512 t = _mm512_sub_ps(y, gamma);
        t = _mm512_mask_mul_ps(t, _mm512_cmp_ps_mask(t, zero, _CMP_LE_OQ), t, slope);
        y = _mm512_add_ps(t, zeta);
      }
      _mm512_mask_storeu_ps(out_px + static_cast<std::ptrdiff_t>(p) * a.OC + o, m, y);
    }
  }
}

template <int B>
void fconv_row(const FloatConvArgs& a, const float* row0, int oc0, float* out_row) {
  constexpr int P = B == 4 ? 6 : 8;  // P * B <= 24 accumulators
  int ow = 0;
  for (; ow + P <= a.OW; ow += P) fconv_tile<P, B>(a, row0, ow, oc0, out_row + static_cast<std::ptrdiff_t>(ow) * a.OC);
  for (; ow < a.OW; ++ow) fconv_tile<1, B>(a, row0, ow, oc0, out_row + static_cast<std::ptrdiff_t>(ow) * a.OC);
}

void float_conv_rows_avx512(const FloatConvArgs& a, std::int64_t r0, std::int64_t r1) {
  for (std::int64_t r = r0; r < r1; ++r) {
    const std::int64_t n = r / a.OH;
    const int oh = static_cast<int>(r % a.OH);
    const float* row0 = a.xp + ((n * a.Hp + static_cast<std::int64_t>(oh) * a.sh) * a.Wp) * a.Cin;
    float* out_row = a.out + r * a.OW * a.OC;
    for (int oc0 = 0; oc0 < a.OC; oc0 += 64) {
      switch ((a.OC - oc0 + 15) / 16) {
        case 1: fconv_row<1>(a, row0, oc0, out_row); break;
        case 2: fconv_row<2>(a, row0, oc0, out_row); break;
        case 3: fconv_row<3>(a, row0, oc0, out_row); break;
        default: fconv_row<4>(a, row0, oc0, out_row); break;
      }
    }
  }
}

}  // namespace

const IsaTable& isa_avx512() {
  static const IsaTable table{"avx512", &micro_avx512, &epilogue_avx512, &pack_rows_avx512, {0, 8, 8, 8, 6},
                              &float_conv_rows_avx512};
  return table;
}

}  // namespace binpose
