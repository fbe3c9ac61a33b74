// Max pooling (NCHW, float32) for the layers around the sparse convolutions. torch's CPU
// max_pool2d on NCHW tensors also computes the argmax indices and ran 15-40 ms at batch 16 on
// CaffeNet/ResNet-50 shapes on our 2-core machine, as long as a sparse layer; this is a plain
// memory-bound pass (vertical max of the window's rows, then the horizontal max), vectorised
// per ISA in kernels/max_pool.hpp. This file validates and splits the planes over threads.
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "core.hpp"
#include "isa/kernels.hpp"
#include "thread_pool.hpp"

namespace scnn {
namespace {

[[noreturn]] void fail(const std::string& msg) { throw std::invalid_argument("max_pool2d: " + msg); }

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
  const int64_t planes = a.n * a.c;
  const IsaKernels& isa = isa_kernels();
  PoolJob job{};
  job.lo = a.x;
  job.hi = a.x + planes * a.h * a.w;
  job.h = a.h, job.w = a.w, job.oh = oh, job.ow = ow;
  job.kh = a.kh, job.kw = a.kw, job.sh = a.sh, job.sw = a.sw, job.ph = a.ph, job.pw = a.pw;
  // What the horizontal pass reads of a padded row, whole vectors included (kernels/max_pool.hpp):
  // stride 1 and 2 up to a vector past the last output's window, larger strides the sliding
  // maxima up to the last window's start. (ow - 1) * sw is less than w + pw, so a huge stride
  // with one output column costs nothing.
  const int64_t W = isa.width, span = (ow - 1) * a.sw + 1;
  const int64_t reach = a.sw == 1 ? ow + W + a.kw : a.sw == 2 ? 2 * (ow + W) + a.kw : span + 2 * W + a.kw;
  job.row_len = a.pw + std::max(a.w, reach) + W;
  // output rows whose vertical maxima are made before their horizontal pass: ~16 KB of L1
  job.block_rows = std::clamp<int64_t>(4096 / job.row_len, 1, oh);
  const int64_t scratch = job.block_rows * job.row_len + (a.sw > 2 ? span + 2 * W : 0);
  // A parallel region costs a few microseconds: small inputs (a batch-1 pooling layer of a
  // small network, ~10 us of work) run on the calling thread. (In double: a kernel of 2^40
  // rows is legal.)
  const double work = double(planes) * double(oh) * (double(a.w) * double(a.kh + 1) + double(ow) * double(a.kw));
  const int threads = work < 131072.0 ? 1 : std::max(1, a.threads);
  const int64_t ntask = std::min<int64_t>(planes, 4 * static_cast<int64_t>(threads));
  parallel_for(ntask, threads, [&](int64_t t) {
    thread_local std::vector<float> buf;
    if (buf.size() < static_cast<size_t>(scratch)) buf.resize(static_cast<size_t>(scratch));
    PoolJob j = job;
    const int64_t p0 = planes * t / ntask, p1 = planes * (t + 1) / ntask;
    j.src = a.x + p0 * a.h * a.w;
    j.dst = a.out + p0 * oh * ow;
    j.planes = p1 - p0;
    j.scratch = buf.data();
    isa.max_pool(j);
  });
}

}  // namespace scnn
