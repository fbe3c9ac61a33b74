// Threads for the kernels. When the process has an OpenMP runtime loaded (torch's libgomp), the
// work runs on its threads, found at run time (the core is not built against PyTorch or
// OpenMP): torch's workers spin for milliseconds after each torch op, and a second set of
// threads would fight them for the cores. Otherwise (the C++ tests, a process without torch)
// a small persistent pool of our own; spinning up std::threads per call would cost tens of
// microseconds, more than a whole sparse layer takes at batch 1. Its workers spin briefly after
// a job before sleeping, so back-to-back layers start without a wake-up.
#pragma once
#include <cstdint>
#include <functional>

namespace scnn {

// Runs fn(0..ntasks-1) on up to `threads` threads (the caller included), tasks handed out
// dynamically. If another thread is already using our pool (several Python threads calling at
// once), the call runs its tasks on the calling thread instead of waiting (OpenMP gives each
// caller its own team). The first exception
// thrown by a task is rethrown in the caller after all tasks have stopped.
void parallel_for(int64_t ntasks, int threads, const std::function<void(int64_t)>& fn);

// "openmp" when parallel_for runs on the process's OpenMP runtime (torch's), else "pool".
const char* threading_backend();

}  // namespace scnn
