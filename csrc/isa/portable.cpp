// Portable variant: plain C++ on a fixed-width array, for CPUs without AVX2 (and as the
// reference the SIMD variants are tested against). The compiler vectorises it with the
// baseline instruction set.
#include <cstdint>
#include <stdexcept>

#include "isa/kernels.hpp"

namespace scnn {
namespace {

struct V {
  struct T {
    float v[8];
  };
  using Mask = int;
  static constexpr int W = 8;
  static constexpr int MAX_ACC = 8;
  static inline T zero() {
    T r;
    for (int i = 0; i < W; ++i) r.v[i] = 0.0f;
    return r;
  }
  static inline T bcast(float x) {
    T r;
    for (int i = 0; i < W; ++i) r.v[i] = x;
    return r;
  }
  static inline T loadu(const float* p) {
    T r;
    for (int i = 0; i < W; ++i) r.v[i] = p[i];
    return r;
  }
  static inline Mask tail_mask(int n) { return n; }
  static inline T load_tail(const float* p, Mask n) {
    T r;
    for (int i = 0; i < W; ++i) r.v[i] = i < n ? p[i] : 0.0f;
    return r;
  }
  static inline T fma(T a, T b, T c) {
    T r;
    for (int i = 0; i < W; ++i) r.v[i] = a.v[i] * b.v[i] + c.v[i];
    return r;
  }
  static inline T add(T a, T b) {
    T r;
    for (int i = 0; i < W; ++i) r.v[i] = a.v[i] + b.v[i];
    return r;
  }
  // Same NaN rule as maxps: returns b when either is NaN (so max(0, NaN) = NaN).
  static inline T max(T a, T b) {
    T r;
    for (int i = 0; i < W; ++i) r.v[i] = a.v[i] > b.v[i] ? a.v[i] : b.v[i];
    return r;
  }
  static inline void storeu(float* p, T v) {
    for (int i = 0; i < W; ++i) p[i] = v.v[i];
  }
  static inline void store_tail(float* p, T v, Mask n) {
    for (int i = 0; i < n; ++i) p[i] = v.v[i];
  }
};

#include "kernels/epilogue.hpp"
#include "kernels/sparse_conv.hpp"
#include "kernels/sparse_linear.hpp"

}  // namespace

const IsaKernels kPortableKernels = {"portable", V::W, V::MAX_ACC, &conv_tile<V>,
                                     &linear_tile<V>};

}  // namespace scnn
