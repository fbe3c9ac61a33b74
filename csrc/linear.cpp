// Driver of the sparse fully connected layer: Y = X W^T (+ bias) (then ReLU).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

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

  // X^T with the batch contiguous; the batch is the SIMD dimension of the kernel.
  thread_local std::vector<float> xt_buf;
  const float* xt = a.x;
  const int64_t ldx = a.n;
  if (!(a.n == 1 && a.xs[1] == 1)) {
    int64_t total;
    if (__builtin_mul_overflow(a.n, a.in_features, &total)) throw std::overflow_error("sparse_linear: input too large");
    if (xt_buf.size() < static_cast<size_t>(total)) xt_buf.resize(static_cast<size_t>(total));
    float* d = xt_buf.data();
    for (int64_t i = 0; i < a.in_features; ++i)
      for (int64_t n = 0; n < a.n; ++n) d[i * ldx + n] = a.x[n * a.xs[0] + i * a.xs[1]];
    xt = d;
  }

  const int64_t bchunk = 4 * static_cast<int64_t>(isa.width);  // batch columns per tile
  const int64_t nbchunks = (a.n + bchunk - 1) / bchunk;
  int64_t rowparts = std::max<int64_t>(1, std::min<int64_t>(a.out_features, 8 * threads));
  std::vector<int64_t> bounds(static_cast<size_t>(rowparts + 1));
  {
    const double total = a.weight.row_ptr[a.out_features] + 2.0 * a.out_features;
    int64_t r = 0;
    bounds[0] = 0;
    for (int64_t k = 1; k < rowparts; ++k) {
      const double target = total * k / rowparts;
      while (r < a.out_features && a.weight.row_ptr[r + 1] + 2.0 * (r + 1) <= target) ++r;
      bounds[k] = std::max(r, bounds[k - 1]);
    }
    bounds[rowparts] = a.out_features;
  }
  parallel_for(nbchunks * rowparts, threads, [&](int64_t task) {
    const int64_t rp = task % rowparts, bc = task / rowparts;
    if (bounds[rp] >= bounds[rp + 1]) return;
    LinearTile t{};
    t.values = a.weight.values;
    t.col = a.weight.col;
    t.col16 = a.weight.col16;
    t.row_ptr = a.weight.row_ptr;
    t.xt = xt;
    t.ldx = ldx;
    t.b0 = bc * bchunk;
    t.nbatch = std::min(bchunk, a.n - t.b0);
    t.row0 = bounds[rp];
    t.row1 = bounds[rp + 1];
    t.out = a.out;
    t.out_features = a.out_features;
    t.bias = a.bias;
    t.relu = a.relu;
    if (a.n == 1)
      isa.linear_dot(t);  // one input row: dot products over the nonzeros
    else
      isa.linear_tile(t);
  });

  // Dense semantics for NaN/Inf inputs: 0 * Inf = NaN wherever a pruned weight meets them.
  std::vector<int64_t> bad;
  for (int64_t n = 0; n < a.n; ++n)
    for (int64_t i = 0; i < a.in_features; ++i)
      if (!std::isfinite(a.x[n * a.xs[0] + i * a.xs[1]])) bad.push_back(n * a.in_features + i);
  if (!bad.empty()) {
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
}

}  // namespace scnn
