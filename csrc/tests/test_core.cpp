// Tests of the C++ core on its own, meant to run under AddressSanitizer + UBSan
// (`make test-asan`): random convolutions and linear layers against a naive double-precision
// reference on every ISA variant the CPU has, exactly-sized heap buffers (so any overrun is
// caught), and invalid arguments that must throw rather than crash.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "core.hpp"

namespace {

int g_failures = 0, g_checks = 0;

void check(bool ok, const std::string& what) {
  ++g_checks;
  if (!ok) {
    ++g_failures;
    std::fprintf(stderr, "FAIL: %s\n", what.c_str());
  }
}

template <class E>
void expect_throw(const std::function<void()>& f, const std::string& what) {
  bool thrown = false;
  try {
    f();
  } catch (const E&) {
    thrown = true;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "  (%s threw another exception: %s)\n", what.c_str(), e.what());
  }
  check(thrown, "expected exception: " + what);
}

struct CsrOwned {
  std::vector<float> values;
  std::vector<uint16_t> col16;
  std::vector<int32_t> col32;
  std::vector<int32_t> row_ptr;
  scnn::Csr view(bool use16) const {
    scnn::Csr m;
    m.values = values.data();
    m.col16 = use16;
    m.col = use16 ? static_cast<const void*>(col16.data()) : static_cast<const void*>(col32.data());
    m.row_ptr = row_ptr.data();
    m.rows = static_cast<int64_t>(row_ptr.size()) - 1;
    m.nnz = static_cast<int64_t>(values.size());
    return m;
  }
};

CsrOwned pack(const std::vector<float>& dense, int64_t rows, int64_t cols) {
  CsrOwned m;
  m.row_ptr.push_back(0);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      const float v = dense[r * cols + c];
      if (v != 0.0f) {
        m.values.push_back(v);
        m.col16.push_back(static_cast<uint16_t>(c));
        m.col32.push_back(static_cast<int32_t>(c));
      }
    }
    m.row_ptr.push_back(static_cast<int32_t>(m.values.size()));
  }
  return m;
}

struct ConvCase {
  int64_t n, c, h, w, o, g, kh, kw, sh, sw, pt, pb, pl, pr, dh, dw;
  bool bias, relu, channels_last, use16, residual;
  bool out_cl;  // output and residual channels-last
  double density;
  int threads;
};

