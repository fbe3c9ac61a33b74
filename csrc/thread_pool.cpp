#include "thread_pool.hpp"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <memory>
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

// One parallel_for call. Helpers hold it by shared_ptr, so a helper that wakes late never
// touches a job that has ended (or the next one).
struct Job {
  const std::function<void(int64_t)>* fn = nullptr;
  int64_t ntasks = 0;
  std::atomic<int64_t> next{0};
  std::atomic<int> in_flight{0};  // helpers that joined and have not left
  std::mutex err_mu;
  std::exception_ptr error;

  void work() {
    for (;;) {
      const int64_t i = next.fetch_add(1, std::memory_order_relaxed);
      if (i >= ntasks) break;
      try {
        (*fn)(i);
      } catch (...) {
        std::lock_guard<std::mutex> lk(err_mu);
        if (!error) error = std::current_exception();
        next.store(ntasks);  // stop handing out tasks
      }
    }
  }
};

class Pool {
 public:
  bool try_begin() { return submit_.try_lock(); }
  void end() { submit_.unlock(); }

  // Called with submit_ held.
  void run(int64_t ntasks, int threads, const std::function<void(int64_t)>& fn) {
    const int helpers = threads - 1;
    while (static_cast<int>(workers_.size()) < helpers) {
      const int id = static_cast<int>(workers_.size());
      // Start from the generation before this job is posted, so the job is not missed.
      const uint64_t gen = generation_.load(std::memory_order_acquire);
      workers_.emplace_back([this, id, gen] { loop(id, gen); });
    }
    auto job = std::make_shared<Job>();
    job->fn = &fn;
    job->ntasks = ntasks;
    {
      std::lock_guard<std::mutex> lk(mu_);
      current_ = job;
      active_helpers_ = helpers;
      generation_.fetch_add(1, std::memory_order_release);
    }
    cv_.notify_all();
    job->work();
    // Retire the job, then wait only for helpers that joined it. A helper the OS has not
    // scheduled yet (on 2 cores torch's OpenMP threads often hold the other core for a while)
    // is not waited for: the caller has already done its share of the work.
    {
      std::lock_guard<std::mutex> lk(mu_);
      current_.reset();
    }
    while (job->in_flight.load(std::memory_order_acquire) > 0) SCNN_PAUSE();
    if (job->error) std::rethrow_exception(job->error);
  }

 private:
  void loop(int id, uint64_t seen) {
    for (;;) {
      // Spin briefly (back-to-back layers), then sleep on the condition variable.
      uint64_t g = seen;
      for (int spin = 0; spin < 4000; ++spin) {
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
      std::shared_ptr<Job> job;
      {
        std::lock_guard<std::mutex> lk(mu_);
        if (current_ && id < active_helpers_) {
          job = current_;
          job->in_flight.fetch_add(1, std::memory_order_acq_rel);
        }
      }
      if (job) {
        job->work();
        job->in_flight.fetch_sub(1, std::memory_order_acq_rel);
      }
    }
  }

  std::mutex submit_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::thread> workers_;
  std::atomic<uint64_t> generation_{0};
  std::shared_ptr<Job> current_;
  int active_helpers_ = 0;
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
