// The L1/L2/L3 roof of the batch-lanes FMA loop on this machine: FMA-with-load (one 64-byte
// vector per FMA, 13 accumulators, one thread) over a buffer of a given size, read sequentially
// and as runs of 13 consecutive vectors at random places (what one nonzero of a 13-wide tile
// reads). Prints G FMA/s (x 64 B = the bandwidth from that level), best of 5.
//
//   g++ -O3 -mavx512f -mfma benchmarks/l2_roof.cpp -o /tmp/l2_roof && /tmp/l2_roof
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

namespace {
constexpr int kRun = 13;  // vectors per run: one nonzero of a 13-pixel tile row

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}
}  // namespace

int main() {
  const size_t sizes_kb[] = {24, 256, 640, 960, 4096};
  float sink = 0;
  std::mt19937 rng(1);
  for (size_t kb : sizes_kb) {
    const size_t n = kb * 1024 / sizeof(float), lines = n / 16;
    float* buf = static_cast<float*>(std::aligned_alloc(64, n * sizeof(float)));
    for (size_t i = 0; i < n; ++i) buf[i] = 1e-3f * static_cast<float>(i % 7);
    std::vector<uint32_t> starts(1 << 16);
    for (auto& s : starts) s = static_cast<uint32_t>(rng() % (lines - kRun) * 16);
    __m512 acc[kRun];
    for (auto& a : acc) a = _mm512_setzero_ps();
    const __m512 w = _mm512_set1_ps(1.0001f);
    double seq = 1e9, runs = 1e9;
    for (int rep = 0; rep < 5; ++rep) {
      auto t0 = std::chrono::steady_clock::now();
      size_t fmas = 0;
      for (size_t sweep = 0; sweep < 200000000 / n + 1; ++sweep)
        for (size_t i = 0; i + kRun * 16 <= n; i += kRun * 16, fmas += kRun)
          for (int p = 0; p < kRun; ++p) acc[p] = _mm512_fmadd_ps(w, _mm512_load_ps(buf + i + p * 16), acc[p]);
      seq = std::min(seq, seconds_since(t0) / static_cast<double>(fmas));
      t0 = std::chrono::steady_clock::now();
      fmas = 0;
      for (int sweep = 0; sweep < 40; ++sweep)
        for (uint32_t s : starts) {
          for (int p = 0; p < kRun; ++p) acc[p] = _mm512_fmadd_ps(w, _mm512_load_ps(buf + s + p * 16), acc[p]);
          fmas += kRun;
        }
      runs = std::min(runs, seconds_since(t0) / static_cast<double>(fmas));
    }
    alignas(64) float lanes[16];
    for (auto& a : acc) {
      _mm512_store_ps(lanes, a);
      sink += lanes[0];
    }
    std::printf("%5zu KB: sequential %.2f G FMA/s, runs of %d vectors at random places %.2f G FMA/s\n", kb,
                1e-9 / seq, kRun, 1e-9 / runs);
    std::free(buf);
  }
  return sink == 12345.f;  // keeps the loops
}
