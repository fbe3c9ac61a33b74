// A small persistent thread pool for the kernels. The core is not built against PyTorch, so
// it cannot use ATen's pool; spinning up std::threads per call would cost tens of
// microseconds, more than a whole sparse layer takes at batch 1. Workers spin briefly after a
// job before sleeping, so back-to-back layers start without a wake-up.
#pragma once
#include <cstdint>
#include <functional>

namespace scnn {

// Runs fn(0..ntasks-1) on up to `threads` threads (the caller included), tasks handed out
// dynamically. If another thread is already using the pool (several Python threads calling at
// once), the call runs its tasks on the calling thread instead of waiting. The first exception
// thrown by a task is rethrown in the caller after all tasks have stopped.
void parallel_for(int64_t ntasks, int threads, const std::function<void(int64_t)>& fn);

}  // namespace scnn
