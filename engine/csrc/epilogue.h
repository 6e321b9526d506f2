// Fused output transform of a binary convolution, applied to one tile of popcounts.
//
// For output pixel q and output channel o (o in [oc0, oc0 + n)):
//   dot  = K - 2 * pop[q][o] - corr[q][o]            exact integer dot product of the valid (non-padded) taps
//   y    = scale[o] * dot + shift[o]                  (folds alpha, BatchNorm, bias; one fused multiply-add)
//   y   += residual[r(q)][o]                          if residual != null (float NHWC: the output's shape, r(q) = q;
//                                                     or, with res_up = f > 1, nearest-upsampled on the fly:
//                                                     [N][OH/f][OW/f], r(q) = the pixel (oh / f, ow / f))
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
  const float* residual = nullptr;    // [pixels][C_out] or null (with res_up > 1: [N][OH/f][OW/f][C_out])
  int res_up = 1;                     // the residual's nearest-upsampling factor f (1: the output's own shape)
  int out_h = 0, out_w = 0;           // OH and OW, where res_up > 1
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

// The residual's pixel for output pixel q: q itself, or its source pixel where the residual is upsampled on the fly.
inline std::int64_t residual_pixel(const EpilogueParams& e, std::int64_t q) {
  if (e.res_up == 1) return q;
  const std::int64_t plane = static_cast<std::int64_t>(e.out_h) * e.out_w;
  const std::int64_t n = q / plane, oh = (q % plane) / e.out_w, ow = q % e.out_w;
  return (n * (e.out_h / e.res_up) + oh / e.res_up) * (e.out_w / e.res_up) + ow / e.res_up;
}

// ORs `n` bits (bit i of `mask`) into a packed row at bit position `pos`.
inline void or_bits(std::uint32_t* row, int pos, std::uint32_t mask, int n) {
  if (n < 32) mask &= (1u << n) - 1u;
  const int w = pos >> 5, s = pos & 31;
  row[w] |= mask << s;
  if (s != 0 && s + n > 32) row[w + 1] |= mask >> (32 - s);
}

}  // namespace binpose
