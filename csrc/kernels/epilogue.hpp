// Fused store: dst[i] = relu?(src[i] + bias) for a run of n outputs (n may be any length).
// Included inside an ISA translation unit's anonymous namespace after V is defined.
#pragma once

template <class V>
inline void store_segment(float* dst, const float* src, int64_t n, typename V::T vb, bool relu) {
  constexpr int W = V::W;
  int64_t i = 0;
  for (; i + W <= n; i += W) {
    typename V::T r = V::add(V::loadu(src + i), vb);
    if (relu) r = V::max(V::zero(), r);  // max(0, NaN) keeps NaN, as torch.relu does
    V::storeu(dst + i, r);
  }
  if (i < n) {
    const auto m = V::tail_mask(static_cast<int>(n - i));
    typename V::T r = V::add(V::load_tail(src + i, m), vb);
    if (relu) r = V::max(V::zero(), r);
    V::store_tail(dst + i, r, m);
  }
}
