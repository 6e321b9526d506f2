// AVX-512 micro-kernel with VPOPCNTDQ (compiled only with -mavx512f -mavx512bw -mavx512vl -mavx512vpopcntdq -mfma).
//
// Register tile: P output pixels x B blocks of 16 output channels, one zmm accumulator each (P * B <= 24).
// Inner step (one 32-bit word k of one tap t): load B weight vectors (16 channels x 32 bits), then for every pixel
// broadcast its 32 input bits and do vpxord + vpopcntd + vpaddd into the B accumulators of that pixel.
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <memory>
#include <utility>

#include "act_avx512.h"
#include "bconv.h"
#if defined(BINPOSE_HAVE_AMX)
#include "amx_tiles.h"
#endif
#include "bitpack.h"
#include "dispatch.h"
#include "kernels.h"
#include "threadpool.h"

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
// into whole 32-bit words (relative to oc0) and OR-ed into the zeroed output once per word. (The AMX path, whose dots
// are exact already, has its own: PairEpilogue.)
template <int kMax = kMaxTile>
void epilogue_avx512_t(const EpilogueParams& ep, const std::int32_t* pop, int ld,
                       const std::int32_t* const* corr_rows, const std::int64_t* q, int npix, int oc0, int n, int K) {
  const EpilogueParams e = ep;  // a local copy: the compiler then knows stores to the output cannot change it
  const std::int64_t C = e.out_channels;
  const __m512i vK = _mm512_set1_epi32(K);
  const __m512 zero = _mm512_setzero_ps();
  std::uint32_t words[kMax][4] = {};
  float* outp[kMax];
  const float* resp[kMax];
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

void epilogue_avx512(const EpilogueParams& e, const std::int32_t* pop, int ld, const std::int32_t* const* corr_rows,
                     const std::int64_t* q, int npix, int oc0, int n, int K) {
  epilogue_avx512_t<>(e, pop, ld, corr_rows, q, npix, oc0, n, K);
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
    if (a.dw == 1) {  // the taps of a kernel row and their channels are one contiguous run, in input and weights
      const float* wk = a.w + (static_cast<std::ptrdiff_t>(kh) * a.KW * a.Cin) * a.OCp + oc0;
      const int run = a.KW * a.Cin;
      for (int j = 0; j < run; ++j, wk += a.OCp) {
        __m512 w[B];
        for (int b = 0; b < B; ++b) w[b] = _mm512_loadu_ps(wk + 16 * b);
        for (int p = 0; p < P; ++p) {
          const __m512 x = _mm512_set1_ps(xr[p * xstep + j]);
          for (int b = 0; b < B; ++b) acc[p][b] = _mm512_fmadd_ps(x, w[b], acc[p][b]);
        }
      }
      continue;
    }
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
  for (int b = 0; b < B; ++b) {
    const int o = oc0 + 16 * b;
    const int cnt = a.OC - o < 16 ? a.OC - o : 16;
    if (cnt <= 0) break;
    const __mmask16 m = static_cast<__mmask16>(cnt == 16 ? 0xFFFFu : (1u << cnt) - 1u);
    const __m512 bias = _mm512_loadu_ps(a.bias + o);
    const Act16 act(a.act, o, m);
    for (int p = 0; p < P; ++p) {
      const __m512 y = act(_mm512_add_ps(acc[p][b], bias));
      _mm512_mask_storeu_ps(out_px + static_cast<std::ptrdiff_t>(p) * a.OC + o, m, y);
    }
  }
}

template <int B>
void fconv_row(const FloatConvArgs& a, const float* row0, int oc0, float* out_row) {
  constexpr int P = B == 4 ? 6 : 8;  // P * B <= 24 accumulators
  int ow = 0;
  for (; ow + P <= a.OW; ow += P) fconv_tile<P, B>(a, row0, ow, oc0, out_row + static_cast<std::ptrdiff_t>(ow) * a.OC);
  // The row's tail as one narrower tile (one pixel at a time would reload the weights for every pixel).
  float* tail = out_row + static_cast<std::ptrdiff_t>(ow) * a.OC;
  switch (a.OW - ow) {
    case 0: break;
    case 1: fconv_tile<1, B>(a, row0, ow, oc0, tail); break;
    case 2: fconv_tile<2, B>(a, row0, ow, oc0, tail); break;
    case 3: fconv_tile<3, B>(a, row0, ow, oc0, tail); break;
    case 4: fconv_tile<4, B>(a, row0, ow, oc0, tail); break;
    case 5: fconv_tile<5, B>(a, row0, ow, oc0, tail); break;
    case 6: fconv_tile<6, B>(a, row0, ow, oc0, tail); break;
    default: fconv_tile<7, B>(a, row0, ow, oc0, tail); break;  // P is at most 8
  }
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

#if defined(BINPOSE_HAVE_AMX)
// ------------------------------------------------------------------------------------------------ AMX-INT8 conv
// The +-1 dot products as int8 matrix products on the AMX tiles (TDPBSSD: 16x64 int8 times 64x16 int8 into 16x16
// int32, about 3.7 T MAC/s on one core here against about 1 T for XOR + VPOPCNTD). The packed input of each image and
// group is expanded to +-1 bytes in a zero-bordered buffer [rows][Wp][64 * chunks]: zero padding and padded channels
// are 0 bytes, so the products are exact with no border correction. Output pixels go in runs of 16 along a row (one
// A tile = 16 pixels x 64 channels of one tap, row stride = stride_w * channels); a step computes 2 runs x 32 output
// channels in four accumulator tiles, then the shared epilogue turns the dots into floats and bits.
namespace {

// The AMX path's epilogue for one block pair (up to 32 output channels from oc0), the arithmetic of epilogue_avx512_t:
// the per-channel vectors are loaded once per block pair (the shared epilogue loads them again for every 16-pixel
// run) and each pixel takes both 16-channel halves in one pass, with the activation, the residual, the outputs and
// the number of halves fixed at compile time.
class PairEpilogue {
 public:
  PairEpilogue(const EpilogueParams& e, int oc0, int n) : e_(e), oc0_(oc0), n_(n) {
    const __m512 zero = _mm512_setzero_ps();
    for (int v = 0; v < 2; ++v) {
      const int cnt = std::max(0, std::min(16, n - 16 * v)), o = oc0 + 16 * v;
      m_[v] = static_cast<__mmask16>(cnt >= 16 ? 0xFFFFu : (1u << cnt) - 1u);
      sc_[v] = _mm512_maskz_loadu_ps(m_[v], e.scale + o);
      sh_[v] = _mm512_maskz_loadu_ps(m_[v], e.shift + o);
      slope_[v] = e.act != kActNone ? _mm512_maskz_loadu_ps(m_[v], e.slope + o) : zero;
      gamma_[v] = e.act == kActRprelu ? _mm512_maskz_loadu_ps(m_[v], e.gamma + o) : zero;
      zeta_[v] = e.act == kActRprelu ? _mm512_maskz_loadu_ps(m_[v], e.zeta + o) : zero;
      thr_[v] = e.next_thr ? _mm512_maskz_loadu_ps(m_[v], e.next_thr + o) : zero;
    }
    // A plain store of the pixel's bits word where the block pair owns all of it (its channels start a word and
    // reach its end or the last channel); otherwise OR-ed in, as other block pairs (groups) share the word.
    own_word_ = oc0 % 32 == 0 && (n == 32 || oc0 + n == e.out_channels);
    const bool res = e.residual != nullptr, out = e.out != nullptr, bits = e.out_bits != nullptr;
    const int nv = n > 16 ? 2 : 1;
    fn_ = e.act == kActPrelu    ? pick<kActPrelu>(res, out, bits, nv)
          : e.act == kActRprelu ? pick<kActRprelu>(res, out, bits, nv)
                                : pick<kActNone>(res, out, bits, nv);
  }

  // dots: one row of 32 int32 dot products per pixel; q: the pixels' global indices.
  void operator()(const std::int32_t* dots, const std::int64_t* q, int npix) const { (this->*fn_)(dots, q, npix); }

 private:
  using Fn = void (PairEpilogue::*)(const std::int32_t*, const std::int64_t*, int) const;

  template <int kAct>
  static Fn pick(bool res, bool out, bool bits, int nv) {
    return res ? pick_out<kAct, true>(out, bits, nv) : pick_out<kAct, false>(out, bits, nv);
  }
  template <int kAct, bool kRes>
  static Fn pick_out(bool out, bool bits, int nv) {
    return out ? pick_bits<kAct, kRes, true>(bits, nv) : pick_bits<kAct, kRes, false>(bits, nv);
  }
  template <int kAct, bool kRes, bool kOut>
  static Fn pick_bits(bool bits, int nv) {
    if (bits) return nv == 2 ? &PairEpilogue::run<kAct, kRes, kOut, true, 2> : &PairEpilogue::run<kAct, kRes, kOut, true, 1>;
    return nv == 2 ? &PairEpilogue::run<kAct, kRes, kOut, false, 2> : &PairEpilogue::run<kAct, kRes, kOut, false, 1>;
  }

  template <int kAct, bool kRes, bool kOut, bool kBits, int kNv>
  void run(const std::int32_t* dots, const std::int64_t* q, int npix) const {
    // Everything in locals first: the float stores below may alias the members, which would then be loaded again
    // for every pixel.
    const __m512 zero = _mm512_setzero_ps();
    const std::int64_t C = e_.out_channels, bits_stride = e_.bits_stride;
    const int oc0 = oc0_, nbits = n_ < 32 ? n_ : 32;
    const bool own_word = own_word_;
    const float* residual = e_.residual;
    float* out = e_.out;
    std::uint32_t* out_bits = e_.out_bits;
    __mmask16 m[kNv];
    __m512 sc[kNv], sh[kNv], slope[kNv], gamma[kNv], zeta[kNv], thr[kNv];
    for (int v = 0; v < kNv; ++v) {
      m[v] = m_[v], sc[v] = sc_[v], sh[v] = sh_[v], slope[v] = slope_[v], gamma[v] = gamma_[v], zeta[v] = zeta_[v];
      thr[v] = thr_[v];
    }
    for (int p = 0; p < npix; ++p) {
      const std::int64_t at = q[p] * C + oc0;
      std::uint32_t word = 0;
      for (int v = 0; v < kNv; ++v) {
        __m512 y = _mm512_fmadd_ps(sc[v], _mm512_cvtepi32_ps(_mm512_loadu_si512(dots + p * 32 + 16 * v)), sh[v]);
        if constexpr (kRes) y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(m[v], residual + at + 16 * v));
        if constexpr (kAct == kActPrelu) {
          const __mmask16 pos = _mm512_cmp_ps_mask(y, zero, _CMP_GT_OQ);
          y = _mm512_mask_blend_ps(pos, _mm512_mul_ps(slope[v], y), y);
        } else if constexpr (kAct == kActRprelu) {
          const __m512 t = _mm512_sub_ps(y, gamma[v]);
          const __mmask16 pos = _mm512_cmp_ps_mask(t, zero, _CMP_GT_OQ);
          y = _mm512_add_ps(_mm512_mask_blend_ps(pos, _mm512_mul_ps(slope[v], t), t), zeta[v]);
        }
        if constexpr (kOut) _mm512_mask_storeu_ps(out + at + 16 * v, m[v], y);
        if constexpr (kBits)
          word |= static_cast<std::uint32_t>(_mm512_mask_cmp_ps_mask(m[v], _mm512_add_ps(y, thr[v]), zero, _CMP_LT_OQ))
                  << (16 * v);
      }
      if constexpr (kBits) {
        std::uint32_t* row = out_bits + q[p] * bits_stride;
        if (own_word) row[oc0 >> 5] = word;
        else or_bits(row, oc0, word, nbits);
      }
    }
  }

  const EpilogueParams e_;  // a copy: stores to the outputs cannot change it
  int oc0_, n_;
  bool own_word_ = false;
  __mmask16 m_[2];
  __m512 sc_[2], sh_[2], slope_[2], gamma_[2], zeta_[2], thr_[2];
  Fn fn_ = nullptr;
};

// A row of W pixels of packed bits (bit 1 = -1; in_words words per pixel, the group's Cg channels from bit c0) ->
// +-1 bytes, Cp bytes per pixel: `chunks` chunks of 64 channels, 0 past Cg. Everything by value: the int8 stores
// may alias any variable, so references would be loaded again after every store.
void expand_pixels(const std::uint32_t* s, int W, int in_words, std::int64_t c0, int Cg, int cwg, int chunks,
                   std::int8_t* d, std::int64_t Cp) {
  const __m512i plus = _mm512_set1_epi8(1), minus = _mm512_set1_epi8(-1);
  const int last = Cg - 64 * (chunks - 1);  // channels of the last chunk, 1..64
  const __mmask64 keep = last >= 64 ? ~0ULL : (1ULL << last) - 1ULL;
  std::vector<std::uint32_t> tmp(c0 % 32 == 0 ? 0 : static_cast<std::size_t>(cwg));
  for (int x = 0; x < W; ++x, d += Cp) {
    const std::uint32_t* px = s + static_cast<std::int64_t>(x) * in_words;
    if (c0 % 32 == 0) {
      px += c0 / 32;
    } else {
      extract_bits(px, 0, c0, Cg, tmp.data());
      px = tmp.data();
    }
    int c = 0;
    for (; c < chunks - 1; ++c) {
      std::uint64_t bits;
      std::memcpy(&bits, px + 2 * c, sizeof(bits));
      _mm512_storeu_si512(d + 64 * c, _mm512_mask_blend_epi8(bits, plus, minus));
    }
    std::uint64_t bits = px[2 * c];
    if (last > 32) bits |= static_cast<std::uint64_t>(px[2 * c + 1]) << 32;  // never past the pixel's words
    _mm512_storeu_si512(d + 64 * c, _mm512_maskz_mov_epi8(keep, _mm512_mask_blend_epi8(bits, plus, minus)));
  }
}

// Weight tiles as bits (ConvWeights::amx) -> +-1 bytes: one 64-byte row per uint64.
inline void expand_rows(const std::uint64_t* bits, std::int64_t rows, std::int8_t* dst) {
  const __m512i plus = _mm512_set1_epi8(1), minus = _mm512_set1_epi8(-1);
  for (std::int64_t r = 0; r < rows; ++r) _mm512_store_si512(dst + 64 * r, _mm512_mask_blend_epi8(bits[r], plus, minus));
}

// One step: runs a0 (and a1) x weight blocks w0 (and w1) over every tap and channel chunk, into accumulator tiles
// 0-3. Only issued here: after each tap, `between(t)` runs a slice of the previous step's epilogue on the vector
// units while the matrix unit works through the products (issued all at once, the epilogue would wait behind them
// in the reorder buffer); amx_store then writes the dots to pop[32][32].
template <bool kTwoRuns, bool kTwoBlocks, typename Between>
void amx_issue(const std::int8_t* a0, const std::int8_t* a1, std::int64_t a_stride, const std::ptrdiff_t* tap_off,
               int T, int chunks, const std::int8_t* w0, const std::int8_t* w1, Between&& between) {
  _tile_zero(0);
  if constexpr (kTwoBlocks) _tile_zero(1);
  if constexpr (kTwoRuns) _tile_zero(2);
  if constexpr (kTwoRuns && kTwoBlocks) _tile_zero(3);
  for (int t = 0; t < T; ++t) {
    for (int c = 0; c < chunks; ++c) {
      const std::ptrdiff_t off = tap_off[t] + 64 * c;
      const std::ptrdiff_t wo = (static_cast<std::ptrdiff_t>(t) * chunks + c) * 1024;
      _tile_loadd(4, a0 + off, a_stride);
      _tile_loadd(6, w0 + wo, 64);
      _tile_dpbssd(0, 4, 6);
      if constexpr (kTwoBlocks) {
        _tile_loadd(7, w1 + wo, 64);
        _tile_dpbssd(1, 4, 7);
      }
      if constexpr (kTwoRuns) {
        _tile_loadd(5, a1 + off, a_stride);
        _tile_dpbssd(2, 5, 6);
        if constexpr (kTwoBlocks) _tile_dpbssd(3, 5, 7);
      }
    }
    between(t);
  }
}

inline void amx_store(bool two_runs, bool two_blocks, std::int32_t* pop) {
  _tile_stored(0, pop, 128);
  if (two_blocks) _tile_stored(1, pop + 16, 128);
  if (two_runs) _tile_stored(2, pop + 16 * 32, 128);
  if (two_runs && two_blocks) _tile_stored(3, pop + 16 * 32 + 16, 128);
}

template <typename Between>
void amx_issue_any(bool two_runs, bool two_blocks, const std::int8_t* const* a, std::int64_t a_stride,
                   const std::ptrdiff_t* tap_off, int T, int chunks, const std::int8_t* w0, std::int64_t wtile,
                   Between&& between) {
  if (two_runs) {
    if (two_blocks) amx_issue<true, true>(a[0], a[1], a_stride, tap_off, T, chunks, w0, w0 + wtile, between);
    else amx_issue<true, false>(a[0], a[1], a_stride, tap_off, T, chunks, w0, nullptr, between);
  } else {
    if (two_blocks) amx_issue<false, true>(a[0], nullptr, a_stride, tap_off, T, chunks, w0, w0 + wtile, between);
    else amx_issue<false, false>(a[0], nullptr, a_stride, tap_off, T, chunks, w0, nullptr, between);
  }
}

void conv_amx(const std::uint32_t* input, const ConvGeometry& geo, const ConvWeights& w, const EpilogueParams& e) {
  const int G = w.groups, Cg = w.in_per_group, T = w.taps(), nb = w.blocks, chunks = w.amx_chunks;
  const int N = geo.N, H = geo.H, W = geo.W, OH = geo.OH, OW = geo.OW, sh = geo.stride_h, sw = geo.stride_w;
  const std::int64_t Cp = 64LL * chunks;
  const int Hp = H + geo.pad_top + geo.pad_bottom, Wp = W + geo.pad_left + geo.pad_right;
  // The last run of a row may read up to 15 pixels past the row (results dropped): slack rows keep it in the buffer.
  const int rows = Hp + (16 * sw + Wp - 1) / Wp + 1;
  const std::int64_t img = static_cast<std::int64_t>(rows) * Wp * Cp;
  // Not value-initialized: each row task writes its pixels and zeroes its own border (and the first and last rows of
  // an image zero the padding rows above and below), so no byte is written twice.
  const std::unique_ptr<std::int8_t[]> buf(new std::int8_t[static_cast<std::size_t>(N) * G * img]);
  const std::int64_t row_bytes = static_cast<std::int64_t>(Wp) * Cp;
  parallel_for(static_cast<std::int64_t>(N) * G * H, [&](std::int64_t i) {
    const int h = static_cast<int>(i % H), g = static_cast<int>((i / H) % G), n = static_cast<int>(i / (H * G));
    std::int8_t* image = buf.get() + (static_cast<std::int64_t>(n) * G + g) * img;
    std::int8_t* row = image + (static_cast<std::int64_t>(h) + geo.pad_top) * row_bytes;
    if (h == 0) std::memset(image, 0, static_cast<std::size_t>(geo.pad_top * row_bytes));
    if (h == H - 1) {
      const std::int64_t below = static_cast<std::int64_t>(H) + geo.pad_top;
      std::memset(image + below * row_bytes, 0, static_cast<std::size_t>((rows - below) * row_bytes));
    }
    std::memset(row, 0, static_cast<std::size_t>(geo.pad_left * Cp));
    std::memset(row + (static_cast<std::int64_t>(geo.pad_left) + W) * Cp, 0, static_cast<std::size_t>(geo.pad_right * Cp));
    expand_pixels(input + (static_cast<std::int64_t>(n) * H + h) * W * geo.in_words, W, geo.in_words,
                  static_cast<std::int64_t>(g) * Cg, Cg, w.cwg, chunks, row + static_cast<std::int64_t>(geo.pad_left) * Cp,
                  Cp);
  });
  std::vector<std::ptrdiff_t> tap_off(T);
  for (int kh = 0; kh < w.kh; ++kh)
    for (int kw = 0; kw < w.kw; ++kw)
      tap_off[kh * w.kw + kw] = (static_cast<std::ptrdiff_t>(kh) * geo.dil_h * Wp + kw * geo.dil_w) * Cp;
  // Runs of 16 output pixels. Stride 1: along the padded rows as one line (pixel v = oh * Wp + ow, ow < Wp; the
  // columns ow >= OW are computed and dropped), so narrow maps waste little. Other strides: along each output row.
  const bool line = sh == 1 && sw == 1;
  const int runs_per_row = (OW + 15) / 16;
  const std::int64_t runs = line ? (static_cast<std::int64_t>(OH - 1) * Wp + OW + 15) / 16
                                 : static_cast<std::int64_t>(OH) * runs_per_row;
  const std::int64_t pairs = (runs + 1) / 2, all_pairs = N * pairs;  // all_pairs: every image's, image by image
  // Tasks: chunks of output-channel pairs x chunks of the batch's run pairs. Each task expands the weight tiles of its
  // own channel pairs once and reuses them over its runs in every image of the batch (per image, the expansion took
  // ~6% of sbpn-r18's time at batch 4). Channel pairs may be split between tasks only where they own whole 32-bit
  // words of the packed output (one group, or 32-channel multiples per group).
  std::vector<std::pair<int, int>> units;  // (group, first block) of each pair of 16-channel blocks
  for (int g = 0; g < G; ++g)
    for (int b = 0; b < nb; b += 2) units.emplace_back(g, b);
  const std::int64_t U = static_cast<std::int64_t>(units.size());
  const int threads = get_threads();
  const bool split_oc = G == 1 || w.oc_per_group % 32 == 0;
  const std::int64_t nuc = split_oc ? std::min<std::int64_t>(U, 4LL * threads) : 1;
  const std::int64_t npc =
      threads > 1 ? std::max<std::int64_t>(1, std::min<std::int64_t>(all_pairs, (4LL * threads + nuc - 1) / nuc)) : 1;
  const std::int64_t per_task = (all_pairs + npc - 1) / npc;
  const std::int64_t a_stride = static_cast<std::int64_t>(sw) * Cp;
  const std::int64_t wtile = static_cast<std::int64_t>(T) * chunks * 1024;  // bytes per 16-channel block, expanded
  parallel_for(nuc * npc, [&](std::int64_t task) {
    const std::int64_t uc = task / npc, pc = task % npc;
    const std::int64_t pr0 = pc * per_task, pr1 = std::min(all_pairs, pr0 + per_task);
    const std::int64_t u0 = uc * U / nuc, u1 = (uc + 1) * U / nuc;
    amx_configure();
    alignas(64) std::int32_t pop[32 * 32];
    alignas(64) std::int32_t gathered[2][16 * 32];
    std::int64_t qidx[2][16];
    thread_local std::vector<std::int8_t, AlignedAlloc<std::int8_t>> wbuf;  // two blocks' tiles as bytes
    if (static_cast<std::int64_t>(wbuf.size()) < 2 * wtile) wbuf.resize(static_cast<std::size_t>(2 * wtile));
    for (std::int64_t u = u0; u < u1; ++u) {
      const int g = units[u].first, b = units[u].second;
      const bool two_blocks = b + 1 < nb;
      const std::int8_t* w0 = wbuf.data();
      expand_rows(w.amx.data() + (static_cast<std::int64_t>(g) * nb + b) * (wtile / 64), (two_blocks ? 2 : 1) * wtile / 64,
                  wbuf.data());
      const int oc0 = g * w.oc_per_group + b * 16;
      const int noc = std::min(32, w.oc_per_group - b * 16);
      const PairEpilogue epilogue(e, oc0, noc);
      // The runs of a step: their image, where each starts (line: it may run on into the next rows), how many.
      struct Runs {
        int img = 0, n = 0, oh0[2] = {0, 0}, ow0[2] = {0, 0};
      };
      // The previous step's epilogue, prepared from pop (each run's real output pixels, ow < OW and oh < OH, in
      // order, their dot rows gathered when not contiguous), then run one run at a time between the taps of the
      // next step: run 0 after its first tap, run 1 after its middle tap (`between`), what is left after the last.
      const std::int32_t* dots[2] = {nullptr, nullptr};
      int npix[2] = {0, 0};
      int done = 2;
      const int second = T / 2;
      auto prepare = [&](const Runs& st) {
        for (int k = 0; k < 2; ++k) {
          int np = 0, oh = st.oh0[k], ow = st.ow0[k];
          int slot[16];
          for (int i = 0; k < st.n && i < 16; ++i, ++ow) {
            if (line && ow == Wp) {
              ow = 0;
              ++oh;
            }
            if (oh < OH && ow < OW) {
              slot[np] = i;
              qidx[k][np++] = (static_cast<std::int64_t>(st.img) * OH + oh) * OW + ow;
            }
          }
          dots[k] = pop + 16 * k * 32;  // the epilogue reads dot rows 32 apart
          if (np > 0 && slot[np - 1] != np - 1) {
            for (int i = 0; i < np; ++i) std::memcpy(gathered[k] + i * 32, dots[k] + slot[i] * 32, 32 * sizeof(std::int32_t));
            dots[k] = gathered[k];
          }
          npix[k] = np;
        }
        done = 0;
      };
      auto finish_run = [&]() {
        if (npix[done] > 0) epilogue(dots[done], qidx[done], npix[done]);
        ++done;
      };
      auto between = [&](int t) {
        if (done == 0 && t == 0) finish_run();
        if (done == 1 && t == second) finish_run();
      };
      Runs prev;
      for (std::int64_t gp = pr0; gp < pr1; ++gp) {
        Runs cur;
        cur.img = static_cast<int>(gp / pairs);
        const std::int64_t pr = gp % pairs;
        const std::int8_t* ib = buf.get() + (static_cast<std::int64_t>(cur.img) * G + g) * img;
        const std::int8_t* a[2] = {nullptr, nullptr};
        cur.n = 2 * pr + 1 < runs ? 2 : 1;
        for (int k = 0; k < cur.n; ++k) {
          const std::int64_t r = 2 * pr + k;
          cur.oh0[k] = line ? static_cast<int>(16 * r / Wp) : static_cast<int>(r / runs_per_row);
          cur.ow0[k] = line ? static_cast<int>(16 * r % Wp) : static_cast<int>(r % runs_per_row) * 16;
          a[k] = ib + (static_cast<std::int64_t>(cur.oh0[k]) * sh * Wp + static_cast<std::int64_t>(cur.ow0[k]) * sw) * Cp;
        }
        if (prev.n > 0) prepare(prev);
        amx_issue_any(cur.n == 2, two_blocks, a, a_stride, tap_off.data(), T, chunks, w0, wtile, between);
        while (done < 2) finish_run();
        amx_store(cur.n == 2, two_blocks, pop);
        prev = cur;
      }
      if (prev.n > 0) {
        prepare(prev);
        while (done < 2) finish_run();
      }
    }
    _tile_release();
  });
}

}  // namespace
#endif

const IsaTable& isa_avx512() {
  static const IsaTable table{"avx512", &micro_avx512, &epilogue_avx512, &pack_rows_avx512, {0, 8, 8, 8, 6},
                              &float_conv_rows_avx512};
  return table;
}

#if defined(BINPOSE_HAVE_AMX)
const IsaTable& isa_amx() {
  static const IsaTable table = [] {
    IsaTable t = isa_avx512();
    t.name = "amx";
    t.conv = &conv_amx;
#if defined(BINPOSE_HAVE_AMX_BF16)
    if (cpu_has_amx_bf16()) t.float_conv_bf16 = &float_conv_amx_bf16;
#endif
    return t;
  }();
  return table;
}
#endif

}  // namespace binpose