bool run_conv_case(const ConvCase& k, std::mt19937& rng) {
  std::uniform_real_distribution<float> U(-1.0f, 1.0f);
  std::uniform_real_distribution<double> P(0.0, 1.0);
  const int64_t cg = k.c / k.g, og = k.o / k.g, cols = cg * k.kh * k.kw;
  std::vector<float> wd(static_cast<size_t>(k.o * cols));
  for (auto& v : wd) v = P(rng) < k.density ? U(rng) : 0.0f;
  CsrOwned csr = pack(wd, k.o, cols);
  // Exactly-sized heap input so ASan sees any read past its end.
  std::unique_ptr<float[]> x(new float[static_cast<size_t>(k.n * k.c * k.h * k.w)]);
  for (int64_t i = 0; i < k.n * k.c * k.h * k.w; ++i) x[i] = U(rng);
  std::vector<float> bias(static_cast<size_t>(k.o));
  for (auto& v : bias) v = U(rng);
  int64_t oh, ow;
  scnn::conv2d_output_size(k.h, k.w, k.kh, k.kw, k.sh, k.sw, k.pt, k.pb, k.pl, k.pr, k.dh, k.dw, &oh, &ow);
  const int64_t out_n = k.n * k.o * oh * ow;
  std::unique_ptr<float[]> out(new float[static_cast<size_t>(out_n)]);
  for (int64_t i = 0; i < out_n; ++i) out[i] = std::nanf("");  // poison: every element must be written
  std::unique_ptr<float[]> res(k.residual ? new float[static_cast<size_t>(out_n)] : nullptr);  // exact size
  for (int64_t i = 0; k.residual && i < out_n; ++i) res[i] = U(rng);

  scnn::Conv2dArgs a;
  a.x = x.get();
  a.n = k.n; a.c = k.c; a.h = k.h; a.w = k.w;
  // Element strides of the logical (N, C, H, W) view.
  if (k.channels_last) {
    a.xs[0] = k.c * k.h * k.w; a.xs[1] = 1; a.xs[2] = k.w * k.c; a.xs[3] = k.c;
  } else {
    a.xs[0] = k.c * k.h * k.w; a.xs[1] = k.h * k.w; a.xs[2] = k.w; a.xs[3] = 1;
  }
  a.weight = csr.view(k.use16);
  a.out_channels = k.o; a.cin_per_group = cg; a.kh = k.kh; a.kw = k.kw; a.groups = k.g;
  a.bias = k.bias ? bias.data() : nullptr;
  a.out = out.get(); a.out_numel = out_n;
  a.stride_h = k.sh; a.stride_w = k.sw;
  a.pad_top = k.pt; a.pad_bottom = k.pb; a.pad_left = k.pl; a.pad_right = k.pr;
  a.dil_h = k.dh; a.dil_w = k.dw;
  a.relu = k.relu; a.threads = k.threads;
  a.residual = res.get(); a.residual_numel = k.residual ? out_n : 0;
  a.out_cl = k.out_cl;
  scnn::sparse_conv2d(a);

  double max_err = 0.0;
  for (int64_t n = 0; n < k.n; ++n)
    for (int64_t m = 0; m < k.o; ++m) {
      const int64_t g = m / og;
      for (int64_t y = 0; y < oh; ++y)
        for (int64_t xo = 0; xo < ow; ++xo) {
          double acc = k.bias ? bias[m] : 0.0;
          for (int64_t c = 0; c < cg; ++c)
            for (int64_t r = 0; r < k.kh; ++r)
              for (int64_t s = 0; s < k.kw; ++s) {
                const int64_t iy = y * k.sh - k.pt + r * k.dh, ix = xo * k.sw - k.pl + s * k.dw;
                if (iy < 0 || iy >= k.h || ix < 0 || ix >= k.w) continue;
                const int64_t ci = g * cg + c;
                acc += double(wd[m * cols + (c * k.kh + r) * k.kw + s]) *
                       x[n * a.xs[0] + ci * a.xs[1] + iy * a.xs[2] + ix * a.xs[3]];
              }
          const int64_t oi = k.out_cl ? ((n * oh + y) * ow + xo) * k.o + m : ((n * k.o + m) * oh + y) * ow + xo;
          if (k.residual) acc += res[oi];
          if (k.relu && acc < 0) acc = 0;
          const double got = out[oi];
          const double err = std::fabs(got - acc);
          if (!(err <= 1e-4 * (1.0 + std::fabs(acc)))) max_err = std::max(max_err, err + (got != got ? 1e9 : 0));
        }
    }
  return max_err == 0.0;
}

