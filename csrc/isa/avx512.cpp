// AVX-512 variant (compiled with -mavx512f -mavx512vl -mavx512bw -mavx512dq -mfma).
#include <immintrin.h>

#include <cstdint>
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
  static inline Mask tail_mask(int n) { return static_cast<Mask>((1u << n) - 1u); }
  static inline Mask range_mask(int lo, int hi) { return static_cast<Mask>(((1u << hi) - 1u) & ~((1u << lo) - 1u)); }
  // Any lane NaN or +-Inf (fpclass: QNaN | SNaN | +Inf | -Inf).
  static inline bool nonfinite(T v) { return _mm512_fpclass_ps_mask(v, 0x99) != 0; }
  // Masked-off lanes are not read, so the tail never touches memory past the tensor.
  static inline T load_tail(const float* p, Mask m) { return _mm512_maskz_loadu_ps(m, p); }
  static inline T fma(T a, T b, T c) { return _mm512_fmadd_ps(a, b, c); }
  static inline T add(T a, T b) { return _mm512_add_ps(a, b); }
  static inline T max(T a, T b) { return _mm512_max_ps(a, b); }
  static inline void storeu(float* p, T v) { _mm512_storeu_ps(p, v); }
  static inline void store_tail(float* p, T v, Mask m) { _mm512_mask_storeu_ps(p, m, v); }
};

#include "kernels/epilogue.hpp"
#include "kernels/layout.hpp"
#include "kernels/sparse_conv.hpp"
#include "kernels/sparse_linear.hpp"

}  // namespace

const IsaKernels kAvx512Kernels = {"avx512", V::W, V::MAX_ACC, &conv_tile<V>, &linear_tile<V>,
                                    &layout_channel<V>};

}  // namespace scnn
