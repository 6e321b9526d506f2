// Fused output transform of a binary convolution, applied to one tile of popcounts.
//
// For output pixel q and output channel o (o in [oc0, oc0 + n)):
//   dot  = K - 2 * pop[q][o] - corr[q][o]            exact integer dot product of the valid (non-padded) taps
//   y    = scale[o] * dot + shift[o]                  (folds alpha, BatchNorm, bias; one fused multiply-add)
//   y   += residual[q][o]                             if residual != null (float NHWC, same shape as the output)
//   y    = prelu(y, slope[o])                         if act == kPrelu   (prelu(v, a) = v > 0 ? v : a * v)
//   y    = prelu(y - gamma[o], slope[o]) + zeta[o]    if act == kRprelu
//   out[q][o]  = y                                    if out != null (float NHWC)
//   bit[q][o]  = (y + next_thr[o]) < 0                if out_bits != null (next_thr may be null = 0)
// `corr` is null for pixels without padded taps; K = taps * in_channels_per_group.
#pragma once
#include <cstddef>
#include <cstdint>

namespace binpose {

enum Activation : int { kActNone = 0, kActPrelu = 1, kActRprelu = 2 };

struct EpilogueParams {
  int out_channels = 0;               // C_out: channel stride of out / residual
  const float* scale = nullptr;       // [C_out]
  const float* shift = nullptr;       // [C_out]
  const float* residual = nullptr;    // [pixels][C_out] or null
  int act = kActNone;
  const float* slope = nullptr;       // [C_out] (prelu, rprelu)
  const float* gamma = nullptr;       // [C_out] (rprelu)
  const float* zeta = nullptr;        // [C_out] (rprelu)
  float* out = nullptr;               // [pixels][C_out] or null
  const float* next_thr = nullptr;    // [C_out] or null
  std::uint32_t* out_bits = nullptr;  // [pixels][bits_stride] or null; must be zeroed, bits are OR-ed in
  int bits_stride = 0;                // words per output pixel = ceil(C_out / 32)
};

// One tile: pixels q[0..npix) (global output pixel indices), channels [oc0, oc0 + n) (n <= ld).
// pop / corr are [npix][ld] int32 (corr row p may be null via corr_rows[p] == nullptr).
using EpilogueFn = void (*)(const EpilogueParams& e, const std::int32_t* pop, int ld,
                            const std::int32_t* const* corr_rows, const std::int64_t* q, int npix, int oc0, int n,
                            int K);

// Portable implementation (also the reference the SIMD versions are tested against).
void epilogue_scalar(const EpilogueParams& e, const std::int32_t* pop, int ld, const std::int32_t* const* corr_rows,
                     const std::int64_t* q, int npix, int oc0, int n, int K);

// ORs `n` bits (bit i of `mask`) into a packed row at bit position `pos`.
inline void or_bits(std::uint32_t* row, int pos, std::uint32_t mask, int n) {
  if (n < 32) mask &= (1u << n) - 1u;
  const int w = pos >> 5, s = pos & 31;
  row[w] |= mask << s;
  if (s != 0 && s + n > 32) row[w + 1] |= mask >> (32 - s);
}

}  // namespace binpose
