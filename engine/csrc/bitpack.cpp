#include "bitpack.h"

namespace binpose {

void pack_signs(const float* src, std::size_t rows, std::size_t n, std::uint64_t* dst) {
  const std::size_t words = words_for_bits(n);
  for (std::size_t r = 0; r < rows; ++r) {
    const float* row = src + r * n;
    std::uint64_t* out = dst + r * words;
    for (std::size_t w = 0; w < words; ++w) {
      const std::size_t begin = w * 64;
      const std::size_t end = begin + 64 < n ? begin + 64 : n;
      std::uint64_t bits = 0;
      for (std::size_t i = begin; i < end; ++i) {
        bits |= static_cast<std::uint64_t>(row[i] < 0.0f) << (i - begin);
      }
      out[w] = bits;
    }
  }
}

void unpack_signs(const std::uint64_t* src, std::size_t rows, std::size_t n, float* dst) {
  const std::size_t words = words_for_bits(n);
  for (std::size_t r = 0; r < rows; ++r) {
    const std::uint64_t* in = src + r * words;
    float* row = dst + r * n;
    for (std::size_t i = 0; i < n; ++i) {
      row[i] = ((in[i / 64] >> (i % 64)) & 1u) ? -1.0f : 1.0f;
    }
  }
}

}  // namespace binpose
