// Direct sparse convolution micro-kernel (Park et al., ICLR 2017, section 2.1).
//
// Included by each ISA translation unit inside an anonymous namespace, after it has defined
// the vector type V (V::T, V::W, zero, bcast, loadu, load_tail, fma, add, max, storeu,
// store_tail, tail_mask). Nothing here has external linkage.
//
// The weight is a CSR matrix with one row per output channel; table[col] turns a column into
// an offset into the "phased" input (padded, split into stride phases), so the virtual dense
// matrix is never built: for every nonzero the kernel broadcasts the weight once and does
// NB*NV fused multiply-adds on contiguous vectors of output positions (SIMD over positions,
// register blocking over positions and images). No gathers: stride > 1 was turned into
// stride 1 by the phase split in the driver.
#pragma once

#include "kernels/dispatch.hpp"

// acc += the nonzeros [j, j1) of output channel m over the tile's NB images x NV vectors.
// TAIL: the last vector is partial and might read past the input (the in-place 1x1 path): it
// is loaded whole when that stays inside the tensor (nearly always; its extra lanes are
// discarded by the epilogue), masked only at the tensor's end -- a masked load that spans two
// cache lines costs ~4x a plain one. Without TAIL the input has slack: always a plain load.
// With LIMIT, stops at the first nonzero whose column is >= limit (the end of an input-channel
// chunk: columns ascend within a row) and returns where it stopped.
template <class V, int NB, int NV, class Idx, bool TAIL, bool LIMIT = false>
__attribute__((always_inline)) inline int64_t conv_accumulate(const ConvTile& t, int64_t j, const int64_t j1,
                                                              typename V::T (&acc)[NB][NV], int64_t limit = 0) {
  using T = typename V::T;
  constexpr int W = V::W;
  const Idx* __restrict col = static_cast<const Idx*>(t.col);
  const float* __restrict vals = t.values;
  const int32_t* __restrict table = t.table;
  const float* in = t.in;
  const int64_t istride = t.img_stride;
  const float* const end = t.in_end;
  const int tail = static_cast<int>(t.count - static_cast<int64_t>(NV - 1) * W);  // 1..W
  const auto tmask = V::tail_mask(tail);
  // Offsets looked up three nonzeros ahead: the column -> table -> address chain then overlaps
  // earlier FMAs instead of delaying this nonzero's loads (two ahead: CaffeNet conv2-5 at
  // batch 1 1.5-3 % slower). Per-nonzero offsets made once per call, as the batch-lanes kernel
  // reads them, cost more than they save at these layer times (docs/kernel.md).
  int32_t next = j < j1 ? table[col[j]] : 0, next2 = j + 1 < j1 ? table[col[j + 1]] : 0,
          next3 = j + 2 < j1 ? table[col[j + 2]] : 0;
  for (; j < j1; ++j) {
    if (LIMIT && col[j] >= limit) break;
    const T w = V::bcast(vals[j]);
    const float* p = in + next;
    next = next2;
    next2 = next3;
    if (j + 3 < j1) next3 = table[col[j + 3]];
#pragma GCC unroll 16
    for (int b = 0; b < NB; ++b) {
      const float* pb = p + b * istride;
#pragma GCC unroll 16
      for (int v = 0; v < NV - 1; ++v) acc[b][v] = V::fma(w, V::loadu(pb + v * W), acc[b][v]);
      if (TAIL) {
        const float* q = pb + (NV - 1) * W;
        acc[b][NV - 1] = V::fma(w, q + W <= end ? V::loadu(q) : V::load_tail(q, tmask), acc[b][NV - 1]);
      } else
        acc[b][NV - 1] = V::fma(w, V::loadu(pb + (NV - 1) * W), acc[b][NV - 1]);
    }
  }
  return j;
}

