// Max pooling of NCHW planes (driven by pool.cpp), vectorised over the columns of a row.
//
// Included by each ISA translation unit inside an anonymous namespace, after it has defined
// the vector type V (it needs W, loadu, load_inside, tail_mask, storeu, store_part, even and
// max_nan). For a block of output rows, each row's window of input rows is first reduced into
// a row buffer (vertical pass), whose columns outside the input hold -inf (the left padding,
// and the right end that ceil_mode windows reach); then each output's window is reduced
// across its row (horizontal pass): at stride 1 straight into the output, at stride 2 as the
// maxima at 2W consecutive columns of which every second lane is kept in registers, at larger
// strides as a sliding maximum at every column of which every sw-th is copied out (no
// gathers). The scalar version before this (compiled for the baseline ISA, with 4-wide SSE in
// the vertical pass only) took ~45 us on a 64 x 28 x 28 plane set, as long as one of the small
// sparse layers around it.
#pragma once

// (<algorithm> and <limits> come from the including translation unit: this file is
// included inside a namespace.)

template <class V>
void pool_planes(const PoolJob& j) {
  using T = typename V::T;
  constexpr int W = V::W;
  const int64_t w = j.w, ow = j.ow, sw = j.sw, kw = j.kw, row_len = j.row_len;
  const int64_t rb = j.block_rows;
  float* const block = j.scratch;              // rb rows of row_len floats, the input's at + pw
  float* const slide = block + rb * row_len;   // sliding maxima of one row (sw > 2)
  std::fill(block, slide, -std::numeric_limits<float>::infinity());  // padding stays -inf
  const int64_t vfull = w / W * W;
  const int vtail = static_cast<int>(w - vfull);
  const auto vmask = V::tail_mask(vtail);
  const auto omask = V::tail_mask(static_cast<int>(ow - ow / W * W));
  const int64_t span = (ow - 1) * sw + 1;  // sliding positions whose maxima are kept (sw > 2)

  for (int64_t pl = 0; pl < j.planes; ++pl) {
    const float* src = j.src + pl * j.h * w;
    float* const dst = j.dst + pl * j.oh * ow;
    for (int64_t yb = 0; yb < j.oh; yb += rb) {
      const int64_t ye = std::min(j.oh, yb + rb);
      // Vertical: each row of the block = max of its window's input rows. The whole block
      // first, so that the horizontal pass does not load (unaligned) what was just stored:
      // a load spanning two pending stores waits for them (a stall per vector).
      for (int64_t y = yb; y < ye; ++y) {
        float* const row = block + (y - yb) * row_len + j.pw;
        const int64_t y0 = std::max<int64_t>(0, y * j.sh - j.ph), y1 = std::min(j.h, y * j.sh - j.ph + j.kh);
        int64_t i = 0;
        for (; i < vfull; i += W) {
          T m = V::loadu(src + y0 * w + i);
          for (int64_t iy = y0 + 1; iy < y1; ++iy) m = V::max_nan(m, V::loadu(src + iy * w + i));
          V::storeu(row + i, m);
        }
        if (vtail) {
          T m = V::load_inside(src + y0 * w + i, vmask, j.lo, j.hi);
          for (int64_t iy = y0 + 1; iy < y1; ++iy)
            m = V::max_nan(m, V::load_inside(src + iy * w + i, vmask, j.lo, j.hi));
          V::store_part(row + i, m, vtail, vmask);  // the columns past w keep their -inf
        }
      }
      // Horizontal: output x = max of r[x * sw .. x * sw + kw), r the padded row.
      for (int64_t y = yb; y < ye; ++y) {
        const float* const r = block + (y - yb) * row_len;
        float* const d = dst + y * ow;
        if (sw <= 2) {
          for (int64_t x = 0; x < ow; x += W) {
            T m;
            if (sw == 1) {
              m = V::loadu(r + x);
              for (int64_t jx = 1; jx < kw; ++jx) m = V::max_nan(m, V::loadu(r + x + jx));
            } else {  // the maxima at 2W consecutive columns, every second one kept
              const float* q = r + 2 * x;
              T a = V::loadu(q), b = V::loadu(q + W);
              for (int64_t jx = 1; jx < kw; ++jx) {
                a = V::max_nan(a, V::loadu(q + jx));
                b = V::max_nan(b, V::loadu(q + W + jx));
              }
              m = V::even(a, b);
            }
            if (x + W <= ow) V::storeu(d + x, m);
            else V::store_part(d + x, m, static_cast<int>(ow - x), omask);
          }
          continue;
        }
        for (int64_t x = 0; x < span; x += W) {
          T m = V::loadu(r + x);
          for (int64_t jx = 1; jx < kw; ++jx) m = V::max_nan(m, V::loadu(r + x + jx));
          V::storeu(slide + x, m);
        }
        for (int64_t x = 0; x < ow; ++x) d[x] = slide[x * sw];
      }
    }
  }
}
