// Time of the batch-lanes input layout alone (kernels/sparse_conv_batch.hpp, lanes_layout): one
// block of 16 images, C channels of H x H, padding 1, stride 1, one thread, the variant the core
// picks (SPARSECNN_ISA forces one). Prints the median over the repeats and the time per channel;
// a per-channel time that stays the same when C is small enough for the L1 means the layout is
// bound by its own instructions, not by memory.
//
//   PATH=$PWD/.venv/bin:$PATH cmake -S . -B build/bench -G Ninja -DSPARSECNN_PYTHON=OFF >/dev/null &&
//   PATH=$PWD/.venv/bin:$PATH ninja -C build/bench scnn_core >/dev/null &&
//   g++ -O2 -std=c++17 -Icsrc benchmarks/lanes_layout.cpp build/bench/libscnn_core.a -lpthread -ldl -o /tmp/lanes_layout &&
//   /tmp/lanes_layout 384 13      # CaffeNet conv4's input; /tmp/lanes_layout 8 13 20000: L1-resident
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "isa/kernels.hpp"

int main(int argc, char** argv) {
  using namespace scnn;
  const IsaKernels& isa = isa_kernels();
  const int64_t W = isa.width, C = argc > 1 ? std::atoll(argv[1]) : 384, H = argc > 2 ? std::atoll(argv[2]) : 13;
  const int reps = argc > 3 ? std::atoi(argv[3]) : 200;
  const int64_t pad = 1, rows = H + 2 * pad, cols = H + 2 * pad, plane = rows * cols * W;
  std::vector<float> x(static_cast<size_t>(W * C * H * H));
  for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(i % 1000) * 1e-3f;
  std::vector<float> buf(static_cast<size_t>(C * plane + W));
  float* lay = buf.data() + ((64 - reinterpret_cast<uintptr_t>(buf.data()) % 64) % 64) / sizeof(float);
  std::vector<double> us;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int64_t c = 0; c < C; ++c) {
      LaneLayoutJob job{x.data() + c * H * H, x.data(), x.data() + x.size(), C * H * H, H, H, H, lay + c * plane,
                        rows, cols, pad, pad, 1, 1, 1, {0, -1, -1, -1}, {0, -1, -1, -1}, cols, plane};
      if (isa.lanes_layout(job)) std::printf("non-finite input?\n");
    }
    us.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(us.begin(), us.end());
  const double med = us[us.size() / 2];
  std::printf("%s, %ld images x %ld channels of %ldx%ld: layout %.1f us (median of %d), %.3f us per channel\n",
              isa.name, static_cast<long>(W), static_cast<long>(C), static_cast<long>(H), static_cast<long>(H), med,
              reps, med / static_cast<double>(C));
}
