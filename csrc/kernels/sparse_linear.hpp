// Sparse matrix times dense matrix for fully connected layers: Y = X W^T.
//
// Included by each ISA translation unit inside an anonymous namespace (see sparse_conv.hpp).
// The driver transposes X to (in_features, batch), padded with zeros to whole vectors, so that
// the batch is the contiguous SIMD dimension; every nonzero w[m, i] then does NV vector FMAs
// on row i of X^T. Where X^T's rows for one batch tile would not stay in the L2, the driver
// sweeps the input features in blocks (passes) and the partial sums of a row wait in a small
// buffer between passes (linear.cpp).
#pragma once

// kTail: X^T rows narrower than a vector (a batch below the vector width is not padded: X^T
// stays half the size or less, and at 9216 x 4096, batch 4, the padded rows took 30 % longer).
template <class V, int NV, class Idx, bool kTail>
void linear_rows(const LinearTile& t) {
  using T = typename V::T;
  constexpr int W = V::W;
  static_assert(!kTail || NV == 1, "only a single-vector tile has narrow rows");
  const auto tmask = V::tail_mask(kTail ? static_cast<int>(t.ldx) : W);
  auto load = [&](const float* p) { return kTail ? V::load_tail(p, tmask) : V::loadu(p); };
  // Up to 4 vectors a nonzero, the even and odd nonzeros go to two accumulator sets, so that
  // at least ~8 FMA chains are in flight; from 5 vectors one set has enough.
  constexpr bool kTwoSets = NV <= 4;
  const Idx* __restrict col = static_cast<const Idx*>(t.col);
  const float* __restrict vals = t.values;
  const float* __restrict xt = t.xt;
  const int64_t ldx = t.ldx;
  alignas(64) float buf[NV * W];

  for (int64_t m = t.row0; m < t.row1; ++m) {
    const int64_t r = m - t.row0;
    int64_t j = t.cursor ? t.cursor[r] : t.row_ptr[m];
    const int64_t j1 = t.row_ptr[m + 1];
    // This pass takes the row's nonzeros of columns < kend (columns ascend within a row). The
    // bound is checked in the loop: a binary search for it per row and pass took a sixth of
    // the time at 8 passes (4096 x 4096, density 0.1, batch 64), mostly in mispredictions.
    const int64_t kend = t.last ? INT64_MAX : t.k1;
    float* ps = t.partial ? t.partial + r * NV * W : nullptr;
    T a0[NV], a1[NV];
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) {
      a0[v] = t.first ? V::zero() : V::loadu(ps + v * W);
      a1[v] = V::zero();
    }
    if constexpr (kTwoSets) {
      for (; j + 1 < j1 && static_cast<int64_t>(col[j + 1]) < kend; j += 2) {
        const T w0 = V::bcast(vals[j]);
        const T w1 = V::bcast(vals[j + 1]);
        const float* p0 = xt + static_cast<int64_t>(col[j]) * ldx;
        const float* p1 = xt + static_cast<int64_t>(col[j + 1]) * ldx;
#pragma GCC unroll 16
        for (int v = 0; v < NV; ++v) {
          a0[v] = V::fma(w0, load(p0 + v * W), a0[v]);
          a1[v] = V::fma(w1, load(p1 + v * W), a1[v]);
        }
      }
    }
    for (; j < j1 && static_cast<int64_t>(col[j]) < kend; ++j) {
      const T w0 = V::bcast(vals[j]);
      const float* p0 = xt + static_cast<int64_t>(col[j]) * ldx;
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) a0[v] = V::fma(w0, load(p0 + v * W), a0[v]);
    }
    if (!t.last) {
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) V::storeu(ps + v * W, kTwoSets ? V::add(a0[v], a1[v]) : a0[v]);
      t.cursor[r] = j;
      continue;
    }
    const T vb = V::bcast(t.bias ? t.bias[m] : 0.0f);
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) {
      T s = V::add(kTwoSets ? V::add(a0[v], a1[v]) : a0[v], vb);
      if (t.relu) s = V::max(V::zero(), s);  // max(0, NaN) is NaN here: relu keeps NaN
      V::store(buf + v * W, s);
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

template <class V, int NV, bool kTail = false>
void linear_entry(const LinearTile& t) {
  if (t.col16)
    linear_rows<V, NV, uint16_t, kTail>(t);
  else
    linear_rows<V, NV, int32_t, kTail>(t);
}

template <class V>
void linear_tile(const LinearTile& t) {
  using Fn = void (*)(const LinearTile&);
  static const Fn table[kLinearMaxVectors] = {&linear_entry<V, 1>, &linear_entry<V, 2>, &linear_entry<V, 3>,
                                              &linear_entry<V, 4>, &linear_entry<V, 5>, &linear_entry<V, 6>,
                                              &linear_entry<V, 7>, &linear_entry<V, 8>};
  if (t.nvec < 1 || t.nvec > kLinearMaxVectors || t.nbatch > t.nvec * V::W || t.ldx < t.nbatch ||
      (t.ldx < t.nvec * V::W && t.nvec != 1))
    throw std::logic_error("sparsecnn: internal error: bad linear tile plan");
  if (t.ldx < V::W)
    linear_entry<V, 1, true>(t);
  else
    table[t.nvec - 1](t);
}
