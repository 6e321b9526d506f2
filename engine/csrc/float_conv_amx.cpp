// The direct float conv on AMX-BF16 tiles, for convs with few input channels and dilation 1 along the width (the
// stems that see the image's 3 channels): one kernel row of input channels, KW * Cin values, must fit 32.
//
// FP32 accuracy from bf16 products: each value is split into hi = bf16(v) and lo = bf16(v - hi), and
// x * w = xh * wh + xh * wl + xl * wh (+ xl * wl, about 2^-16 of the product, dropped). Each bf16 x bf16 product is
// exact in FP32 and TDPBF16PS accumulates in FP32, so a sum of K products is off from the FP32 sum by about
// 2^-16 x the sum of |x * w| (1e-5 relative; FP32's own rounding adds 2^-24 per addition). Small, but a binary
// network downstream turns differences next to a sign threshold into flipped bits (docs/engine.md has the measured
// effect), hence BINPOSE_STEM_BF16=0; three matrix products on the tiles cost a fraction of the FMAs.
//
// Layout: the input is split once into zero-bordered hi and lo images [N][Hp][row] of bf16. A run of 16 consecutive
// output pixels of one row is gathered into A rows of K = KH * KW * Cin values in (ky, kx, ci) order, zero-padded
// to whole tiles of 32 (64-byte rows: a tile load straight from the image, with the 12-byte pixel stride of a
// stride-2 RGB stem, splits every row across two cache lines and costs 6x an aligned load). B tiles (prepared once
// by engine.float_ops.DirectConvWeights): per 32-value chunk of K and 16 output channels, 16 rows of 16 pairs, hi
// and lo: [chunk][block][hi, lo][16][32].
//
// Tiles: accumulators 0-1 (two blocks of 16 channels), A hi/lo in 2-3 and 4-5 by turns (a tile is only reloaded
// once the products reading it are done, so one pair loads while the other is read), B in 6-7.
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>

#include "act_avx512.h"
#include "amx_tiles.h"
#include "bconv.h"
#include "kernels.h"
#include "threadpool.h"

namespace binpose {

namespace {

// 16 floats -> bf16 bits, rounded to nearest even (finite values).
inline __m256i to_bf16(__m512 v) {
  const __m512i b = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(b, 16), _mm512_set1_epi32(1));
  const __m512i r = _mm512_add_epi32(b, _mm512_add_epi32(_mm512_set1_epi32(0x7FFF), lsb));
  return _mm512_cvtepi32_epi16(_mm512_srli_epi32(r, 16));
}

inline __m512 from_bf16(__m256i h) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)); }

// hi[i] = bf16(x[i]), lo[i] = bf16(x[i] - hi[i]) for n values.
void split_bf16(const float* x, std::int64_t n, std::uint16_t* hi, std::uint16_t* lo) {
  for (std::int64_t i = 0; i < n; i += 16) {
    const std::int64_t left = n - i;
    const __mmask16 m = static_cast<__mmask16>(left >= 16 ? 0xFFFFu : (1u << left) - 1u);
    const __m512 v = _mm512_maskz_loadu_ps(m, x + i);
    const __m256i h = to_bf16(v);
    const __m256i l = to_bf16(_mm512_sub_ps(v, from_bf16(h)));
    _mm256_mask_storeu_epi16(hi + i, m, h);
    _mm256_mask_storeu_epi16(lo + i, m, l);
  }
}

constexpr std::int64_t kTile = 512;  // bf16 values in one tile (16 rows x 32)

// One 32-value chunk of K for NJ (1 or 2) blocks: C_j += Ahi.Bhi_j + Alo.Bhi_j + Ahi.Blo_j, A hi and lo in tiles
// AH and AL. a: the chunk's first value in the hi rows, lo rows `lo_off` values further; b: the chunk's B tiles of
// the first block. (A macro: GCC's tile intrinsics take the tile numbers as literal tokens.)
#define BINPOSE_CHUNK_PRODUCTS(AH, AL, NJ, a, lo_off, a_stride, b) \
  do {                                                            \
    _tile_loadd(AH, (a), (a_stride));                             \
    _tile_loadd(AL, (a) + (lo_off), (a_stride));                  \
    _tile_loadd(6, (b), 64);                                      \
    _tile_dpbf16ps(0, AH, 6);                                     \
    if constexpr ((NJ) > 1) {                                     \
      _tile_loadd(7, (b) + 2 * kTile, 64);                        \
      _tile_dpbf16ps(1, AH, 7);                                   \
    }                                                             \
    _tile_dpbf16ps(0, AL, 6);                                     \
    if constexpr ((NJ) > 1) _tile_dpbf16ps(1, AL, 7);             \
    _tile_loadd(6, (b) + kTile, 64);                              \
    _tile_dpbf16ps(0, AH, 6);                                     \
    if constexpr ((NJ) > 1) {                                     \
      _tile_loadd(7, (b) + 3 * kTile, 64);                        \
      _tile_dpbf16ps(1, AH, 7);                                   \
    }                                                             \
  } while (0)

