// Fused store: dst[i] = relu?(src[i] + bias (+ res[i])) for a run of n outputs (n may be any
// length; res may be null). Included inside an ISA translation unit's anonymous namespace
// after V is defined.
#pragma once

template <class V>
inline void store_segment(float* dst, const float* src, int64_t n, typename V::T vb, bool relu,
                          const float* res) {
  constexpr int W = V::W;
  int64_t i = 0;
  for (; i + W <= n; i += W) {
    typename V::T r = V::add(V::loadu(src + i), vb);
    if (res) r = V::add(r, V::loadu(res + i));
    if (relu) r = V::max(V::zero(), r);  // max(0, NaN) keeps NaN, as torch.relu does
    V::storeu(dst + i, r);
  }
  if (i < n) {
    const auto m = V::tail_mask(static_cast<int>(n - i));
    typename V::T r = V::add(V::load_tail(src + i, m), vb);
    if (res) r = V::add(r, V::load_tail(res + i, m));
    if (relu) r = V::max(V::zero(), r);
    V::store_part(dst + i, r, static_cast<int>(n - i), m);
  }
}
