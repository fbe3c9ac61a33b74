// Driver of the batch-lanes kernel (kernels/sparse_conv_batch.hpp): whole blocks of W images
// (16 on AVX-512) with the images in the SIMD lanes, for layers of strides up to kMaxLaneStride.
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <limits>
#include <string>
#include <vector>

#include "conv_internal.hpp"
#include "thread_pool.hpp"

namespace scnn {
namespace conv {
namespace {

// SPARSECNN_BATCH_LANES=0 turns the batch-lanes kernel off (to compare the two kernels).
bool lanes_enabled() {
  static const bool on = [] {
    const char* e = std::getenv("SPARSECNN_BATCH_LANES");
    return !(e && std::string(e) == "0");
  }();
  return on;
}

// Input-channel chunks: SPARSECNN_LANES_CHUNK unset or "auto" (the rule in lanes_images), =n (n
// channels per chunk), =0 (none). The performance model prices the plan either way
// (conv2d_plan reports the density where auto starts chunking and the partial-sum traffic).
int64_t lanes_chunk_setting() {
  static const int64_t v = chunk_setting("SPARSECNN_LANES_CHUNK");
  return v;
}

constexpr double kChunkL1 = 24.0 * 1024;
constexpr double kAccL1 = 16.0 * 1024;
// 12 made ResNet-50 layer4.1.conv2 (7x7, real 90 % mask, 12.9 nonzeros per chunk) 9-27 % slower
// at batch 16: its 7-pixel tiles pay a chunk switch with 7 FMAs per nonzero, not 26.
constexpr double kChunkNnz = 16.0;
constexpr int64_t kMinLanePixels = 7;
// Strided layers, AVX-512 only (see lanes_images): 100 took ResNet-50 layer2.0.conv2 with its
// real 90 % mask (~115 a row) 4-5 % slower at batch 16 on a Zen 5.
constexpr double kStridedNnz = 128.0;

// A band's layout: the planes of every channel over the padded input rows [first_in, first_in +
// in_rows) (band-relative row 0 = padded row first_in, a multiple of the row stride).
struct LayoutGeom {
  int64_t phase_plane, plane;  // floats per phase plane / per channel
};

LayoutGeom layout_geom(const LanesPlan& lp, int64_t in_rows, int W) {
  LayoutGeom g{};
  g.phase_plane = (in_rows + lp.sh - 1) / lp.sh * lp.prow * W;
  g.plane = g.phase_plane * lp.nrp * lp.ncp;
  return g;
}

// First column and width of unit u's pixel chunk (xc = u % nxc; the row's chunks are balanced).
int64_t unit_columns(const LanesPlan& lp, int64_t u, int64_t ow, int64_t* ox0) {
  const int64_t xc = u % lp.nxc, small = ow / lp.nxc, extra = ow % lp.nxc;
  *ox0 = xc * small + std::min(xc, extra);
  return small + (xc < extra ? 1 : 0);
}

// Pixels of unit u (row tile u / nxc, pixel chunk u % nxc).
int64_t unit_pixels(const LanesPlan& lp, int64_t u, int64_t oh, int64_t ow) {
  int64_t ox0;
  return std::min<int64_t>(lp.rows_max, oh - u / lp.nxc * lp.rows_max) * unit_columns(lp, u, ow, &ox0);
}

}  // namespace

BandCuts band_cuts(const LanesPlan& lp, int64_t oh, int64_t ow, int64_t out_channels, int64_t nbands,
                   const std::function<double(int64_t)>& cost) {
  const int64_t units = lp.units;
  BandCuts cuts;
  cuts.unit.assign(static_cast<size_t>(nbands + 1), units);
  cuts.ch.assign(static_cast<size_t>(nbands + 1), 0);
  std::vector<double> upre(static_cast<size_t>(units + 1), 0.0);
  for (int64_t u = 0; u < units; ++u) upre[u + 1] = upre[u] + static_cast<double>(unit_pixels(lp, u, oh, ow));
  const double per_pixel = cost(out_channels);
  int64_t u = 0;
  for (int64_t b = 0; b < nbands; ++b) {
    const double target = upre[units] * per_pixel * static_cast<double>(b) / static_cast<double>(nbands);
    while (u + 1 < units && upre[u + 1] * per_pixel <= target) ++u;
    // the output channel where the cut falls inside unit u
    const double rem = (target - upre[u] * per_pixel) / static_cast<double>(unit_pixels(lp, u, oh, ow));
    int64_t m = 0;
    while (m < out_channels && cost(m) < rem) ++m;
    cuts.unit[b] = m < out_channels ? u : u + 1;
    cuts.ch[b] = m < out_channels ? m : 0;
  }
  return cuts;
}

bool band_rows(const LanesPlan& lp, const BandCuts& cuts, int64_t b, int64_t oh, int64_t* first, int64_t* last) {
  if (cuts.unit[b] == cuts.unit[b + 1] && cuts.ch[b] == cuts.ch[b + 1]) return false;
  const int64_t u0 = cuts.unit[b], u1 = cuts.unit[b + 1] - (cuts.ch[b + 1] == 0 ? 1 : 0);
  *first = u0 / lp.nxc * lp.rows_max;
  *last = std::min<int64_t>(oh, (u1 / lp.nxc + 1) * lp.rows_max) - 1;
  return true;
}

// The images of the call the batch-lanes kernel takes (whole blocks of W), or 0: layers with
// strides up to kMaxLaneStride whose rows are contiguous, except the 1x1 stride-1 layers read in
// place by the per-image kernel (no copy, no wasted lanes there), and only when a tile's input
// fits the L2.
int64_t lanes_images(const Conv2dArgs& a, const IsaKernels& isa, int64_t oh, int64_t ow, LanesPlan* lp) {
  const int W = isa.width;
  lp->lanes_density = std::numeric_limits<double>::infinity();
  if (!lanes_enabled() || a.n < W || a.xs[3] != 1 || a.stride_h > kMaxLaneStride || a.stride_w > kMaxLaneStride)
    return 0;
  // 1x1 layers: unpadded stride-1 ones are read in place by the per-image kernel; strided ones
  // ran 1.4x slower here than there (ResNet-50 layer2.0.downsample at batch 16).
  const bool unpadded = a.pad_top == 0 && a.pad_bottom == 0 && a.pad_left == 0 && a.pad_right == 0;
  const bool strided = a.stride_h > 1 || a.stride_w > 1;
  if (a.kh == 1 && a.kw == 1 && (strided || unpadded)) return 0;
  // Strided layers on AVX-512: only with at least kStridedNnz nonzeros per output channel. Their
  // tiles are smaller (a strided tile reads ~2x the columns) and their layout splits the input
  // into phases, so sparse rows do not cover the transposing epilogue: at batch 16 on a Zen 5,
  // CaffeNet conv1 (11x11 stride 4) took 0.70x the per-image kernel's time at density 0.4 and
  // 1.06x at 0.1, ResNet-50's 7x7 stride-2 conv1 1.3-1.45x at 0.1-0.3 (15-44 nonzeros a row),
  // its layer2.0.conv2 1.03-1.13x at 0.05-0.1 (58-115 a row) and 0.78-0.96x at 0.3-0.7. On AVX2
  // (Zen 3, thirteenth session) the batch-lanes kernel won at every density tried: batch 16,
  // ResNet-50 conv1 0.97x / 0.76x at 0.1 / 0.3 (1.02x at 0.03), CaffeNet conv1 0.77x / 0.56x,
  // layer2.0.conv2's shape 0.72-0.92x at 0.01-0.1, a 64-channel 3x3 stride-2 layer 0.65x at
  // 0.05-0.1; batch 8 likewise (0.57-0.86x). The per-image kernel's 12-vector tiles and
  // misaligned loads there cost more than the strided tiles' transposes.
  const double row_cols = static_cast<double>(a.cin_per_group * a.kh * a.kw);
  const double nnz_per_row = static_cast<double>(a.weight.nnz) / static_cast<double>(std::max<int64_t>(1, a.out_channels));
  const double strided_nnz = strided && W >= 16 ? kStridedNnz : 0.0;  // 16-float vectors: AVX-512
  const double from = strided_nnz / row_cols;
  const int64_t drmax = (a.kh - 1) * a.dil_h, dqmax = (a.kw - 1) * a.dil_w;
  lp->sh = static_cast<int>(a.stride_h);
  lp->sw = static_cast<int>(a.stride_w);
  lp->drmax = drmax;
  lp->in_rows = lanes_in_rows(*lp, oh);
  lp->in_cols = (ow - 1) * a.stride_w + dqmax + 1;
  // Stride phases: tap (r, s) of output (oy, ox) reads padded pixel (oy sh + r dil_h, ox sw +
  // s dil_w), i.e. row oy + (r dil_h) / sh, column ox + (s dil_w) / sw of phase ((r dil_h) % sh,
  // (s dil_w) % sw): contiguous in ox, so strided layers need no gathers. Only the phases some
  // tap reads are laid out (a 1x1 stride-2 layer: one of four).
  auto phases = [](int64_t k, int64_t dil, int stride, int* index) {
    for (int q = 0; q < kMaxLaneStride; ++q) index[q] = -1;
    for (int64_t r = 0; r < k; ++r) index[(r * dil) % stride] = 0;
    int n = 0;
    for (int q = 0; q < stride; ++q)
      if (index[q] == 0) index[q] = n++;
    return n;
  };
  lp->nrp = phases(a.kh, a.dil_h, lp->sh, lp->rphase);
  lp->ncp = phases(a.kw, a.dil_w, lp->sw, lp->cphase);
  lp->prow = (lp->in_cols + lp->sw - 1) / lp->sw;
  const double phase_plane = static_cast<double>((lp->in_rows + lp->sh - 1) / lp->sh) * lp->prow * W;
  const double plane = phase_plane * lp->nrp * lp->ncp;
  if (plane * a.c >= static_cast<double>(std::numeric_limits<int32_t>::max())) return 0;  // 32-bit offsets
  lp->phase_plane = static_cast<int64_t>(phase_plane);
  lp->plane = static_cast<int64_t>(plane);
  // A row of up to max_acc pixels is one tile (transposed in groups of W in the epilogue), so an
  // image's pixels of a row are stored together, not by two tasks at different times: ResNet-50
  // layer1 3x3 (56 wide: 2 x 28 instead of 4 x 14 pixels) ran 13 % faster at batch 16; 27- and
  // 28-wide rows were unchanged.
  // The whole L2: unlike the per-image tiles, consecutive tasks share most of their rows.
  // (CaffeNet conv3 with 2 rows per tile, 983 KB of a 1 MB L2, ran 20% faster than 1 row.)
  // Rows split into more pixel chunks only when a single-row tile's input does not fit (a
  // strided layer reads ~2x the columns), down to kMinLanePixels pixels per tile.
  const int pmax = isa.max_acc;
  const double budget = static_cast<double>(l2_bytes());
  int64_t pbig = 0;
  auto per_channel = [&](int64_t r) {
    return 4.0 * W * lp->nrp * lp->ncp * (r + drmax / lp->sh) * (pbig + dqmax / lp->sw);
  };
  lp->rows_max = 0;
  const int64_t nxc_min = (ow + pmax - 1) / pmax;
  for (int64_t nxc = nxc_min; nxc <= ow && lp->rows_max == 0; ++nxc) {
    pbig = (ow + nxc - 1) / nxc;
    if (nxc > nxc_min && pbig < kMinLanePixels) break;
    lp->nxc = nxc;
    for (int r = 4; r >= 1 && lp->rows_max == 0; --r)
      if (r * pbig <= isa.max_acc && r <= oh && per_channel(r) * a.cin_per_group <= budget) lp->rows_max = r;
  }
  if (lp->rows_max == 0) {
    // No tile's input fits the L2 (many channels, strided: ResNet-50 layer4.0.conv2, 512
    // channels 3x3 stride 2, reads 1 MB for a row of 7 pixels): the last tile tried anyway, one
    // row of the fewest pixels. Its sweeps come from the L3, and at batch 16 that still took
    // 0.60-0.66x the per-image kernel's time there (density 0.1-0.3).
    pbig = (ow + lp->nxc - 1) / lp->nxc;
    lp->rows_max = 1;
  }
  lp->lanes_density = from;
  if (nnz_per_row < strided_nnz) return 0;
  lp->footprint = per_channel(lp->rows_max) * a.cin_per_group;
  // Chunks of input channels whose slice of the tile fits kChunkL1 of the L1, taken (auto) when
  // an output channel has at least kChunkNnz nonzeros per chunk on average, i.e. from the
  // density kChunkNnz / (channels per chunk * KH * KW) up: below it the reload and store of
  // the partial sums at every chunk switch cost more than the L1 hits save.
  const int64_t cg = a.cin_per_group, setting = lanes_chunk_setting();
  const int64_t fits = setting > 0 ? std::min(setting, cg)
                                   : std::max<int64_t>(1, static_cast<int64_t>(kChunkL1 / per_channel(lp->rows_max)));
  lp->chunk_fit = fits;
  lp->chunk_density = std::numeric_limits<double>::infinity();
  if (setting > 0 && fits < cg) lp->chunk_density = 0.0;
  if (setting < 0 && fits < cg) lp->chunk_density = kChunkNnz / static_cast<double>(fits * a.kh * a.kw);
  lp->chunk_ch = weight_density(a) >= lp->chunk_density && a.weight.nnz > 0 ? fits : cg;
  lp->nchunks = static_cast<int>((cg + lp->chunk_ch - 1) / lp->chunk_ch);
  // Schedule: bands (one per thread, each laying out its own rows) unless their halos would lay
  // out more than half as much again as one shared layout. Decided on the bands of an even
  // split (the run balances them by nonzeros: they move by less than a row tile).
  lp->units = (oh + lp->rows_max - 1) / lp->rows_max * lp->nxc;
  lp->nbands = std::min<int64_t>(std::max(1, a.threads), lp->units * a.out_channels);
  const BandCuts even = band_cuts(*lp, oh, ow, a.out_channels, lp->nbands, [](int64_t m) { return double(m); });
  lp->band_planes = 0;
  for (int64_t b = 0; b < lp->nbands; ++b) {
    int64_t first, last;
    if (band_rows(*lp, even, b, oh, &first, &last))
      lp->band_planes += layout_geom(*lp, lanes_in_rows(*lp, last - first + 1), W).plane;
  }
  const Schedule sched = schedule_setting();
  lp->banded = sched == Schedule::local || (sched == Schedule::automatic && lp->band_planes * 2 <= lp->plane * 3);
  return a.n / W * W;
}

namespace {

// From this many nonzeros the offsets pass is split over the threads (a parallel region costs a
// few us; ResNet-50 layer4's 3x3 at density 0.6 has 1.4M nonzeros, a ~0.5 ms pass).
constexpr int64_t kParallelOffsets = 1 << 17;

// Each nonzero's input offset (floats) into its group's layout: the paper's "virtual dense
// matrix", the column indices turned into addresses once per call (column -> offset table,
// then one pass over the nonzeros: ~10 us for CaffeNet conv3's 43K, split over the threads from
// kParallelOffsets nonzeros), so the FMA loop reads an offset instead of looking one up. The
// array is the calling thread's, reused across calls.
const int32_t* lanes_offsets(const Conv2dArgs& a, const LanesPlan& lp, const LayoutGeom& geom, int W) {
  std::vector<int32_t> table(static_cast<size_t>(a.cin_per_group * a.kh * a.kw));
  for (int64_t c = 0; c < a.cin_per_group; ++c)
    for (int64_t r = 0; r < a.kh; ++r)
      for (int64_t s = 0; s < a.kw; ++s)
        table[static_cast<size_t>((c * a.kh + r) * a.kw + s)] = static_cast<int32_t>(
            c * geom.plane +
            (lp.rphase[(r * a.dil_h) % lp.sh] * lp.ncp + lp.cphase[(s * a.dil_w) % lp.sw]) * geom.phase_plane +
            ((r * a.dil_h) / lp.sh * lp.prow + (s * a.dil_w) / lp.sw) * W);
  thread_local std::vector<int32_t> offs;
  const int64_t nnz = a.weight.nnz;
  if (offs.size() < static_cast<size_t>(nnz)) offs.resize(static_cast<size_t>(nnz));
  int32_t* const o = offs.data();
  const int32_t* const t = table.data();
  auto map = [&](int64_t j0, int64_t j1) {
    if (a.weight.col16) {
      const auto* col = static_cast<const uint16_t*>(a.weight.col);
      for (int64_t j = j0; j < j1; ++j) o[j] = t[col[j]];
    } else {
      const auto* col = static_cast<const int32_t*>(a.weight.col);
      for (int64_t j = j0; j < j1; ++j) o[j] = t[col[j]];
    }
  };
  const int threads = std::max(1, a.threads);
  if (nnz < kParallelOffsets || threads == 1) {
    map(0, nnz);
  } else {
    parallel_for(threads, threads, [&](int64_t i) { map(nnz * i / threads, nnz * (i + 1) / threads); });
  }
  return o;
}

// Lays out channels [c0, c1) of image block `blk` over the padded rows [first_in, first_in +
// rows) into `lay` (channel c at lay + c * geom.plane). Returns whether a NaN/Inf was read.
bool lay_out(const Conv2dArgs& a, const IsaKernels& isa, const LanesPlan& lp, const LayoutGeom& geom, int64_t blk,
             int64_t c0, int64_t c1, int64_t first_in, int64_t rows, float* lay) {
  const int W = isa.width;
  const float* const x_end = view_end(a);
  bool any = false;
  for (int64_t c = c0; c < c1; ++c) {
    // pad_top may go negative: band row i reads source row first_in + i - pad_top
    LaneLayoutJob job{a.x + blk * W * a.xs[0] + c * a.xs[1], a.x, x_end, a.xs[0], a.xs[2], a.h, a.w,
                      lay + c * geom.plane, rows, lp.in_cols, a.pad_top - first_in, a.pad_left, lp.sh, lp.sw,
                      lp.ncp, {}, {}, lp.prow, geom.phase_plane, nullptr};
    if (c + 1 < c1) job.next_src = job.src + a.xs[1];
    std::copy(lp.rphase, lp.rphase + kMaxLaneStride, job.rphase);
    std::copy(lp.cphase, lp.cphase + kMaxLaneStride, job.cphase);
    any |= isa.lanes_layout(job);
  }
  return any;
}

}  // namespace

// The batch-lanes kernel (kernels/sparse_conv_batch.hpp) on a call whose batch is a multiple of
// W, blocks of W images one after the other, in one of two schedules (Schedule,
// conv_internal.hpp):
//  - local, as bands (the default): the work, (row tile, output channel) in order, is cut into
//    one contiguous band per thread, balanced by nonzeros; each thread lays out only the input
//    rows of its band (plus the kernel's halo) into its own scratch and runs its band's tiles:
//    no barrier, and no line of the layout crosses between cores.
//  - shared: all threads lay a block out (over channels), then share its tiles (row tiles x
//    groups x output-channel ranges); taken for maps so small against the thread count that
//    the bands' halos would repeat much of the layout.
bool run_lanes(const Conv2dArgs& a, const IsaKernels& isa, int64_t oh, int64_t ow, const LanesPlan& lp) {
  const int W = isa.width, threads = std::max(1, a.threads);

  // Each output channel's first nonzero of every input-channel chunk.
  const int nk = lp.nchunks;
  std::vector<int32_t> chunk_ptr;
  if (nk > 1) chunk_ptr = chunk_starts(a, lp.chunk_ch, nk);

  const int64_t R = lp.rows_max, nxc = lp.nxc, units = lp.units;
  const int64_t og = a.out_channels / a.groups;
  // Runs output channels [row0, row1) of group g on unit (row tile x pixel chunk) `unit` of
  // block blk; `lay` is the block's layout whose band-relative row 0 is output row `top`.
  auto run_tile = [&](int64_t blk, int64_t unit, int64_t g, int64_t row0, int64_t row1, const float* lay,
                      const LayoutGeom& geom, const int32_t* offs, int64_t top) {
    if (row0 >= row1) return;
    int64_t ox0;
    const int64_t pixels = unit_columns(lp, unit, ow, &ox0), oy0 = unit / nxc * R;
    LaneTile t{};
    t.values = a.weight.values;
    t.row_ptr = a.weight.row_ptr;
    t.offs = offs;
    t.in = lay + g * a.cin_per_group * geom.plane + ((oy0 - top) * lp.prow + ox0) * W;
    t.row_stride = lp.prow * W;
    t.rows = static_cast<int>(std::min<int64_t>(R, oh - oy0));
    t.pixels = static_cast<int>(pixels);
    t.row0 = row0;
    t.row1 = row1;
    t.out = a.out;
    t.residual = a.residual;
    t.residual_end = a.residual ? a.residual + a.residual_numel : nullptr;
    t.bias = a.bias;
    t.relu = a.relu;
    t.img0 = blk * W;
    t.out_channels = a.out_channels;
    t.oh = oh;
    t.ow = ow;
    t.oy0 = oy0;
    t.ox0 = ox0;
    t.nchunks = nk;
    if (nk > 1) {
      const int64_t vecs = static_cast<int64_t>(t.rows) * t.pixels * W;  // floats per output channel
      t.mblock = std::max<int64_t>(1, static_cast<int64_t>(kAccL1 / (4.0 * vecs)));
      thread_local std::vector<float> acc;
      t.acc = aligned_scratch(acc, static_cast<size_t>(std::min(t.mblock, row1 - row0) * vecs));
      t.chunk_ptr = chunk_ptr.data();
    }
    isa.lanes_tile(t);
  };

  // Bands: cut points in the linear order (unit, output channel), each unit weighing its
  // pixels and each output channel its nonzeros + 2 (the epilogue), as row_bounds does.
  const bool banded = lp.banded;
  BandCuts cuts;
  int64_t band_rows_max = 1;
  if (banded) {
    cuts = band_cuts(lp, oh, ow, a.out_channels, lp.nbands,
                     [&](int64_t m) { return static_cast<double>(a.weight.row_ptr[m]) + 2.0 * m; });
    for (int64_t b = 0; b < lp.nbands; ++b) {
      int64_t first, last;
      if (band_rows(lp, cuts, b, oh, &first, &last)) band_rows_max = std::max(band_rows_max, last - first + 1);
    }
  }

  bool nonfinite = false;
  if (banded) {
    const int64_t nbands = lp.nbands;
    const LayoutGeom geom = layout_geom(lp, lanes_in_rows(lp, band_rows_max), W);
    const int32_t* const offs = lanes_offsets(a, lp, geom, W);
    std::vector<int64_t> bad(static_cast<size_t>(nbands * 8), 0);  // one cache line per band
    // A cut inside a unit that no other cut touches makes that unit a pool the two bands share:
    // each runs its own units first, then takes blocks of the pool's output channels, the band
    // before from the first block up, the band after from the last down, until they meet. Both
    // have laid out the unit's rows anyway, and the band that finishes its own part first takes
    // more, instead of waiting at the end (a 1-row tail tile, an unequal layout, the other
    // tenant). pool[b]: boundary b (between bands b - 1 and b), per block of images.
    const int64_t nblk = a.n / W;
    constexpr int64_t kPoolBlock = 16;  // output channels per claim
    const int64_t per_group = (og + kPoolBlock - 1) / kPoolBlock, items = a.groups * per_group;
    std::vector<bool> pooled(static_cast<size_t>(nbands + 1), false);
    for (int64_t b = 1; b < nbands; ++b)
      pooled[b] = cuts.ch[b] > 0 && cuts.unit[b - 1] < cuts.unit[b] && cuts.unit[b] < cuts.unit[b + 1];
    std::vector<TwoEndedPool> pool(static_cast<size_t>(nblk * (nbands + 1)));
    for (TwoEndedPool& q : pool) q.reset(items);
    parallel_for(nbands, threads, [&](int64_t b) {
      int64_t first, last;
      if (!band_rows(lp, cuts, b, oh, &first, &last)) return;
      float* lay = aligned_scratch(scratch(), static_cast<size_t>(a.c * geom.plane));
      bool any = false;
      for (int64_t blk = 0; blk < nblk; ++blk) {
        any |= lay_out(a, isa, lp, geom, blk, 0, a.c, first * lp.sh, lanes_in_rows(lp, last - first + 1), lay);
        for (int64_t g = 0; g < a.groups; ++g)
          for (int64_t u = cuts.unit[b]; u <= cuts.unit[b + 1] && u < units; ++u) {
            if ((u == cuts.unit[b] && pooled[b]) || (u == cuts.unit[b + 1] && pooled[b + 1])) continue;
            const int64_t m0 = u == cuts.unit[b] ? cuts.ch[b] : 0;
            const int64_t m1 = u == cuts.unit[b + 1] ? cuts.ch[b + 1] : a.out_channels;
            run_tile(blk, u, g, std::max(m0, g * og), std::min(m1, (g + 1) * og), lay, geom, offs, first);
          }
        for (const int64_t edge : {b + 1, b}) {  // the pool after this band, then the one before
          if (!pooled[edge]) continue;
          TwoEndedPool& q = pool[blk * (nbands + 1) + edge];
          for (int64_t i; (i = q.claim(edge == b + 1)) >= 0;) {
            const int64_t g = i / per_group, m0 = g * og + i % per_group * kPoolBlock;
            run_tile(blk, cuts.unit[edge], g, m0, std::min(m0 + kPoolBlock, (g + 1) * og), lay, geom, offs, first);
          }
        }
      }
      bad[b * 8] = any;
    });
    for (int64_t b = 0; b < nbands; ++b) nonfinite |= bad[b * 8] != 0;
    return nonfinite;
  }

  const LayoutGeom geom{lp.phase_plane, lp.plane};
  const int32_t* const offs = lanes_offsets(a, lp, geom, W);
  float* const lay = aligned_scratch(scratch(), static_cast<size_t>(a.c * lp.plane));
  const RowSplit rows(a, units, threads);
  const int64_t ntask = coarse_tasks(a.c, threads);
  std::vector<int64_t> bad(static_cast<size_t>(ntask * 8), 0);  // one cache line per task
  for (int64_t blk = 0; blk < a.n / W; ++blk) {
    parallel_for(ntask, threads, [&](int64_t t) {
      bad[t * 8] |= lay_out(a, isa, lp, geom, blk, a.c * t / ntask, a.c * (t + 1) / ntask, 0, lp.in_rows, lay);
    });
    parallel_for(rows.tasks, threads, [&](int64_t task) {
      int64_t row0, row1, g;
      const int64_t unit = rows.decode(task, &g, &row0, &row1);
      run_tile(blk, unit, g, row0, row1, lay, geom, offs, 0);
    });
  }
  for (int64_t t = 0; t < ntask; ++t) nonfinite |= bad[t * 8] != 0;
  return nonfinite;
}

}  // namespace conv
}  // namespace scnn
