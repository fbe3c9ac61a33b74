// Local response normalisation across channels (CaffeNet/AlexNet), NCHW float32, with torch's
// definition: y = x / (k + alpha/size * sum of x^2 over the channel window)^beta, the window
// [c - size/2, c + (size-1)/2] clipped to the channels. torch builds it from pow, a 3-D average
// pool and a division (several passes over the tensor); this is one pass, vectorised per ISA
// (kernels/lrn.hpp) over the positions of a channel plane. A channels-last tensor is normalised
// in place of its layout: a pixel's channels are contiguous, so the window becomes `size`
// shifted loads of the squares, vectorised over the channels (no copy to NCHW and back). This
// file validates and splits the work over threads.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "core.hpp"
#include "isa/kernels.hpp"
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
  const IsaKernels& isa = isa_kernels();
  LrnJob job{};
  job.x = a.x;
  job.out = a.out;
  job.c = a.c;
  job.hw = a.hw;
  job.channels_last = a.channels_last;
  // A window of 2c + 1 channels already covers every channel from every channel: a larger
  // size changes only the scale (alpha / size), so the kernels take at most that (no
  // scratch or loop the length of a huge size).
  job.size = std::min(a.size, 2 * a.c + 1);
  job.scale = static_cast<float>(a.alpha / a.size);
  job.k = static_cast<float>(a.k);
  job.beta = static_cast<float>(a.beta);
  if (a.channels_last) {
    constexpr int64_t kPixels = 64;  // pixels per task
    const int64_t pixels = a.n * a.hw, tasks = (pixels + kPixels - 1) / kPixels;
    const size_t scratch = static_cast<size_t>(a.c + job.size - 1 + isa.width);
    parallel_for(tasks, a.threads, [&](int64_t t) {
      thread_local std::vector<float> buf;
      if (buf.size() < scratch) buf.resize(scratch);
      LrnJob j = job;
      j.first = t * kPixels;
      j.count = std::min(kPixels, pixels - j.first);
      j.scratch = buf.data();
      isa.lrn(j);
    });
    return;
  }
  constexpr int64_t kBlock = 512;  // positions per task: the window's planes stay in L1
  const int64_t blocks = (a.hw + kBlock - 1) / kBlock;
  parallel_for(a.n * blocks, a.threads, [&](int64_t t) {
    LrnJob j = job;
    j.image = t / blocks;
    j.first = (t % blocks) * kBlock;
    j.count = std::min(kBlock, a.hw - j.first);
    isa.lrn(j);
  });
}

}  // namespace scnn
