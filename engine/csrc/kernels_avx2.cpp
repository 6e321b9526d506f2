// AVX2 micro-kernel (compiled only with -mavx2 -mpopcnt -mfma). No VPOPCNTDQ: popcount of each 32-bit lane with the
// pshufb nibble table into byte counters (at most 8 per step, flushed to 32-bit lanes every 31 steps via
// vpmaddubsw + vpmaddwd). Tile: P pixels x one block of 16 output channels (two ymm per pixel), blocks in turn.
#include <immintrin.h>

#include <cstring>

#include "bitpack.h"
#include "kernels.h"

namespace binpose {

namespace {

template <int P>
void micro_block(const MicroArgs& a, int b) {
  const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2,
                                       3, 2, 3, 3, 4);
  const __m256i low4 = _mm256_set1_epi8(0x0f);
  const __m256i ones8 = _mm256_set1_epi8(1);
  const __m256i ones16 = _mm256_set1_epi16(1);
  // 32-bit totals live in the output tile (touched once per flush); byte counters live in registers.
  __m256i acc8[P][2];
  for (int p = 0; p < P; ++p) {
    acc8[p][0] = acc8[p][1] = _mm256_setzero_si256();
    std::memset(a.pop + static_cast<std::ptrdiff_t>(p) * a.ld + b * kLanes, 0, sizeof(std::int32_t) * kLanes);
  }
  const std::uint32_t* wk = a.w + b * a.w_block_stride;
  int steps = 0;
  auto flush = [&]() {
    for (int p = 0; p < P; ++p)
      for (int h = 0; h < 2; ++h) {
        auto* out = reinterpret_cast<__m256i*>(a.pop + static_cast<std::ptrdiff_t>(p) * a.ld + b * kLanes + 8 * h);
        const __m256i wide = _mm256_madd_epi16(_mm256_maddubs_epi16(acc8[p][h], ones8), ones16);
        _mm256_storeu_si256(out, _mm256_add_epi32(_mm256_loadu_si256(out), wide));
        acc8[p][h] = _mm256_setzero_si256();
      }
    steps = 0;
  };
  for (int t = 0; t < a.taps; ++t) {
    const std::ptrdiff_t off = a.tap_off[t];
    for (int k = 0; k < a.cw; ++k, wk += kLanes) {
      const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wk));
      const __m256i w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wk + 8));
      for (int p = 0; p < P; ++p) {
        const __m256i x = _mm256_set1_epi32(static_cast<int>(a.px[p][off + k]));
        const __m256i v0 = _mm256_xor_si256(x, w0);
        const __m256i v1 = _mm256_xor_si256(x, w1);
        acc8[p][0] = _mm256_add_epi8(acc8[p][0], _mm256_shuffle_epi8(lut, _mm256_and_si256(v0, low4)));
        acc8[p][0] = _mm256_add_epi8(acc8[p][0],
                                     _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(v0, 4), low4)));
        acc8[p][1] = _mm256_add_epi8(acc8[p][1], _mm256_shuffle_epi8(lut, _mm256_and_si256(v1, low4)));
        acc8[p][1] = _mm256_add_epi8(acc8[p][1],
                                     _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(v1, 4), low4)));
      }
      if (++steps == 31) flush();
    }
  }
  if (steps > 0) flush();
}

void micro_avx2(const MicroArgs& a, int npix, int nblk) {
  for (int b = 0; b < nblk; ++b) {
    switch (npix) {
      case 1: micro_block<1>(a, b); break;
      case 2: micro_block<2>(a, b); break;
      default: micro_block<3>(a, b); break;
    }
  }
}

}  // namespace

const IsaTable& isa_avx2() {
  static const IsaTable table{"avx2", &micro_avx2, &epilogue_scalar, &pack_rows_scalar, {0, 3, 3, 3, 3}};
  return table;
}

}  // namespace binpose
