// Driver of the direct sparse convolution: validates the call, lays the input out for the
// micro-kernel, plans tiles and runs them on the pool.
//
// Layout ("phased input"): each (image, channel) is padded and split into stride phases, so
// that output position (oy, ox) reads tap (r, s) at
//     plane(phase(r, s)) + (oy + (r*dil_h)/stride_h) * wrow + ox + (s*dil_w)/stride_w,
// i.e. contiguous in ox for every stride. Rows are "widened" to wrow = OW + max column shift:
// the kernel computes the wrow - OW garbage columns of each row too (cheaper than breaking the
// SIMD run at every row end) and the epilogue drops them. A 1x1, stride-1, unpadded layer on
// an NCHW-contiguous input needs no copy at all.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include <unistd.h>

#include "core.hpp"
#include "isa/kernels.hpp"
#include "thread_pool.hpp"

namespace scnn {
namespace {

[[noreturn]] void fail(const std::string& msg) { throw std::invalid_argument(msg); }

int64_t checked_mul(int64_t a, int64_t b, const char* what) {
  int64_t r;
  if (__builtin_mul_overflow(a, b, &r))
    throw std::overflow_error(std::string("sparse_conv2d: ") + what + " overflows 64-bit");
  return r;
}

// Per-thread scratch reused across calls (the phased input of a batch can be megabytes; a
// fresh allocation each call would page-fault it in every time).
std::vector<float>& scratch() {
  thread_local std::vector<float> buf;
  return buf;
}

struct Plan {
  int64_t oh, ow;
  int64_t wrow, hrows, plane, cstride, istride;  // phased layout
  int64_t drmax, dqmax;                          // largest row / column shift of a tap
  int nphy, nphx;
  int phy_index[64], phx_index[64];  // phase -> compact index (-1: unused)
  bool direct;                      // read x in place (no copy)
};

// Private L2 of one core, from the OS (sysconf), 1 MiB when unknown. The tile planner keeps
// the input one tile reads within it: a tile whose input spills to L3 runs at half speed.
int64_t l2_bytes() {
  static const int64_t v = [] {
    long s = -1;
#ifdef _SC_LEVEL2_CACHE_SIZE
    s = sysconf(_SC_LEVEL2_CACHE_SIZE);
#endif
    return s > 64 * 1024 ? static_cast<int64_t>(s) : int64_t(1) << 20;
  }();
  return v;
}

}  // namespace

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
// or foreign weight, so they are refused rather than summed. One branch-free pass that the
// compiler vectorises: this runs on every call, so it must cost next to nothing.
template <class Idx>
void check_columns(const Csr& m, const Idx* c, int64_t cols, const std::string& w) {
  for (int64_t r = 0; r < m.rows; ++r) {
    const int64_t j0 = m.row_ptr[r], j1 = m.row_ptr[r + 1];
    if (j0 == j1) continue;
    const Idx* p = c + j0;
    const int64_t n = j1 - j0;
    unsigned bad = 0;
    for (int64_t j = 1; j < n; ++j) bad |= static_cast<unsigned>(!(p[j - 1] < p[j]));
    if (bad)
      fail(w + ": column indices must be strictly increasing within each row (row " + std::to_string(r) + ")");
    // Ascending, so the first and last columns bound the row.
    const int64_t lo = static_cast<int64_t>(p[0]), hi = static_cast<int64_t>(p[n - 1]);
    if (lo < 0 || hi >= cols)
      fail(w + ": column index " + std::to_string(lo < 0 ? lo : hi) + " out of range in row " + std::to_string(r) +
           " (columns: " + std::to_string(cols) + ")");
  }
}

void validate_csr(const Csr& m, int64_t cols, const char* what) {
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
    check_columns(m, static_cast<const uint16_t*>(m.col), cols, w);
  } else {
    check_columns(m, static_cast<const int32_t*>(m.col), cols, w);
  }
}

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

// One past the last element of the input view (strides are non-negative): the layouts may read
// anywhere in [x, view_end) -- e.g. a whole vector around a row's last pixels.
const float* view_end(const Conv2dArgs& a) {
  return a.x + (a.n - 1) * a.xs[0] + (a.c - 1) * a.xs[1] + (a.h - 1) * a.xs[2] + (a.w - 1) * a.xs[3] + 1;
}

