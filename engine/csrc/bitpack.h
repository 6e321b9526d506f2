// Sign-bit packing. Encoding (shared by every kernel): bit 0 = +1, bit 1 = -1, so sgn(0) = +1.
//
// Two word sizes exist:
//   * pack_signs / unpack_signs: rows of `n` floats -> ceil(n / 64) little-endian uint64 words (generic utility).
//   * the convolution layout: rows (pixels, or weight taps) of `n` channels -> ceil(n / 32) uint32 words; bit j of
//     word w holds channel 32 w + j. On a little-endian machine the uint32 view of a uint64 row is the same bit order.
// Tail bits past `n` are always zero: the kernels rely on it (XOR of two zero tails contributes nothing).
#pragma once
#include <cstddef>
#include <cstdint>

namespace binpose {

inline std::size_t words_for_bits(std::size_t n) { return (n + 63) / 64; }
inline std::size_t words32_for_bits(std::size_t n) { return (n + 31) / 32; }

// Packs `rows` rows of `n` floats (row stride `n`) into `rows * words_for_bits(n)` words.
void pack_signs(const float* src, std::size_t rows, std::size_t n, std::uint64_t* dst);

// Inverse of pack_signs: writes +1.0f / -1.0f.
void unpack_signs(const std::uint64_t* src, std::size_t rows, std::size_t n, float* dst);

// Portable row packer for the convolution layout: bit = (x[i] + thr[i]) < 0 (thr null: x[i] < 0).
// Row r reads x + r * x_stride and writes ceil(n / 32) words at out + r * out_stride.
void pack_rows_scalar(const float* x, std::size_t rows, std::size_t n, std::size_t x_stride, const float* thr,
                      std::uint32_t* out, std::size_t out_stride);

// Inverse for the convolution layout: +1.0f / -1.0f, row r -> dst + r * n.
void unpack_rows(const std::uint32_t* bits, std::size_t rows, std::size_t n, std::size_t bits_stride, float* dst);

// Copies bits [c0, c0 + n) of each source row into a fresh row starting at bit 0 (tail zeroed).
void extract_bits(const std::uint32_t* src, std::size_t src_stride, std::size_t c0, std::size_t n,
                  std::uint32_t* dst);

}  // namespace binpose