void test_conv_random(const char* isa) {
  std::mt19937 rng(1234);
  std::uniform_int_distribution<int> D(0, 1 << 30);
  auto pick = [&](int lo, int hi) { return lo + D(rng) % (hi - lo + 1); };
  const double densities[] = {0.0, 1e-3, 0.1, 0.5, 1.0};
  int bad = 0;
  for (int it = 0; it < 160; ++it) {
    ConvCase k{};
    k.g = pick(1, 3);
    k.c = k.g * pick(1, 4);
    k.o = k.g * pick(1, 4);
    if (it % 10 == 0) { k.g = k.c = k.o = pick(1, 6); }  // depthwise
    k.n = it % 6 == 4 ? pick(16, 18) : pick(1, 5);  // 16+: the batch-lanes kernel (+ a remainder)
    k.kh = pick(1, 5); k.kw = pick(1, 5);
    k.sh = pick(1, 3); k.sw = pick(1, 3);
    k.dh = pick(1, 2); k.dw = pick(1, 2);
    k.pt = pick(0, 2); k.pb = pick(0, 2); k.pl = pick(0, 2); k.pr = pick(0, 2);
    k.h = pick(1, 20); k.w = pick(1, 40);
    if (k.h + k.pt + k.pb < k.dh * (k.kh - 1) + 1) k.h = k.dh * (k.kh - 1) + 1;
    if (k.w + k.pl + k.pr < k.dw * (k.kw - 1) + 1) k.w = k.dw * (k.kw - 1) + 1;
    if (it % 7 == 0) { k.kh = k.kw = 1; k.sh = k.sw = 1; k.pt = k.pb = k.pl = k.pr = 0; }  // direct path
    if (k.n >= 16 && it % 12 == 4) {  // surely the batch-lanes kernel, rows wider than a transpose
      k.sh = k.sw = 1;
      k.w = pick(17, 40);
    }
    k.bias = it % 2; k.relu = it % 3 == 0; k.channels_last = it % 5 == 1; k.use16 = it % 4 != 3;
    k.residual = it % 4 == 1;
    k.out_cl = it % 10 == 6 || it % 20 == 5;  // channels-last in and out, NCHW in and channels-last out
    k.density = densities[it % 5];
    if (k.n >= 16 && it % 12 == 10) {  // a strided layer dense enough for the batch-lanes kernel (phases)
      k.g = 1; k.c = 24; k.o = pick(1, 5); k.kh = k.kw = 3;
      k.sh = pick(2, 3); k.sw = pick(2, 4);
      k.h = pick(9, 20); k.w = pick(9, 40);
      k.density = 1.0;  // 216 nonzeros per output channel
    }
    k.threads = 1 + it % 3;
    if (!run_conv_case(k, rng)) {
      ++bad;
      std::fprintf(stderr, "  conv mismatch (%s) it=%d n=%ld c=%ld h=%ld w=%ld o=%ld g=%ld k=%ldx%ld s=%ldx%ld d=%ldx%ld p=%ld,%ld,%ld,%ld\n",
                   isa, it, (long)k.n, (long)k.c, (long)k.h, (long)k.w, (long)k.o, (long)k.g, (long)k.kh, (long)k.kw,
                   (long)k.sh, (long)k.sw, (long)k.dh, (long)k.dw, (long)k.pt, (long)k.pb, (long)k.pl, (long)k.pr);
    }
  }
  check(bad == 0, std::string("random convolutions on ") + isa);
}

// A batch-lanes layer with 147K nonzeros: its offsets pass runs on both threads (from
// kParallelOffsets = 2^17 nonzeros, conv_lanes.cpp).
void test_lanes_many_nonzeros(const char* isa) {
  std::mt19937 rng(99);
  ConvCase k{};
  k.n = 16; k.c = 256; k.o = 64; k.g = 1; k.kh = k.kw = 3; k.sh = k.sw = 1; k.dh = k.dw = 1;
  k.pt = k.pb = k.pl = k.pr = 1; k.h = 4; k.w = 5;
  k.bias = true; k.relu = true; k.use16 = true; k.density = 1.0; k.threads = 2;
  check(run_conv_case(k, rng), std::string("batch-lanes layer with 147K nonzeros on ") + isa);
}

void test_linear_random(const char* isa) {
  std::mt19937 rng(99);
  std::uniform_real_distribution<float> U(-1.0f, 1.0f);
  std::uniform_real_distribution<double> P(0.0, 1.0);
  int bad = 0;
  for (int it = 0; it < 40; ++it) {
    const int64_t n = 1 + it % 37, in = 1 + (it * 13) % 70, o = 1 + (it * 7) % 30;
    std::vector<float> wd(static_cast<size_t>(o * in));
    for (auto& v : wd) v = P(rng) < 0.3 ? U(rng) : 0.0f;
    CsrOwned csr = pack(wd, o, in);
    std::unique_ptr<float[]> x(new float[static_cast<size_t>(n * in)]);
    for (int64_t i = 0; i < n * in; ++i) x[i] = U(rng);
    std::unique_ptr<float[]> out(new float[static_cast<size_t>(n * o)]);
    scnn::LinearArgs a;
    a.x = x.get(); a.n = n; a.in_features = in; a.xs[0] = in; a.xs[1] = 1;
    a.weight = csr.view(it % 2 == 0); a.out_features = o; a.out = out.get(); a.out_numel = n * o;
    a.threads = 1 + it % 2;
    scnn::sparse_linear(a);
    for (int64_t b = 0; b < n; ++b)
      for (int64_t m = 0; m < o; ++m) {
        double acc = 0;
        for (int64_t i = 0; i < in; ++i) acc += double(wd[m * in + i]) * x[b * in + i];
        if (std::fabs(acc - out[b * o + m]) > 1e-4 * (1 + std::fabs(acc))) ++bad;
      }
  }
  check(bad == 0, std::string("random linear layers on ") + isa);
}