// Splits `jobs` items into a few contiguous ranges per thread (coarse tasks: no contention on
// the task counter, no two threads writing neighbouring flags).
int64_t coarse_tasks(int64_t jobs, int threads) {
  return std::max<int64_t>(1, std::min<int64_t>(jobs, 4 * static_cast<int64_t>(threads)));
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

// Tasks of (work unit, group, output-channel range): `units` units per group (tiles of
// positions or images), and each group's output channels split into as many ranges as it
// takes for every thread to get about 4 tasks.
struct RowSplit {
  int64_t parts, tasks;
  std::vector<int64_t> bounds;
  const Conv2dArgs& a;
  RowSplit(const Conv2dArgs& args, int64_t units, int threads) : a(args) {
    const int64_t per_group = units * args.groups;
    parts = threads > 1 && per_group < 4 * threads
                ? std::min<int64_t>(args.out_channels / args.groups, (4 * threads + per_group - 1) / per_group)
                : 1;
    tasks = per_group * parts;
    bounds = row_bounds(args, parts);
  }
  // The unit of `task`; its group and output-channel range through the pointers.
  int64_t decode(int64_t task, int64_t* g, int64_t* row0, int64_t* row1) const {
    const int64_t rp = task % parts;
    task /= parts;
    *g = task % a.groups;
    *row0 = bounds[*g * (parts + 1) + rp];
    *row1 = bounds[*g * (parts + 1) + rp + 1];
    return task / a.groups;
  }
};

// How the per-image kernel runs a call: layout, tiles, sharing between threads.
struct PixelsPlan {
  Plan p{};
  int W = 16, nph = 1;
  int64_t nshift = 1;                  // column-shifted replicas of the input
  int64_t positions = 0, nvec = 0;     // widened output positions / vectors per image
  int64_t nchunks = 1, nb = 1, nblocks = 0;
  bool image_mode = false;             // a task per image block (else: split output channels)
  int64_t buf_images = 0, rep_stride = 0;
  double footprint = 0;                // bytes of input one tile reads
};

// The per-image kernel's plan (sparse_conv2d runs exactly this; conv2d_plan reports it).
PixelsPlan plan_pixels(const Conv2dArgs& a, const IsaKernels& isa, int64_t oh, int64_t ow) {
  const int threads = std::max(1, a.threads);
  PixelsPlan pl;
  Plan& p = pl.p;
  p.oh = oh;
  p.ow = ow;
  // ---- phased layout ----
  for (int i = 0; i < 64; ++i) p.phy_index[i] = p.phx_index[i] = -1;
  for (int64_t r = 0; r < a.kh; ++r) {
    const int64_t ry = r * a.dil_h;
    p.drmax = std::max(p.drmax, ry / a.stride_h);
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
  p.direct = contiguous && a.stride_h == 1 && a.stride_w == 1 && a.pad_top == 0 && a.pad_bottom == 0 &&
             a.pad_left == 0 && a.pad_right == 0 && p.dqmax == 0;
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
  // (CaffeNet conv2 at batch 1 and 4: 5% faster with one unaligned copy).
  const int W = isa.width;
  int64_t& nshift = pl.nshift;
  if (!p.direct) {
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
  auto footprint = [&](int64_t nb_, int64_t nv_) {  // bytes of input one tile reads
    const double span = std::min<double>(static_cast<double>(p.plane), static_cast<double>(nv_ * W + p.drmax * p.wrow + W));
    return 4.0 * nb_ * a.cin_per_group * nph * nshift * span;
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
  return pl;
}

// The per-image kernel (kernels/sparse_conv.hpp): SIMD over the output pixels of one image,
// any stride, dilation and layout. Returns whether a NaN/Inf input was seen.
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
    std::vector<float>& buf = scratch();
    const size_t need = static_cast<size_t>(nshift * rep_stride + 16);
    if (buf.size() < need) {
      buf.clear();
      buf.shrink_to_fit();
      buf.resize(need);
    }
    float* dst = buf.data() + ((64 - reinterpret_cast<uintptr_t>(buf.data()) % 64) % 64) / sizeof(float);
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

// SPARSECNN_BATCH_LANES=0 turns the batch-lanes kernel off (to compare the two kernels).
bool lanes_enabled() {
  static const bool on = [] {
    const char* e = std::getenv("SPARSECNN_BATCH_LANES");
    return !(e && std::string(e) == "0");
  }();
  return on;
}

// Geometry of the batch-lanes layout of a call with output oh x ow.
struct LanesPlan {
  int64_t hrows, wcols;  // layout rows and columns (vectors of W images)
  int64_t plane;         // floats per channel
  int rows_max;          // R: output rows per tile
  int64_t nxc;           // pixel chunks per output row
};

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
  const int pmax = std::min(W, isa.max_acc);
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
      isa.lanes_tile(t);
    });
  }
  for (int64_t t = 0; t < ntask; ++t) nonfinite |= bad[t * 8] != 0;
  return nonfinite;
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
  a.xs[3] = 1, a.xs[2] = a.w, a.xs[1] = a.h * a.w, a.xs[0] = a.c * a.h * a.w;
  const IsaKernels& isa = isa_kernels();
  ConvPlanInfo info;
  info.vector_width = isa.width;
  LanesPlan lp{};
  const int64_t lanes = lanes_images(a, isa, oh, ow, &lp);
  const int64_t W = isa.width, in_bytes = 4 * a.c * a.h * a.w;
  if (lanes > 0) {
    const int64_t blocks = lanes / W, nyc = (oh + lp.rows_max - 1) / lp.rows_max;
    info.lanes_images = lanes;
    info.lanes_vec_fmas += blocks * oh * ow;
    info.visits += blocks * nyc * lp.nxc;
    info.epilogues += blocks * a.out_channels * oh * lp.nxc;
    info.layout_bytes += blocks * a.c * lp.plane * 4;
    info.layout_buffer_bytes = a.c * lp.plane * 4;
    info.read_bytes += lanes * in_bytes;
    const int64_t pbig = (ow + lp.nxc - 1) / lp.nxc;
    info.footprint = 4.0 * W * a.cin_per_group * (lp.rows_max + (a.kh - 1) * a.dil_h) * (pbig + (a.kw - 1) * a.dil_w);
  }
  if (lanes < a.n) {
    const Conv2dArgs b = part(a, lanes, a.n, oh, ow);
    const PixelsPlan pl = plan_pixels(b, isa, oh, ow);
    info.pixel_images = b.n;
    info.vec_fmas += b.n * pl.nvec;
    info.visits += pl.nblocks * pl.nchunks;
    info.epilogues += pl.nblocks * pl.nchunks * a.out_channels;
    info.layout_bytes += pl.p.direct ? 0 : b.n * a.c * pl.p.cstride * pl.nshift * 4;
    if (!pl.p.direct)
      info.layout_buffer_bytes = std::max(info.layout_buffer_bytes, pl.buf_images * a.c * pl.p.cstride * pl.nshift * 4);
    info.read_bytes += b.n * in_bytes;
    info.footprint = std::max(info.footprint, pl.footprint);
    info.image_mode = pl.image_mode;
    info.direct = pl.p.direct;
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
  validate_csr(a.weight, cols, "sparse_conv2d weight");
  const int64_t out_needed = checked_mul(checked_mul(checked_mul(a.n, a.out_channels, "output"), oh, "output"), ow, "output");
  if (a.out_numel != out_needed) fail("sparse_conv2d: output buffer has " + std::to_string(a.out_numel) + " elements, expected " + std::to_string(out_needed));
  if (a.residual && a.residual_numel != out_needed)
    fail("sparse_conv2d: residual has " + std::to_string(a.residual_numel) + " elements, expected " + std::to_string(out_needed) + " (the output's shape)");
  if (a.n == 0) return;
  if (!a.x || !a.out) fail("sparse_conv2d: null tensor data");

  const IsaKernels& isa = isa_kernels();
  // Whole blocks of W images go to the batch-lanes kernel where it applies, the rest (and
  // every other layer) to the per-image kernel; each part is a view of the same call.
  LanesPlan lp{};
  const int64_t lanes = lanes_images(a, isa, oh, ow, &lp);
  bool nonfinite = false;
  if (lanes > 0) nonfinite |= run_lanes(part(a, 0, lanes, oh, ow), isa, oh, ow, lp);
  if (lanes < a.n) nonfinite |= run_pixels(part(a, lanes, a.n, oh, ow), isa, oh, ow);
  if (nonfinite) patch_nonfinite(a, oh, ow);
}

}  // namespace scnn