// 16 pixels x NJ blocks over every chunk into accumulator tiles 0 (and 1); only issued: the caller does other work
// while the matrix unit runs, then stores the sums.
template <int NJ>
void issue_blocks(const std::uint16_t* a, std::int64_t lo_off, std::int64_t a_stride, const std::uint16_t* b,
                  std::int64_t b_chunk_step, int chunks) {
  _tile_zero(0);
  if constexpr (NJ > 1) _tile_zero(1);
  int c = 0;
  for (; c + 2 <= chunks; c += 2) {
    BINPOSE_CHUNK_PRODUCTS(2, 3, NJ, a + 32 * c, lo_off, a_stride, b + c * b_chunk_step);
    BINPOSE_CHUNK_PRODUCTS(4, 5, NJ, a + 32 * (c + 1), lo_off, a_stride, b + (c + 1) * b_chunk_step);
  }
  if (c < chunks) BINPOSE_CHUNK_PRODUCTS(2, 3, NJ, a + 32 * c, lo_off, a_stride, b + c * b_chunk_step);
}
#undef BINPOSE_CHUNK_PRODUCTS

}  // namespace

bool float_conv_amx_bf16(const float* x, const FloatConvGeometry& g, const std::uint16_t* wt, const float* bias,
                         const ChannelAct& act, float* out) {
  const int C = g.Cin, Kr = g.KW * C;
  if (g.dw != 1 || Kr > 32) return false;
  const int N = g.N, Hp = g.H + g.pt + g.pb, Wp = g.W + g.pl + g.pr, OH = g.OH, OW = g.OW;
  const int runs = (OW + 15) / 16;  // 16-pixel runs per output row; the last may read past the row (dropped)
  const int chunks = (g.KH * Kr + 31) / 32;
  const std::int64_t Kp = 32LL * chunks;
  const std::int64_t row = std::max<std::int64_t>(static_cast<std::int64_t>(Wp) * C,
                                                  (static_cast<std::int64_t>(runs) * 16 - 1) * g.sw * C + Kr);
  const std::int64_t img = static_cast<std::int64_t>(Hp) * row;
  const std::unique_ptr<std::uint16_t[]> hi(new std::uint16_t[static_cast<std::size_t>(N * img)]);
  const std::unique_ptr<std::uint16_t[]> lo(new std::uint16_t[static_cast<std::size_t>(N * img)]);
  parallel_for(static_cast<std::int64_t>(N) * Hp, [&](std::int64_t i) {
    std::uint16_t* rh = hi.get() + i * row;
    std::uint16_t* rl = lo.get() + i * row;
    const std::int64_t h = i % Hp - g.pt, n = i / Hp;
    if (h < 0 || h >= g.H) {
      std::memset(rh, 0, sizeof(std::uint16_t) * row);
      std::memset(rl, 0, sizeof(std::uint16_t) * row);
      return;
    }
    const std::int64_t left = static_cast<std::int64_t>(g.pl) * C, valid = static_cast<std::int64_t>(g.W) * C;
    std::memset(rh, 0, sizeof(std::uint16_t) * left);
    std::memset(rl, 0, sizeof(std::uint16_t) * left);
    split_bf16(x + (n * g.H + h) * valid, valid, rh + left, rl + left);
    std::memset(rh + left + valid, 0, sizeof(std::uint16_t) * (row - left - valid));
    std::memset(rl + left + valid, 0, sizeof(std::uint16_t) * (row - left - valid));
  });

  const int nb = g.OCp / 16;
  const std::int64_t b_chunk_step = static_cast<std::int64_t>(nb) * 2 * kTile;
  const std::int64_t ky_step = static_cast<std::int64_t>(g.dh) * row;
  const std::int64_t px_step = static_cast<std::int64_t>(g.sw) * C;  // values between a run's pixels
  const std::int64_t total = static_cast<std::int64_t>(N) * OH * runs;
  const std::int64_t tasks = std::min<std::int64_t>(total, 8 * static_cast<std::int64_t>(get_threads()));
  const std::int64_t chunk = (total + tasks - 1) / tasks;
  const __mmask32 km = Kr == 32 ? ~0u : (1u << Kr) - 1u;
  const int passes = (nb + 1) / 2;  // two blocks of 16 channels per pass
  const std::uint16_t* const hi_img = hi.get();
  const std::uint16_t* const lo_img = lo.get();
  const int KH = g.KH, OC = g.OC;
  parallel_for((total + chunk - 1) / chunk, [&](std::int64_t t) {
    amx_configure();
    // The A rows of two runs by turns: [run][hi, lo][16 pixels][Kp]; the values past KH * Kr stay zero.
    thread_local std::vector<std::uint16_t, AlignedAlloc<std::uint16_t>> abuf;
    thread_local std::vector<float, AlignedAlloc<float>> accbuf;
    if (abuf.size() < static_cast<std::size_t>(64 * Kp)) abuf.resize(static_cast<std::size_t>(64 * Kp));
    if (accbuf.size() < static_cast<std::size_t>(16 * 32 * passes)) accbuf.resize(static_cast<std::size_t>(16 * 32 * passes));
    std::fill(abuf.begin(), abuf.begin() + 64 * Kp, std::uint16_t{0});
    float* const acc = accbuf.data();  // [pass][16 pixels][32 channels]
    const std::int64_t r0 = t * chunk, r1 = std::min(total, (t + 1) * chunk);
    struct Run {
      std::int64_t a0;  // first value of the run's first pixel at ky = 0 in the hi / lo images
      float* out;       // first output value of the run
      int npx;          // pixels inside the row
    };
    auto run_at = [&](std::int64_t r) {
      const std::int64_t n = r / (static_cast<std::int64_t>(OH) * runs);
      const int oh = static_cast<int>((r / runs) % OH), ox0 = static_cast<int>(r % runs) * 16;
      return Run{n * img + static_cast<std::int64_t>(oh) * g.sh * row + ox0 * px_step,
                 out + ((n * OH + oh) * OW + ox0) * OC, std::min(16, OW - ox0)};
    };
    // Pixels [p0, p1) of a run's A rows: KH copies of Kr values per pixel, hi and lo.
    auto gather = [KH, Kr, Kp, km, px_step, ky_step, hi_img, lo_img](std::int64_t a0, int p0, int p1,
                                                                     std::uint16_t* __restrict dh) {
      std::uint16_t* __restrict dl = dh + 16 * Kp;
      for (int p = p0; p < p1; ++p) {
        const std::uint16_t* sh = hi_img + a0 + p * px_step;
        const std::uint16_t* sl = lo_img + a0 + p * px_step;
        std::uint16_t* ph = dh + p * Kp;
        std::uint16_t* pl = dl + p * Kp;
        for (int ky = 0; ky < KH; ++ky, sh += ky_step, sl += ky_step, ph += Kr, pl += Kr) {
          _mm512_mask_storeu_epi16(ph, km, _mm512_maskz_loadu_epi16(km, sh));
          _mm512_mask_storeu_epi16(pl, km, _mm512_maskz_loadu_epi16(km, sl));
        }
      }
    };
    // Bias and activation of one pass's two blocks: acc -> the run's NHWC output.
    auto finish = [&](const Run& run, int k) {
      for (int jj = 0; jj < 2; ++jj) {
        const int o = (2 * k + jj) * 16, cnt = std::min(16, OC - o);
        if (cnt <= 0) break;
        const __mmask16 m = static_cast<__mmask16>(cnt == 16 ? 0xFFFFu : (1u << cnt) - 1u);
        const __m512 bv = _mm512_loadu_ps(bias + o);
        const Act16 a(act, o, m);
        const float* src = acc + k * 512 + jj * 16;
        for (int p = 0; p < run.npx; ++p)
          _mm512_mask_storeu_ps(run.out + static_cast<std::int64_t>(p) * OC + o, m,
                                a(_mm512_add_ps(_mm512_load_ps(src + p * 32), bv)));
      }
    };
    // Software pipeline: while the matrix unit works on a pass, the vector units gather a slice of the next run's
    // A rows and finish the previous pass (the last pass of a run is finished during the next run's first pass).
    gather(run_at(r0).a0, 0, 16, abuf.data());
    Run prev{};
    bool pending = false;
    for (std::int64_t r = r0; r < r1; ++r) {
      const Run cur = run_at(r);
      std::uint16_t* a = abuf.data() + ((r - r0) & 1) * 32 * Kp;
      std::uint16_t* next = abuf.data() + ((r - r0 + 1) & 1) * 32 * Kp;
      const std::int64_t next_a0 = r + 1 < r1 ? run_at(r + 1).a0 : -1;
      for (int k = 0; k < passes; ++k) {
        const std::uint16_t* b = wt + static_cast<std::int64_t>(2 * k) * 2 * kTile;
        if (2 * k + 1 < nb) issue_blocks<2>(a, 16 * Kp, 2 * Kp, b, b_chunk_step, chunks);
        else issue_blocks<1>(a, 16 * Kp, 2 * Kp, b, b_chunk_step, chunks);
        if (next_a0 >= 0) gather(next_a0, 16 * k / passes, 16 * (k + 1) / passes, next);
        if (k > 0) finish(cur, k - 1);
        else if (pending) finish(prev, passes - 1);
        _tile_stored(0, acc + k * 512, 128);
        if (2 * k + 1 < nb) _tile_stored(1, acc + k * 512 + 16, 128);
      }
      prev = cur;
      pending = true;
    }
    if (pending) finish(prev, passes - 1);
  });
  return true;
}

}  // namespace binpose