void test_bad_input() {
  std::vector<float> wd(8 * 4 * 9, 0.0f);
  wd[5] = 1.0f;
  CsrOwned csr = pack(wd, 8, 36);
  std::vector<float> x(2 * 4 * 5 * 5, 1.0f), out(2 * 8 * 5 * 5);
  auto base = [&] {
    scnn::Conv2dArgs a;
    a.x = x.data(); a.n = 2; a.c = 4; a.h = 5; a.w = 5;
    a.xs[0] = 100; a.xs[1] = 25; a.xs[2] = 5; a.xs[3] = 1;
    a.weight = csr.view(true); a.out_channels = 8; a.cin_per_group = 4; a.kh = 3; a.kw = 3;
    a.out = out.data(); a.out_numel = 2 * 8 * 5 * 5;
    a.pad_top = a.pad_bottom = a.pad_left = a.pad_right = 1;
    a.threads = 2;
    return a;
  };
  { auto a = base(); scnn::sparse_conv2d(a); check(out[0] == 0.0f || out[0] == 1.0f, "baseline call runs"); }
  expect_throw<std::invalid_argument>([&] { auto a = base(); a.pad_left = -1; scnn::sparse_conv2d(a); }, "negative padding");
  expect_throw<std::invalid_argument>([&] { auto a = base(); a.groups = 3; scnn::sparse_conv2d(a); }, "groups not dividing channels");
  expect_throw<std::invalid_argument>([&] { auto a = base(); a.cin_per_group = 3; scnn::sparse_conv2d(a); }, "channel mismatch");
  expect_throw<std::invalid_argument>([&] { auto a = base(); a.stride_h = 0; scnn::sparse_conv2d(a); }, "zero stride");
  expect_throw<std::invalid_argument>([&] { auto a = base(); a.out_numel = 7; scnn::sparse_conv2d(a); }, "wrong output size");
  expect_throw<std::invalid_argument>([&] { auto a = base(); a.residual = a.out; a.residual_numel = a.out_numel - 1; scnn::sparse_conv2d(a); }, "wrong residual size");
  expect_throw<std::invalid_argument>([&] { auto a = base(); a.h = 1; a.pad_top = a.pad_bottom = 0; scnn::sparse_conv2d(a); }, "input smaller than kernel");
  expect_throw<std::invalid_argument>([&] { auto a = base(); a.xs[2] = -5; scnn::sparse_conv2d(a); }, "negative stride");
  CsrOwned broken = csr;
  broken.col16[0] = 36;
  expect_throw<std::invalid_argument>([&] { auto a = base(); a.weight = broken.view(true); scnn::sparse_conv2d(a); }, "column out of range");
  CsrOwned broken2 = csr;
  broken2.row_ptr[3] = 5;
  expect_throw<std::invalid_argument>([&] { auto a = base(); a.weight = broken2.view(true); scnn::sparse_conv2d(a); }, "row_ptr inconsistent");
  expect_throw<std::overflow_error>([&] { auto a = base(); a.h = int64_t(1) << 41; scnn::sparse_conv2d(a); }, "huge height");
  expect_throw<std::overflow_error>([&] {
    auto a = base(); a.h = 1 << 17; a.w = 1 << 17; a.xs[0] = 0; a.xs[1] = 0; a.xs[2] = 0; a.xs[3] = 0;
    a.out_numel = 2 * 8 * a.h * a.w;  // the plan must refuse before touching any buffer
    scnn::sparse_conv2d(a);
  }, "offsets beyond 32 bits");
  expect_throw<std::invalid_argument>([] { scnn::set_isa("sse9"); }, "unknown ISA");
}

