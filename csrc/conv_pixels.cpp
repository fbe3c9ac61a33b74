// Driver of the per-image kernel (kernels/sparse_conv.hpp): SIMD over the output pixels of one
// image, any stride, dilation, padding and input layout.
//
// Layout ("phased input"): each (image, channel) is padded and split into stride phases, so
// that output position (oy, ox) reads tap (r, s) at
//     plane(phase(r, s)) + (oy + (r*dil_h)/stride_h) * wrow + ox + (s*dil_w)/stride_w,
// i.e. contiguous in ox for every stride. Rows are "widened" to wrow = OW + max column shift:
// the kernel computes the wrow - OW garbage columns of each row too (cheaper than breaking the
// SIMD run at every row end) and the epilogue drops them. A 1x1, stride-1, unpadded layer on
// an NCHW-contiguous input needs no copy at all.
#include <algorithm>
#include <cstring>
#include <cstdlib>
#include <limits>
#include <string>
#include <vector>

#include "conv_internal.hpp"
#include "thread_pool.hpp"

namespace scnn {
namespace conv {
namespace {

// True when any of p[0..n) is NaN or +-Inf (exponent bits all ones); integer-only so the
// compiler vectorises it.
bool has_nonfinite(const float* p, int64_t n) {
  uint32_t any = 0;
  for (int64_t i = 0; i < n; ++i) {
    uint32_t b;
    std::memcpy(&b, p + i, sizeof b);
    any |= static_cast<uint32_t>((b & 0x7f800000u) == 0x7f800000u);
  }
  return any != 0;
}

// Copies image n, channel c into its phase planes; returns whether it saw a non-finite value.
// One fused pass per row: zero the padding, copy (strided if need be) and check the exponent
// bits, in loops the compiler vectorises.
bool copy_channel(const Conv2dArgs& a, const Plan& p, float* dst, int64_t n, int64_t c) {
  const float* src = a.x + n * a.xs[0] + c * a.xs[1];
  uint32_t bad = 0;
  for (int64_t py = 0; py < a.stride_h; ++py) {
    if (p.phy_index[py] < 0) continue;
    for (int64_t px = 0; px < a.stride_w; ++px) {
      if (p.phx_index[px] < 0) continue;
      float* plane = dst + (p.phy_index[py] * p.nphx + p.phx_index[px]) * p.plane;
      // Plane column j reads input column j*stride_w + px - pad_left: valid for j in [jlo, jhi).
      const int64_t first = a.pad_left - px;
      int64_t jlo = first <= 0 ? 0 : (first + a.stride_w - 1) / a.stride_w;
      const int64_t last = a.w - 1 + a.pad_left - px;
      int64_t jhi = last < 0 ? 0 : last / a.stride_w + 1;
      jhi = std::min(jhi, p.wrow);
      jlo = std::min(jlo, jhi);
      const int64_t ix0 = jlo * a.stride_w + px - a.pad_left;
      const int64_t step = a.stride_w * a.xs[3];
      for (int64_t i = 0; i < p.hrows; ++i) {
        float* __restrict row = plane + i * p.wrow;
        const int64_t iy = i * a.stride_h + py - a.pad_top;
        if (iy < 0 || iy >= a.h) {
          for (int64_t j = 0; j < p.wrow; ++j) row[j] = 0.0f;
          continue;
        }
        for (int64_t j = 0; j < jlo; ++j) row[j] = 0.0f;
        const float* __restrict s = src + iy * a.xs[2] + ix0 * a.xs[3];
        if (step == 1) {
          for (int64_t j = 0; j < jhi - jlo; ++j) {
            const float v = s[j];
            uint32_t b;
            std::memcpy(&b, &v, sizeof b);
            bad |= static_cast<uint32_t>((b & 0x7f800000u) == 0x7f800000u);
            row[jlo + j] = v;
          }
        } else {
          for (int64_t j = 0; j < jhi - jlo; ++j) {
            const float v = s[j * step];
            uint32_t b;
            std::memcpy(&b, &v, sizeof b);
            bad |= static_cast<uint32_t>((b & 0x7f800000u) == 0x7f800000u);
            row[jlo + j] = v;
          }
        }
        for (int64_t j = jhi; j < p.wrow; ++j) row[j] = 0.0f;
      }
    }
  }
  return bad != 0;
}

// Input-channel chunks: SPARSECNN_PIXELS_CHUNK unset or "auto" (the rule in plan_pixels), =n (n
// channels per chunk), =0 (none).
int64_t pixels_chunk_setting() {
  static const int64_t v = chunk_setting("SPARSECNN_PIXELS_CHUNK");
  return v;
}

// A chunk switch reloads and stores one output channel's nb x nv partial sums and leaves the
// nonzero loop early; it pays where an output channel has this many nonzeros per chunk.
constexpr double kChunkNnz = 40.0;

// Row mode with a layout per thread: output channels per item of the claim pool (about; at
// least one item per thread and group). Claims take many items while many are left.
constexpr int64_t kClaimChannels = 4;

}  // namespace

bool direct_geometry(const Conv2dArgs& a) {
  return a.stride_h == 1 && a.stride_w == 1 && a.pad_top == 0 && a.pad_bottom == 0 && a.pad_left == 0 &&
         a.pad_right == 0 && a.kw == 1;
}

PixelsPlan plan_pixels(const Conv2dArgs& a, const IsaKernels& isa, int64_t oh, int64_t ow) {
  const int threads = std::max(1, a.threads);
  PixelsPlan pl;
  Plan& p = pl.p;
  p.oh = oh;
  p.ow = ow;
  // ---- phased layout ----
  // reach[q]: rows past its own that a tile reads in row phase q (its taps reach (r dil) /
  // stride rows down); the footprint below sums it per phase
  int64_t reach[64] = {};
  for (int i = 0; i < 64; ++i) p.phy_index[i] = p.phx_index[i] = -1;
  for (int64_t r = 0; r < a.kh; ++r) {
    const int64_t ry = r * a.dil_h;
    p.drmax = std::max(p.drmax, ry / a.stride_h);
    reach[ry % a.stride_h] = std::max(reach[ry % a.stride_h], ry / a.stride_h);
    int& slot = p.phy_index[ry % a.stride_h];
    if (slot < 0) slot = 0;
  }
  for (int64_t s = 0; s < a.kw; ++s) {
    const int64_t sx = s * a.dil_w;
    p.dqmax = std::max(p.dqmax, sx / a.stride_w);
    int& slot = p.phx_index[sx % a.stride_w];
    if (slot < 0) slot = 0;
  }
  p.nphy = p.nphx = 0;
  for (int i = 0; i < a.stride_h; ++i) if (p.phy_index[i] >= 0) p.phy_index[i] = p.nphy++;
  for (int i = 0; i < a.stride_w; ++i) if (p.phx_index[i] >= 0) p.phx_index[i] = p.nphx++;
  p.wrow = p.ow + p.dqmax;
  p.hrows = p.oh + p.drmax + (p.dqmax > 0 ? 1 : 0);
  const bool contiguous = a.xs[3] == 1 && a.xs[2] == a.w && a.xs[1] == a.h * a.w && (a.n == 1 || a.xs[0] == a.c * a.h * a.w);
  p.direct = contiguous && direct_geometry(a);
  if (p.direct) {
    p.wrow = a.w;
    p.hrows = a.h;
  }
  // Aligned loads: with the row width a multiple of the vector width, and one replica of the
  // input per column shift dq (replica dq holds the input moved dq floats left), every
  // vector load of the kernel is aligned. A misaligned 64-byte load spans two cache lines and
  // costs two load slots on current x86 cores, which halves the FMA rate from L1. Used when it
  // widens rows by at most 25% and needs at most 3 replicas: the tiles mostly run from L2, where
  // alignment buys less, and the 5 replicas of a 5x5 layer cost more to write than they saved
  // (CaffeNet conv2 at batch 1 and 4: 5% faster with one unaligned copy). Only where a vector
  // is a whole 64-byte line (AVX-512): a misaligned 32-byte AVX2 load crosses a line only half
  // the time, and the replicas triple the input a tile reads from the L2. On a Zen 3 (512 KB
  // L2) AVX2 without them took 12-42 % less time on CaffeNet conv3-5 at batch 1 and 4 and 23 %
  // on ResNet-50's 3x3 layers at batch 1 (benchmarks/ab_core.py, ab_resnet.py).
  const int W = isa.width;
  int64_t& nshift = pl.nshift;
  if (!p.direct && W * 4 >= 64) {
    const int64_t wa = (p.wrow + W - 1) / W * W;
    if (wa * 4 <= p.wrow * 5 && p.dqmax + 1 <= 3) {
      p.wrow = wa;
      nshift = p.dqmax + 1;
    }
  }
  const int nph = pl.nph = p.nphy * p.nphx;
  p.plane = checked_mul(p.hrows, p.wrow, "plane size");
  p.cstride = checked_mul(p.plane, nph, "channel size");
  p.istride = checked_mul(p.cstride, a.c, "image size");
  if (p.istride > std::numeric_limits<int32_t>::max())
    throw std::overflow_error("sparse_conv2d: one image of the (padded) input has " + std::to_string(p.istride) +
                              " elements, more than the 2^31 that 32-bit offsets address; split the input");
  checked_mul(p.istride, a.n, "phased input size");

  // ---- plan the tiles ----
  // A tile is nb images x nv vectors of widened positions x a range of output channels of one
  // group. Register blocking wants nb * nv close to max_acc; the cache wants the input the
  // tile reads (nb images x the group's channels x the rows its positions touch, every phase
  // and replica) to fit the core's L2, so the row loop re-reads it from there, not from L3.
  const int64_t positions = pl.positions = p.oh * p.wrow;
  const int64_t nvec = pl.nvec = (positions + W - 1) / W;
  const int nv_max = std::min(16, isa.max_acc);
  const double budget = 0.9 * static_cast<double>(l2_bytes());
  // Summed per row phase, not the largest reach for every phase: a 3x3 stride-2 tile reads one
  // more row in two of its four phases, none in the other two.
  auto footprint = [&](int64_t nb_, int64_t nv_) {  // bytes of input one tile reads
    double span = 0.0;
    for (int q = 0; q < a.stride_h; ++q)
      if (p.phy_index[q] >= 0)
        span += p.nphx * std::min<double>(static_cast<double>(p.plane), static_cast<double>(nv_ * W + reach[q] * p.wrow + W));
    return 4.0 * nb_ * a.cin_per_group * nshift * span;
  };
  int64_t nchunks = (nvec + nv_max - 1) / nv_max;
  int64_t chunk_big = (nvec + nchunks - 1) / nchunks;
  while (chunk_big > 4 && footprint(1, chunk_big) > budget) {
    ++nchunks;
    chunk_big = (nvec + nchunks - 1) / nchunks;
  }
  int nb = 1;
  for (int cand = 4; cand >= 2; --cand)
    if (cand <= a.n && cand * chunk_big <= isa.max_acc && footprint(cand, chunk_big) <= budget) {
      nb = cand;
      break;
    }
  const int64_t nblocks = (a.n + nb - 1) / nb;
  // Two ways to share the work. "Image" mode (enough image blocks for every thread): a task is
  // one block of images; its thread lays that block out in its own buffer and runs every tile
  // on it while it is still in its L2. "Row" mode (batch 1, small batches): one shared layout,
  // then the tiles are split over output channels so that every thread has work.
  const bool image_mode = nblocks >= threads && (threads == 1 || nblocks % threads == 0 || nblocks >= 4 * threads);
  const int64_t buf_images = image_mode ? nb : a.n;
  // One replica of a buffer, with slack so that a partial last vector can be loaded whole.
  const int64_t rep_stride = (buf_images * p.istride + 64 + 15) / 16 * 16;
  pl.W = W;
  pl.nchunks = nchunks;
  pl.nb = nb;
  pl.nblocks = nblocks;
  pl.image_mode = image_mode;
  pl.buf_images = buf_images;
  pl.rep_stride = rep_stride;
  if (nshift > 1 && checked_mul(nshift, rep_stride, "phased input size") > std::numeric_limits<int32_t>::max())
    nshift = 1;  // offsets of the replicas would overflow: fall back to unaligned loads
  pl.footprint = footprint(nb, chunk_big);
  // Input-channel chunks. Without them every nonzero's nb x nv vectors come from the L2 (the
  // tile's input over all channels), which feeds a core about two thirds of the FMA-with-load
  // rate the L1 does. Chunks of channels whose slice of the tile fits half the L1 are swept one
  // at a time by a block of output channels (partial sums in a quarter of the L1), from the
  // density where an output channel has kChunkNnz nonzeros per chunk on average. Not where a
  // tile covers whole planes (one chunk of positions, e.g. 7x7 maps): its sweep over the
  // channels is then one contiguous stream that the hardware prefetchers bring into the L1
  // (ResNet-50 layer4's 3x3 at batch 1, density 0.3: 4-11 % slower chunked).
  {
    const int64_t cg = a.cin_per_group, setting = pixels_chunk_setting();
    const double per_channel = pl.footprint / static_cast<double>(cg);
    const int64_t fits = setting > 0 ? std::min(setting, cg)
                                     : std::max<int64_t>(1, static_cast<int64_t>(0.5 * l1_bytes() / per_channel));
    pl.chunk_density = std::numeric_limits<double>::infinity();
    if (setting > 0 && fits < cg) pl.chunk_density = 0.0;
    // A strided tile's taps read nph phase planes, not one, so each nonzero finds fewer of its
    // lines already in the L1, and the chunks pay from nph times fewer nonzeros per chunk
    // (ResNet-50 layer2.0/3.0.conv2 at batch 1: 11-16 % less time at density 0.2-0.3). Not in
    // tiles of fewer than 8 vectors, where a switch's fixed cost weighs on fewer FMAs
    // (layer4.0.conv2, 4 vectors: 2-9 % slower at 0.1).
    const double per_chunk = nph > 1 && chunk_big >= 8 ? kChunkNnz / nph : kChunkNnz;
    if (setting < 0 && fits < cg && nchunks > 1)
      pl.chunk_density = per_chunk / static_cast<double>(fits * a.kh * a.kw);
    pl.cin_chunk = weight_density(a) >= pl.chunk_density && a.weight.nnz > 0 ? fits : cg;
    pl.cin_chunks = static_cast<int>((cg + pl.cin_chunk - 1) / pl.cin_chunk);
    pl.mblock = std::max<int64_t>(1, static_cast<int64_t>(0.25 * l1_bytes() / (4.0 * nb * chunk_big * W)));
  }
  // Row mode with a layout: each thread lays the whole input out itself ("local", Schedule in
  // conv_internal.hpp), so that neither core reads lines the other wrote. At batch 1 always;
  // above it from the density where those copies cost little against the FMAs (the layout's
  // vectors, once per thread, at most half the vector FMAs). Strided layers too, though their
  // layout is the generic, unvectorised one. Measured on a Zen 4 (benchmarks.md, "A third
  // machine"): with the VM's vCPUs in two core complexes one shared layout made ResNet-50's
  // strided layers 1.1-3x and 3x3 layers below the density 3.5-5x slower at batch 1, while the
  // copies ran as fast in both placements; in one complex the copies read -6..+6 % on the
  // strided layers (a Zen 5 had read +13-30 %) and -20..-42 % below the density. At batches 5
  // and 7 the copies below the density lost 25-69 % in one complex. Not from channels-last
  // input, whose layout gathers every row (local 1.4x the shared time there).
  const Schedule sched = schedule_setting();
  const bool rows_contiguous = a.xs[3] == 1;
  pl.local_density = std::numeric_limits<double>::infinity();
  if (!image_mode && !p.direct && threads > 1 && sched != Schedule::shared &&
      (rows_contiguous || sched == Schedule::local)) {
    const double layout_vectors = static_cast<double>(a.n) * static_cast<double>(p.istride) * nshift / W;
    const double dense_fmas = static_cast<double>(a.out_channels) * static_cast<double>(a.cin_per_group * a.kh * a.kw) *
                              static_cast<double>(nvec) * static_cast<double>(a.n);
    pl.local_density = sched == Schedule::local || a.n == 1 ? 0.0 : 2.0 * threads * layout_vectors / dense_fmas;
  }
  pl.local = weight_density(a) >= pl.local_density;
  return pl;
}

bool run_pixels(const Conv2dArgs& a, const IsaKernels& isa, int64_t oh, int64_t ow) {
  const int threads = std::max(1, a.threads);
  const int64_t K = a.kh * a.kw, cols = a.cin_per_group * K;
  const PixelsPlan pl = plan_pixels(a, isa, oh, ow);
  const Plan& p = pl.p;
  const int W = pl.W;
  const int64_t nshift = pl.nshift, positions = pl.positions, nvec = pl.nvec, nchunks = pl.nchunks;
  const int64_t nb = pl.nb, nblocks = pl.nblocks, buf_images = pl.buf_images, rep_stride = pl.rep_stride;
  const bool image_mode = pl.image_mode;
  const int64_t og = a.out_channels / a.groups;

  const int nk = pl.cin_chunks;
  // column -> offset table, built per call (O(C*KH*KW)); the CSR itself stays layout free.
  // The offsets of channel 0's taps, then every channel is that plus c * cstride (no division
  // per column: this runs on every call).
  std::vector<int32_t> table(static_cast<size_t>(cols));
  for (int64_t r = 0; r < a.kh; ++r)
    for (int64_t s = 0; s < a.kw; ++s) {
      const int64_t ry = r * a.dil_h, sx = s * a.dil_w;
      const int64_t ph = p.phy_index[ry % a.stride_h] * p.nphx + p.phx_index[sx % a.stride_w];
      const int64_t dq = sx / a.stride_w;
      table[static_cast<size_t>(r * a.kw + s)] =
          static_cast<int32_t>(ph * p.plane + (ry / a.stride_h) * p.wrow + (nshift > 1 ? dq * rep_stride : dq));
    }
  for (int64_t c = 1; c < a.cin_per_group; ++c)
    for (int64_t k = 0; k < K; ++k)
      table[static_cast<size_t>(c * K + k)] = table[static_cast<size_t>(k)] + static_cast<int32_t>(c * p.cstride);

  // Lays images [n0, n0 + count) out in dst (replica 0, then the shifted replicas), channels
  // [c0, c1) of each; returns whether a non-finite input was seen.
  // Stride 1 with contiguous rows (nearly every layer) has a vectorised path in the ISA
  // kernels that writes the plane and its replicas in one pass.
  const bool fast_layout = a.stride_h == 1 && a.stride_w == 1 && a.xs[3] == 1;
  const float* const x_end = view_end(a);
  auto layout = [&](float* dst, int64_t n0, int64_t count, int64_t c0, int64_t c1) {
    bool any = false;
    for (int64_t n = n0; n < n0 + count; ++n)
      for (int64_t c = c0; c < c1; ++c) {
        float* d0 = dst + (n - n0) * p.istride + c * p.cstride;
        if (fast_layout) {
          const LayoutJob job{a.x + n * a.xs[0] + c * a.xs[1], a.x, x_end, a.h, a.w, a.xs[2], d0,
                              p.hrows, p.wrow, a.pad_top, a.pad_left, static_cast<int>(nshift), rep_stride};
          any |= isa.layout_channel(job);
          continue;
        }
        any |= copy_channel(a, p, d0, n, c);
        // Replica k of this channel = the channel moved k floats left, written while it is
        // hot in cache. Its last k floats would come from the next channel; only discarded
        // (widened) outputs read them, so they are zeroed instead, keeping tasks independent.
        for (int64_t k = 1; k < nshift; ++k) {
          float* __restrict dk = d0 + k * rep_stride;
          const float* __restrict s0 = d0 + k;
          std::memcpy(dk, s0, sizeof(float) * static_cast<size_t>(p.cstride - k));
          for (int64_t i = p.cstride - k; i < p.cstride; ++i) dk[i] = 0.0f;
        }
      }
    return any;
  };
  auto buffer = [&]() -> float* {
    float* dst = aligned_scratch(scratch(), static_cast<size_t>(nshift * rep_stride));
    const int64_t used = buf_images * p.istride;
    for (int64_t k = 0; k < nshift; ++k)  // the slack after the last image of each replica
      std::memset(dst + k * rep_stride + used, 0, sizeof(float) * static_cast<size_t>(rep_stride - used));
    return dst;
  };
  auto run_tile = [&](const float* in0, int64_t img0, int64_t img_base, int64_t g, int64_t k, int64_t row0, int64_t row1) {
    // Chunk k covers vectors [v0, v0 + nv): the first (nvec % nchunks) chunks get one more.
    const int64_t small = nvec / nchunks, extra = nvec % nchunks;
    const int64_t v0 = k * small + std::min(k, extra);
    const int64_t nv = small + (k < extra ? 1 : 0);
    const int64_t istride = p.direct ? (a.n == 1 ? p.istride : a.xs[0]) : p.istride;
    ConvTile t{};
    t.values = a.weight.values;
    t.col = a.weight.col;
    t.col16 = a.weight.col16;
    t.row_ptr = a.weight.row_ptr;
    t.table = table.data();
    t.p0 = v0 * W;
    t.count = std::min<int64_t>(nv * W, positions - t.p0);
    t.in = in0 + (img0 - img_base) * istride + g * a.cin_per_group * p.cstride + t.p0;
    t.img_stride = istride;
    t.row0 = row0;
    t.row1 = row1;
    t.nb = static_cast<int>(std::min<int64_t>(nb, a.n - img0));
    t.nv = static_cast<int>(nv);
    t.overread_ok = !p.direct;
    t.in_end = view_end(a);
    t.out = a.out;
    t.img0 = img0;
    t.out_channels = a.out_channels;
    t.oh = p.oh;
    t.ow = p.ow;
    t.wrow = p.wrow;
    t.oy0 = t.p0 / p.wrow;
    t.bias = a.bias;
    t.residual = a.residual;
    t.relu = a.relu;
    t.nchunks = nk;
    if (nk > 1) {
      t.mblock = pl.mblock;
      t.chunk_cols = pl.cin_chunk * K;
      const int64_t ms = std::min(t.mblock, row1 - row0);
      thread_local std::vector<float> acc;
      thread_local std::vector<int64_t> cursor;
      t.acc = aligned_scratch(acc, static_cast<size_t>(ms * t.nb * t.nv * W));
      if (cursor.size() < static_cast<size_t>(ms)) cursor.resize(static_cast<size_t>(ms));
      t.cursor = cursor.data();
    }
    isa.conv_tile(t);
  };

  bool nonfinite = false;
  if (image_mode) {
    std::vector<int64_t> bad(static_cast<size_t>(nblocks * 8), 0);  // one cache line per task
    parallel_for(nblocks, threads, [&](int64_t blk) {
      const int64_t img0 = blk * nb, count = std::min<int64_t>(nb, a.n - img0);
      const float* in0;
      if (p.direct) {
        const int64_t hw = a.h * a.w;
        bool any = false;
        for (int64_t n = img0; n < img0 + count; ++n)
          for (int64_t c = 0; c < a.c; ++c) any |= has_nonfinite(a.x + n * a.xs[0] + c * a.xs[1], hw);
        bad[blk * 8] = any;
        in0 = a.x + img0 * (a.n == 1 ? p.istride : a.xs[0]);
      } else {
        float* dst = buffer();
        bad[blk * 8] = layout(dst, img0, count, 0, a.c);
        in0 = dst;
      }
      for (int64_t k = 0; k < nchunks; ++k)
        for (int64_t g = 0; g < a.groups; ++g) run_tile(in0, img0, img0, g, k, g * og, (g + 1) * og);
    });
    for (int64_t b = 0; b < nblocks; ++b) nonfinite |= bad[b * 8] != 0;
  } else if (pl.local) {
    // Row mode, local: every thread lays the whole input out in its own scratch and runs one
    // range of output channels (balanced by nonzeros) on it. At batch 1 this beat the shared
    // layout with its tiles shared dynamically in both placements of the VM's two vCPUs
    // (CaffeNet conv3-5: 111-114 us against 120-122 in one core complex, 198-228 in two).
    // The output channels are claimed in blocks (balanced by nonzeros) from the two ends of
    // a pool per tile of positions, even threads from the front, odd ones from the back.
    std::vector<int64_t> bad(static_cast<size_t>(threads * 8), 0);  // one cache line per thread
    const int64_t parts = std::min<int64_t>(og, std::max<int64_t>(threads, og / kClaimChannels));
    const std::vector<int64_t> bounds = row_bounds(a, parts);
    const int64_t units = nblocks * nchunks, items = a.groups * parts;
    std::vector<TwoEndedPool> pool(static_cast<size_t>(units));
    for (TwoEndedPool& q : pool) q.reset(items);
    parallel_for(threads, threads, [&](int64_t th) {
      float* dst = buffer();
      bad[th * 8] = layout(dst, 0, a.n, 0, a.c);
      for (int64_t unit = 0; unit < units; ++unit)
        for (int64_t i0, i1; pool[unit].claim_guided(th % 2 == 0, &i0, &i1);)
          for (int64_t i = i0; i < i1;) {  // one run per group the claim covers
            const int64_t g = i / parts, rp0 = i % parts, rp1 = std::min(parts, rp0 + (i1 - i));
            const int64_t r0 = bounds[g * (parts + 1) + rp0], r1 = bounds[g * (parts + 1) + rp1];
            if (r0 < r1) run_tile(dst, unit / nchunks * nb, 0, g, unit % nchunks, r0, r1);
            i += rp1 - rp0;
          }
    });
    for (int64_t t = 0; t < threads; ++t) nonfinite |= bad[t * 8] != 0;
  } else {
    const float* in0 = a.x;
    const int64_t jobs = a.n * a.c, ntask = coarse_tasks(jobs, threads);
    std::vector<int64_t> bad(static_cast<size_t>(ntask * 8), 0);  // one cache line per task
    if (!p.direct) {
      float* dst = buffer();
      parallel_for(ntask, threads, [&](int64_t t) {
        bool any = false;
        for (int64_t i = jobs * t / ntask; i < jobs * (t + 1) / ntask;) {
          // channels of one image, up to the task's end
          const int64_t n = i / a.c, c0 = i % a.c, c1 = std::min(a.c, c0 + (jobs * (t + 1) / ntask - i));
          any |= layout(dst + n * p.istride, n, 1, c0, c1);
          i += c1 - c0;
        }
        bad[t * 8] = any;
      });
      in0 = dst;
    } else {
      const int64_t hw = a.h * a.w;
      parallel_for(ntask, threads, [&](int64_t t) {
        bool any = false;
        for (int64_t i = jobs * t / ntask; i < jobs * (t + 1) / ntask; ++i)
          any |= has_nonfinite(a.x + (i / a.c) * a.xs[0] + (i % a.c) * a.xs[1], hw);
        bad[t * 8] = any;
      });
    }
    for (int64_t t = 0; t < ntask; ++t) nonfinite |= bad[t * 8] != 0;

    const RowSplit rows(a, nblocks * nchunks, threads);
    parallel_for(rows.tasks, threads, [&](int64_t task) {
      int64_t row0, row1, g;
      const int64_t unit = rows.decode(task, &g, &row0, &row1);
      if (row0 < row1) run_tile(in0, unit / nchunks * nb, 0, g, unit % nchunks, row0, row1);
    });
  }

  return nonfinite;
}

}  // namespace conv
}  // namespace scnn
