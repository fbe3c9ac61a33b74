// Direct sparse convolution with the batch in the SIMD lanes ("batch lanes"), for batches of at
// least one vector width of images (16 on AVX-512).
//
// The W images of a block are laid out channel by channel as planes of W-float vectors (one
// vector = one input pixel of the W images), so a nonzero w[m, c, r, s] multiplies, for each
// output pixel (oy, ox) of the tile, the vector at (c, oy + r, ox + s): every load is aligned,
// no lane is wasted on the widened row ends of the per-image kernel (19% of the work on 13x13
// maps, 16% on 27x27) and no column-shifted replicas are copied. A tile is R output rows x P
// output pixels of a row (R * P accumulators; P > W only for single-row tiles); the epilogue
// transposes the results in groups of W pixels so each image's outputs of a row are stored
// contiguously with bias, residual and ReLU fused.
//
// Included by each ISA translation unit inside an anonymous namespace after V is defined
// (needs the conv helpers and V::transpose).
#pragma once

#include "kernels/dispatch.hpp"

// acc += the nonzeros [j, j1) of output channel m: R x P output vectors, one FMA per vector.
template <class V, int R, int P>
inline void lanes_accumulate(const LaneTile& t, int64_t j, const int64_t j1, typename V::T (&acc)[R][P]) {
  using T = typename V::T;
  constexpr int W = V::W;
  const int32_t* __restrict offs = t.offs;
  const float* __restrict vals = t.values;
  const float* in = t.in;
  const int64_t rs = t.row_stride;  // floats between consecutive plane rows
  // Each nonzero's offset comes from a per-call array (conv_lanes.cpp, lanes_offsets), not from
  // a column -> offset table in the loop: that second, dependent load cost 5-6 % of CaffeNet
  // conv2-5 at batch 16. Offsets are read three nonzeros ahead, so a nonzero's loads never
  // wait for its address: the offset's load would otherwise queue behind the previous
  // nonzero's R x P loads (two ahead: 1-3 % slower on CaffeNet conv2-5, four: no faster).
  int32_t next = j < j1 ? offs[j] : 0, next2 = j + 1 < j1 ? offs[j + 1] : 0, next3 = j + 2 < j1 ? offs[j + 2] : 0;
  for (; j < j1; ++j) {
    const T w = V::bcast(vals[j]);
    const float* base = in + next;
    next = next2;
    next2 = next3;
    if (j + 3 < j1) next3 = offs[j + 3];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const float* q = base + r * rs;
#pragma GCC unroll 32
      for (int p = 0; p < P; ++p) acc[r][p] = V::fma(w, V::load(q + p * W), acc[r][p]);
    }
  }
}

// Output channel m's finished vectors to the output, bias, residual and ReLU fused: the bias
// (one per output channel, so the same in every lane) and a ReLU go in before the transpose;
// after it, vector l holds image l's pixels of a group of up to W (a row of P > W pixels is
// transposed in groups of W).
template <class V, int R, int P>
inline void lanes_store(const LaneTile& t, int64_t m, typename V::T (&acc)[R][P]) {
  using T = typename V::T;
  constexpr int W = V::W;
  const int64_t plane = t.oh * t.ow;
  const bool relu_first = t.relu && !t.residual;  // ReLU commutes with the transpose
  const T vb = V::bcast(t.bias ? t.bias[m] : 0.0f);
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 2
    for (int p0 = 0; p0 < P; p0 += W) {
      const int n = P - p0 < W ? P - p0 : W;
      const auto mask = V::tail_mask(n);
      T v[W];
#pragma GCC unroll 16
      for (int p = 0; p < W; ++p) {
        if (p < n) {
          v[p] = V::add(acc[r][p0 + p], vb);
          if (relu_first) v[p] = V::max(V::zero(), v[p]);
        } else {
          v[p] = V::zero();
        }
      }
      V::transpose(v);
      const int64_t pix = (t.oy0 + r) * t.ow + t.ox0 + p0;
#pragma GCC unroll 16
      for (int l = 0; l < W; ++l) {
        const int64_t o = ((t.img0 + l) * t.out_channels + m) * plane + pix;
        T y = v[l];
        if (t.residual) {
          y = V::add(y, V::load_inside(t.residual + o, mask, t.residual, t.residual_end));
          if (t.relu) y = V::max(V::zero(), y);
        }
        // plain stores (V::store_part: no vmaskmovps on AVX2, microcoded on AMD cores): CaffeNet
        // conv2 10-12 % and conv3-5 0-7 % less time at batch 16 on a Zen 3
        if (n == W)
          V::storeu(t.out + o, y);
        else
          V::store_part(t.out + o, y, n, mask);
      }
    }
  }
}

