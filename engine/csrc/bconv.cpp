#include "bconv.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <stdexcept>
#include <string>

#include "bitpack.h"
#include "dispatch.h"
#include "threadpool.h"

namespace binpose {

namespace {

inline int popcount32(std::uint32_t v) { return __builtin_popcount(v); }
inline std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }

// Measured with the network's fused epilogue (float output into the residual, PReLU, next layer's bits; 1 thread,
// amx / popcount time): 7x7 maps (49 px) 1.3-1.9, 12x12 (144 px) 1.0, 14x14 (196 px) 0.8-0.9, 16x16 and larger
// 0.66-0.9: below about 160 pixels the per-call weight expansion is not paid back.
std::atomic<std::int64_t> g_amx_min_pixels{160};

[[noreturn]] void bad(const std::string& msg) { throw std::invalid_argument(msg); }

}  // namespace

ConvWeights::ConvWeights(const std::uint32_t* canonical, int O, int Cg, int KH, int KW, int G)
    : out_channels(O), in_per_group(Cg), kh(KH), kw(KW), groups(G) {
  if (O <= 0 || Cg <= 0 || KH <= 0 || KW <= 0 || G <= 0)
    bad("ConvWeights: out_channels, in_channels_per_group, kernel size and groups must be positive");
  if (O % G != 0)
    bad("ConvWeights: out_channels (" + std::to_string(O) + ") must be divisible by groups (" + std::to_string(G) + ")");
  cwg = static_cast<int>(words32_for_bits(Cg));
  oc_per_group = O / G;
  blocks = static_cast<int>(ceil_div(oc_per_group, 16));
  const int T = taps();
  const std::size_t rows = static_cast<std::size_t>(O) * T;
  bits.assign(canonical, canonical + rows * cwg);
  if (Cg % 32 != 0) {
    const std::uint32_t tail_mask = ~((1u << (Cg % 32)) - 1u);
    for (std::size_t r = 0; r < rows; ++r)
      if (bits[r * cwg + cwg - 1] & tail_mask)
        bad("ConvWeights: bits past in_channels_per_group must be zero (pack with pack_weights)");
  }
  const std::size_t blk_words = static_cast<std::size_t>(T) * cwg * 16;
  blocked.assign(static_cast<std::size_t>(G) * blocks * blk_words, 0u);
  tap_dot.assign(static_cast<std::size_t>(G) * T * blocks * 16, 0);
  for (int g = 0; g < G; ++g)
    for (int lo = 0; lo < oc_per_group; ++lo) {
      const int o = g * oc_per_group + lo, b = lo / 16, l = lo % 16;
      std::uint32_t* dst = blocked.data() + (static_cast<std::size_t>(g) * blocks + b) * blk_words;
      for (int t = 0; t < T; ++t) {
        int pc = 0;
        for (int k = 0; k < cwg; ++k) {
          const std::uint32_t v = bits[(static_cast<std::size_t>(o) * T + t) * cwg + k];
          dst[(static_cast<std::size_t>(t) * cwg + k) * 16 + l] = v;
          pc += popcount32(v);
        }
        tap_dot[(static_cast<std::size_t>(g) * T + t) * blocks * 16 + lo] = Cg - 2 * pc;
      }
    }
  if (cpu_has_amx()) {
    amx_chunks = static_cast<int>(ceil_div(Cg, 64));
    amx.assign(static_cast<std::size_t>(G) * blocks * T * amx_chunks * 16, 0);
    for (int g = 0; g < G; ++g)
      for (int lo = 0; lo < oc_per_group; ++lo) {
        const int o = g * oc_per_group + lo, b = lo / 16, n = lo % 16;
        for (int t = 0; t < T; ++t)
          for (int ci = 0; ci < Cg; ++ci) {
            const std::uint32_t v = bits[(static_cast<std::size_t>(o) * T + t) * cwg + ci / 32];
            const int c = ci / 64, r = (ci % 64) / 4, kk = ci % 4;
            const std::size_t tile = ((static_cast<std::size_t>(g) * blocks + b) * T + t) * amx_chunks + c;
            amx[tile * 16 + r] |= static_cast<std::uint64_t>((v >> (ci % 32)) & 1u) << (n * 4 + kk);
          }
      }
  }
}

void set_amx_min_pixels(std::int64_t n) {
  if (n < 1) bad("amx_min_pixels must be >= 1");
  g_amx_min_pixels.store(n);
}

std::int64_t get_amx_min_pixels() { return g_amx_min_pixels.load(); }

