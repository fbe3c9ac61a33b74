// Input layout for the direct sparse convolution, stride-1 fast path: one (image, channel)
// is written into its zero-padded plane of `hrows` x `wrow` floats and into the column-shifted
// replicas the aligned kernel reads (see conv.cpp). Every destination vector is written whole
// and aligned, straight from a masked load of the source row, so padding costs no extra pass
// and a replica costs no more than the plane itself. Non-finite inputs are reported.
//
// Included by each ISA translation unit inside an anonymous namespace after V is defined
// (needs range_mask, load_tail, storeu, store_tail, zero, nonfinite).
#pragma once

// NS replicas and NQ vectors per row known at compile time (0: known at run time). Short rows
// dominate (13x13 to 56x56 maps); with the loop bounds fixed the masks stay in registers,
// which made the layout of a 13x13 layer 4x faster than the generic loop.
template <class V, int NS, int NQ>
bool layout_rows(const LayoutJob& job) {
  using T = typename V::T;
  using M = typename V::Mask;
  constexpr int W = V::W;
  constexpr int kMax = 80;  // NS * NQ of the generic instance is checked against it
  const float* const x = job.src;
  float* const out = job.dst;
  const int64_t h = job.h, w = job.w, rs = job.row_stride, hrows = job.hrows, wrow = job.wrow;
  const int64_t pad_top = job.pad_top, pad_left = job.pad_left, rep = job.rep_stride;
  const float* const lo = job.lo;
  const float* const hi = job.hi;
  const int ns = NS ? NS : job.nshift;
  const int64_t nq = NQ ? NQ : (wrow + W - 1) / W;
  // Vector v of replica k reads source columns [first, first + W) of its row, lanes [lo, hi).
  int64_t first[kMax];
  M mask[kMax];
  bool any[kMax];
  for (int k = 0; k < ns; ++k)
    for (int64_t v = 0; v < nq; ++v) {
      const int64_t f = v * W + k - pad_left;
      const int64_t lo = f < 0 ? -f : 0;
      const int64_t hi = w - f < W ? w - f : W;
      const int64_t e = k * nq + v;
      first[e] = f;
      any[e] = lo < hi;
      mask[e] = V::range_mask(static_cast<int>(lo < hi ? lo : 0), static_cast<int>(lo < hi ? hi : 0));
    }
  const int64_t full = wrow / W;  // vectors stored whole; a partial last one is masked
  const M last_mask = V::range_mask(0, static_cast<int>(wrow - full * W));
  // Row i's partial last vector may be stored whole only while its extra lanes land on later
  // rows of this plane (i * wrow <= spill_end), never past the plane's end.
  const int64_t spill_end = hrows * wrow - (full + 1) * W;
  bool bad = false;
  for (int64_t i = 0; i < hrows; ++i) {
    const int64_t iy = i - pad_top;
    const bool inside = iy >= 0 && iy < h;
    const float* src = x + iy * rs;
    for (int k = 0; k < ns; ++k) {
      float* dst = out + k * rep + i * wrow;
      for (int64_t v = 0; v < nq; ++v) {
        const int64_t e = k * nq + v;
        T val = V::zero();
        // Lanes outside the mask are neither read nor kept: the pointer may point before the
        // row (an offset only, never dereferenced there).
        if (inside && any[e]) {
          val = V::load_inside(src + first[e], mask[e], lo, hi);
          if (k == 0) bad |= V::nonfinite(val);
        }
        // The row's partial last vector is stored whole where its extra lanes fall on the
        // next rows, written after it; where they would reach past the plane (the last row;
        // every row from some point on when rows are narrower than a vector) it is cut to the
        // row: the floats after the plane belong to another channel, which another task may
        // have laid out already (until 2026-11-27 rows of under half a vector, e.g. 1-wide maps,
        // lost their next channel's first rows that way, now and then, on 2 threads). Cut with
        // plain stores: vmaskmovps is microcoded on AMD cores (one per row cost CaffeNet
        // conv2-5 at batch 1 0-11 % of the call, Zen 3).
        if (v < full || i * wrow <= spill_end)
          V::storeu(dst + v * W, val);
        else
          V::store_part(dst + v * W, val, static_cast<int>(wrow - full * W), last_mask);
      }
    }
  }
  return bad;
}

// Rows too long for the mask table of layout_rows: masks worked out per vector.
template <class V>
bool layout_rows_long(const LayoutJob& job) {
  using T = typename V::T;
  constexpr int W = V::W;
  const int64_t h = job.h, w = job.w, wrow = job.wrow, pad_left = job.pad_left;
  bool bad = false;
  for (int64_t i = 0; i < job.hrows; ++i) {
    const int64_t iy = i - job.pad_top;
    const bool inside = iy >= 0 && iy < h;
    const float* src = job.src + iy * job.row_stride;
    for (int k = 0; k < job.nshift; ++k) {
      float* dst = job.dst + k * job.rep_stride + i * wrow;
      for (int64_t q = 0; q < wrow; q += W) {
        T v = V::zero();
        const int64_t f = q + k - pad_left;
        const int64_t lo = f < 0 ? -f : 0;
        const int64_t hi = w - f < W ? w - f : W;
        if (inside && lo < hi) {
          v = V::load_inside(src + f, V::range_mask(static_cast<int>(lo), static_cast<int>(hi)), job.lo, job.hi);
          if (k == 0) bad |= V::nonfinite(v);
        }
        if (q + W <= wrow || i * wrow + q + W <= job.hrows * wrow)  // as in layout_rows
          V::storeu(dst + q, v);
        else
          V::store_part(dst + q, v, static_cast<int>(wrow - q), V::range_mask(0, static_cast<int>(wrow - q)));
      }
    }
  }
  return bad;
}

template <class V, int NS>
bool layout_ns(const LayoutJob& job) {
  switch ((job.wrow + V::W - 1) / V::W) {
    case 1: return layout_rows<V, NS, 1>(job);
    case 2: return layout_rows<V, NS, 2>(job);
    case 3: return layout_rows<V, NS, 3>(job);
    case 4: return layout_rows<V, NS, 4>(job);
    default: return layout_rows<V, NS, 0>(job);
  }
}

template <class V>
bool layout_channel(const LayoutJob& job) {
  if (job.nshift * ((job.wrow + V::W - 1) / V::W) > 80) return layout_rows_long<V>(job);
  switch (job.nshift) {
    case 1: return layout_ns<V, 1>(job);
    case 2: return layout_ns<V, 2>(job);
    case 3: return layout_ns<V, 3>(job);
    case 4: return layout_ns<V, 4>(job);
    case 5: return layout_ns<V, 5>(job);
    default: return layout_rows_long<V>(job);
  }
}
