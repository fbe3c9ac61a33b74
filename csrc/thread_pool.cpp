#include "thread_pool.hpp"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define SCNN_PAUSE() _mm_pause()
#else
#define SCNN_PAUSE() ((void)0)
#endif

namespace scnn {
namespace {

class Pool {
 public:
  ~Pool() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_ = true;
      generation_.fetch_add(1);
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
  }

  bool try_begin() { return submit_.try_lock(); }
  void end() { submit_.unlock(); }

  // Called with submit_ held.
  void run(int64_t ntasks, int threads, const std::function<void(int64_t)>& fn) {
    const int helpers = threads - 1;
    while (static_cast<int>(workers_.size()) < helpers) {
      const int id = static_cast<int>(workers_.size());
      // The worker must start from the generation *before* this job is posted, or it could
      // miss the job and leave the caller waiting.
      const uint64_t gen = generation_.load(std::memory_order_acquire);
      workers_.emplace_back([this, id, gen] { loop(id, gen); });
    }
    fn_ = &fn;
    ntasks_ = ntasks;
    next_.store(0);
    error_ = nullptr;
    active_helpers_ = helpers;
    pending_.store(helpers);
    {
      std::lock_guard<std::mutex> lk(mu_);
      generation_.fetch_add(1, std::memory_order_release);
    }
    cv_.notify_all();
    work();
    // Wait for the helpers; they finish within one task of the queue running dry.
    while (pending_.load(std::memory_order_acquire) > 0) SCNN_PAUSE();
    fn_ = nullptr;
    if (error_) std::rethrow_exception(error_);
  }

 private:
  void work() {
    for (;;) {
      const int64_t i = next_.fetch_add(1, std::memory_order_relaxed);
      if (i >= ntasks_) break;
      try {
        (*fn_)(i);
      } catch (...) {
        std::lock_guard<std::mutex> lk(err_mu_);
        if (!error_) error_ = std::current_exception();
        next_.store(ntasks_);  // stop handing out tasks
      }
    }
  }

  void loop(int id, uint64_t seen) {
    for (;;) {
      // Spin for a while (tens of microseconds) before blocking on the condition variable.
      uint64_t g = seen;
      for (int spin = 0; spin < 20000; ++spin) {
        g = generation_.load(std::memory_order_acquire);
        if (g != seen) break;
        SCNN_PAUSE();
      }
      if (g == seen) {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [&] { return generation_.load(std::memory_order_acquire) != seen; });
        g = generation_.load(std::memory_order_acquire);
      }
      seen = g;
      if (stop_) return;
      if (id < active_helpers_) {
        work();
        pending_.fetch_sub(1, std::memory_order_release);
      }
    }
  }

  std::mutex submit_;
  std::mutex mu_;
  std::mutex err_mu_;
  std::condition_variable cv_;
  std::vector<std::thread> workers_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int64_t> next_{0};
  std::atomic<int> pending_{0};
  const std::function<void(int64_t)>* fn_ = nullptr;
  int64_t ntasks_ = 0;
  int active_helpers_ = 0;
  std::exception_ptr error_;
  bool stop_ = false;
};

Pool& pool() {
  // Leaked on purpose: joining threads from a static destructor at interpreter exit can hang.
  static Pool* p = new Pool();
  return *p;
}

}  // namespace

void parallel_for(int64_t ntasks, int threads, const std::function<void(int64_t)>& fn) {
  if (ntasks <= 0) return;
  if (threads > 256) threads = 256;
  if (threads > ntasks) threads = static_cast<int>(ntasks);
  Pool& p = pool();
  if (threads <= 1 || !p.try_begin()) {
    for (int64_t i = 0; i < ntasks; ++i) fn(i);
    return;
  }
  try {
    p.run(ntasks, threads, fn);
  } catch (...) {
    p.end();
    throw;
  }
  p.end();
}

}  // namespace scnn
