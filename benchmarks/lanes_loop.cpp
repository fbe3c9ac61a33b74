// The batch-lanes FMA loop alone (the loop of kernels/sparse_conv_batch.hpp, lanes_accumulate) on a
// real pruned layer: one thread, one group's output channels, tiles of R x P output pixels over a
// padded W-image layout (W = 16 when built for AVX-512, else 8 with AVX2), each nonzero's offset
// read three nonzeros ahead as in the kernel (built with -DLANES_LOOP_TABLE: looked up from its
// column in a column -> offset table instead, as the kernel did before). No layout, no epilogue: G FMA/s (W-lane FMAs) of the loop for several
// tile shapes, in three settings:
//   real  -- the layer's nonzeros;
//   twice -- every nonzero run twice in a row (the same lines, twice the FMAs): the second copy
//            hits the L1, so (2/twice - 1/real) is the cost of one FMA from the L1, and the rest
//            of 1/real is the wait for lines from the L2;
//   L1    -- every nonzero moved to input channel 0 (the tile's input stays in the L1).
// "lines/FMA" is the number of distinct 64-byte input lines per FMA if the L1 keeps the lines of
// one (output channel, input channel) pair and nothing longer: what each shape must fetch.
//
//   .venv/bin/python -m zipfile -e ../shared/data/pruned/caffenet_l1_acc56.3.npz /tmp/caffenet &&
//   g++ -O3 -march=native -std=c++17 benchmarks/lanes_loop.cpp -o /tmp/lanes_loop &&
//   /tmp/lanes_loop /tmp/caffenet/conv3 13 1 1     # prefix of the .npy files, map size, padding, groups
//   /tmp/lanes_loop /tmp/caffenet/conv2 27 2 2
//   (on a CPU without AVX-512, -march=native builds the AVX2 loop with its own tile shapes)
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <set>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace {

#if defined(__AVX512F__)
constexpr int W = 16;
using Vec = __m512;
inline Vec vzero() { return _mm512_setzero_ps(); }
inline Vec vbcast(float x) { return _mm512_set1_ps(x); }
inline Vec vload(const float* p) { return _mm512_load_ps(p); }
inline void vstore(float* p, Vec v) { _mm512_store_ps(p, v); }
inline Vec vfma(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
#else
constexpr int W = 8;
using Vec = __m256;
inline Vec vzero() { return _mm256_setzero_ps(); }
inline Vec vbcast(float x) { return _mm256_set1_ps(x); }
inline Vec vload(const float* p) { return _mm256_load_ps(p); }
inline void vstore(float* p, Vec v) { _mm256_store_ps(p, v); }
inline Vec vfma(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
#endif

// The raw data of a little-endian version-1 .npy file (its header skipped; T must match its dtype).
template <class T>
std::vector<T> read_npy(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) throw std::runtime_error("cannot open " + path);
  char magic[8];
  uint16_t hlen = 0;
  if (std::fread(magic, 1, 8, f) != 8 || std::memcmp(magic, "\x93NUMPY", 6) != 0 || magic[6] != 1 ||
      std::fread(&hlen, 2, 1, f) != 1)
    throw std::runtime_error(path + ": not a version-1 .npy file");
  std::fseek(f, 0, SEEK_END);
  const long end = std::ftell(f), start = 10 + hlen;
  std::fseek(f, start, SEEK_SET);
  std::vector<T> v(static_cast<size_t>(end - start) / sizeof(T));
  if (std::fread(v.data(), sizeof(T), v.size(), f) != v.size()) throw std::runtime_error(path + ": short read");
  std::fclose(f);
  return v;
}

struct Layer {
  int64_t out, cin, kh, kw;  // one group: out = output channels of group 0
  std::vector<int32_t> ptr, col;
  std::vector<float> val;
};

Layer load(const std::string& prefix, int groups) {
  Layer l;
  const auto shape = read_npy<int64_t>(prefix + ".shape.npy");
  l.out = shape.at(0) / groups, l.cin = shape.at(1), l.kh = shape.at(2), l.kw = shape.at(3);
  l.ptr = read_npy<int32_t>(prefix + ".indptr.npy");
  l.ptr.resize(static_cast<size_t>(l.out + 1));
  l.col = read_npy<int32_t>(prefix + ".indices.npy");
  l.val = read_npy<float>(prefix + ".values.npy");
  l.col.resize(static_cast<size_t>(l.ptr.back()));
  l.val.resize(l.col.size());
  return l;
}

// Every nonzero twice (mode 1) or moved to input channel 0 (mode 2).
Layer variant(const Layer& l, int mode) {
  Layer v = l;
  if (mode == 1) {
    v.col.clear(), v.val.clear(), v.ptr.assign(1, 0);
    for (int64_t m = 0; m < l.out; ++m) {
      for (int32_t j = l.ptr[m]; j < l.ptr[m + 1]; ++j)
        for (int t = 0; t < 2; ++t) v.col.push_back(l.col[j]), v.val.push_back(l.val[j]);
      v.ptr.push_back(static_cast<int32_t>(v.col.size()));
    }
  } else if (mode == 2) {
    for (auto& c : v.col) c %= static_cast<int32_t>(l.kh * l.kw);
  }
  return v;
}

double lines_per_fma(const Layer& l, int R, int P) {
  double lines = 0, fmas = 0;
  for (int64_t m = 0; m < l.out; ++m) {
    std::set<std::pair<int64_t, int64_t>> seen;
    int64_t c_prev = -1;
    for (int32_t j = l.ptr[m]; j < l.ptr[m + 1]; ++j) {
      const int64_t c = l.col[j] / (l.kh * l.kw), r = l.col[j] / l.kw % l.kh, s = l.col[j] % l.kw;
      if (c != c_prev) lines += static_cast<double>(seen.size()), seen.clear(), c_prev = c;
      for (int a = 0; a < R; ++a)
        for (int b = 0; b < P; ++b) seen.emplace(r + a, (s + b) * W / 16);  // 16 floats a line
      fmas += R * P;
    }
    lines += static_cast<double>(seen.size());
  }
  return lines / fmas;
}

// G FMA/s of the loop over all tiles of an H x H map (best of `reps` sweeps).
template <int R, int P>
double loop_rate(const Layer& l, int64_t H, int64_t pad, int reps) {
  const int64_t rows = H + 2 * pad, pitch = H + 2 * pad, plane = rows * pitch * W;
  const int64_t oh = rows - l.kh + 1, ow = pitch - l.kw + 1;
  float* lay = static_cast<float*>(std::aligned_alloc(64, static_cast<size_t>(l.cin * plane) * 4));
  for (int64_t i = 0; i < l.cin * plane; ++i) lay[i] = 1e-3f * static_cast<float>(i % 7);
  std::vector<int32_t> table(static_cast<size_t>(l.cin * l.kh * l.kw));  // column -> offset into the layout
  for (int64_t c = 0; c < l.cin; ++c)
    for (int64_t r = 0; r < l.kh; ++r)
      for (int64_t s = 0; s < l.kw; ++s)
        table[static_cast<size_t>((c * l.kh + r) * l.kw + s)] = static_cast<int32_t>(c * plane + (r * pitch + s) * W);
  std::vector<int32_t> off(l.col.size());  // per nonzero, as conv_lanes.cpp's lanes_offsets
  std::vector<uint16_t> col16(l.col.size());
  for (size_t j = 0; j < l.col.size(); ++j) off[j] = table[static_cast<size_t>(l.col[j])], col16[j] = static_cast<uint16_t>(l.col[j]);
  float* out = static_cast<float*>(std::aligned_alloc(64, static_cast<size_t>(R * P * W) * 4));
  const int64_t rs = pitch * W;
  double best = 1e30;
  for (int rep = 0; rep < reps; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    double fmas = 0;
    for (int64_t oy = 0; oy + R <= oh; oy += R)
      for (int64_t ox = 0; ox + P <= ow; ox += P)
        for (int64_t m = 0; m < l.out; ++m) {
          Vec acc[R * P];
#pragma GCC unroll 32
          for (int i = 0; i < R * P; ++i) acc[i] = vzero();
          const float* base = lay + (oy * pitch + ox) * W;
          const int32_t j0 = l.ptr[m], j1 = l.ptr[m + 1];
#ifdef LANES_LOOP_TABLE
          auto at = [&](int32_t j) { return table[col16[static_cast<size_t>(j)]]; };
#else
          auto at = [&](int32_t j) { return off[static_cast<size_t>(j)]; };
#endif
          int32_t next = j0 < j1 ? at(j0) : 0, next2 = j0 + 1 < j1 ? at(j0 + 1) : 0, next3 = j0 + 2 < j1 ? at(j0 + 2) : 0;
          for (int32_t j = j0; j < j1; ++j) {
            const Vec w = vbcast(l.val[j]);
            const float* p = base + next;
            next = next2;
            next2 = next3;
            if (j + 3 < j1) next3 = at(j + 3);
#pragma GCC unroll 4
            for (int r = 0; r < R; ++r) {
              const float* q = p + r * rs;
#pragma GCC unroll 32
              for (int i = 0; i < P; ++i) acc[r * P + i] = vfma(w, vload(q + i * W), acc[r * P + i]);
            }
          }
#pragma GCC unroll 32
          for (int i = 0; i < R * P; ++i) vstore(out + i * W, acc[i]);
          fmas += static_cast<double>(j1 - j0) * R * P;
        }
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / fmas);
  }
  std::free(lay);
  std::free(out);
  return 1e-9 / best;
}

template <int R, int P>
void row(const Layer& l, int64_t H, int64_t pad) {
  if (R > H + 2 * pad - l.kh + 1 || P > H + 2 * pad - l.kw + 1) return;
  const double real = loop_rate<R, P>(l, H, pad, 5), twice = loop_rate<R, P>(variant(l, 1), H, pad, 5),
               l1 = loop_rate<R, P>(variant(l, 2), H, pad, 5);
  const double l1_ns = 2 / twice - 1 / real, wait = 1 - l1_ns * real;
  std::printf("%2d x %-2d  %9.3f  %6.2f  %6.2f  %6.2f  %13.2f  %11.0f %%\n", R, P, lines_per_fma(l, R, P), real, twice,
              l1, 1 / l1_ns, 100 * wait);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s PREFIX [H=13] [PAD=1] [GROUPS=1]\n", argv[0]);
    return 2;
  }
  const int64_t H = argc > 2 ? std::atoll(argv[2]) : 13, pad = argc > 3 ? std::atoll(argv[3]) : 1;
  const Layer l = load(argv[1], argc > 4 ? std::atoi(argv[4]) : 1);
  std::printf("%s: %lld output channels (group 0), %lld x %lld x %lld, %zu nonzeros, %lldx%lld map, one thread\n",
              argv[1], static_cast<long long>(l.out), static_cast<long long>(l.cin), static_cast<long long>(l.kh),
              static_cast<long long>(l.kw), l.col.size(), static_cast<long long>(H), static_cast<long long>(H));
  std::printf("%d-lane vectors\ntile     lines/FMA    real   twice      L1  L1 FMA G/s  wait for L2\n", W);
  if (W == 16) {  // shapes of up to 28 accumulators (of 32 zmm registers)
    row<1, 13>(l, H, pad);
    row<2, 13>(l, H, pad);
    row<3, 9>(l, H, pad);
    row<4, 7>(l, H, pad);
    row<1, 27>(l, H, pad);
    row<2, 14>(l, H, pad);
  } else {  // up to 14 (of 16 ymm registers)
    row<1, 7>(l, H, pad);
    row<2, 6>(l, H, pad);
    row<1, 9>(l, H, pad);
    row<1, 12>(l, H, pad);
    row<1, 13>(l, H, pad);
    row<2, 7>(l, H, pad);
    row<1, 14>(l, H, pad);
    row<3, 4>(l, H, pad);
  }
  return 0;
}
