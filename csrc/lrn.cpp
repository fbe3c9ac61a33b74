// Local response normalisation across channels (CaffeNet/AlexNet), NCHW float32, with torch's
// definition: y = x / (k + alpha/size * sum of x^2 over the channel window)^beta, the window
// [c - size/2, c + (size-1)/2] clipped to the channels. torch builds it from pow, a 3-D average
// pool and a division (several passes over the tensor); this is one pass, vectorised over the
// positions of a channel plane. A channels-last tensor is normalised in place of its layout:
// a pixel's channels are contiguous, so the window becomes `size` shifted loads of the
// squares, vectorised over the channels (no copy to NCHW and back).
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "core.hpp"
#include "thread_pool.hpp"

namespace scnn {

void local_response_norm(const LrnArgs& a) {
  auto fail = [](const std::string& m) { throw std::invalid_argument("local_response_norm: " + m); };
  if (a.n < 0 || a.c < 1 || a.hw < 0) fail("bad input shape");
  if (a.size < 1) fail("size must be positive");
  if (!std::isfinite(a.alpha) || !std::isfinite(a.beta) || !std::isfinite(a.k)) fail("alpha, beta and k must be finite");
  int64_t need;
  if (__builtin_mul_overflow(a.n * a.c, a.hw, &need)) throw std::overflow_error("local_response_norm: input too large");
  if (a.out_numel != need) fail("output buffer has " + std::to_string(a.out_numel) + " elements, expected " + std::to_string(need));
  if (need == 0) return;
  if (!a.x || !a.out) fail("null tensor data");
  const int64_t lo = a.size / 2, hi = (a.size - 1) / 2;
  const float scale = static_cast<float>(a.alpha / a.size), k = static_cast<float>(a.k);
  const float beta = static_cast<float>(a.beta);
  if (a.channels_last) {
    constexpr int64_t kPixels = 64;  // pixels per task
    const int64_t tasks = (a.n * a.hw + kPixels - 1) / kPixels;
    parallel_for(tasks, a.threads, [&](int64_t t) {
      // squares of one pixel's channels, `lo` zeros before and `hi` after: window c is
      // sq[c .. c + size), the same length for every channel
      std::vector<float> sqv(static_cast<size_t>(a.c + a.size - 1), 0.0f);
      float* __restrict sq = sqv.data();
      const int64_t q1 = std::min(a.n * a.hw, (t + 1) * kPixels);
      for (int64_t q = t * kPixels; q < q1; ++q) {
        const float* __restrict xp = a.x + q * a.c;
        float* __restrict op = a.out + q * a.c;
        for (int64_t c = 0; c < a.c; ++c) sq[lo + c] = xp[c] * xp[c];
        for (int64_t c = 0; c < a.c; ++c) {
          float s = 0.0f;
          for (int64_t d = 0; d < a.size; ++d) s += sq[c + d];
          const float den = k + scale * s;
          if (beta == 0.75f) {
            const float r = std::sqrt(den);
            op[c] = xp[c] / (r * std::sqrt(r));
          } else {
            op[c] = xp[c] / std::pow(den, beta);
          }
        }
      }
    });
    return;
  }
  constexpr int64_t kBlock = 512;  // positions per task: the window's planes stay in L1
  const int64_t blocks = (a.hw + kBlock - 1) / kBlock;
  parallel_for(a.n * blocks, a.threads, [&](int64_t t) {
    const int64_t n = t / blocks, p0 = (t % blocks) * kBlock, len = std::min(kBlock, a.hw - p0);
    std::vector<float> sum(static_cast<size_t>(len));
    const float* x = a.x + n * a.c * a.hw + p0;
    float* out = a.out + n * a.c * a.hw + p0;
    for (int64_t c = 0; c < a.c; ++c) {
      float* __restrict s = sum.data();
      for (int64_t i = 0; i < len; ++i) s[i] = 0.0f;
      for (int64_t cc = std::max<int64_t>(0, c - lo); cc <= std::min(a.c - 1, c + hi); ++cc) {
        const float* __restrict xc = x + cc * a.hw;
        for (int64_t i = 0; i < len; ++i) s[i] += xc[i] * xc[i];
      }
      const float* __restrict xc = x + c * a.hw;
      float* __restrict oc = out + c * a.hw;
      if (beta == 0.75f) {  // CaffeNet's beta: d^-0.75 = 1 / (sqrt(d) * sqrt(sqrt(d))), vectorised
        for (int64_t i = 0; i < len; ++i) {
          const float d = k + scale * s[i];
          const float r = std::sqrt(d);
          oc[i] = xc[i] / (r * std::sqrt(r));
        }
      } else {
        for (int64_t i = 0; i < len; ++i) oc[i] = xc[i] / std::pow(k + scale * s[i], beta);
      }
    }
  });
}

}  // namespace scnn
