#include "bitpack.h"

#include <cstring>

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

void pack_rows_scalar(const float* x, std::size_t rows, std::size_t n, std::size_t x_stride, const float* thr,
                      std::uint32_t* out, std::size_t out_stride) {
  const std::size_t words = words32_for_bits(n);
  for (std::size_t r = 0; r < rows; ++r) {
    const float* row = x + r * x_stride;
    std::uint32_t* o = out + r * out_stride;
    for (std::size_t w = 0; w < words; ++w) {
      const std::size_t begin = w * 32;
      const std::size_t end = begin + 32 < n ? begin + 32 : n;
      std::uint32_t bits = 0;
      if (thr) {
        for (std::size_t i = begin; i < end; ++i) bits |= static_cast<std::uint32_t>(row[i] + thr[i] < 0.0f) << (i - begin);
      } else {
        for (std::size_t i = begin; i < end; ++i) bits |= static_cast<std::uint32_t>(row[i] < 0.0f) << (i - begin);
      }
      o[w] = bits;
    }
  }
}

void unpack_rows(const std::uint32_t* bits, std::size_t rows, std::size_t n, std::size_t bits_stride, float* dst) {
  for (std::size_t r = 0; r < rows; ++r) {
    const std::uint32_t* in = bits + r * bits_stride;
    float* row = dst + r * n;
    for (std::size_t i = 0; i < n; ++i) row[i] = ((in[i / 32] >> (i % 32)) & 1u) ? -1.0f : 1.0f;
  }
}

void extract_bits(const std::uint32_t* src, std::size_t src_stride, std::size_t c0, std::size_t n,
                  std::uint32_t* dst) {
  (void)src_stride;
  const std::size_t words = words32_for_bits(n);
  const std::size_t w0 = c0 / 32, s = c0 % 32;
  for (std::size_t w = 0; w < words; ++w) {
    std::uint32_t v = src[w0 + w] >> s;
    if (s != 0 && (w + 1) * 32 + s > 32 && w0 + w + 1 < words32_for_bits(c0 + n)) v |= src[w0 + w + 1] << (32 - s);
    dst[w] = v;
  }
  const std::size_t tail = n % 32;
  if (tail) dst[words - 1] &= (1u << tail) - 1u;
}

}  // namespace binpose
