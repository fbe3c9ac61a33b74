// Internals shared by the drivers of the direct sparse convolution (conv.cpp: validation and
// dispatch; conv_pixels.cpp: the per-image kernel; conv_lanes.cpp: the batch-lanes kernel).
// Not part of the core's API.
#pragma once
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "core.hpp"
#include "isa/kernels.hpp"

namespace scnn {
namespace conv {

[[noreturn]] inline void fail(const std::string& msg) { throw std::invalid_argument(msg); }

inline int64_t checked_mul(int64_t a, int64_t b, const char* what) {
  int64_t r;
  if (__builtin_mul_overflow(a, b, &r))
    throw std::overflow_error(std::string("sparse_conv2d: ") + what + " overflows 64-bit");
  return r;
}

// Per-thread scratch reused across calls (the phased input of a batch can be megabytes; a
// fresh allocation each call would page-fault it in every time).
inline std::vector<float>& scratch() {
  thread_local std::vector<float> buf;
  return buf;
}

// 64-byte aligned start of `buf` grown to hold at least n floats (16 floats of slack for the
// alignment).
inline float* aligned_scratch(std::vector<float>& buf, size_t n) {
  if (buf.size() < n + 16) {
    buf.clear();
    buf.shrink_to_fit();
    buf.resize(n + 16);
  }
  return buf.data() + ((64 - reinterpret_cast<uintptr_t>(buf.data()) % 64) % 64) / sizeof(float);
}

// Private L2 of one core, from the OS (sysconf), 1 MiB when unknown. The tile planners keep
// the input one tile reads within it: a tile whose input spills to L3 runs at half speed.
int64_t l2_bytes();
// L1 data cache of one core (sysconf), 32 KiB when unknown: the input-channel chunks keep a
// tile's slice of the input within it.
int64_t l1_bytes();

// An input-channel chunk switch (SPARSECNN_LANES_CHUNK, SPARSECNN_PIXELS_CHUNK): unset or "auto"
// -1 (the planner's rule), =n n channels per chunk, =0 none.
int64_t chunk_setting(const char* var);

// Input-channel chunks of chunk_ch channels, nk per group: each output channel's first nonzero
// of every chunk (columns ascend, channel by channel), cp[m * (nk + 1) + k], cp[.. + nk] = its end.
std::vector<int32_t> chunk_starts(const Conv2dArgs& a, int64_t chunk_ch, int nk);

// One past the last element of the input view (strides are non-negative): the layouts may read
// anywhere in [x, view_end) -- e.g. a whole vector around a row's last pixels.
inline const float* view_end(const Conv2dArgs& a) {
  return a.x + (a.n - 1) * a.xs[0] + (a.c - 1) * a.xs[1] + (a.h - 1) * a.xs[2] + (a.w - 1) * a.xs[3] + 1;
}

// Splits `jobs` items into a few contiguous ranges per thread (coarse tasks: no contention on
// the task counter, no two threads writing neighbouring flags).
inline int64_t coarse_tasks(int64_t jobs, int threads) {
  return std::max<int64_t>(1, std::min<int64_t>(jobs, 4 * static_cast<int64_t>(threads)));
}

// How the threads of a call get the input layout they read. Each thread laying out what it
// reads ("local") keeps every line of the layout in the core that uses it; one layout that all
// threads read ("shared") has each core fetch the lines the others wrote. On the 2-vCPU VM this
// was built on, whose vCPUs sit in one core complex at some times (a 100 ns round trip between
// them) and in two at others (400-850 ns), the shared layout made the 2-thread speedup over one
// thread fall from 1.9 to 1.4 at batch 16, and below 1 at batch 1, in the second case.
// SPARSECNN_SCHEDULE=local|shared forces one (A/Bs, tests); unset or "auto": the drivers' rules.
enum class Schedule { automatic, shared, local };
Schedule schedule_setting();

// Row boundaries of `parts` ranges of output channels in every group, balanced by nonzeros (+ a
// per-row constant for the epilogue): bounds[g * (parts + 1) + k].
std::vector<int64_t> row_bounds(const Conv2dArgs& a, int64_t parts);

// Nonzeros / (output channels x columns of a row): the weight's density.
inline double weight_density(const Conv2dArgs& a) {
  return static_cast<double>(a.weight.nnz) /
         (static_cast<double>(std::max<int64_t>(1, a.out_channels)) * static_cast<double>(a.cin_per_group * a.kh * a.kw));
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

// A range of work items [0, n) that threads claim from either end (an item or a guided run):
// one from the first item up, another from the last down, until they meet, so the thread that
// runs ahead (its vCPU less busy) takes more instead of waiting for the other at the end, while
// each keeps to its own end (the weights of its rows stay in its cache).
struct alignas(64) TwoEndedPool {
  std::atomic<uint64_t> range{0};  // next item from the front (low 32 bits), one past the back (high)
  void reset(int64_t n) { range.store(static_cast<uint64_t>(n) << 32, std::memory_order_relaxed); }
  // The next item from the front or the back; -1 when none is left.
  int64_t claim(bool front) {
    int64_t b, e;
    return take(front, false, &b, &e) ? b : -1;
  }
  // Items [*b, *e): a quarter of what is left (at least one) from the front or the back, so
  // claims are large while much is left and single items where the two ends meet ("guided"):
  // few claims (each one a cache line moving between the cores) and a small wait at the end.
  // False when none is left.
  bool claim_guided(bool front, int64_t* b, int64_t* e) { return take(front, true, b, e); }

 private:
  bool take(bool front, bool guided, int64_t* b, int64_t* e) {
    uint64_t r = range.load(std::memory_order_relaxed);
    for (;;) {
      const uint64_t lo = r & 0xffffffffu, hi = r >> 32;
      if (lo >= hi) return false;
      const uint64_t k = guided && (hi - lo) / 4 > 1 ? (hi - lo) / 4 : 1;
      const uint64_t next = front ? ((hi << 32) | (lo + k)) : (((hi - k) << 32) | lo);
      if (range.compare_exchange_weak(r, next, std::memory_order_relaxed)) {
        *b = static_cast<int64_t>(front ? lo : hi - k);
        *e = static_cast<int64_t>(front ? lo + k : hi);
        return true;
      }
    }
  }
};

// Images [n0, n1) of a call, as a call of its own (same weight, views of x, out and residual).
Conv2dArgs part(const Conv2dArgs& a, int64_t n0, int64_t n1, int64_t oh, int64_t ow);

// ---- the per-image kernel (conv_pixels.cpp)
struct Plan {
  int64_t oh, ow;
  int64_t wrow, hrows, plane, cstride, istride;  // phased layout
  int64_t drmax, dqmax;                          // largest row / column shift of a tap
  int nphy, nphx;
  int phy_index[64], phx_index[64];  // phase -> compact index (-1: unused)
  bool direct;                      // read x in place (no copy)
};

// How the per-image kernel runs a call: layout, tiles, sharing between threads.
struct PixelsPlan {
  Plan p{};
  int W = 16, nph = 1;
  int64_t nshift = 1;                  // column-shifted replicas of the input
  int64_t positions = 0, nvec = 0;     // widened output positions / vectors per image
  int64_t nchunks = 1, nb = 1, nblocks = 0;
  bool image_mode = false;             // a task per image block (else: split output channels)
  bool local = false;                  // row mode: every thread lays out the input itself
  double local_density = 0;            // weight density from which it does (inf: never)
  int64_t buf_images = 0, rep_stride = 0;
  double footprint = 0;                // bytes of input one tile reads
  // Input-channel chunks (conv_pixels.cpp): channels per chunk of this call, chunks per group
  // (1: none), partial-sum blocks of output channels, and the density from which they are taken.
  int64_t cin_chunk = 0;
  int cin_chunks = 1;
  int64_t mblock = 1;
  double chunk_density = 0;
};

// The per-image kernel's plan (run_pixels runs exactly this; conv2d_plan reports it).
PixelsPlan plan_pixels(const Conv2dArgs& a, const IsaKernels& isa, int64_t oh, int64_t ow);
// Whether the per-image kernel reads an NCHW-contiguous input of this geometry in place (one
// column per tap, no padding, stride 1: no layout at all).
bool direct_geometry(const Conv2dArgs& a);
// The per-image kernel (kernels/sparse_conv.hpp): SIMD over the output pixels of one image,
// any stride, dilation and layout. Returns whether a NaN/Inf input was seen.
bool run_pixels(const Conv2dArgs& a, const IsaKernels& isa, int64_t oh, int64_t ow);

// ---- the batch-lanes kernel (conv_lanes.cpp)
// Geometry of the batch-lanes layout of a call with output oh x ow.
struct LanesPlan {
  int64_t in_rows, in_cols;  // padded input rows and columns the output reads
  int64_t drmax;             // rows a tap reaches below its output row's first, (kh - 1) dil_h
  int64_t units;             // row tiles x pixel chunks
  int sh, sw;                // strides: the layout holds the input's stride phases
  int nrp, ncp;              // row / column phases some tap reads
  int rphase[kMaxLaneStride], cphase[kMaxLaneStride];  // phase -> its plane's index, -1: unused
  int64_t prow;              // vectors per phase-plane row
  int64_t phase_plane;       // floats per phase plane
  int64_t plane;             // floats per channel (all its phase planes)
  int rows_max;              // R: output rows per tile
  int64_t nxc;               // pixel chunks per output row
  double footprint;          // bytes of layout one tile reads
  int64_t chunk_ch;          // input channels per chunk of this call (see conv_lanes.cpp)
  int nchunks;               // chunks per group (1: none)
  int64_t chunk_fit;         // input channels per chunk when the layer is chunked
  double chunk_density;      // weight density from which the layer is chunked (inf: never)
  double lanes_density;      // weight density from which the layer takes this kernel (inf: never)
  bool banded;               // schedule: one band of rows per thread (else one shared layout)
  int64_t nbands;            // bands (threads, fewer when there is less work)
  int64_t band_planes;       // floats per channel the bands lay out, all together (even split)
};

// Padded input rows that `out_rows` consecutive output rows read.
inline int64_t lanes_in_rows(const LanesPlan& lp, int64_t out_rows) { return (out_rows - 1) * lp.sh + lp.drmax + 1; }

// Where the bands of the batch-lanes kernel start: band b runs from output channel ch[b] of unit
// unit[b] (units: row tiles x pixel chunks, in order) to ch[b + 1] of unit[b + 1], exclusive.
struct BandCuts {
  std::vector<int64_t> unit, ch;
};
// Cuts the work into nbands bands of equal cost: a unit costs its pixels x cost(out_channels),
// and cost(m) is the cost of output channels [0, m) of a pixel.
BandCuts band_cuts(const LanesPlan& lp, int64_t oh, int64_t ow, int64_t out_channels, int64_t nbands,
                   const std::function<double(int64_t)>& cost);
// Output rows [first, last] of band b; false for an empty band.
bool band_rows(const LanesPlan& lp, const BandCuts& cuts, int64_t b, int64_t oh, int64_t* first, int64_t* last);

// The images of the call the batch-lanes kernel takes (whole blocks of W), or 0 (see conv_lanes.cpp).
int64_t lanes_images(const Conv2dArgs& a, const IsaKernels& isa, int64_t oh, int64_t ow, LanesPlan* lp);
// The batch-lanes kernel on a call whose batch is a multiple of W; returns whether a NaN/Inf
// input was seen.
bool run_lanes(const Conv2dArgs& a, const IsaKernels& isa, int64_t oh, int64_t ow, const LanesPlan& lp);

}  // namespace conv
}  // namespace scnn