// Output channel m's finished vectors to the output: bias and ReLU fused into the store;
// widened positions (the garbage columns ox >= OW of each row) are dropped here.
// always_inline: called out of line, it takes the accumulators' address, and GCC then kept
// them in memory too, writing all NB x NV of them to the stack after every nonzero of the
// FMA loop (13 stores per 13 FMAs in AVX2's 1 x 13 tile: CaffeNet conv2-5 at batch 1 took
// 24-35 % more time, ResNet-50's 3x3 layers 18 %).
template <class V, int NB, int NV>
__attribute__((always_inline)) inline void conv_store(const ConvTile& t, int64_t m, typename V::T (&acc)[NB][NV]) {
  using T = typename V::T;
  constexpr int W = V::W;
  alignas(64) float buf[NB][NV * W];
  const int64_t plane = t.oh * t.ow;
  const float bias = t.bias ? t.bias[m] : 0.0f;
  const T vb = V::bcast(bias);
#pragma GCC unroll 16
  for (int b = 0; b < NB; ++b)
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) V::storeu(&buf[b][v * W], acc[b][v]);

  for (int b = 0; b < NB; ++b) {
    const int64_t base = ((t.img0 + b) * t.out_channels + m) * plane;
    float* dst = t.out + base;
    const float* res = t.residual ? t.residual + base : nullptr;
    const float* src = buf[b];
    if (t.wrow == t.ow) {
      store_segment<V>(dst + t.p0, src, t.count, vb, t.relu, res ? res + t.p0 : nullptr);
      continue;
    }
    // Walk the widened rows the tile covers (first and last may be partial): no division
    // per row, the tile's first row is computed once.
    const int64_t end = t.p0 + t.count;
    int64_t oy = t.oy0, rs = oy * t.wrow;
    for (int64_t q = t.p0; q < end; ++oy, rs += t.wrow, q = rs) {
      const int64_t ox = q - rs;
      if (ox >= t.ow) continue;
      const int64_t seg_end = rs + t.ow < end ? rs + t.ow : end;
      store_segment<V>(dst + oy * t.ow + ox, src + (q - t.p0), seg_end - q, vb, t.relu,
                       res ? res + oy * t.ow + ox : nullptr);
    }
  }
}

// Fetches the values and columns of nonzeros [j, j + 64): with chunks, each output channel's
// part of a chunk is a short run of the weight a row away from the last one, which the
// hardware prefetchers do not foresee; fetched while the channel before runs its FMAs, it is
// in L1 when the loop gets there.
template <class V, class Idx>
inline void conv_prefetch_nonzeros(const ConvTile& t, int64_t j) {
  const float* v = t.values + j;
  const float* c = reinterpret_cast<const float*>(static_cast<const Idx*>(t.col) + j);
  V::prefetch_read(v);
  V::prefetch_read(v + 16);
  V::prefetch_read(v + 32);
  V::prefetch_read(c);
  V::prefetch_read(c + 16);
}

