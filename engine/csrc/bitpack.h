// Sign-bit packing. Encoding (shared by every kernel): bit 0 = +1, bit 1 = -1, so sgn(0) = +1.
// A row of `n` floats becomes ceil(n / 64) little-endian 64-bit words; bit j of word w holds element 64*w + j.
// Tail bits past `n` are zero.
#pragma once
#include <cstddef>
#include <cstdint>

namespace binpose {

inline std::size_t words_for_bits(std::size_t n) { return (n + 63) / 64; }

// Packs `rows` rows of `n` floats (row stride `n`) into `rows * words_for_bits(n)` words.
void pack_signs(const float* src, std::size_t rows, std::size_t n, std::uint64_t* dst);

// Inverse of pack_signs: writes +1.0f / -1.0f.
void unpack_signs(const std::uint64_t* src, std::size_t rows, std::size_t n, float* dst);

}  // namespace binpose
