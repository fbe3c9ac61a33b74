// Blocked matrix transpose between NCHW and channels-last (NHWC): dst[j * ds + i] =
// src[i * ss + j] for i < rows, j < cols, W x W blocks transposed in registers. An image is
// one such matrix (channels x pixels or pixels x channels) when its pixels are evenly spaced.
// torch's own copy between the two formats moves 8-10 GB/s on a Zen 3; this kernel lets
// channels-last input and output cost little next to the convolution (docs/kernel.md).
//
// With `res`, the channels-last output's epilogue: dst = relu?(src^T + res), res laid out like
// dst (the residual of a channels-last model is channels-last too, so no copy of it is made).
//
// Included by each ISA translation unit inside an anonymous namespace after V is defined
// (needs loadu, storeu, add, max, zero, transpose).
#pragma once

template <class V>
void transpose_tile(const TransposeJob& job) {
  using T = typename V::T;
  constexpr int W = V::W;
  const float* const src = job.src;
  float* const dst = job.dst;
  const float* const res = job.res;
  const int64_t ss = job.ss, ds = job.ds, rows = job.rows, cols = job.cols;
  const bool relu = job.relu;
  auto finish = [&](float v, int64_t o) {
    if (res) v += res[o];
    return relu && v < 0.0f ? 0.0f : v;  // NaN stays NaN, as torch.relu
  };
  const int64_t rfull = rows - rows % W, cfull = cols - cols % W;
  for (int64_t i0 = 0; i0 < rfull; i0 += W) {
    for (int64_t j0 = 0; j0 < cfull; j0 += W) {
      T v[W];
#pragma GCC unroll 16
      for (int r = 0; r < W; ++r) v[r] = V::loadu(src + (i0 + r) * ss + j0);
      V::transpose(v);
#pragma GCC unroll 16
      for (int l = 0; l < W; ++l) {
        const int64_t o = (j0 + l) * ds + i0;
        T y = v[l];
        if (res) y = V::add(y, V::loadu(res + o));
        if (relu) y = V::max(V::zero(), y);
        V::storeu(dst + o, y);
      }
    }
    for (int64_t j = cfull; j < cols; ++j)
      for (int64_t i = i0; i < i0 + W; ++i) dst[j * ds + i] = finish(src[i * ss + j], j * ds + i);
  }
  for (int64_t i = rfull; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) dst[j * ds + i] = finish(src[i * ss + j], j * ds + i);
}