// Fetches output channel m's lines of the tile (every image; the residual's too) ahead of its
// store. The epilogue writes each image's part of a row, a part of a cache line, so without
// this every store waits for its line to come in (from L3 or DRAM) one after another; fetched
// while the channel before runs its FMAs, the lines are there when the store comes. noinline:
// inlined, its address arithmetic made GCC spill the accumulators of the FMA loop.
template <class V, int R, int P>
__attribute__((noinline)) void lanes_prefetch_out(const LaneTile& t, int64_t m) {
  constexpr int W = V::W;
  const int64_t plane = t.oh * t.ow;
  for (int l = 0; l < W; ++l) {
    const int64_t o = ((t.img0 + l) * t.out_channels + m) * plane + t.oy0 * t.ow + t.ox0;
    for (int r = 0; r < R; ++r) {
      const int64_t row = o + r * t.ow;
      for (int p = 0; p < P; p += 16) V::prefetch_write(t.out + row + p);
      V::prefetch_write(t.out + row + P - 1);
      if (t.residual) {
        for (int p = 0; p < P; p += 16) V::prefetch_read(t.residual + row + p);
        V::prefetch_read(t.residual + row + P - 1);
      }
    }
  }
}

// The tile, output channel by output channel. With input-channel chunks (t.nchunks > 1) the
// input is swept a chunk at a time: the output channels of a block of t.mblock take their
// nonzeros of one chunk while that chunk's slice of the layout stays in L1, their partial sums
// waiting in t.acc (L1 too) between chunks. Without chunks each nonzero's R x P input vectors
// mostly come from the L2 (the tile's input of all channels is up to 1 MB). Chunks pay only
// when an output channel has enough nonzeros in a chunk to cover the partial sums' reload
// and store (the planner's rule, conv_lanes.cpp).
template <class V, int R, int P>
void lanes_rows(const LaneTile& t) {
  using T = typename V::T;
  constexpr int W = V::W;
  T acc[R][P];
  if (t.nchunks <= 1) {
    if (t.row0 < t.row1) lanes_prefetch_out<V, R, P>(t, t.row0);
    for (int64_t m = t.row0; m < t.row1; ++m) {
      if (m + 1 < t.row1) lanes_prefetch_out<V, R, P>(t, m + 1);
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r)
#pragma GCC unroll 32
        for (int p = 0; p < P; ++p) acc[r][p] = V::zero();
      lanes_accumulate<V, R, P>(t, t.row_ptr[m], t.row_ptr[m + 1], acc);
      lanes_store<V, R, P>(t, m, acc);
    }
    return;
  }
  const int nk = t.nchunks;
  for (int64_t mb = t.row0; mb < t.row1; mb += t.mblock) {
    const int64_t me = mb + t.mblock < t.row1 ? mb + t.mblock : t.row1;
    for (int k = 0; k < nk; ++k) {
      for (int64_t m = mb; m < me; ++m) {
        const int32_t* cp = t.chunk_ptr + m * (nk + 1) + k;
        float* s = t.acc + (m - mb) * (R * P * W);
        if (k > 0 && k < nk - 1 && cp[0] == cp[1]) continue;  // nothing to add to the partial sums
        if (k == nk - 1) lanes_prefetch_out<V, R, P>(t, m);
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r)
#pragma GCC unroll 32
          for (int p = 0; p < P; ++p) acc[r][p] = k == 0 ? V::zero() : V::load(s + (r * P + p) * W);
        lanes_accumulate<V, R, P>(t, cp[0], cp[1], acc);
        if (k == nk - 1) {
          lanes_store<V, R, P>(t, m, acc);
        } else {
#pragma GCC unroll 4
          for (int r = 0; r < R; ++r)
#pragma GCC unroll 32
            for (int p = 0; p < P; ++p) V::store(s + (r * P + p) * W, acc[r][p]);
        }
      }
    }
  }
}

// Only the (R, P) pairs that fit the register file exist; rows of more than W pixels (one
// transpose) only as single-row tiles.
template <class V, int R, int P, bool Fits = (R * P <= V::MAX_ACC && (P <= V::W || R == 1))>
struct LanesEntry {
  static constexpr void (*fn)(const LaneTile&) = &lanes_rows<V, R, P>;
};
template <class V, int R, int P>
struct LanesEntry<V, R, P, false> {
  static constexpr void (*fn)(const LaneTile&) = nullptr;
};

template <class V>
void lanes_tile(const LaneTile& t) {
  using Fn = void (*)(const LaneTile&);
  static const Fn table[4][16] = SCNN_KERNEL_TABLE(LanesEntry, V);
  // single rows of 17..32 pixels (only up to MAX_ACC are instantiated)
  static const Fn wide[16] = {LanesEntry<V, 1, 17>::fn, LanesEntry<V, 1, 18>::fn, LanesEntry<V, 1, 19>::fn,
                              LanesEntry<V, 1, 20>::fn, LanesEntry<V, 1, 21>::fn, LanesEntry<V, 1, 22>::fn,
                              LanesEntry<V, 1, 23>::fn, LanesEntry<V, 1, 24>::fn, LanesEntry<V, 1, 25>::fn,
                              LanesEntry<V, 1, 26>::fn, LanesEntry<V, 1, 27>::fn, LanesEntry<V, 1, 28>::fn,
                              LanesEntry<V, 1, 29>::fn, LanesEntry<V, 1, 30>::fn, LanesEntry<V, 1, 31>::fn,
                              LanesEntry<V, 1, 32>::fn};
  Fn fn = nullptr;
  if (t.rows >= 1 && t.rows <= 4 && t.pixels >= 1 && t.pixels <= 16) fn = table[t.rows - 1][t.pixels - 1];
  if (t.rows == 1 && t.pixels > 16 && t.pixels <= 32) fn = wide[t.pixels - 17];
  if (!fn) throw std::logic_error("sparsecnn: internal error: bad batch-lanes tile plan");
  fn(t);
}

