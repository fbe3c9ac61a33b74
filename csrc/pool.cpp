// Max pooling (NCHW, float32) for the layers around the sparse convolutions. torch's CPU
// max_pool2d on NCHW tensors also computes the argmax indices and ran 15-40 ms at batch 16 on
// CaffeNet/ResNet-50 shapes on our 2-core machine, as long as a sparse layer; this is a plain
// memory-bound pass (vertical max of the window's rows, then the horizontal max), ~1 ms.
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "core.hpp"
#include "thread_pool.hpp"

namespace scnn {
namespace {

[[noreturn]] void fail(const std::string& msg) { throw std::invalid_argument("max_pool2d: " + msg); }

// torch's NaN rule: a window holding a NaN gives NaN. Written without branches (selects the
// compiler turns into vector blends): keep a NaN once seen, else take b if larger or NaN.
inline float nan_max(float a, float b) {
  const float m = (b > a) | (b != b) ? b : a;
  return a != a ? a : m;
}

}  // namespace

void pool_output_size(int64_t in, int64_t k, int64_t s, int64_t p, bool ceil_mode, int64_t* out) {
  if (k < 1 || s < 1) fail("kernel size and stride must be positive");
  if (p < 0 || 2 * p > k) fail("padding must be between 0 and half the kernel size");
  if (in < 1) fail("input height and width must be positive");
  if (in > (int64_t(1) << 40) || k > (int64_t(1) << 40) || s > (int64_t(1) << 40))
    throw std::overflow_error("max_pool2d: a size is too large");
  // As torch: floor (ceil_mode: ceil) of (in + 2p - k) / s, plus one. With ceil_mode the last
  // window may reach past the input, even a kernel wider than the padded input (its columns
  // beyond count as -inf).
  const int64_t span = in + 2 * p - k, num = ceil_mode ? span + s - 1 : span;
  if (num < 0) fail("the (padded) input is smaller than the kernel");
  int64_t o = num / s + 1;
  // As torch: the last window must start inside the input or its left padding.
  if (ceil_mode && (o - 1) * s >= in + p) --o;
  *out = o;
}

void max_pool2d(const PoolArgs& a) {
  if (a.n < 0 || a.c < 1) fail("input must have at least one channel");
  int64_t oh, ow;
  pool_output_size(a.h, a.kh, a.sh, a.ph, a.ceil_mode, &oh);
  pool_output_size(a.w, a.kw, a.sw, a.pw, a.ceil_mode, &ow);
  int64_t need;
  if (__builtin_mul_overflow(a.n * a.c, oh * ow, &need)) throw std::overflow_error("max_pool2d: output too large");
  if (a.out_numel != need) fail("output buffer has " + std::to_string(a.out_numel) + " elements, expected " + std::to_string(need));
  if (a.n == 0) return;
  if (!a.x || !a.out) fail("null tensor data");
  const int64_t planes = a.n * a.c, hw = a.h * a.w, ohw = oh * ow;
  const int64_t ntask = std::min<int64_t>(planes, 8 * static_cast<int64_t>(std::max(1, a.threads)));
  // The window's columns, as offsets into a row padded with -inf on both sides (pw left, and
  // enough right for the last window): no clamping in the inner loops.
  const int64_t wp = std::max<int64_t>(a.w + a.pw, (ow - 1) * a.sw + a.kw) + 1;
  parallel_for(ntask, a.threads, [&](int64_t t) {
    const float lowest = -std::numeric_limits<float>::infinity();
    std::vector<float> buf(static_cast<size_t>(wp), lowest);
    float* const row = buf.data() + a.pw;  // row[-pw .. w + ...) valid
    for (int64_t pl = planes * t / ntask; pl < planes * (t + 1) / ntask; ++pl) {
      const float* src = a.x + pl * hw;
      float* dst = a.out + pl * ohw;
      for (int64_t y = 0; y < oh; ++y) {
        const int64_t y0 = std::max<int64_t>(0, y * a.sh - a.ph), y1 = std::min(a.h, y * a.sh - a.ph + a.kh);
        // vertical max of the window's input rows, all columns at once
        {
          float* __restrict r = row;
          const float* __restrict s0 = src + y0 * a.w;
          for (int64_t i = 0; i < a.w; ++i) r[i] = s0[i];
          for (int64_t iy = y0 + 1; iy < y1; ++iy) {
            const float* __restrict s = src + iy * a.w;
            for (int64_t i = 0; i < a.w; ++i) r[i] = nan_max(r[i], s[i]);
          }
        }
        // horizontal max over the kw window columns of each output
        const float* r = row - a.pw;
        float* __restrict d = dst + y * ow;
        for (int64_t x = 0; x < ow; ++x) d[x] = r[x * a.sw];
        for (int64_t j = 1; j < a.kw; ++j)
          for (int64_t x = 0; x < ow; ++x) d[x] = nan_max(d[x], r[x * a.sw + j]);
      }
    }
  });
}

}  // namespace scnn