void test_nonfinite() {
  // A pruned (zero) weight meeting an Inf gives NaN, as in dense convolution.
  std::vector<float> wd = {0.0f, 2.0f};  // 1 output channel, 2 input channels, 1x1
  CsrOwned csr = pack(wd, 1, 2);
  std::vector<float> x = {INFINITY, 1.0f, 3.0f, 4.0f};  // (1, 2, 1, 2)
  std::vector<float> out(2);
  scnn::Conv2dArgs a;
  a.x = x.data(); a.n = 1; a.c = 2; a.h = 1; a.w = 2;
  a.xs[0] = 4; a.xs[1] = 2; a.xs[2] = 2; a.xs[3] = 1;
  a.weight = csr.view(true); a.out_channels = 1; a.cin_per_group = 2; a.kh = 1; a.kw = 1;
  a.out = out.data(); a.out_numel = 2; a.threads = 1;
  scnn::sparse_conv2d(a);
  check(std::isnan(out[0]) && out[1] == 8.0f, "0 * Inf gives NaN, the rest is untouched");
}

void test_stream() {
  std::vector<float> a(100003), b(100003, 1.0f), c(100003, 2.0f);
  scnn::stream_triad(a.data(), b.data(), c.data(), 3.0f, static_cast<int64_t>(a.size()), 2);
  check(a[0] == 7.0f && a.back() == 7.0f, "stream triad");
  scnn::stream_copy(c.data(), a.data(), static_cast<int64_t>(a.size()), 2);
  check(c[12345] == 7.0f, "stream copy");
}

}  // namespace

// Seeded draws for the pooling and LRN tests: floats in [-2, 2), ints in [lo, hi].
struct Draw {
  std::mt19937 rng;
  explicit Draw(unsigned seed) : rng(seed) {}
  float real() { return std::uniform_real_distribution<float>(-2.0f, 2.0f)(rng); }
  int pick(int lo, int hi) { return lo + std::uniform_int_distribution<int>(0, 1 << 30)(rng) % (hi - lo + 1); }
};

// Max pooling against naive loops, exactly-sized buffers (reads past the input or writes past
// the output are ASan errors), rows from narrower than one vector to several; some inputs hold
// a NaN, which every window that covers it must give.
void test_max_pool_random(const char* isa) {
  Draw draw(7);
  auto pick = [&](int lo, int hi) { return draw.pick(lo, hi); };
  int bad = 0;
  for (int it = 0; it < 300; ++it) {
    scnn::PoolArgs a;
    a.n = pick(1, 2); a.c = pick(1, 3); a.kh = pick(1, 5); a.kw = pick(1, 5);
    a.sh = pick(1, 3); a.sw = pick(1, 3); a.ph = pick(0, a.kh / 2); a.pw = pick(0, a.kw / 2);
    a.h = a.kh + pick(0, 9); a.w = a.kw + pick(0, it % 3 ? 20 : 70); a.ceil_mode = it % 2; a.threads = 1 + it % 2;
    const int64_t in_n = a.n * a.c * a.h * a.w;
    std::unique_ptr<float[]> x(new float[static_cast<size_t>(in_n)]);
    for (int64_t i = 0; i < in_n; ++i) x[i] = draw.real();
    if (it % 4 == 3) x[draw.pick(0, static_cast<int>(in_n - 1))] = NAN;
    int64_t oh, ow;
    scnn::pool_output_size(a.h, a.kh, a.sh, a.ph, a.ceil_mode, &oh);
    scnn::pool_output_size(a.w, a.kw, a.sw, a.pw, a.ceil_mode, &ow);
    std::unique_ptr<float[]> out(new float[static_cast<size_t>(a.n * a.c * oh * ow)]);
    a.x = x.get(); a.out = out.get(); a.out_numel = a.n * a.c * oh * ow;
    scnn::max_pool2d(a);
    for (int64_t p = 0; p < a.n * a.c; ++p)
      for (int64_t y = 0; y < oh; ++y)
        for (int64_t xo = 0; xo < ow; ++xo) {
          float m = -INFINITY;
          for (int64_t r = 0; r < a.kh; ++r)
            for (int64_t q = 0; q < a.kw; ++q) {
              const int64_t iy = y * a.sh - a.ph + r, ix = xo * a.sw - a.pw + q;
              if (iy >= 0 && iy < a.h && ix >= 0 && ix < a.w) {
                const float v = x[(p * a.h + iy) * a.w + ix];
                m = std::isnan(m) || std::isnan(v) ? NAN : std::max(m, v);
              }
            }
          const float got = out[(p * oh + y) * ow + xo];
          bad += std::isnan(m) ? !std::isnan(got) : got != m;
        }
  }
  check(bad == 0, std::string("random max pooling on ") + isa);
  scnn::PoolArgs p;
  expect_throw<std::invalid_argument>([&] { p.n = 1; p.c = 1; p.h = p.w = 4; p.kh = p.kw = 2; p.sh = 0; scnn::max_pool2d(p); }, "pool zero stride");
}

