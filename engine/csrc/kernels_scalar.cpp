// Portable micro-kernel: plain C++, builds on any architecture (the reference path for the SIMD kernels).
#include <cstring>

#include "bitpack.h"
#include "kernels.h"

namespace binpose {

namespace {

inline int popcount32(std::uint32_t v) { return __builtin_popcount(v); }

void micro_scalar(const MicroArgs& a, int npix, int nblk) {
  const int nl = nblk * kLanes;
  for (int p = 0; p < npix; ++p) {
    std::int32_t acc[4 * kLanes] = {};
    for (int t = 0; t < a.taps; ++t) {
      const std::uint32_t* in = a.px[p] + a.tap_off[t];
      for (int k = 0; k < a.cw; ++k) {
        const std::uint32_t x = in[k];
        const std::uint32_t* wk = a.w + (static_cast<std::ptrdiff_t>(t) * a.cw + k) * kLanes;
        for (int b = 0; b < nblk; ++b) {
          const std::uint32_t* wb = wk + b * a.w_block_stride;
          for (int l = 0; l < kLanes; ++l) acc[b * kLanes + l] += popcount32(x ^ wb[l]);
        }
      }
    }
    std::memcpy(a.pop + static_cast<std::ptrdiff_t>(p) * a.ld, acc, sizeof(std::int32_t) * nl);
  }
}

}  // namespace

const IsaTable& isa_scalar() {
  static const IsaTable table{"scalar", &micro_scalar, &epilogue_scalar, &pack_rows_scalar, {0, 4, 4, 4, 4}};
  return table;
}

}  // namespace binpose
