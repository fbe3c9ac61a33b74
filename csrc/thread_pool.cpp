#include "thread_pool.hpp"

#include <dlfcn.h>
#include <link.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>
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

// The OpenMP runtime already loaded in the process (torch's libgomp, or Intel's libiomp5, which
// exports the same GOMP entry points), found at run time: nothing is linked against it. When
// torch is loaded its OpenMP workers keep spinning for milliseconds after each torch op; a
// thread of our own would then share a core with a spinning worker and every layer between
// torch ops would wait on it. Running on those same workers instead, as ATen's own parallel_for
// does, removes the contention. SPARSECNN_THREADS=pool forces the built-in pool.
using GompParallel = void (*)(void (*)(void*), void*, unsigned, unsigned);

int find_openmp(struct dl_phdr_info* info, size_t, void* out) {
  const char* name = info->dlpi_name;
  if (name && (std::strstr(name, "libgomp") || std::strstr(name, "libiomp5"))) {
    *static_cast<std::string*>(out) = name;
    return 1;
  }
  return 0;
}

GompParallel host_openmp() {
  static const GompParallel fn = []() -> GompParallel {
    const char* env = std::getenv("SPARSECNN_THREADS");
    if (env && std::string(env) == "pool") return nullptr;
    std::string path;
    dl_iterate_phdr(find_openmp, &path);
    if (path.empty()) return nullptr;
    void* h = dlopen(path.c_str(), RTLD_NOW | RTLD_NOLOAD);  // already loaded: no new mapping
    if (!h) return nullptr;
    return reinterpret_cast<GompParallel>(dlsym(h, "GOMP_parallel"));
  }();
  return fn;
}

void run_job(void* p) { static_cast<Job*>(p)->work(); }

}  // namespace

const char* threading_backend() { return host_openmp() ? "openmp" : "pool"; }

void parallel_for(int64_t ntasks, int threads, const std::function<void(int64_t)>& fn) {
  if (ntasks <= 0) return;
  if (threads > 256) threads = 256;
  if (threads > ntasks) threads = static_cast<int>(ntasks);
  if (threads <= 1) {
    for (int64_t i = 0; i < ntasks; ++i) fn(i);
    return;
  }
  if (GompParallel omp = host_openmp()) {
    // Every team thread pulls tasks from the job; exceptions are caught inside (they must not
    // cross the OpenMP runtime) and rethrown here.
    Job job;
    job.fn = &fn;
    job.ntasks = ntasks;
    omp(run_job, &job, static_cast<unsigned>(threads), 0);
    if (job.error) std::rethrow_exception(job.error);
    return;
  }
  Pool& p = pool();
  if (!p.try_begin()) {
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