// The tile, output channel by output channel. With input-channel chunks (t.nchunks > 1) the
// input is swept a chunk at a time, as in the batch-lanes kernel: the output channels of a
// block of t.mblock take their nonzeros of one chunk while that chunk's slice of the layout
// stays in L1, their partial sums waiting in t.acc between chunks. Without chunks each
// nonzero's vectors mostly come from the L2 (the tile's input over all channels).
template <class V, int NB, int NV, class Idx, bool TAIL>
void conv_rows(const ConvTile& t) {
  using T = typename V::T;
  constexpr int W = V::W;
  constexpr int S = NB * NV * W;  // floats of one output channel's partial sums
  T acc[NB][NV];
  if (t.nchunks <= 1) {
    for (int64_t m = t.row0; m < t.row1; ++m) {
#pragma GCC unroll 16
      for (int b = 0; b < NB; ++b)
#pragma GCC unroll 16
        for (int v = 0; v < NV; ++v) acc[b][v] = V::zero();
      conv_accumulate<V, NB, NV, Idx, TAIL>(t, t.row_ptr[m], t.row_ptr[m + 1], acc);
      conv_store<V, NB, NV>(t, m, acc);
    }
    return;
  }
  // Each output channel's cursor moves through its row one chunk at a time: the loop stops at
  // the chunk's first column past the end (no per-call table of chunk starts: at batch 1 its
  // binary searches cost a tenth of ResNet-50 layer4's 3x3 at density 0.3).
  const int nk = t.nchunks;
  const int64_t span = t.chunk_cols;
  int64_t* const cur = t.cursor;
  for (int64_t mb = t.row0; mb < t.row1; mb += t.mblock) {
    const int64_t me = mb + t.mblock < t.row1 ? mb + t.mblock : t.row1;
    for (int64_t m = mb; m < me; ++m) cur[m - mb] = t.row_ptr[m];
    for (int k = 0; k < nk; ++k) {
      const int64_t limit = (k + 1) * span;
      for (int64_t m = mb; m < me; ++m) {
        float* s = t.acc + (m - mb) * S;
        const int64_t j = cur[m - mb], j1 = t.row_ptr[m + 1];
        const bool empty = j >= j1 || static_cast<int64_t>(static_cast<const Idx*>(t.col)[j]) >= limit;
        if (k > 0 && k < nk - 1 && empty) continue;  // nothing to add to the partial sums
        if (m + 1 < me) conv_prefetch_nonzeros<V, Idx>(t, cur[m + 1 - mb]);
#pragma GCC unroll 16
        for (int b = 0; b < NB; ++b)
#pragma GCC unroll 16
          for (int v = 0; v < NV; ++v) acc[b][v] = k == 0 ? V::zero() : V::load(s + (b * NV + v) * W);
        if (!empty) cur[m - mb] = conv_accumulate<V, NB, NV, Idx, TAIL, true>(t, j, j1, acc, limit);
        if (k == nk - 1) {
          conv_store<V, NB, NV>(t, m, acc);
        } else {
#pragma GCC unroll 16
          for (int b = 0; b < NB; ++b)
#pragma GCC unroll 16
            for (int v = 0; v < NV; ++v) V::store(s + (b * NV + v) * W, acc[b][v]);
        }
      }
    }
  }
}

template <class V, int NB, int NV>
void conv_entry(const ConvTile& t) {
  const bool tail = !t.overread_ok && t.count < static_cast<int64_t>(NV) * V::W;
  if (t.col16) {
    if (tail) conv_rows<V, NB, NV, uint16_t, true>(t);
    else conv_rows<V, NB, NV, uint16_t, false>(t);
  } else {
    if (tail) conv_rows<V, NB, NV, int32_t, true>(t);
    else conv_rows<V, NB, NV, int32_t, false>(t);
  }
}

// Only the (NB, NV) pairs that fit the register file are instantiated.
template <class V, int NB, int NV, bool Fits = (NB * NV <= V::MAX_ACC)>
struct ConvEntry {
  static constexpr void (*fn)(const ConvTile&) = &conv_entry<V, NB, NV>;
};
template <class V, int NB, int NV>
struct ConvEntry<V, NB, NV, false> {
  static constexpr void (*fn)(const ConvTile&) = nullptr;
};

template <class V>
void conv_tile(const ConvTile& t) {
  using Fn = void (*)(const ConvTile&);
  static const Fn table[4][16] = SCNN_KERNEL_TABLE(ConvEntry, V);
  // The driver plans within (nb <= 4, nv <= 16, nb*nv <= MAX_ACC); a violation is a bug there.
  if (t.nb < 1 || t.nb > 4 || t.nv < 1 || t.nv > 16 || !table[t.nb - 1][t.nv - 1] ||
      t.count <= static_cast<int64_t>(t.nv - 1) * V::W || t.count > static_cast<int64_t>(t.nv) * V::W)
    throw std::logic_error("sparsecnn: internal error: bad conv tile plan");
  table[t.nb - 1][t.nv - 1](t);
}
