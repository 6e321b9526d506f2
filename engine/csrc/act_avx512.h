// Per-channel activations on 16 float lanes (AVX-512): the epilogues of the direct float convs.
#pragma once
#include <immintrin.h>

#include "float_ops.h"

namespace binpose {

// 16 channels' activation parameters, loaded once per tile (lanes past `m` are zero).
struct Act16 {
  int act = kActNone;
  __m512 slope = _mm512_setzero_ps(), gamma = _mm512_setzero_ps(), zeta = _mm512_setzero_ps();

  Act16(const ChannelAct& a, int o, __mmask16 m) : act(a.act) {
    if (act == kActPrelu || act == kActRprelu) slope = _mm512_maskz_loadu_ps(m, a.slope + o);
    if (act == kActRprelu) {
      gamma = _mm512_maskz_loadu_ps(m, a.gamma + o);
      zeta = _mm512_maskz_loadu_ps(m, a.zeta + o);
    }
  }

  __m512 operator()(__m512 y) const {
    const __m512 zero = _mm512_setzero_ps();
    if (act == kActRelu) return _mm512_max_ps(y, zero);
    if (act == kActPrelu) return _mm512_mask_mul_ps(y, _mm512_cmp_ps_mask(y, zero, _CMP_LE_OQ), y, slope);
    if (act == kActRprelu) {
      __m512 t = _mm512_sub_ps(y, gamma);
      t = _mm512_mask_mul_ps(t, _mm512_cmp_ps_mask(t, zero, _CMP_LE_OQ), t, slope);
      return _mm512_add_ps(t, zeta);
    }
    return y;
  }
};

}  // namespace binpose
