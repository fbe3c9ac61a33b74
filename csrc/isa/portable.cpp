// Portable variant: plain C++ on a fixed-width array, for CPUs without AVX2 (and as the
// reference the SIMD variants are tested against). The compiler vectorises it with the
// baseline instruction set.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>

#include "isa/kernels.hpp"

namespace scnn {
namespace {

struct V {
  struct T {
    float v[8];
  };
  struct Mask {
    int lo, hi;  // lanes [lo, hi)
  };
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
  static inline T load(const float* p) { return loadu(p); }
  static inline void prefetch_write(const float*) {}
  static inline void prefetch_read(const float*) {}
  static inline void store(float* p, T v) { storeu(p, v); }
  // always_inline: called out of line, the W vectors go through the stack both ways
  __attribute__((always_inline)) static inline void transpose(T* v) {
    for (int l = 0; l < W; ++l)
      for (int p = l + 1; p < W; ++p) {
        const float x = v[l].v[p];
        v[l].v[p] = v[p].v[l];
        v[p].v[l] = x;
      }
  }
  static inline Mask tail_mask(int n) { return {0, n}; }
  static inline Mask range_mask(int lo, int hi) { return {lo, hi}; }
  static inline T load_tail(const float* p, Mask m) {
    T r;
    for (int i = 0; i < W; ++i) r.v[i] = i >= m.lo && i < m.hi ? p[i] : 0.0f;
    return r;
  }
  static inline bool nonfinite(T v) {
    bool any = false;
    for (int i = 0; i < W; ++i) any |= !std::isfinite(v.v[i]);
    return any;
  }
  static inline T load_inside(const float* p, Mask m, const float*, const float*) { return load_tail(p, m); }
  static inline T load_clear(const float* p, Mask m) { return load_tail(p, m); }
  template <class Idx>
  static inline T gather(const float* x, const Idx* idx) {
    T r;
    for (int i = 0; i < W; ++i) r.v[i] = x[static_cast<int64_t>(idx[i])];
    return r;
  }
  static inline float sum(T v) {
    float s = 0.0f;
    for (int i = 0; i < W; ++i) s += v.v[i];
    return s;
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
  static inline T mul(T a, T b) {
    T r;
    for (int i = 0; i < W; ++i) r.v[i] = a.v[i] * b.v[i];
    return r;
  }
  static inline T div(T a, T b) {
    T r;
    for (int i = 0; i < W; ++i) r.v[i] = a.v[i] / b.v[i];
    return r;
  }
  static inline T sqrt(T a) {
    T r;
    for (int i = 0; i < W; ++i) r.v[i] = std::sqrt(a.v[i]);
    return r;
  }
  // lanes 0, 2, 4, ... of the 2W lanes of a then b
  static inline T even(T a, T b) {
    T r;
    for (int i = 0; i < W / 2; ++i) {
      r.v[i] = a.v[2 * i];
      r.v[W / 2 + i] = b.v[2 * i];
    }
    return r;
  }
  // max that keeps a NaN of either (torch's max pooling)
  static inline T max_nan(T a, T b) {
    T r;
    for (int i = 0; i < W; ++i) r.v[i] = a.v[i] != a.v[i] || b.v[i] != b.v[i] ? a.v[i] + b.v[i] : (a.v[i] > b.v[i] ? a.v[i] : b.v[i]);
    return r;
  }
  static inline void storeu(float* p, T v) {
    for (int i = 0; i < W; ++i) p[i] = v.v[i];
  }
  static inline void store_tail(float* p, T v, Mask m) {
    for (int i = m.lo; i < m.hi; ++i) p[i] = v.v[i];
  }
  static inline void store_part(float* p, T v, int, Mask m) { store_tail(p, v, m); }  // a plain loop already
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

const IsaKernels kPortableKernels = {"portable", V::W, V::MAX_ACC, &conv_tile<V>,
                                     &linear_tile<V>, &linear_dot<V>, &layout_channel<V>,
                                     &lanes_tile<V>, &lanes_layout<V>,
                                  &transpose_tile<V>, &pool_planes<V>, &lrn_job<V>, &csr_first_bad_row};

}  // namespace scnn
