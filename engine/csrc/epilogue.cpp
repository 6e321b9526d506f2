// Portable epilogue: see epilogue.h for the exact formula.
#include "epilogue.h"

#include <cmath>

namespace binpose {

void epilogue_scalar(const EpilogueParams& e, const std::int32_t* pop, int ld, const std::int32_t* const* corr_rows,
                     const std::int64_t* q, int npix, int oc0, int n, int K) {
  const int C = e.out_channels;
  for (int p = 0; p < npix; ++p) {
    const std::int32_t* pr = pop + static_cast<std::ptrdiff_t>(p) * ld;
    const std::int32_t* cr = corr_rows ? corr_rows[p] : nullptr;
    const std::int64_t base = q[p] * C;
    std::uint32_t bits = 0;
    int nbits = 0, bitpos = oc0;
    for (int i = 0; i < n; ++i) {
      const int o = oc0 + i;
      const std::int32_t dot = K - 2 * pr[i] - (cr ? cr[i] : 0);
      float y = std::fmaf(e.scale[o], static_cast<float>(dot), e.shift[o]);
      if (e.residual) y += e.residual[base + o];
      if (e.act == kActPrelu) {
        y = y > 0.0f ? y : e.slope[o] * y;
      } else if (e.act == kActRprelu) {
        float t = y - e.gamma[o];
        t = t > 0.0f ? t : e.slope[o] * t;
        y = t + e.zeta[o];
      }
      if (e.out) e.out[base + o] = y;
      if (e.out_bits) {
        const float v = e.next_thr ? y + e.next_thr[o] : y;
        bits |= static_cast<std::uint32_t>(v < 0.0f) << nbits;
        if (++nbits == 32) {
          or_bits(e.out_bits + q[p] * e.bits_stride, bitpos, bits, 32);
          bits = 0;
          nbits = 0;
          bitpos = o + 1;
        }
      }
    }
    if (e.out_bits && nbits > 0) or_bits(e.out_bits + q[p] * e.bits_stride, bitpos, bits, nbits);
  }
}

}  // namespace binpose
