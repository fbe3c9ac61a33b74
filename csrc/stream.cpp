// STREAM-style bandwidth kernels (McCalpin) for the machine probe in sparsecnn.perf.
#include <algorithm>

#include "core.hpp"
#include "thread_pool.hpp"

namespace scnn {
namespace {
constexpr int64_t kBlock = 1 << 16;  // floats per task: large enough to stream, small enough to balance
}

void stream_triad(float* a, const float* b, const float* c, float s, int64_t n, int threads) {
  if (n < 0) throw std::invalid_argument("stream_triad: negative length");
  parallel_for((n + kBlock - 1) / kBlock, threads, [&](int64_t t) {
    const int64_t i0 = t * kBlock, i1 = std::min(n, i0 + kBlock);
    for (int64_t i = i0; i < i1; ++i) a[i] = b[i] + s * c[i];
  });
}

void stream_copy(float* dst, const float* src, int64_t n, int threads) {
  if (n < 0) throw std::invalid_argument("stream_copy: negative length");
  parallel_for((n + kBlock - 1) / kBlock, threads, [&](int64_t t) {
    const int64_t i0 = t * kBlock, i1 = std::min(n, i0 + kBlock);
    for (int64_t i = i0; i < i1; ++i) dst[i] = src[i];
  });
}

}  // namespace scnn
