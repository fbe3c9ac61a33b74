// Driver of the batch-lanes kernel (kernels/sparse_conv_batch.hpp): whole blocks of W images
// (16 on AVX-512) with the images in the SIMD lanes, for stride-1 layers.
#include <algorithm>
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
// Returns -1 for auto.
int64_t chunk_setting() {
  static const int64_t v = [] {
    const char* e = std::getenv("SPARSECNN_LANES_CHUNK");
    if (!e || !*e || std::string(e) == "auto") return int64_t(-1);
    return std::max<int64_t>(0, std::atoll(e));
  }();
  return v;
}

constexpr double kChunkL1 = 24.0 * 1024;
constexpr double kAccL1 = 16.0 * 1024;
constexpr double kChunkNnz = 12.0;

}  // namespace

// The images of the call the batch-lanes kernel takes (whole blocks of W), or 0: stride-1
// layers whose rows are contiguous, except the 1x1 layers read in place by the per-image
// kernel (no copy, no wasted lanes there), and only when a tile's input fits the L2.
int64_t lanes_images(const Conv2dArgs& a, const IsaKernels& isa, int64_t oh, int64_t ow, LanesPlan* lp) {
  const int W = isa.width;
  if (!lanes_enabled() || a.n < W || a.stride_h != 1 || a.stride_w != 1 || a.xs[3] != 1) return 0;
  const bool unpadded = a.pad_top == 0 && a.pad_bottom == 0 && a.pad_left == 0 && a.pad_right == 0;
  if (a.kh == 1 && a.kw == 1 && unpadded) return 0;
  const int64_t drmax = (a.kh - 1) * a.dil_h, dqmax = (a.kw - 1) * a.dil_w;
  lp->hrows = oh + drmax;
  lp->wcols = ow + dqmax;
  const double plane = static_cast<double>(lp->hrows) * lp->wcols * W;
  if (plane * a.c >= static_cast<double>(std::numeric_limits<int32_t>::max())) return 0;  // 32-bit offsets
  lp->plane = static_cast<int64_t>(plane);
  // A row of up to max_acc pixels is one tile (transposed in groups of W in the epilogue), so an
  // image's pixels of a row are stored together, not by two tasks at different times: ResNet-50
  // layer1 3x3 (56 wide: 2 x 28 instead of 4 x 14 pixels) ran 13 % faster at batch 16; 27- and
  // 28-wide rows were unchanged.
  const int pmax = isa.max_acc;
  lp->nxc = (ow + pmax - 1) / pmax;
  const int64_t pbig = (ow + lp->nxc - 1) / lp->nxc;
  // The whole L2: unlike the per-image tiles, consecutive tasks share most of their rows.
  // (CaffeNet conv3 with 2 rows per tile, 983 KB of a 1 MB L2, ran 20% faster than 1 row.)
  const double budget = static_cast<double>(l2_bytes());
  auto footprint = [&](int64_t r) { return 4.0 * W * a.cin_per_group * (r + drmax) * (pbig + dqmax); };
  lp->rows_max = 0;
  for (int r = 4; r >= 1; --r)
    if (r * pbig <= isa.max_acc && r <= oh && footprint(r) <= budget) {
      lp->rows_max = r;
      break;
    }
  if (lp->rows_max == 0) return 0;
  // Chunks of input channels whose slice of the tile fits kChunkL1 of the L1, taken (auto) when
  // an output channel has at least kChunkNnz nonzeros per chunk on average, i.e. from the
  // density kChunkNnz / (channels per chunk * KH * KW) up: below it the reload and store of
  // the partial sums at every chunk switch cost more than the L1 hits save.
  const int64_t cg = a.cin_per_group, setting = chunk_setting();
  const double per_channel = 4.0 * W * (lp->rows_max + drmax) * (pbig + dqmax);
  const int64_t fits = setting > 0 ? std::min(setting, cg)
                                   : std::max<int64_t>(1, static_cast<int64_t>(kChunkL1 / per_channel));
  lp->chunk_fit = fits;
  lp->chunk_density = std::numeric_limits<double>::infinity();
  if (setting > 0 && fits < cg) lp->chunk_density = 0.0;
  if (setting < 0 && fits < cg) lp->chunk_density = kChunkNnz / static_cast<double>(fits * a.kh * a.kw);
  const double cols = static_cast<double>(cg * a.kh * a.kw) * static_cast<double>(std::max<int64_t>(1, a.out_channels));
  const double density = static_cast<double>(a.weight.nnz) / cols;
  lp->chunk_ch = density >= lp->chunk_density && a.weight.nnz > 0 ? fits : cg;
  lp->nchunks = static_cast<int>((cg + lp->chunk_ch - 1) / lp->chunk_ch);
  return a.n / W * W;
}