void pack_weights_oihw(const float* w, int O, int I, int KH, int KW, std::uint32_t* out) {
  const int cw = static_cast<int>(words32_for_bits(I));
  const std::size_t T = static_cast<std::size_t>(KH) * KW;
  for (int o = 0; o < O; ++o)
    for (std::size_t t = 0; t < T; ++t) {
      std::uint32_t* dst = out + (o * T + t) * cw;
      std::memset(dst, 0, sizeof(std::uint32_t) * cw);
      for (int c = 0; c < I; ++c)
        dst[c / 32] |= static_cast<std::uint32_t>(w[(static_cast<std::size_t>(o) * I + c) * T + t] < 0.0f) << (c % 32);
    }
}

void pack_activations(const float* x, std::int64_t pixels, int C, const float* thr, std::uint32_t* out) {
  const IsaTable& isa = active_isa();
  const std::size_t ws = words32_for_bits(C);
  const std::int64_t chunk = std::max<std::int64_t>(256, ceil_div(pixels, 4 * get_threads()));
  parallel_for(ceil_div(pixels, chunk), [&](std::int64_t i) {
    const std::int64_t p0 = i * chunk, p1 = std::min(pixels, p0 + chunk);
    isa.pack_rows(x + p0 * C, static_cast<std::size_t>(p1 - p0), C, C, thr, out + p0 * ws, ws);
  });
}

void conv_output_size(ConvGeometry& g, const ConvWeights& w) {
  if (g.N <= 0 || g.H <= 0 || g.W <= 0) bad("bconv2d: input must have positive batch, height and width");
  if (g.C != w.in_per_group * w.groups)
    bad("bconv2d: input has " + std::to_string(g.C) + " channels but the weights expect " +
        std::to_string(w.in_per_group * w.groups) + " (in_channels_per_group x groups)");
  if (g.in_words < static_cast<int>(words32_for_bits(g.C)))
    bad("bconv2d: packed input has too few words per pixel for its channel count");
  if (g.stride_h < 1 || g.stride_w < 1 || g.dil_h < 1 || g.dil_w < 1) bad("bconv2d: stride and dilation must be >= 1");
  if (g.pad_top < 0 || g.pad_left < 0 || g.pad_bottom < 0 || g.pad_right < 0) bad("bconv2d: padding must be >= 0");
  const std::int64_t eh = static_cast<std::int64_t>(g.dil_h) * (w.kh - 1) + 1;
  const std::int64_t ew = static_cast<std::int64_t>(g.dil_w) * (w.kw - 1) + 1;
  const std::int64_t hp = static_cast<std::int64_t>(g.H) + g.pad_top + g.pad_bottom;
  const std::int64_t wp = static_cast<std::int64_t>(g.W) + g.pad_left + g.pad_right;
  if (hp < eh || wp < ew)
    bad("bconv2d: the padded input (" + std::to_string(hp) + "x" + std::to_string(wp) +
        ") is smaller than the dilated kernel (" + std::to_string(eh) + "x" + std::to_string(ew) + ")");
  g.OH = static_cast<int>((hp - eh) / g.stride_h + 1);
  g.OW = static_cast<int>((wp - ew) / g.stride_w + 1);
}

