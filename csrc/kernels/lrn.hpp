// Local response normalisation across channels (driven by lrn.cpp), vectorised per ISA.
//
// Included by each ISA translation unit inside an anonymous namespace, after it has defined
// the vector type V (it needs W, zero, bcast, loadu, load_tail, tail_mask, fma, mul, div,
// sqrt, storeu, store_part). y = x / (k + alpha/size * sum of x^2 over the channel window)^beta,
// the window [c - size/2, c + (size-1)/2] clipped to the channels (torch's definition). For
// beta = 0.75 (CaffeNet, AlexNet, GoogLeNet) d^-0.75 = 1 / (sqrt(d) * sqrt(sqrt(d))): two vector
// square roots and a division; other betas take std::pow lane by lane. The scalar version before
// this (compiled for the baseline ISA, whose sqrtf calls errno rules kept scalar) took 15 ms on
// CaffeNet's first LRN at batch 16, longer than any of its sparse layers.
#pragma once

// x / d^beta, lane by lane.
template <class V>
inline typename V::T lrn_scale(typename V::T x, typename V::T d, float beta) {
  using T = typename V::T;
  if (beta == 0.75f) {
    const T r = V::sqrt(d);
    return V::div(x, V::mul(r, V::sqrt(r)));
  }
  alignas(64) float xs[V::W], ds[V::W];
  V::storeu(xs, x);
  V::storeu(ds, d);
  for (int l = 0; l < V::W; ++l) xs[l] = xs[l] / std::pow(ds[l], beta);
  return V::loadu(xs);
}

// NCHW: positions [first, first + count) of every channel plane of image `image`.
template <class V>
void lrn_nchw(const LrnJob& j) {
  using T = typename V::T;
  constexpr int W = V::W;
  const int64_t lo = j.size / 2, hi = (j.size - 1) / 2, hw = j.hw;
  const float* const x = j.x + j.image * j.c * hw + j.first;
  float* const out = j.out + j.image * j.c * hw + j.first;
  const T scale = V::bcast(j.scale), k = V::bcast(j.k);
  const int64_t full = j.count / W * W;
  const int tail = static_cast<int>(j.count - full);
  const auto tmask = V::tail_mask(tail);
  for (int64_t c = 0; c < j.c; ++c) {
    const int64_t c0 = c - lo > 0 ? c - lo : 0, c1 = c + hi < j.c - 1 ? c + hi : j.c - 1;
    for (int64_t i = 0; i < j.count; i += W) {
      const bool part = i == full;  // the block's last, partial vector: masked loads
      T s = V::zero();
      for (int64_t cc = c0; cc <= c1; ++cc) {
        const float* p = x + cc * hw + i;
        const T v = part ? V::load_tail(p, tmask) : V::loadu(p);
        s = V::fma(v, v, s);
      }
      const float* p = x + c * hw + i;
      const T y = lrn_scale<V>(part ? V::load_tail(p, tmask) : V::loadu(p), V::fma(scale, s, k), j.beta);
      if (part) V::store_part(out + c * hw + i, y, tail, tmask);
      else V::storeu(out + c * hw + i, y);
    }
  }
}

// Channels-last: pixels [first, first + count) (over all images), each a contiguous run of c
// channels. scratch: c + size - 1 + W floats, the squares of one pixel's channels with size/2
// zeros before and (size-1)/2 after, so that window c is scratch[c .. c + size).
template <class V>
void lrn_channels_last(const LrnJob& j) {
  using T = typename V::T;
  constexpr int W = V::W;
  const int64_t lo = j.size / 2, nc = j.c;
  float* const sq = j.scratch;
  for (int64_t i = 0; i < nc + j.size - 1 + W; ++i) sq[i] = 0.0f;
  const T scale = V::bcast(j.scale), k = V::bcast(j.k);
  const int64_t full = nc / W * W;
  const int tail = static_cast<int>(nc - full);
  const auto tmask = V::tail_mask(tail);
  for (int64_t q = j.first; q < j.first + j.count; ++q) {
    const float* const xp = j.x + q * nc;
    float* const op = j.out + q * nc;
    for (int64_t c = 0; c < nc; c += W) {
      const T v = c == full ? V::load_tail(xp + c, tmask) : V::loadu(xp + c);
      if (c == full) V::store_part(sq + lo + c, V::mul(v, v), tail, tmask);  // the zeros after stay
      else V::storeu(sq + lo + c, V::mul(v, v));
    }
    for (int64_t c = 0; c < nc; c += W) {
      T s = V::loadu(sq + c);
      for (int64_t d = 1; d < j.size; ++d) s = V::add(s, V::loadu(sq + c + d));
      const T v = c == full ? V::load_tail(xp + c, tmask) : V::loadu(xp + c);
      const T y = lrn_scale<V>(v, V::fma(scale, s, k), j.beta);
      if (c == full) V::store_part(op + c, y, tail, tmask);
      else V::storeu(op + c, y);
    }
  }
}

template <class V>
void lrn_job(const LrnJob& j) {
  if (j.channels_last) lrn_channels_last<V>(j);
  else lrn_nchw<V>(j);
}
