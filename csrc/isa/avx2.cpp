// AVX2 + FMA variant (compiled with -mavx2 -mfma).
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>

#include "isa/kernels.hpp"

namespace scnn {
namespace {

alignas(32) const int32_t kMaskTable[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};

struct V {
  using T = __m256;
  using Mask = __m256i;
  static constexpr int W = 8;
  static constexpr int MAX_ACC = 14;  // of 16 ymm registers: one holds the weight, one is spare
  static inline T zero() { return _mm256_setzero_ps(); }
  static inline T bcast(float x) { return _mm256_set1_ps(x); }
  static inline T loadu(const float* p) { return _mm256_loadu_ps(p); }
  static inline T load(const float* p) { return _mm256_load_ps(p); }  // 32-byte aligned
  // Cache-line prefetches for writing / reading. asm, not __builtin_prefetch: GCC deletes a
  // loop of builtin prefetches as free of side effects. (PREFETCHW is a NOP where unsupported.)
  static inline void prefetch_write(const float* p) { asm volatile("prefetchw %0" : : "m"(*reinterpret_cast<const char*>(p))); }
  static inline void prefetch_read(const float* p) { asm volatile("prefetcht0 %0" : : "m"(*reinterpret_cast<const char*>(p))); }
  static inline void store(float* p, T v) { _mm256_store_ps(p, v); }
  // v[l] lane p <- v[p] lane l (an 8x8 transpose in registers).
  // always_inline: called out of line, the W vectors go through the stack both ways
  __attribute__((always_inline)) static inline void transpose(T* v) {
    T t[8];
    for (int i = 0; i < 4; ++i) {
      t[2 * i] = _mm256_unpacklo_ps(v[2 * i], v[2 * i + 1]);
      t[2 * i + 1] = _mm256_unpackhi_ps(v[2 * i], v[2 * i + 1]);
    }
    for (int i = 0; i < 2; ++i) {  // v[4i + k], 128-bit lane q: rows 4i..4i+3 of column 4q + k
      v[4 * i] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(1, 0, 1, 0));
      v[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(3, 2, 3, 2));
      v[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(1, 0, 1, 0));
      v[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    for (int k = 0; k < 4; ++k) {
      t[k] = _mm256_permute2f128_ps(v[k], v[4 + k], 0x20);
      t[4 + k] = _mm256_permute2f128_ps(v[k], v[4 + k], 0x31);
    }
    for (int k = 0; k < 8; ++k) v[k] = t[k];
  }
  static inline Mask tail_mask(int n) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kMaskTable + 8 - n));
  }
  static inline Mask range_mask(int lo, int hi) { return _mm256_andnot_si256(tail_mask(lo), tail_mask(hi)); }
  // x - x is NaN exactly when x is NaN or +-Inf.
  static inline bool nonfinite(T v) { return _mm256_movemask_ps(_mm256_cmp_ps(_mm256_sub_ps(v, v), _mm256_setzero_ps(), _CMP_UNORD_Q)) != 0; }
  // vmaskmovps does not fault on masked-off lanes.
  static inline T load_tail(const float* p, Mask m) { return _mm256_maskload_ps(p, m); }
  // Lanes m of p, zero elsewhere, with a plain load: p[0..W) must all be readable.
  static inline T load_clear(const float* p, Mask m) { return _mm256_and_ps(_mm256_loadu_ps(p), _mm256_castsi256_ps(m)); }
  // Lanes m of p, zero elsewhere; a plain load (lanes cleared in a register) when the whole
  // vector lies inside [lo, hi): masked loads that span two cache lines are slow.
  static inline T load_inside(const float* p, Mask m, const float* lo, const float* hi) {
    if (p >= lo && p + W <= hi) return load_clear(p, m);
    return _mm256_maskload_ps(p, m);
  }
  // x[idx[0..7]] (16-bit indices read unsigned, or 32-bit)
  // x[idx[0..8)], from eight scalar loads: vgatherdps took ~30 % longer in the batch-1 sparse
  // dot product on a Zen 3 (9216 x 4096 at density 0.1, one core: 3.1-3.2 against 2.2-2.4 ms).
  template <class Idx>
  static inline T gather(const float* x, const Idx* idx) {
    return _mm256_setr_ps(x[idx[0]], x[idx[1]], x[idx[2]], x[idx[3]], x[idx[4]], x[idx[5]], x[idx[6]], x[idx[7]]);
  }
  static inline float sum(T v) {
    const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(t, _mm_shuffle_ps(t, t, 1)));
  }
  static inline T fma(T a, T b, T c) { return _mm256_fmadd_ps(a, b, c); }
  static inline T add(T a, T b) { return _mm256_add_ps(a, b); }
  static inline T max(T a, T b) { return _mm256_max_ps(a, b); }
  static inline T mul(T a, T b) { return _mm256_mul_ps(a, b); }
  static inline T div(T a, T b) { return _mm256_div_ps(a, b); }
  static inline T sqrt(T a) { return _mm256_sqrt_ps(a); }
  // lanes 0, 2, 4, ... of the 2W lanes of a then b
  static inline T even(T a, T b) {
    const __m256 s = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0));  // a0 a2 b0 b2 | a4 a6 b4 b6
    return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(s), _MM_SHUFFLE(3, 1, 2, 0)));
  }
  // max that keeps a NaN of either (torch's max pooling): the unordered mask is all ones, a NaN
  static inline T max_nan(T a, T b) { return _mm256_or_ps(_mm256_max_ps(a, b), _mm256_cmp_ps(a, b, _CMP_UNORD_Q)); }
  static inline void storeu(float* p, T v) { _mm256_storeu_ps(p, v); }
  static inline void store_tail(float* p, T v, Mask m) { _mm256_maskstore_ps(p, m, v); }
  // The first n (< W) lanes of v to p with plain 16-, 8- and 4-byte stores: vmaskmovps is
  // microcoded on AMD cores (Zen 3: the batch-lanes epilogue's masked stores took a quarter of
  // CaffeNet conv2's tile time in a perf profile). n folds to a constant where it is one.
  static inline void store_part(float* p, T v, int n, Mask) {
    __m128 q = _mm256_castps256_ps128(v);
    if (n >= 4) {
      _mm_storeu_ps(p, q);
      q = _mm256_extractf128_ps(v, 1);
      p += 4;
      n -= 4;
    }
    if (n >= 2) {
      _mm_storel_pi(reinterpret_cast<__m64*>(p), q);
      q = _mm_movehl_ps(q, q);
      p += 2;
      n -= 2;
    }
    if (n >= 1) _mm_store_ss(p, q);
  }
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

const IsaKernels kAvx2Kernels = {"avx2", V::W, V::MAX_ACC, &conv_tile<V>, &linear_tile<V>,
                                  &linear_dot<V>, &layout_channel<V>, &lanes_tile<V>, &lanes_layout<V>,
                                  &transpose_tile<V>, &pool_planes<V>, &lrn_job<V>, &csr_first_bad_row};

}  // namespace scnn