// The batch-lanes kernel (kernels/sparse_conv_batch.hpp) on a call whose batch is a multiple of
// W. Blocks of W images one after the other; all threads lay a block out (over channels), then
// share its tiles (output rows x pixel chunks x groups x output-channel ranges).
bool run_lanes(const Conv2dArgs& a, const IsaKernels& isa, int64_t oh, int64_t ow, const LanesPlan& lp) {
  const int W = isa.width, threads = std::max(1, a.threads);
  const int64_t K = a.kh * a.kw, cols = a.cin_per_group * K;
  std::vector<int32_t> table(static_cast<size_t>(cols));
  for (int64_t c = 0; c < a.cin_per_group; ++c)
    for (int64_t r = 0; r < a.kh; ++r)
      for (int64_t s = 0; s < a.kw; ++s)
        table[static_cast<size_t>((c * a.kh + r) * a.kw + s)] =
            static_cast<int32_t>(c * lp.plane + ((r * a.dil_h) * lp.wcols + s * a.dil_w) * W);

  const float* const x_end = view_end(a);
  std::vector<float>& buf = scratch();
  const size_t need = static_cast<size_t>(a.c * lp.plane + 16);
  if (buf.size() < need) {
    buf.clear();
    buf.shrink_to_fit();
    buf.resize(need);
  }
  float* const lay = buf.data() + ((64 - reinterpret_cast<uintptr_t>(buf.data()) % 64) % 64) / sizeof(float);

  // Each output channel's first nonzero of every input-channel chunk (columns ascend, channel
  // by channel).
  const int nk = lp.nchunks;
  std::vector<int32_t> chunk_ptr;
  if (nk > 1) {
    chunk_ptr.resize(static_cast<size_t>(a.out_channels * (nk + 1)));
    const bool c16 = a.weight.col16;
    const auto* col16 = static_cast<const uint16_t*>(a.weight.col);
    const auto* col32 = static_cast<const int32_t*>(a.weight.col);
    for (int64_t m = 0; m < a.out_channels; ++m) {
      int32_t* cp = chunk_ptr.data() + m * (nk + 1);
      int64_t j = a.weight.row_ptr[m];
      const int64_t j1 = a.weight.row_ptr[m + 1];
      for (int k = 0; k < nk; ++k) {
        const int64_t first = k * lp.chunk_ch * K;
        while (j < j1 && (c16 ? col16[j] : col32[j]) < first) ++j;
        cp[k] = static_cast<int32_t>(j);
      }
      cp[nk] = static_cast<int32_t>(j1);
    }
  }

  const int64_t R = lp.rows_max, nyc = (oh + R - 1) / R, nxc = lp.nxc;
  const RowSplit rows(a, nyc * nxc, threads);
  const int64_t ntask = coarse_tasks(a.c, threads);
  std::vector<int64_t> bad(static_cast<size_t>(ntask * 8), 0);  // one cache line per task
  bool nonfinite = false;
  for (int64_t blk = 0; blk < a.n / W; ++blk) {
    parallel_for(ntask, threads, [&](int64_t t) {
      bool any = false;
      for (int64_t c = a.c * t / ntask; c < a.c * (t + 1) / ntask; ++c) {
        const LaneLayoutJob job{a.x + blk * W * a.xs[0] + c * a.xs[1], a.x, x_end, a.xs[0], a.xs[2], a.h, a.w,
                                lay + c * lp.plane, lp.hrows, lp.wcols, a.pad_top, a.pad_left};
        any |= isa.lanes_layout(job);
      }
      bad[t * 8] |= any;
    });
    parallel_for(rows.tasks, threads, [&](int64_t task) {
      int64_t row0, row1, g;
      const int64_t unit = rows.decode(task, &g, &row0, &row1);
      if (row0 >= row1) return;
      const int64_t xc = unit % nxc, yc = unit / nxc;
      const int64_t small = ow / nxc, extra = ow % nxc;  // balanced pixel chunks
      const int64_t ox0 = xc * small + std::min(xc, extra), oy0 = yc * R;
      LaneTile t{};
      t.values = a.weight.values;
      t.col = a.weight.col;
      t.col16 = a.weight.col16;
      t.row_ptr = a.weight.row_ptr;
      t.table = table.data();
      t.in = lay + g * a.cin_per_group * lp.plane + (oy0 * lp.wcols + ox0) * W;
      t.row_stride = lp.wcols * W;
      t.rows = static_cast<int>(std::min<int64_t>(R, oh - oy0));
      t.pixels = static_cast<int>(small + (xc < extra ? 1 : 0));
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
        const size_t need = static_cast<size_t>(std::min(t.mblock, row1 - row0) * vecs + 16);
        if (acc.size() < need) acc.resize(need);
        t.acc = acc.data() + ((64 - reinterpret_cast<uintptr_t>(acc.data()) % 64) % 64) / sizeof(float);
        t.chunk_ptr = chunk_ptr.data();
      }
      isa.lanes_tile(t);
    });
  }
  for (int64_t t = 0; t < ntask; ++t) nonfinite |= bad[t * 8] != 0;
  return nonfinite;
}

}  // namespace conv
}  // namespace scnn
