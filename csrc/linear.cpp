// Driver of the sparse fully connected layer: Y = X W^T (+ bias) (then ReLU).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "conv_internal.hpp"
#include "core.hpp"
#include "isa/kernels.hpp"
#include "thread_pool.hpp"

namespace scnn {

void sparse_linear(const LinearArgs& a) {
  auto fail = [](const std::string& m) { throw std::invalid_argument("sparse_linear: " + m); };
  if (a.n < 0) fail("negative batch");
  if (a.in_features < 1) fail("in_features must be positive");
  if (a.out_features < 1) fail("out_features must be positive");
  if (a.xs[0] < 0 || a.xs[1] < 0) fail("negative input strides are not supported");
  if (a.weight.rows != a.out_features) fail("weight row count != out_features");
  validate_csr(a.weight, a.in_features, "sparse_linear weight", a.threads);
  int64_t need;
  if (__builtin_mul_overflow(a.n, a.out_features, &need)) throw std::overflow_error("sparse_linear: output too large");
  if (a.out_numel != need)
    fail("output buffer has " + std::to_string(a.out_numel) + " elements, expected " + std::to_string(need));
  if (a.n == 0) return;
  if (!a.x || !a.out) fail("null tensor data");

  const IsaKernels& isa = isa_kernels();
  const int threads = std::max(1, a.threads);
  const int64_t W = isa.width;

  // Rows split into parts of about equal work (nonzeros plus a per-row cost).
  auto row_bounds = [&](int64_t parts) {
    std::vector<int64_t> b(static_cast<size_t>(parts + 1));
    const double total = a.weight.row_ptr[a.out_features] + 2.0 * a.out_features;
    int64_t r = 0;
    for (int64_t k = 1; k < parts; ++k) {
      const double target = total * k / parts;
      while (r < a.out_features && a.weight.row_ptr[r + 1] + 2.0 * (r + 1) <= target) ++r;
      b[static_cast<size_t>(k)] = std::max(r, b[static_cast<size_t>(k - 1)]);
    }
    b[static_cast<size_t>(parts)] = a.out_features;
    return b;
  };
  LinearTile base{};
  base.values = a.weight.values;
  base.col = a.weight.col;
  base.col16 = a.weight.col16;
  base.row_ptr = a.weight.row_ptr;
  base.out = a.out;
  base.out_features = a.out_features;
  base.bias = a.bias;
  base.relu = a.relu;
  base.first = base.last = true;

  // Row parts per batch tile: enough for the threads to balance.
  int64_t parts = std::max<int64_t>(1, std::min<int64_t>(a.out_features, 8 * threads));

  if (a.n == 1 && a.xs[1] == 1) {  // one contiguous input row: dot products over the nonzeros
    const std::vector<int64_t> bounds = row_bounds(parts);
    parallel_for(parts, threads, [&](int64_t p) {
      LinearTile t = base;
      t.xt = a.x;
      t.nbatch = 1;
      t.row0 = bounds[static_cast<size_t>(p)];
      t.row1 = bounds[static_cast<size_t>(p + 1)];
      if (t.row0 < t.row1) isa.linear_dot(t);
    });
  } else {
    // X^T with the batch contiguous: the SIMD dimension. Rows of whole vectors (zero-padded),
    // except below one vector, where the kernel reads a row with a masked load.
    const int64_t nvec = (a.n + W - 1) / W, ldx = a.n < W ? a.n : nvec * W;
    int64_t total;
    if (__builtin_mul_overflow(a.in_features, ldx, &total)) throw std::overflow_error("sparse_linear: input too large");
    thread_local std::vector<float> xt_buf;
    float* const xt = conv::aligned_scratch(xt_buf, static_cast<size_t>(total));
    const int64_t fblock = 256;  // input features per transpose task
    parallel_for((a.in_features + fblock - 1) / fblock, threads, [&](int64_t f) {
      const int64_t i0 = f * fblock, i1 = std::min(a.in_features, i0 + fblock);
      if (a.xs[1] == 1) {
        TransposeJob tj{a.x + i0, a.xs[0], xt + i0 * ldx, ldx, a.n, i1 - i0, nullptr, false};
        isa.transpose(tj);
      } else {
        for (int64_t i = i0; i < i1; ++i)
          for (int64_t b = 0; b < a.n; ++b) xt[i * ldx + b] = a.x[b * a.xs[0] + i * a.xs[1]];
      }
      for (int64_t i = i0; i < i1; ++i) std::fill(xt + i * ldx + a.n, xt + (i + 1) * ldx, 0.0f);
    });

    // Batch tiles of up to kLinearMaxVectors vectors, as even as they can be.
    const int64_t nbtiles = (nvec + kLinearMaxVectors - 1) / kLinearMaxVectors;
    const int tvec = static_cast<int>((nvec + nbtiles - 1) / nbtiles);
    // A tile reads X^T's rows of its columns, in_features x tvec vectors; where that would not
    // stay in half the L2 (beside the weights streaming through and the partial sums),
    // the input features go in passes of kblock, each row's partial sums waiting in a buffer of
    // the task between passes (rows per task: that buffer within 64 KB).
    const int64_t tile_row_bytes = std::min<int64_t>(ldx, tvec * W) * static_cast<int64_t>(sizeof(float));
    // SPARSECNN_LINEAR_PASS=n forces passes of n input features (0: one pass), for tests.
    const int64_t forced = conv::chunk_setting("SPARSECNN_LINEAR_PASS");
    const int64_t kblock = std::min(a.in_features, forced > 0    ? forced
                                                   : forced == 0 ? a.in_features
                                                                 : std::max<int64_t>(64, conv::l2_bytes() / 2 / tile_row_bytes));
    const int64_t passes = (a.in_features + kblock - 1) / kblock;
    if (passes > 1)
      parts = std::max(parts, std::min<int64_t>(a.out_features, (a.out_features * tile_row_bytes + 65535) / 65536));
    const std::vector<int64_t> bounds = row_bounds(parts);
    parallel_for(nbtiles * parts, threads, [&](int64_t task) {
      const int64_t p = task % parts, bt = task / parts;
      LinearTile t = base;
      t.row0 = bounds[static_cast<size_t>(p)];
      t.row1 = bounds[static_cast<size_t>(p + 1)];
      if (t.row0 >= t.row1) return;
      t.b0 = bt * tvec * W;
      t.nvec = static_cast<int>(std::min<int64_t>(tvec, nvec - bt * tvec));
      t.nbatch = std::min<int64_t>(t.nvec * W, a.n - t.b0);
      t.xt = xt + t.b0;
      t.ldx = ldx;
      if (passes == 1) {
        isa.linear_tile(t);
        return;
      }
      thread_local std::vector<int64_t> cursor;
      thread_local std::vector<float> partial;
      const int64_t rows = t.row1 - t.row0;
      cursor.assign(a.weight.row_ptr + t.row0, a.weight.row_ptr + t.row1);
      t.cursor = cursor.data();
      t.partial = conv::aligned_scratch(partial, static_cast<size_t>(rows * t.nvec * W));
      for (int64_t k = 0; k < passes; ++k) {
        t.k1 = std::min(a.in_features, (k + 1) * kblock);
        t.first = k == 0;
        t.last = k + 1 == passes;
        isa.linear_tile(t);
      }
    });
  }

  // Dense semantics for NaN/Inf inputs: 0 * Inf = NaN wherever a pruned weight meets them.
  // First whether there is any: a test of the exponent bits, which the compiler vectorises
  // (std::isfinite per element took 1.6 ms of a 9216-feature batch of 256, this 0.3).
  uint32_t nonfinite = 0;
  for (int64_t n = 0; n < a.n; ++n) {
    const float* row = a.x + n * a.xs[0];
    auto exponent_all_ones = [](const float* p) {
      uint32_t u;
      std::memcpy(&u, p, sizeof u);
      return static_cast<uint32_t>((u & 0x7f800000u) == 0x7f800000u);
    };
    if (a.xs[1] == 1)
      for (int64_t i = 0; i < a.in_features; ++i) nonfinite |= exponent_all_ones(row + i);
    else
      for (int64_t i = 0; i < a.in_features; ++i) nonfinite |= exponent_all_ones(row + i * a.xs[1]);
  }
  if (!nonfinite) return;
  std::vector<int64_t> bad;
  for (int64_t n = 0; n < a.n; ++n)
    for (int64_t i = 0; i < a.in_features; ++i)
      if (!std::isfinite(a.x[n * a.xs[0] + i * a.xs[1]])) bad.push_back(n * a.in_features + i);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (int64_t m = 0; m < a.out_features; ++m) {
    std::vector<uint8_t> present(static_cast<size_t>(a.in_features), 0);
    for (int64_t j = a.weight.row_ptr[m]; j < a.weight.row_ptr[m + 1]; ++j)
      present[a.weight.col16 ? static_cast<const uint16_t*>(a.weight.col)[j]
                             : static_cast<const int32_t*>(a.weight.col)[j]] = 1;
    for (int64_t b : bad)
      if (!present[b % a.in_features]) a.out[(b / a.in_features) * a.out_features + m] = nan;
  }
}

}  // namespace scnn
