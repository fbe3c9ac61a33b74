// Core-to-core round trip, for the machine probe: two threads pinned to two CPUs pass one cache
// line back and forth. 80-150 ns: the cores share a core complex (an L3); 400 ns and more: they
// do not, and every line one core writes and the other reads crosses between complexes (what
// the kernels' local schedules avoid, docs/kernel.md "Where the layout lives").
#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "core.hpp"

namespace scnn {
namespace {

bool pin(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  return pthread_setaffinity_np(pthread_self(), sizeof set, &set) == 0;
}

}  // namespace

double core_round_trip_ns(int cpu_a, int cpu_b, int64_t rounds) {
  if (rounds < 1 || rounds > 100000000) throw std::invalid_argument("core_round_trip_ns: rounds must be in [1, 1e8]");
  if (cpu_a == cpu_b) throw std::invalid_argument("core_round_trip_ns: the two CPUs must differ");
  cpu_set_t allowed;
  CPU_ZERO(&allowed);
  if (sched_getaffinity(0, sizeof allowed, &allowed) != 0) throw std::runtime_error("core_round_trip_ns: sched_getaffinity failed");
  for (int c : {cpu_a, cpu_b})
    if (c < 0 || c >= CPU_SETSIZE || !CPU_ISSET(c, &allowed))
      throw std::invalid_argument("core_round_trip_ns: CPU " + std::to_string(c) + " is not one this process may run on");

  alignas(64) std::atomic<int64_t> flag{0};
  std::atomic<int> pinned{0};
  std::atomic<bool> stop{false};
  std::thread other([&] {
    pinned.store(pin(cpu_b) ? 1 : -1);
    if (pinned.load() < 0) return;
    for (int64_t i = 0; i < rounds; ++i) {
      while (flag.load(std::memory_order_acquire) != 2 * i + 1)
        if (stop.load(std::memory_order_relaxed)) return;
      flag.store(2 * i + 2, std::memory_order_release);
    }
  });
  while (pinned.load() == 0) std::this_thread::yield();
  // pin this thread for the measurement, then give it back its mask
  cpu_set_t mine;
  CPU_ZERO(&mine);
  pthread_getaffinity_np(pthread_self(), sizeof mine, &mine);
  if (pinned.load() < 0 || !pin(cpu_a)) {
    stop.store(true);
    other.join();
    pthread_setaffinity_np(pthread_self(), sizeof mine, &mine);
    throw std::runtime_error("core_round_trip_ns: could not pin a thread");
  }
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < rounds; ++i) {
    flag.store(2 * i + 1, std::memory_order_release);
    while (flag.load(std::memory_order_acquire) != 2 * i + 2) {
    }
  }
  const auto t1 = std::chrono::steady_clock::now();
  other.join();
  pthread_setaffinity_np(pthread_self(), sizeof mine, &mine);
  return std::chrono::duration<double, std::nano>(t1 - t0).count() / static_cast<double>(rounds);
}

}  // namespace scnn
