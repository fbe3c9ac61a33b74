// AVX2 + FMA variant (compiled with -mavx2 -mfma).
#include <immintrin.h>

#include <cstdint>
#include <stdexcept>

#include "isa/kernels.hpp"

namespace scnn {
namespace {

alignas(32) const int32_t kMaskTable[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};

struct V {
  using T = __m256;
  using Mask = __m256i;
  static constexpr int W = 8;
  static constexpr int MAX_ACC = 12;  // of 16 ymm registers
  static inline T zero() { return _mm256_setzero_ps(); }
  static inline T bcast(float x) { return _mm256_set1_ps(x); }
  static inline T loadu(const float* p) { return _mm256_loadu_ps(p); }
  static inline Mask tail_mask(int n) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kMaskTable + 8 - n));
  }
  static inline Mask range_mask(int lo, int hi) { return _mm256_andnot_si256(tail_mask(lo), tail_mask(hi)); }
  // x - x is NaN exactly when x is NaN or +-Inf.
  static inline bool nonfinite(T v) { return _mm256_movemask_ps(_mm256_cmp_ps(_mm256_sub_ps(v, v), _mm256_setzero_ps(), _CMP_UNORD_Q)) != 0; }
  // vmaskmovps does not fault on masked-off lanes.
  static inline T load_tail(const float* p, Mask m) { return _mm256_maskload_ps(p, m); }
  static inline T fma(T a, T b, T c) { return _mm256_fmadd_ps(a, b, c); }
  static inline T add(T a, T b) { return _mm256_add_ps(a, b); }
  static inline T max(T a, T b) { return _mm256_max_ps(a, b); }
  static inline void storeu(float* p, T v) { _mm256_storeu_ps(p, v); }
  static inline void store_tail(float* p, T v, Mask m) { _mm256_maskstore_ps(p, m, v); }
};

#include "kernels/epilogue.hpp"
#include "kernels/layout.hpp"
#include "kernels/sparse_conv.hpp"
#include "kernels/sparse_linear.hpp"

}  // namespace

const IsaKernels kAvx2Kernels = {"avx2", V::W, V::MAX_ACC, &conv_tile<V>, &linear_tile<V>,
                                  &layout_channel<V>};

}  // namespace scnn
