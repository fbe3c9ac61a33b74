// AVX-512 variant (compiled with -mavx512f -mavx512vl -mavx512bw -mavx512dq -mfma).
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>

#include "isa/kernels.hpp"

namespace scnn {
namespace {

struct V {
  using T = __m512;
  using Mask = __mmask16;
  static constexpr int W = 16;
  static constexpr int MAX_ACC = 28;  // of 32 zmm registers: the rest hold the weight and temps
  static inline T zero() { return _mm512_setzero_ps(); }
  static inline T bcast(float x) { return _mm512_set1_ps(x); }
  static inline T loadu(const float* p) { return _mm512_loadu_ps(p); }
  static inline T load(const float* p) { return _mm512_load_ps(p); }  // 64-byte aligned
  // Cache-line prefetches for writing / reading. asm, not __builtin_prefetch: GCC deletes a
  // loop of builtin prefetches as free of side effects. (PREFETCHW is a NOP where unsupported.)
  static inline void prefetch_write(const float* p) { asm volatile("prefetchw %0" : : "m"(*reinterpret_cast<const char*>(p))); }
  static inline void prefetch_read(const float* p) { asm volatile("prefetcht0 %0" : : "m"(*reinterpret_cast<const char*>(p))); }
  static inline void store(float* p, T v) { _mm512_store_ps(p, v); }
  // v[l] lane p <- v[p] lane l (a 16x16 transpose in registers: 4 rounds of shuffles).
  // always_inline: called out of line, the W vectors go through the stack both ways
  __attribute__((always_inline)) static inline void transpose(T* v) {
    T t[16];
    for (int i = 0; i < 8; ++i) {
      t[2 * i] = _mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]);
      t[2 * i + 1] = _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]);
    }
    for (int i = 0; i < 4; ++i) {  // v[4i + k], 128-bit lane q: rows 4i..4i+3 of column 4q + k
      const __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 2]);
      const __m512d c = _mm512_castps_pd(t[4 * i + 1]), d = _mm512_castps_pd(t[4 * i + 3]);
      v[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
      v[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
      v[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(c, d));
      v[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(c, d));
    }
    for (int k = 0; k < 4; ++k) {
      t[k] = _mm512_shuffle_f32x4(v[k], v[4 + k], 0x88);
      t[4 + k] = _mm512_shuffle_f32x4(v[k], v[4 + k], 0xdd);
      t[8 + k] = _mm512_shuffle_f32x4(v[8 + k], v[12 + k], 0x88);
      t[12 + k] = _mm512_shuffle_f32x4(v[8 + k], v[12 + k], 0xdd);
    }
    for (int k = 0; k < 4; ++k) {
      v[k] = _mm512_shuffle_f32x4(t[k], t[8 + k], 0x88);
      v[8 + k] = _mm512_shuffle_f32x4(t[k], t[8 + k], 0xdd);
      v[4 + k] = _mm512_shuffle_f32x4(t[4 + k], t[12 + k], 0x88);
      v[12 + k] = _mm512_shuffle_f32x4(t[4 + k], t[12 + k], 0xdd);
    }
  }
  static inline Mask tail_mask(int n) { return static_cast<Mask>((1u << n) - 1u); }
  static inline Mask range_mask(int lo, int hi) { return static_cast<Mask>(((1u << hi) - 1u) & ~((1u << lo) - 1u)); }
  // Any lane NaN or +-Inf (fpclass: QNaN | SNaN | +Inf | -Inf).
  static inline bool nonfinite(T v) { return _mm512_fpclass_ps_mask(v, 0x99) != 0; }
  // Masked-off lanes are not read, so the tail never touches memory past the tensor.
  static inline T load_tail(const float* p, Mask m) { return _mm512_maskz_loadu_ps(m, p); }
  // Lanes m of p, zero elsewhere, with a plain load: p[0..W) must all be readable. (The asm
  // keeps GCC from folding the load and the clear into a masked load, slow across lines.)
  static inline T load_clear(const float* p, Mask m) {
    T v = _mm512_loadu_ps(p);
    asm("" : "+v"(v));
    return _mm512_maskz_mov_ps(m, v);
  }
  // Lanes m of p, zero elsewhere. A masked load that spans two cache lines costs ~25 cycles on
  // Zen 5 (4x a plain one), so when the whole vector lies inside [lo, hi) it is loaded plainly and
  // the lanes are cleared in a register.
  static inline T load_inside(const float* p, Mask m, const float* lo, const float* hi) {
    if (p >= lo && p + W <= hi) return load_clear(p, m);
    return _mm512_maskz_loadu_ps(m, p);
  }
  // x[idx[0..15]] (16-bit indices read unsigned, or 32-bit)
  static inline T gather(const float* x, const uint16_t* idx) {
    return _mm512_i32gather_ps(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(idx))), x, 4);
  }
  static inline T gather(const float* x, const int32_t* idx) {
    return _mm512_i32gather_ps(_mm512_loadu_si512(idx), x, 4);
  }
  static inline float sum(T v) { return _mm512_reduce_add_ps(v); }
  static inline T fma(T a, T b, T c) { return _mm512_fmadd_ps(a, b, c); }
  static inline T add(T a, T b) { return _mm512_add_ps(a, b); }
  static inline T max(T a, T b) { return _mm512_max_ps(a, b); }
  static inline T mul(T a, T b) { return _mm512_mul_ps(a, b); }
  static inline T div(T a, T b) { return _mm512_div_ps(a, b); }
  static inline T sqrt(T a) { return _mm512_sqrt_ps(a); }
  // lanes 0, 2, 4, ... of the 2W lanes of a then b
  static inline T even(T a, T b) {
    const __m512i idx = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    return _mm512_permutex2var_ps(a, idx, b);
  }
  // max that keeps a NaN of either (torch's max pooling)
  static inline T max_nan(T a, T b) {
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a, b, _CMP_UNORD_Q), _mm512_max_ps(a, b), _mm512_add_ps(a, b));
  }
  static inline void storeu(float* p, T v) { _mm512_storeu_ps(p, v); }
  static inline void store_tail(float* p, T v, Mask m) { _mm512_mask_storeu_ps(p, m, v); }
  static inline void store_part(float* p, T v, int, Mask m) { store_tail(p, v, m); }  // masked stores are fast here
};

#include "kernels/csr_check.hpp"
#include "kernels/epilogue.hpp"
#include "kernels/layout.hpp"
#include "kernels/lrn.hpp"
#include "kernels/max_pool.hpp"
#include "kernels/sparse_conv.hpp"
#include "kernels/sparse_conv_batch.hpp"
#include "kernels/sparse_linear.hpp"
#include "kernels/transpose.hpp"

}  // namespace

const IsaKernels kAvx512Kernels = {"avx512", V::W, V::MAX_ACC, &conv_tile<V>, &linear_tile<V>,
                                    &linear_dot<V>, &layout_channel<V>, &lanes_tile<V>, &lanes_layout<V>,
                                  &transpose_tile<V>, &pool_planes<V>, &lrn_job<V>, &csr_first_bad_row};

}  // namespace scnn
