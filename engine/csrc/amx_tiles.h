// AMX tile configuration shared by the AMX kernels: palette 1, eight tiles of 16 rows x 64 bytes (int8 and bf16
// kernels alike). The configuration belongs to the thread: each task that issues tile instructions sets it first.
#pragma once
#include <immintrin.h>

#include <cstdint>

namespace binpose {

struct alignas(64) TileConfig {
  std::uint8_t palette = 1, start_row = 0, reserved[14] = {};
  std::uint16_t colsb[16] = {};
  std::uint8_t rows[16] = {};
};

inline void amx_configure() {
  TileConfig c;
  for (int i = 0; i < 8; ++i) {
    c.rows[i] = 16;
    c.colsb[i] = 64;
  }
  _tile_loadconfig(&c);
}

}  // namespace binpose