// 0 in every lane when v[0..W) are all finite, NaN in a lane where one of them is NaN or +-Inf
// (x * 0 is 0 for a finite x, NaN otherwise): summed over a whole channel and checked once, it
// keeps the check off the layout's critical path.
template <class V>
inline typename V::T nonfinite_poison(const typename V::T* v) {
  using T = typename V::T;
  const T z = V::zero();
  T s[4] = {V::fma(v[0], z, z), V::fma(v[1], z, z), V::fma(v[2], z, z), V::fma(v[3], z, z)};
#pragma GCC unroll 16
  for (int l = 4; l < V::W; ++l) s[l % 4] = V::fma(v[l], z, s[l % 4]);
  return V::add(V::add(s[0], s[1]), V::add(s[2], s[3]));
}

// Lays out one channel of a block of W images (contiguous rows): padded pixel (i, j) of the W
// images goes, as one vector, to its stride phase's plane (LaneLayoutJob), zero outside the
// image; stride 1: plane row i, column j. Returns whether a NaN/Inf was read.
template <class V>
bool lanes_layout(const LaneLayoutJob& job) {
  using T = typename V::T;
  constexpr int W = V::W;
  const int64_t h = job.h, w = job.w, rows = job.rows, cols = job.cols;
  const int64_t pt = job.pad_top, pl = job.pad_left, pp = job.phase_plane;
  const int sh = job.sh, sw = job.sw;
  T poison = V::zero();
  for (int64_t i = 0, iq = 0, ir = 0; i < rows; ++i) {  // iq = i / sh, ir = i % sh
    const int rp = job.rphase[ir];
    if (++ir == sh) ir = 0;
    if (rp < 0) {
      if (ir == 0) ++iq;
      continue;
    }
    float* drow = job.dst + rp * job.ncp * pp + iq * job.prow * W;
    if (ir == 0) ++iq;
    const int64_t iy = i - pt;
    if (iy < 0 || iy >= h) {
      for (int64_t j = 0, jq = 0, jr = 0; j < cols; ++j) {
        if (job.cphase[jr] >= 0) V::store(drow + job.cphase[jr] * pp + jq * W, V::zero());
        if (++jr == sw) jr = 0, ++jq;
      }
      continue;
    }
    if (job.next_src) {
      // the same source row of the next channel, one row ahead of its layout
      const float* q = job.next_src + iy * job.row_stride;
#pragma GCC unroll 16
      for (int l = 0; l < W; ++l) {
        V::prefetch_read(q + l * job.img_stride);
        V::prefetch_read(q + l * job.img_stride + w - 1);
      }
    }
    for (int64_t j0 = 0; j0 < cols; j0 += W) {
      // columns j0 .. j0 + W - 1 read source columns j0 - pl ...; lanes [lo, hi) are inside
      const int64_t first = j0 - pl;
      const int64_t lo = first < 0 ? (-first < W ? -first : W) : 0;
      const int64_t hi = w - first < W ? (w - first > 0 ? w - first : 0) : W;
      T v[W];  // v[l]: W columns of image l; after the transpose v[k]: column j0 + k of all images
      const float* p = job.src + iy * job.row_stride + first;
      if (lo < hi) {
        const auto m = V::range_mask(static_cast<int>(lo), static_cast<int>(hi));
        // Plain loads (lanes cleared in a register) when all W lie inside the tensor; the loops
        // are unrolled so that v stays in registers through the transpose and the stores.
        if (p >= job.lo && p + (W - 1) * job.img_stride + W <= job.hi) {
#pragma GCC unroll 16
          for (int l = 0; l < W; ++l) v[l] = V::load_clear(p + l * job.img_stride, m);
        } else {
#pragma GCC unroll 16
          for (int l = 0; l < W; ++l) v[l] = V::load_inside(p + l * job.img_stride, m, job.lo, job.hi);
        }
        poison = V::add(poison, nonfinite_poison<V>(v));
      } else {
#pragma GCC unroll 16
        for (int l = 0; l < W; ++l) v[l] = V::zero();
      }
      V::transpose(v);
      const int64_t n = cols - j0 < W ? cols - j0 : W;
      if (sw == 1) {
#pragma GCC unroll 16
        for (int k = 0; k < W; ++k)
          if (k < n) V::store(drow + (j0 + k) * W, v[k]);
      } else {
        int64_t jq = j0 / sw, jr = j0 % sw;
#pragma GCC unroll 16
        for (int k = 0; k < W; ++k) {
          if (k < n && job.cphase[jr] >= 0) V::store(drow + job.cphase[jr] * pp + jq * W, v[k]);
          if (++jr == sw) jr = 0, ++jq;
        }
      }
    }
  }
  return V::nonfinite(poison);
}
