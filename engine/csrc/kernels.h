// Micro-kernel interface shared by every ISA (scalar, AVX2, AVX-512 VPOPCNTDQ) and the dispatch table.
//
// Data layouts the micro-kernels see (all bits use the engine's encoding: bit 0 = +1, bit 1 = -1):
//   input   packed activations, one pixel = `cw` uint32 words (channel c -> bit c%32 of word c/32), tail bits zero.
//           The driver hands the kernel P pixel base pointers plus T tap offsets (in words), so any kernel size,
//           stride and dilation reduce to "pixel base + tap offset".
//   weights blocked per 16 output channels: block b = [T][cw][16] uint32 words, word (t, k, lane) holds bits
//           32k..32k+31 of tap t of output channel 16b + lane. Consecutive blocks are `w_block_stride` words apart.
//   output  int32 popcount tile pop[p * ld + 16 b + lane] = popcount over all taps and words of (input XOR weight).
#pragma once
#include <cstddef>
#include <cstdint>

#include "epilogue.h"
#include "float_ops.h"

namespace binpose {

constexpr int kLanes = 16;   // output channels per weight block
constexpr int kMaxTile = 8;  // most output pixels one micro-kernel call covers

struct MicroArgs {
  const std::uint32_t* const* px;  // [P] pixel base pointers (tap offset 0)
  const std::ptrdiff_t* tap_off;   // [T] word offsets of the taps relative to a pixel base
  int taps;                        // T
  int cw;                          // words per tap
  const std::uint32_t* w;          // first weight block of the tile
  std::ptrdiff_t w_block_stride;   // words between weight blocks
  std::int32_t* pop;               // output tile
  int ld;                          // row stride of `pop` (>= 16 * blocks)
};

// Computes a tile of `npix` pixels (1..kMaxTile) x `nblk` weight blocks (1..4).
using MicroKernelFn = void (*)(const MicroArgs& a, int npix, int nblk);

// Packs `rows` rows of `n` floats: bit = (x[i] + thr[i]) < 0 (thr may be null: bit = x[i] < 0), into
// ceil(n / 32) words per row with row stride `out_stride` words. Tail bits are zero.
using PackRowsFn = void (*)(const float* x, std::size_t rows, std::size_t n, std::size_t x_stride, const float* thr,
                            std::uint32_t* out, std::size_t out_stride);

// A direct float convolution for layers with few input channels (the stems that see raw pixels), where GEMM-based
// convs waste most of their work on layout. Input zero-padded NHWC [N][Hp][Wp][Cin]; weights [KH][KW][Cin][OCp]
// (OCp = OC rounded up to 16, zero past OC); out NHWC [N][OH][OW][OC] = act(conv + bias).
struct FloatConvArgs {
  const float* xp;
  int Hp, Wp, Cin;
  int KH, KW, sh, sw, dh, dw;
  int OH, OW, OC, OCp;
  const float* w;
  const float* bias;  // [OCp]
  ChannelAct act;     // per-channel vectors of length OC
  float* out;
};
// Computes output rows [r0, r1) (row r = n * OH + oh).
using FloatConvRowsFn = void (*)(const FloatConvArgs& a, std::int64_t r0, std::int64_t r1);

// The direct float conv on AMX-BF16 tiles (float_conv_amx.cpp), for the same convs with KW * Cin <= 32 and dilation
// 1 along the width: x unpadded NHWC, bf16 the B tiles made by engine.float_ops.DirectConvWeights
// ([ceil(KH * KW * Cin / 32)][OCp / 16][hi, lo][16][32]). Returns false, computing nothing, for a geometry it does not take.
using FloatConvBf16Fn = bool (*)(const float* x, const FloatConvGeometry& g, const std::uint16_t* bf16,
                                 const float* bias, const ChannelAct& a, float* out);
#if defined(BINPOSE_HAVE_AMX_BF16)
bool float_conv_amx_bf16(const float* x, const FloatConvGeometry& g, const std::uint16_t* bf16, const float* bias,
                         const ChannelAct& a, float* out);
#endif

struct ConvGeometry;
struct ConvWeights;
// A whole binary convolution (bconv2d's contract) run by an ISA's own driver; null: the shared driver + micro-kernel.
using ConvFn = void (*)(const std::uint32_t* input, const ConvGeometry& g, const ConvWeights& w,
                        const EpilogueParams& e);

struct IsaTable {
  const char* name;
  MicroKernelFn micro;
  EpilogueFn epilogue;
  PackRowsFn pack_rows;
  int max_pixels[5];  // largest npix the micro-kernel accepts (and is tuned for), indexed by nblk (1..4)
  FloatConvRowsFn float_conv_rows = nullptr;  // null: the ISA has none (the runtime then uses torch's conv)
  ConvFn conv = nullptr;                      // set by "amx": convs with >= 32 channels per group run there
  FloatConvBf16Fn float_conv_bf16 = nullptr;  // set by "amx" where the CPU has AMX-BF16
};

// Per-ISA tables (defined only where the ISA's file is compiled).
const IsaTable& isa_scalar();
#if defined(BINPOSE_HAVE_AVX2)
const IsaTable& isa_avx2();
#endif
#if defined(BINPOSE_HAVE_AVX512)
const IsaTable& isa_avx512();
#endif
#if defined(BINPOSE_HAVE_AMX)
const IsaTable& isa_amx();  // the AVX-512 table plus AMX-INT8 convolutions
#endif

}  // namespace binpose