void bconv2d(const std::uint32_t* input, const ConvGeometry& geo, const ConvWeights& w, const EpilogueParams& e) {
  const IsaTable& isa = active_isa();
  // The AMX path expands the bits to +-1 bytes (channels padded to 64) and reads 8x more weight bytes: worth it from
  // 32 channels per group and enough output pixels to reuse each weight tile (7x7 maps stay on the popcount path).
  const std::int64_t out_pixels = static_cast<std::int64_t>(geo.N) * geo.OH * geo.OW;
  if (isa.conv && !w.amx.empty() && w.in_per_group >= 32 && out_pixels >= g_amx_min_pixels.load()) {
    isa.conv(input, geo, w, e);
    return;
  }
  const int G = w.groups, Cg = w.in_per_group, T = w.taps(), cwg = w.cwg, nb = w.blocks;
  const int N = geo.N, H = geo.H, W = geo.W, OH = geo.OH, OW = geo.OW;
  const int pt = geo.pad_top, pl = geo.pad_left;
  const bool padded = geo.pad_top || geo.pad_left || geo.pad_bottom || geo.pad_right;
  const bool direct = !padded && (G == 1 || Cg % 32 == 0);

  // Source buffers: the input itself, or a zero-bordered per-group copy (zero bits read as +1; corrected below).
  std::vector<std::uint32_t> buf;
  int Hs = H, Ws = W, ps = geo.in_words;
  std::int64_t group_off = 0, group_step = Cg / 32;
  const std::uint32_t* base = input;
  if (!direct) {
    Hs = H + geo.pad_top + geo.pad_bottom;
    Ws = W + geo.pad_left + geo.pad_right;
    ps = cwg;
    const std::int64_t img = static_cast<std::int64_t>(Hs) * Ws * ps;
    buf.assign(static_cast<std::size_t>(G) * N * img, 0u);
    const std::uint32_t tail = Cg % 32 ? (1u << (Cg % 32)) - 1u : ~0u;
    parallel_for(static_cast<std::int64_t>(G) * N, [&](std::int64_t gn) {
      const int g = static_cast<int>(gn / N), n = static_cast<int>(gn % N);
      const std::int64_t c0 = static_cast<std::int64_t>(g) * Cg;
      for (int h = 0; h < H; ++h) {
        const std::uint32_t* s = input + (static_cast<std::int64_t>(n) * H + h) * W * geo.in_words;
        std::uint32_t* d = buf.data() + gn * img + ((static_cast<std::int64_t>(h) + pt) * Ws + pl) * ps;
        if (G == 1 && geo.in_words == cwg) {
          std::memcpy(d, s, sizeof(std::uint32_t) * W * cwg);  // whole row; tail bits are zero by contract
        } else if (c0 % 32 == 0) {
          for (int x = 0; x < W; ++x) {
            std::memcpy(d + x * ps, s + x * geo.in_words + c0 / 32, sizeof(std::uint32_t) * cwg);
            d[x * ps + cwg - 1] &= tail;
          }
        } else {
          for (int x = 0; x < W; ++x) extract_bits(s + x * geo.in_words, 0, c0, Cg, d + x * ps);
        }
      }
    });
    base = buf.data();
    group_off = static_cast<std::int64_t>(N) * img;
    group_step = 1;
  }
  const std::int64_t img_stride = static_cast<std::int64_t>(Hs) * Ws * ps;
  std::vector<std::ptrdiff_t> tap_off(T);
  for (int kh = 0; kh < w.kh; ++kh)
    for (int kw = 0; kw < w.kw; ++kw)
      tap_off[kh * w.kw + kw] = (static_cast<std::ptrdiff_t>(kh) * geo.dil_h * Ws + kw * geo.dil_w) * ps;
  auto group_base = [&](int g) -> const std::uint32_t* {
    return base + (direct ? g * group_step : g * group_off);
  };

  // Output-channel units: per group, tiles of up to 4 blocks of 16 channels, balanced.
  struct Unit {
    int g, blk0, nblk;
  };
  std::vector<Unit> units;
  const int ntile = static_cast<int>(ceil_div(nb, 4));
  const int bsz = static_cast<int>(ceil_div(nb, ntile));
  for (int g = 0; g < G; ++g)
    for (int b0 = 0; b0 < nb; b0 += bsz) units.push_back({g, b0, std::min(bsz, nb - b0)});
  // Unit chunks: a task owns whole 32-bit words of the packed output, so with bits out a chunk may only start at a
  // channel that is a multiple of 32.
  std::vector<int> chunk_start;
  for (int u = 0; u < static_cast<int>(units.size()); ++u) {
    const int c = units[u].g * w.oc_per_group + units[u].blk0 * 16;
    if (u == 0 || !e.out_bits || c % 32 == 0) chunk_start.push_back(u);
  }
  const int nuc = static_cast<int>(chunk_start.size());
  chunk_start.push_back(static_cast<int>(units.size()));

  const std::int64_t npix = static_cast<std::int64_t>(OH) * OW;
  const int pmax = isa.max_pixels[bsz];
  const int threads = get_threads();
  std::int64_t npc = 1;
  if (threads > 1) {
    const std::int64_t want = ceil_div(4 * threads, static_cast<std::int64_t>(N) * nuc);
    npc = std::max<std::int64_t>(1, std::min(want, npix / (2 * pmax)));
  }
  const std::int64_t chunk_pix = ceil_div(ceil_div(npix, npc), pmax) * pmax;
  npc = ceil_div(npix, chunk_pix);
  const int K = Cg * T;
  const int sh = geo.stride_h, sw = geo.stride_w;
  // Border correction. A padded tap was read as +1 (zero bits) and added tap_dot = Cg - 2 popcount(w tap) to the
  // dot; the exact result subtracts it. Output rows fall into classes by which kernel rows are out of bounds, columns
  // likewise; one table row per (row class, column class, group) holds the summed correction for every channel.
  std::vector<int> row_class(OH, 0), col_class(OW, 0);
  std::vector<std::vector<char>> row_sets{std::vector<char>(w.kh, 0)}, col_sets{std::vector<char>(w.kw, 0)};
  auto classify = [](int pos, int stride, int pad, int k, int dil, int size, std::vector<std::vector<char>>& sets) {
    std::vector<char> bad_taps(k);
    for (int j = 0; j < k; ++j) {
      const int i = pos * stride - pad + j * dil;
      bad_taps[j] = i < 0 || i >= size;
    }
    for (std::size_t c = 0; c < sets.size(); ++c)
      if (sets[c] == bad_taps) return static_cast<int>(c);
    sets.push_back(bad_taps);
    return static_cast<int>(sets.size() - 1);
  };
  if (padded) {
    for (int oh = 0; oh < OH; ++oh) row_class[oh] = classify(oh, geo.stride_h, pt, w.kh, geo.dil_h, H, row_sets);
    for (int ow = 0; ow < OW; ++ow) col_class[ow] = classify(ow, geo.stride_w, pl, w.kw, geo.dil_w, W, col_sets);
  }
  const int nrc = static_cast<int>(row_sets.size()), ncc = static_cast<int>(col_sets.size());
  const std::int64_t corr_ld = static_cast<std::int64_t>(nb) * 16;
  std::vector<std::int32_t> corr_table;
  if (nrc * ncc > 1) {
    corr_table.assign(static_cast<std::size_t>(nrc) * ncc * G * corr_ld, 0);
    for (int rc = 0; rc < nrc; ++rc)
      for (int cc = 0; cc < ncc; ++cc)
        for (int g = 0; g < G; ++g) {
          std::int32_t* dst = corr_table.data() + ((static_cast<std::int64_t>(rc) * ncc + cc) * G + g) * corr_ld;
          for (int kh = 0; kh < w.kh; ++kh)
            for (int kw = 0; kw < w.kw; ++kw) {
              if (!row_sets[rc][kh] && !col_sets[cc][kw]) continue;
              const std::int32_t* td = w.tap_dot.data() + (static_cast<std::int64_t>(g) * T + kh * w.kw + kw) * corr_ld;
              for (std::int64_t l = 0; l < corr_ld; ++l) dst[l] += td[l];
            }
        }
  }

  parallel_for(static_cast<std::int64_t>(N) * nuc * npc, [&](std::int64_t task) {
    const std::int64_t pc = task % npc;
    const int uc = static_cast<int>((task / npc) % nuc);
    const int n = static_cast<int>(task / (npc * nuc));
    const std::int64_t p0 = pc * chunk_pix, p1 = std::min(npix, p0 + chunk_pix);
    alignas(64) std::int32_t pop[kMaxTile * 64];
    const std::uint32_t* px[kMaxTile];
    const std::int32_t* corr_rows[kMaxTile];
    std::int64_t qidx[kMaxTile];
    for (int u = chunk_start[uc]; u < chunk_start[uc + 1]; ++u) {
      const Unit un = units[u];
      const int P = isa.max_pixels[un.nblk];
      const std::int64_t wblk = static_cast<std::int64_t>(T) * cwg * 16;
      MicroArgs a{px, tap_off.data(), T, cwg, w.blocked.data() + (static_cast<std::int64_t>(un.g) * nb + un.blk0) * wblk,
                  static_cast<std::ptrdiff_t>(wblk), pop, 64};
      const int oc0 = un.g * w.oc_per_group + un.blk0 * 16;
      const int noc = std::min(un.nblk * 16, w.oc_per_group - un.blk0 * 16);
      const std::uint32_t* gb = group_base(un.g) + n * img_stride;
      int oh = static_cast<int>(p0 / OW), ow = static_cast<int>(p0 % OW);  // position of pixel q, kept incrementally
      for (std::int64_t q = p0; q < p1; q += P) {
        const int np = static_cast<int>(std::min<std::int64_t>(P, p1 - q));
        bool any_border = false;
        for (int i = 0; i < np; ++i) {
          px[i] = gb + (static_cast<std::int64_t>(oh) * sh * Ws + static_cast<std::int64_t>(ow) * sw) * ps;
          qidx[i] = (static_cast<std::int64_t>(n) * OH + oh) * OW + ow;
          corr_rows[i] = nullptr;
          const int rc = row_class[oh], cc = col_class[ow];
          if (rc != 0 || cc != 0) {
            corr_rows[i] = corr_table.data() + ((static_cast<std::int64_t>(rc) * ncc + cc) * G + un.g) * corr_ld +
                           un.blk0 * 16;
            any_border = true;
          }
          if (++ow == OW) {
            ow = 0;
            ++oh;
          }
        }
        isa.micro(a, np, un.nblk);
        isa.epilogue(e, pop, 64, any_border ? corr_rows : nullptr, qidx, np, oc0, noc, K);
      }
    }
  });
}

}  // namespace binpose
