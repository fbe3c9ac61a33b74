// The direct sparse convolution's entry points: validation (nothing is trusted), the choice of
// kernel per block of images, the NaN/Inf rule, and the plan report for the performance model.
// The kernels' drivers: conv_pixels.cpp (per image) and conv_lanes.cpp (batch lanes).
#include <algorithm>
#include <cstdlib>
#include <cmath>
#include <limits>
#include <new>
#include <string>
#include <vector>

#include <unistd.h>

#include "conv_internal.hpp"
#include "thread_pool.hpp"

namespace scnn {

using conv::checked_mul;
using conv::fail;

void conv2d_output_size(int64_t h, int64_t w, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                        int64_t pt, int64_t pb, int64_t pl, int64_t pr, int64_t dh, int64_t dw,
                        int64_t* oh, int64_t* ow) {
  if (kh < 1 || kw < 1) fail("sparse_conv2d: kernel size must be positive");
  if (sh < 1 || sw < 1) fail("sparse_conv2d: stride must be positive, got (" +
                             std::to_string(sh) + ", " + std::to_string(sw) + ")");
  if (sh > 64 || sw > 64) fail("sparse_conv2d: stride larger than 64 is not supported");
  if (dh < 1 || dw < 1) fail("sparse_conv2d: dilation must be positive");
  if (pt < 0 || pb < 0 || pl < 0 || pr < 0) fail("sparse_conv2d: negative padding is not allowed");
  if (h < 1 || w < 1) fail("sparse_conv2d: input height and width must be positive");
  const int64_t lim = int64_t(1) << 40;
  if (h > lim || w > lim || kh > lim || kw > lim || dh > lim || dw > lim || pt > lim ||
      pb > lim || pl > lim || pr > lim)
    throw std::overflow_error("sparse_conv2d: a size or parameter is too large");
  const int64_t hp = h + pt + pb, wp = w + pl + pr;
  const int64_t ekh = dh * (kh - 1) + 1, ekw = dw * (kw - 1) + 1;
  if (hp < ekh || wp < ekw)
    fail("sparse_conv2d: padded input (" + std::to_string(hp) + "x" + std::to_string(wp) +
         ") is smaller than the dilated kernel (" + std::to_string(ekh) + "x" +
         std::to_string(ekw) + ")");
  *oh = (hp - ekh) / sh + 1;
  *ow = (wp - ekw) / sw + 1;
}

// The format has strictly ascending columns within a row (SparseWeight.from_dense writes them
// so, and rows then read the input in address order); duplicates or disorder mean a corrupted
// or foreign weight, so they are refused rather than summed. The check itself is per ISA
// (kernels/csr_check.hpp); fail_row then names what is wrong with the first bad row.
template <class Idx>
[[noreturn]] void fail_row(const Csr& m, const Idx* c, int64_t cols, int64_t r, const std::string& w) {
  const Idx* p = c + m.row_ptr[r];
  const int64_t n = m.row_ptr[r + 1] - m.row_ptr[r];
  for (int64_t j = 1; j < n; ++j)
    if (!(p[j - 1] < p[j]))
      fail(w + ": column indices must be strictly increasing within each row (row " + std::to_string(r) + ")");
  const int64_t lo = static_cast<int64_t>(p[0]), hi = static_cast<int64_t>(p[n - 1]);
  fail(w + ": column index " + std::to_string(lo < 0 ? lo : hi) + " out of range in row " + std::to_string(r) +
       " (columns: " + std::to_string(cols) + ")");
}

// The column check runs on every call and reads every column index once (4 B a nonzero per
// int32 column, 2 per int16): 45 us for ResNet-50-sized 3x3 weights at density 0.3 (265K
// nonzeros), 118 us for layer4's (707K), on one core of a Zen 3, while the other waited. From
// kParallelCheckNnz nonzeros the rows are split over the threads, balanced by nonzeros; the
// error still names the first bad row.
constexpr int64_t kParallelCheckNnz = int64_t(1) << 16;

template <class Idx>
void check_columns(const Csr& m, const Idx* c, int64_t cols, const std::string& w, int threads) {
  const IsaKernels& isa = isa_kernels();
  int64_t bad = -1;
  if (threads > 1 && m.nnz >= kParallelCheckNnz && m.rows >= threads) {
    std::vector<int64_t> first(static_cast<size_t>(threads) * 8, -1);  // one cache line per task
    parallel_for(threads, threads, [&](int64_t t) {
      // rows whose first nonzero falls in the task's share of the nonzeros
      auto row_at = [&](int64_t k) {
        const int64_t target = m.nnz * k / threads;
        return static_cast<int64_t>(std::lower_bound(m.row_ptr, m.row_ptr + m.rows, target) - m.row_ptr);
      };
      const int64_t r0 = t == 0 ? 0 : row_at(t), r1 = t + 1 == threads ? m.rows : row_at(t + 1);
      first[static_cast<size_t>(t) * 8] = isa.csr_first_bad_row(m.row_ptr, m.col, m.col16, cols, r0, r1);
    });
    for (int t = 0; t < threads && bad < 0; ++t) bad = first[static_cast<size_t>(t) * 8];
  } else {
    bad = isa.csr_first_bad_row(m.row_ptr, m.col, m.col16, cols, 0, m.rows);
  }
  if (bad >= 0) fail_row(m, c, cols, bad, w);
}

void validate_csr(const Csr& m, int64_t cols, const char* what, int threads) {
  const std::string w(what);
  if (m.rows < 0 || m.nnz < 0) fail(w + ": negative CSR size");
  if (!m.row_ptr) fail(w + ": row_ptr is missing");
  if (m.nnz > 0 && (!m.values || !m.col)) fail(w + ": values or col_idx is missing");
  if (m.row_ptr[0] != 0) fail(w + ": row_ptr[0] must be 0");
  for (int64_t i = 0; i < m.rows; ++i)
    if (m.row_ptr[i + 1] < m.row_ptr[i]) fail(w + ": row_ptr is not non-decreasing");
  if (m.row_ptr[m.rows] != m.nnz)
    fail(w + ": row_ptr[-1] (" + std::to_string(m.row_ptr[m.rows]) + ") != nnz (" +
         std::to_string(m.nnz) + ")");
  if (m.col16) {
    if (cols > 65536) fail(w + ": 16-bit column indices cannot address " + std::to_string(cols) + " columns");
    check_columns(m, static_cast<const uint16_t*>(m.col), cols, w, threads);
  } else {
    check_columns(m, static_cast<const int32_t*>(m.col), cols, w, threads);
  }
}

namespace conv {

namespace {
// sysconf's size of a cache (name), or `fallback` when it reports less than `least`.
[[maybe_unused]] int64_t cache_bytes(int name, int64_t least, int64_t fallback) {
  const long s = sysconf(name);
  return s >= least ? static_cast<int64_t>(s) : fallback;
}
}  // namespace

#if defined(_SC_LEVEL1_DCACHE_SIZE) && defined(_SC_LEVEL2_CACHE_SIZE)
int64_t l2_bytes() {
  static const int64_t v = cache_bytes(_SC_LEVEL2_CACHE_SIZE, 64 * 1024 + 1, int64_t(1) << 20);
  return v;
}

int64_t l1_bytes() {
  static const int64_t v = cache_bytes(_SC_LEVEL1_DCACHE_SIZE, 16 * 1024, int64_t(32) << 10);
  return v;
}
#else  // no cache sizes from sysconf (not glibc): the defaults
int64_t l2_bytes() { return int64_t(1) << 20; }
int64_t l1_bytes() { return int64_t(32) << 10; }
#endif

int64_t chunk_setting(const char* var) {
  const char* e = std::getenv(var);
  if (!e || !*e || std::string(e) == "auto") return -1;
  return std::max<int64_t>(0, std::atoll(e));
}

std::vector<int32_t> chunk_starts(const Conv2dArgs& a, int64_t chunk_ch, int nk) {
  const int64_t K = a.kh * a.kw;
  std::vector<int32_t> cp(static_cast<size_t>(a.out_channels * (nk + 1)));
  // A binary search per chunk boundary in each row's ascending columns (rows x chunks x log),
  // not a pass over every nonzero. (The per-image kernel needs no table: its cursors stop at
  // each chunk's end, kernels/sparse_conv.hpp.)
  auto starts = [&](const auto* col) {
    for (int64_t m = 0; m < a.out_channels; ++m) {
      int32_t* row = cp.data() + m * (nk + 1);
      const auto* lo = col + a.weight.row_ptr[m];
      const auto* const end = col + a.weight.row_ptr[m + 1];
      for (int k = 0; k < nk; ++k) {
        lo = std::lower_bound(lo, end, k * chunk_ch * K);
        row[k] = static_cast<int32_t>(lo - col);
      }
      row[nk] = static_cast<int32_t>(end - col);
    }
  };
  if (a.weight.col16)
    starts(static_cast<const uint16_t*>(a.weight.col));
  else
    starts(static_cast<const int32_t*>(a.weight.col));
  return cp;
}

Schedule schedule_setting() {
  static const Schedule v = [] {
    const char* e = std::getenv("SPARSECNN_SCHEDULE");
    const std::string s = e ? e : "";
    if (s == "local") return Schedule::local;
    if (s == "shared") return Schedule::shared;
    return Schedule::automatic;
  }();
  return v;
}

// Row boundaries of `parts` ranges of output channels in every group, balanced by nonzeros (+ a
// per-row constant for the epilogue): bounds[g * (parts + 1) + k].
std::vector<int64_t> row_bounds(const Conv2dArgs& a, int64_t parts) {
  const int64_t og = a.out_channels / a.groups;
  std::vector<int64_t> bounds(static_cast<size_t>(a.groups * (parts + 1)));
  for (int64_t g = 0; g < a.groups; ++g) {
    const int64_t r0 = g * og, r1 = r0 + og;
    const double cost0 = a.weight.row_ptr[r0] + 2.0 * r0;
    const double total_cost = (a.weight.row_ptr[r1] + 2.0 * r1) - cost0;
    int64_t r = r0;
    bounds[g * (parts + 1)] = r0;
    for (int64_t k = 1; k < parts; ++k) {
      const double target = cost0 + total_cost * k / parts;
      while (r < r1 && a.weight.row_ptr[r + 1] + 2.0 * (r + 1) <= target) ++r;
      bounds[g * (parts + 1) + k] = std::max(r, bounds[g * (parts + 1) + k - 1]);
    }
    bounds[g * (parts + 1) + parts] = r1;
  }
  return bounds;
}

// Images [n0, n1) of a call, as a call of its own (same weight, views of x, out and residual).
Conv2dArgs part(const Conv2dArgs& a, int64_t n0, int64_t n1, int64_t oh, int64_t ow) {
  Conv2dArgs b = a;
  const int64_t per = a.out_channels * oh * ow;
  b.n = n1 - n0;
  b.x = a.x + n0 * a.xs[0];
  b.out = a.out + n0 * per;
  b.out_numel = b.n * per;
  if (a.residual) {
    b.residual = a.residual + n0 * per;
    b.residual_numel = b.n * per;
  }
  return b;
}

}  // namespace conv

namespace {

// Which input elements are NaN/Inf. Dense convolution turns them into NaN even where a weight
// is zero (0 * Inf = NaN); the sparse kernel skips zero weights, so the driver re-applies that
// rule afterwards for the (rare) non-finite inputs.
void patch_nonfinite(const Conv2dArgs& a, int64_t oh, int64_t ow) {
  const int64_t K = a.kh * a.kw, cols = a.cin_per_group * K;
  const int64_t og = a.out_channels / a.groups;
  std::vector<uint8_t> present;  // dense mask of one group's rows, built lazily
  int64_t present_group = -1;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (int64_t n = 0; n < a.n; ++n)
    for (int64_t c = 0; c < a.c; ++c)
      for (int64_t iy = 0; iy < a.h; ++iy)
        for (int64_t ix = 0; ix < a.w; ++ix) {
          const float v = a.x[n * a.xs[0] + c * a.xs[1] + iy * a.xs[2] + ix * a.xs[3]];
          if (std::isfinite(v)) continue;
          const int64_t g = c / a.cin_per_group, cl = c % a.cin_per_group;
          if (g != present_group) {
            present.assign(static_cast<size_t>(og * cols), 0);
            for (int64_t m = 0; m < og; ++m) {
              const int64_t row = g * og + m;
              for (int64_t j = a.weight.row_ptr[row]; j < a.weight.row_ptr[row + 1]; ++j) {
                const int64_t col = a.weight.col16
                                        ? static_cast<const uint16_t*>(a.weight.col)[j]
                                        : static_cast<const int32_t*>(a.weight.col)[j];
                present[m * cols + col] = 1;
              }
            }
            present_group = g;
          }
          for (int64_t r = 0; r < a.kh; ++r) {
            const int64_t ry = iy + a.pad_top - r * a.dil_h;
            if (ry < 0 || ry % a.stride_h) continue;
            const int64_t oy = ry / a.stride_h;
            if (oy >= oh) continue;
            for (int64_t s = 0; s < a.kw; ++s) {
              const int64_t rx = ix + a.pad_left - s * a.dil_w;
              if (rx < 0 || rx % a.stride_w) continue;
              const int64_t ox = rx / a.stride_w;
              if (ox >= ow) continue;
              const int64_t col = cl * K + r * a.kw + s;
              for (int64_t m = 0; m < og; ++m)
                if (!present[m * cols + col])
                  a.out[((n * a.out_channels + g * og + m) * oh + oy) * ow + ox] = nan;
            }
          }
        }
}

// The strides of a contiguous NCHW tensor of a's shape.
void nchw_strides(Conv2dArgs& a) {
  a.xs[3] = 1, a.xs[2] = a.w, a.xs[1] = a.h * a.w, a.xs[0] = a.c * a.h * a.w;
}

// Pixels [0, plane) of each of n images as tasks of up to kTransposePixels: an image's
// transpose, split so that both threads share a batch-1 layer's.
constexpr int64_t kTransposePixels = 512;

// Image-by-image NCHW copy of an input whose rows are not contiguous (channels-last, a view
// with strided columns), for the batch-lanes kernel, whose layout reads rows: without it such
// a batch went to the per-image kernel's generic layout and took as long as dense conv2d
// (CaffeNet conv3's shape at batch 16, density 0.3: 34 ms against 17.5 contiguous). The copy
// lives in a buffer of the calling thread kept across calls (not the kernels' scratch, which
// this thread also uses as a worker): a fresh allocation would page-fault it in every call.
// nullptr where the buffer cannot grow.
const float* copy_to_nchw(const Conv2dArgs& a, const IsaKernels& isa) {
  thread_local std::vector<float> buf;
  const int64_t plane = a.h * a.w, image = a.c * plane;
  float* dst;
  try {
    dst = conv::aligned_scratch(buf, static_cast<size_t>(a.n * image));
  } catch (const std::bad_alloc&) {
    return nullptr;
  }
  const int threads = std::max(1, a.threads);
  if (a.xs[1] == 1 && a.xs[2] == a.w * a.xs[3]) {
    // Channels-last (a channel window of it too): each image a plane x C matrix.
    const int64_t per = (plane + kTransposePixels - 1) / kTransposePixels;
    parallel_for(a.n * per, threads, [&](int64_t t) {
      const int64_t n = t / per, p0 = t % per * kTransposePixels;
      isa.transpose({a.x + n * a.xs[0] + p0 * a.xs[3], a.xs[3], dst + n * image + p0, plane,
                     std::min(kTransposePixels, plane - p0), a.c, nullptr, false});
    });
    return dst;
  }
  // Other strides, per (image, row): a W x C block copied 8 channels at a time, so that the
  // reads run along the smaller stride and the writes along 8 output rows.
  parallel_for(a.n * a.h, threads, [&](int64_t t) {
    const int64_t n = t / a.h, y = t % a.h;
    const float* src = a.x + n * a.xs[0] + y * a.xs[2];
    float* out = dst + n * image + y * a.w;
    for (int64_t c0 = 0; c0 < a.c; c0 += 8) {
      const int64_t c1 = std::min<int64_t>(a.c, c0 + 8);
      for (int64_t x = 0; x < a.w; ++x)
        for (int64_t ch = c0; ch < c1; ++ch) out[ch * plane + x] = src[ch * a.xs[1] + x * a.xs[3]];
    }
  });
  return dst;
}

// The convolution into an NCHW output (a.out_cl false).
void run_nchw(const Conv2dArgs& a, const IsaKernels& isa, int64_t oh, int64_t ow) {
  // Whole blocks of W images go to the batch-lanes kernel where it applies, the rest (and
  // every other layer) to the per-image kernel; each part is a view of the same call.
  // An input whose rows are not contiguous is planned as NCHW, and copied so where the
  // batch-lanes kernel takes it or the per-image kernel would read it in place (a 1x1 layer:
  // its generic layout of a channels-last input took 2-3x the time, ResNet-50 layer1's 1x1
  // layers at batch 16); else the per-image kernel's layout reads it as it is.
  conv::LanesPlan lp{};
  Conv2dArgs c = a;
  if (a.xs[3] != 1) nchw_strides(c);
  int64_t lanes = conv::lanes_images(c, isa, oh, ow, &lp);
  if (a.xs[3] != 1) {
    const float* nchw = lanes > 0 || conv::direct_geometry(a) ? copy_to_nchw(a, isa) : nullptr;
    if (nchw) {
      c.x = nchw;
    } else {
      c = a;
      lanes = 0;
    }
  }
  bool nonfinite = false;
  if (lanes > 0) nonfinite |= conv::run_lanes(conv::part(c, 0, lanes, oh, ow), isa, oh, ow, lp);
  if (lanes < c.n) nonfinite |= conv::run_pixels(conv::part(c, lanes, c.n, oh, ow), isa, oh, ow);
  if (nonfinite) patch_nonfinite(a, oh, ow);
}

// A channels-last output: the kernels write NCHW into a buffer of the calling thread (kept
// across calls, as copy_to_nchw's), then each image is transposed into out with the residual
// (channels-last like out: read in place) and the ReLU applied on the way.
void run_channels_last(const Conv2dArgs& a, const IsaKernels& isa, int64_t oh, int64_t ow) {
  thread_local std::vector<float> buf;
  const int64_t plane = oh * ow, image = a.out_channels * plane;
  Conv2dArgs b = a;
  b.out = conv::aligned_scratch(buf, static_cast<size_t>(a.n * image));  // bad_alloc: MemoryError
  b.out_cl = false;
  b.residual = nullptr;
  b.residual_numel = 0;
  b.relu = a.relu && !a.residual;
  run_nchw(b, isa, oh, ow);
  const int64_t per = (plane + kTransposePixels - 1) / kTransposePixels;
  parallel_for(a.n * per, std::max(1, a.threads), [&](int64_t t) {
    const int64_t n = t / per, p0 = t % per * kTransposePixels;
    const int64_t o = (n * plane + p0) * a.out_channels;
    isa.transpose({b.out + n * image + p0, plane, a.out + o, a.out_channels, a.out_channels,
                   std::min(kTransposePixels, plane - p0), a.residual ? a.residual + o : nullptr,
                   a.relu && a.residual});
  });
}

}  // namespace

ConvPlanInfo conv2d_plan(const Conv2dArgs& g) {
  Conv2dArgs a = g;
  if (a.n < 1 || a.c < 1 || a.groups < 1 || a.c % a.groups || a.out_channels < 1 || a.out_channels % a.groups ||
      a.cin_per_group * a.groups != a.c)
    fail("conv2d_plan: inconsistent channels, groups or batch");
  int64_t oh, ow;
  conv2d_output_size(a.h, a.w, a.kh, a.kw, a.stride_h, a.stride_w, a.pad_top, a.pad_bottom, a.pad_left,
                     a.pad_right, a.dil_h, a.dil_w, &oh, &ow);
  nchw_strides(a);
  const IsaKernels& isa = isa_kernels();
  ConvPlanInfo info;
  info.vector_width = isa.width;
  conv::LanesPlan lp{};
  const int64_t lanes = conv::lanes_images(a, isa, oh, ow, &lp);
  const int64_t W = isa.width, in_bytes = 4 * a.c * a.h * a.w;
  if (lanes > 0) {
    const int64_t blocks = lanes / W;
    info.lanes_images = lanes;
    info.lanes_vec_fmas += blocks * oh * ow;
    info.visits += blocks * lp.units;
    info.epilogues += blocks * a.out_channels * oh * lp.nxc;
    info.layout_bytes += blocks * a.c * (lp.banded ? lp.band_planes : lp.plane) * 4;  // bands: halos twice
    info.layout_buffer_bytes = a.c * lp.plane * 4;
    info.read_bytes += lanes * in_bytes;
    info.footprint = lp.footprint;
    info.chunk_density = lp.chunk_density;
    info.chunked = lp.nchunks > 1;
    info.chunk_vectors = info.chunked ? blocks * a.out_channels * oh * ow * 2 * (lp.nchunks - 1) : 0;
  } else {
    info.chunk_density = std::numeric_limits<double>::infinity();
  }
  info.local_density = std::numeric_limits<double>::infinity();
  info.pixel_chunk_density = std::numeric_limits<double>::infinity();
  info.lanes_density = lp.lanes_density;
  if (lanes < a.n) {
    const Conv2dArgs b = conv::part(a, lanes, a.n, oh, ow);
    const conv::PixelsPlan pl = conv::plan_pixels(b, isa, oh, ow);
    info.pixel_images = b.n;
    info.vec_fmas += b.n * pl.nvec;
    info.visits += pl.nblocks * pl.nchunks;
    info.epilogues += pl.nblocks * pl.nchunks * a.out_channels;
    // local row mode: one copy per thread
    info.layout_bytes += pl.p.direct ? 0 : b.n * a.c * pl.p.cstride * pl.nshift * 4 * (pl.local ? std::max(1, a.threads) : 1);
    if (!pl.p.direct)
      info.layout_buffer_bytes = std::max(info.layout_buffer_bytes, pl.buf_images * a.c * pl.p.cstride * pl.nshift * 4);
    info.read_bytes += b.n * in_bytes;
    info.footprint = std::max(info.footprint, pl.footprint);
    info.image_mode = pl.image_mode;
    info.direct = pl.p.direct;
    info.local_density = pl.local_density;
    info.pixel_chunk_density = pl.chunk_density;
    info.pixel_chunked = pl.cin_chunks > 1;
  }
  return info;
}

void sparse_conv2d(const Conv2dArgs& a) {
  // ---- validation: nothing is trusted ----
  if (a.n < 0 || a.c < 1) fail("sparse_conv2d: input must have at least one channel");
  if (a.groups < 1) fail("sparse_conv2d: groups must be positive");
  if (a.c % a.groups) fail("sparse_conv2d: input channels (" + std::to_string(a.c) + ") not divisible by groups (" + std::to_string(a.groups) + ")");
  if (a.out_channels < 1 || a.out_channels % a.groups)
    fail("sparse_conv2d: output channels (" + std::to_string(a.out_channels) + ") not divisible by groups (" + std::to_string(a.groups) + ")");
  if (a.cin_per_group * a.groups != a.c)
    fail("sparse_conv2d: weight expects " + std::to_string(a.cin_per_group) +
         " input channels per group, but the input has " + std::to_string(a.c) +
         " channels with groups=" + std::to_string(a.groups));
  if (a.weight.rows != a.out_channels) fail("sparse_conv2d: weight row count != output channels");
  for (int i = 0; i < 4; ++i)
    if (a.xs[i] < 0) fail("sparse_conv2d: negative input strides are not supported");
  int64_t oh, ow;
  conv2d_output_size(a.h, a.w, a.kh, a.kw, a.stride_h, a.stride_w, a.pad_top, a.pad_bottom,
                     a.pad_left, a.pad_right, a.dil_h, a.dil_w, &oh, &ow);
  const int64_t K = checked_mul(a.kh, a.kw, "kernel size");
  const int64_t cols = checked_mul(a.cin_per_group, K, "weight columns");
  if (cols > std::numeric_limits<int32_t>::max()) throw std::overflow_error("sparse_conv2d: too many weight columns");
  validate_csr(a.weight, cols, "sparse_conv2d weight", a.threads);
  const int64_t out_needed = checked_mul(checked_mul(checked_mul(a.n, a.out_channels, "output"), oh, "output"), ow, "output");
  if (a.out_numel != out_needed) fail("sparse_conv2d: output buffer has " + std::to_string(a.out_numel) + " elements, expected " + std::to_string(out_needed));
  if (a.residual && a.residual_numel != out_needed)
    fail("sparse_conv2d: residual has " + std::to_string(a.residual_numel) + " elements, expected " + std::to_string(out_needed) + " (the output's shape)");
  if (a.n == 0) return;
  if (!a.x || !a.out) fail("sparse_conv2d: null tensor data");

  const IsaKernels& isa = isa_kernels();
  if (a.out_cl)
    run_channels_last(a, isa, oh, ow);
  else
    run_nchw(a, isa, oh, ow);
}

}  // namespace scnn