// LRN against a naive loop in double precision, both layouts, exactly-sized buffers.
void test_lrn(const char* isa) {
  Draw draw(7);
  auto pick = [&](int lo, int hi) { return draw.pick(lo, hi); };
  int bad = 0;
  for (int it = 0; it < 40; ++it) {
    scnn::LrnArgs a;
    a.n = pick(1, 2); a.c = pick(1, it % 2 ? 9 : 40); a.hw = pick(1, 700); a.size = pick(1, 6);
    a.alpha = 1e-2; a.beta = it % 2 ? 0.75 : 0.6; a.k = 1.5; a.threads = 1 + it % 2;
    a.channels_last = it % 4 >= 2;
    if (a.channels_last && it % 8 >= 4) a.size = a.c + pick(0, 3);  // a window past every channel
    const int64_t n = a.n * a.c * a.hw;
    std::unique_ptr<float[]> x(new float[static_cast<size_t>(n)]), out(new float[static_cast<size_t>(n)]);
    for (int64_t i = 0; i < n; ++i) x[i] = draw.real();
    a.x = x.get(); a.out = out.get(); a.out_numel = n;
    scnn::local_response_norm(a);
    // element (b, c, i) of the (N, C, HW) tensor in memory
    auto at = [&](int64_t b, int64_t c, int64_t i) { return a.channels_last ? (b * a.hw + i) * a.c + c : (b * a.c + c) * a.hw + i; };
    for (int64_t b = 0; b < a.n; ++b)
      for (int64_t c = 0; c < a.c; ++c)
        for (int64_t i = 0; i < a.hw; ++i) {
          double s = 0;
          for (int64_t cc = std::max<int64_t>(0, c - a.size / 2); cc <= std::min(a.c - 1, c + (a.size - 1) / 2); ++cc) {
            const double v = x[at(b, cc, i)];
            s += v * v;
          }
          const double want = x[at(b, c, i)] / std::pow(a.k + a.alpha / a.size * s, a.beta);
          bad += std::fabs(out[at(b, c, i)] - want) > 1e-5 * (1 + std::fabs(want));
        }
  }
  check(bad == 0, std::string("random LRN on ") + isa);
}

int main() {
  for (const char* isa : {"avx512", "avx2", "portable"}) {
    if (!scnn::isa_supported(isa)) {
      std::printf("skip %s: not supported by this CPU\n", isa);
      continue;
    }
    scnn::set_isa(isa);
    test_conv_random(isa);
    test_lanes_many_nonzeros(isa);
    test_linear_random(isa);
    test_max_pool_random(isa);
    test_lrn(isa);
  }
  scnn::set_isa("auto");
  test_bad_input();
  test_nonfinite();
  test_stream();
  const int passed = g_checks - g_failures;
  std::printf("%d passed, %d failed\n", passed, g_failures);
  return g_failures ? 1 : 0;
}
