// Packed binary 2-D convolution: weights preparation and the driver (padding, loops, threads, border correction).
//
// Layouts (bit encoding of bitpack.h: bit 1 = -1):
//   activations  NHWC bits: uint32 [N][H][W][ws], ws = ceil(C / 32); channel c -> bit c%32 of word c/32; tail zero.
//   weights      canonical OHWI bits: uint32 [O][KH][KW][cwg], cwg = ceil(Cg / 32), Cg = C / groups; tail zero.
// The result is exact: zero padding contributes 0 (padded taps are read as +1 and corrected per output channel).
#pragma once
#include <cstddef>
#include <cstdint>
#include <new>
#include <vector>

#include "epilogue.h"

namespace binpose {

// 64-byte aligned storage, so one weight vector never straddles two cache lines.
template <typename T>
struct AlignedAlloc {
  using value_type = T;
  AlignedAlloc() = default;
  template <typename U>
  AlignedAlloc(const AlignedAlloc<U>&) {}
  T* allocate(std::size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(64))); }
  void deallocate(T* p, std::size_t) { ::operator delete(p, std::align_val_t(64)); }
  bool operator==(const AlignedAlloc&) const { return true; }
  bool operator!=(const AlignedAlloc&) const { return false; }
};

struct ConvWeights {
  int out_channels = 0, in_per_group = 0, kh = 0, kw = 0, groups = 1;
  int cwg = 0;        // words per tap
  int oc_per_group = 0;
  int blocks = 0;     // 16-channel blocks per group
  std::vector<std::uint32_t> bits;     // canonical [O][KH][KW][cwg]
  std::vector<std::uint32_t, AlignedAlloc<std::uint32_t>> blocked;  // [G][blocks][T][cwg][16]
  std::vector<std::int32_t> tap_dot;   // [G][T][blocks * 16]: dot of a +1 (padded) tap = Cg - 2 popcount(w tap)
  // AMX tiles (built only where the CPU has AMX-INT8): the weights in the VNNI order of TDPBSSD, as bits (1 = -1,
  // 0 = +1; channels padded to amx_chunks * 64). Tile (g, block b, tap t, chunk c) = 16 uint64 rows at
  // ((g * blocks + b) * T + t) * amx_chunks + c; bit j of row r is channel 64c + 4r + (j % 4) of output channel
  // 16b + j / 4. The conv expands a block's tiles to +-1 bytes just before using them (8x fewer bytes to fetch).
  std::vector<std::uint64_t, AlignedAlloc<std::uint64_t>> amx;
  int amx_chunks = 0;

  // Takes canonical bits (validated: tail bits must be zero) and builds the kernel layouts.
  ConvWeights(const std::uint32_t* canonical, int out_channels, int in_per_group, int kh, int kw, int groups);
  int taps() const { return kh * kw; }
};

// Packs float OIHW weights by sign (w < 0 -> 1) into canonical [O][KH][KW][ceil(I/32)] bits.
void pack_weights_oihw(const float* w, int O, int I, int KH, int KW, std::uint32_t* out);

// Packs NHWC floats of `pixels` pixels x C channels: bit = (x + thr[c]) < 0 (thr may be null). Multithreaded.
void pack_activations(const float* x, std::int64_t pixels, int C, const float* thr, std::uint32_t* out);

struct ConvGeometry {
  int N = 1, H = 0, W = 0, C = 0;  // input
  int in_words = 0;                 // words per input pixel (>= ceil(C / 32))
  int stride_h = 1, stride_w = 1;
  int pad_top = 0, pad_left = 0, pad_bottom = 0, pad_right = 0;
  int dil_h = 1, dil_w = 1;
  int OH = 0, OW = 0;  // filled by conv_output_size
};

// Computes OH/OW; throws std::invalid_argument when the geometry is invalid.
void conv_output_size(ConvGeometry& g, const ConvWeights& w);

// On the "amx" ISA, a conv with >= 32 input channels per group runs on the AMX tiles when it has at least this many
// output pixels (batch included), else on the AVX-512 popcount kernels. Default 160 (bconv.cpp says why).
void set_amx_min_pixels(std::int64_t n);
std::int64_t get_amx_min_pixels();

// Runs the convolution with the fused epilogue `e` (e.out / e.out_bits as requested; out_bits must be zeroed).
void bconv2d(const std::uint32_t* input, const ConvGeometry& g, const ConvWeights& w, const EpilogueParams& e);

}  // namespace binpose
