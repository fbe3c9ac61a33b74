// Sparse matrix times dense matrix for fully connected layers: Y = X W^T.
//
// Included by each ISA translation unit inside an anonymous namespace (see sparse_conv.hpp).
// The driver transposes X to (in_features, batch) so that the batch is the contiguous SIMD
// dimension; every nonzero w[m, i] then does NV vector FMAs on row i of X^T. Two interleaved
// accumulator sets break the FMA latency chain when the batch fits in one vector.
#pragma once

template <class V, int NV, class Idx>
void linear_rows(const LinearTile& t) {
  using T = typename V::T;
  constexpr int W = V::W;
  const Idx* __restrict col = static_cast<const Idx*>(t.col);
  const float* __restrict vals = t.values;
  const float* xt = t.xt + t.b0;
  const int64_t ldx = t.ldx;
  const int tail = static_cast<int>(t.nbatch - static_cast<int64_t>(NV - 1) * W);
  const auto tmask = V::tail_mask(tail);
  alignas(64) float buf[NV * W];

  for (int64_t m = t.row0; m < t.row1; ++m) {
    T a0[NV], a1[NV];
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) a0[v] = a1[v] = V::zero();
    int64_t j = t.row_ptr[m];
    const int64_t j1 = t.row_ptr[m + 1];
    for (; j + 1 < j1; j += 2) {
      const T w0 = V::bcast(vals[j]);
      const T w1 = V::bcast(vals[j + 1]);
      const float* p0 = xt + static_cast<int64_t>(col[j]) * ldx;
      const float* p1 = xt + static_cast<int64_t>(col[j + 1]) * ldx;
#pragma GCC unroll 16
      for (int v = 0; v < NV - 1; ++v) {
        a0[v] = V::fma(w0, V::loadu(p0 + v * W), a0[v]);
        a1[v] = V::fma(w1, V::loadu(p1 + v * W), a1[v]);
      }
      a0[NV - 1] = V::fma(w0, V::load_tail(p0 + (NV - 1) * W, tmask), a0[NV - 1]);
      a1[NV - 1] = V::fma(w1, V::load_tail(p1 + (NV - 1) * W, tmask), a1[NV - 1]);
    }
    if (j < j1) {
      const T w0 = V::bcast(vals[j]);
      const float* p0 = xt + static_cast<int64_t>(col[j]) * ldx;
#pragma GCC unroll 16
      for (int v = 0; v < NV - 1; ++v) a0[v] = V::fma(w0, V::loadu(p0 + v * W), a0[v]);
      a0[NV - 1] = V::fma(w0, V::load_tail(p0 + (NV - 1) * W, tmask), a0[NV - 1]);
    }
    const float bias = t.bias ? t.bias[m] : 0.0f;
    const T vb = V::bcast(bias);
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) {
      T r = V::add(V::add(a0[v], a1[v]), vb);
      if (t.relu) r = V::max(V::zero(), r);
      V::storeu(buf + v * W, r);
    }
    for (int64_t i = 0; i < t.nbatch; ++i) t.out[(t.b0 + i) * t.out_features + m] = buf[i];
  }
}

// Batch 1: one sparse dot product per output feature, vectorised over the nonzeros (W values
// times W inputs gathered by column). The batch-lanes form above would use one lane of W;
// this one streams the weights once at about a gather per W nonzeros (fc6 of CaffeNet at
// batch 1: 2.2x faster on one core).
template <class V, class Idx>
void linear_dot_rows(const LinearTile& t) {
  using T = typename V::T;
  constexpr int W = V::W;
  const Idx* __restrict col = static_cast<const Idx*>(t.col);
  const float* __restrict vals = t.values;
  const float* __restrict x = t.xt;  // the one input row, contiguous
  for (int64_t m = t.row0; m < t.row1; ++m) {
    T acc = V::zero();
    int64_t j = t.row_ptr[m];
    const int64_t j1 = t.row_ptr[m + 1];
    for (; j + W <= j1; j += W) acc = V::fma(V::loadu(vals + j), V::gather(x, col + j), acc);
    float s = V::sum(acc);
    for (; j < j1; ++j) s += vals[j] * x[static_cast<int64_t>(col[j])];
    if (t.bias) s += t.bias[m];
    if (t.relu) s = s > 0.0f || s != s ? s : 0.0f;  // relu keeps NaN, as torch does
    t.out[m] = s;
  }
}

template <class V>
void linear_dot(const LinearTile& t) {
  if (t.col16)
    linear_dot_rows<V, uint16_t>(t);
  else
    linear_dot_rows<V, int32_t>(t);
}

template <class V, int NV>
void linear_entry(const LinearTile& t) {
  if (t.col16)
    linear_rows<V, NV, uint16_t>(t);
  else
    linear_rows<V, NV, int32_t>(t);
}

template <class V>
void linear_tile(const LinearTile& t) {
  using Fn = void (*)(const LinearTile&);
  static const Fn table[4] = {&linear_entry<V, 1>, &linear_entry<V, 2>, &linear_entry<V, 3>,
                              &linear_entry<V, 4>};
  const int64_t nv = (t.nbatch + V::W - 1) / V::W;
  if (nv < 1 || nv > 4) throw std::logic_error("sparsecnn: internal error: bad linear tile plan");
  table[nv - 1](t);
}
