// Run-time choice of the kernel variant: the best the CPU supports, unless SPARSECNN_ISA
// (avx512 | avx2 | portable | auto) or set_isa() says otherwise.
#include <atomic>
#include <cstdlib>
#include <string>

#include "core.hpp"
#include "isa/kernels.hpp"

namespace scnn {
namespace {

bool cpu_has(const std::string& name) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (name == "avx512")
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("fma");
  if (name == "avx2") return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
  return name == "portable";
}

const IsaKernels* by_name(const std::string& name) {
  if (name == "avx512") return &kAvx512Kernels;
  if (name == "avx2") return &kAvx2Kernels;
  if (name == "portable") return &kPortableKernels;
  return nullptr;
}

const IsaKernels* choose(const std::string& requested) {
  if (requested.empty() || requested == "auto") {
    for (const char* n : {"avx512", "avx2", "portable"})
      if (cpu_has(n)) return by_name(n);
  }
  const IsaKernels* k = by_name(requested);
  if (!k)
    throw std::invalid_argument("unknown ISA '" + requested +
                                "' (expected avx512, avx2, portable or auto)");
  if (!cpu_has(requested))
    throw std::invalid_argument("ISA '" + requested + "' is not supported by this CPU");
  return k;
}

std::atomic<const IsaKernels*> g_active{nullptr};

}  // namespace

bool isa_supported(const std::string& name) { return by_name(name) && cpu_has(name); }

void set_isa(const std::string& name) {
  std::string n = name;
  if (n == "auto") {
    const char* env = std::getenv("SPARSECNN_ISA");
    n = env ? env : "auto";
  }
  g_active.store(choose(n));
}

const IsaKernels& isa_kernels() {
  const IsaKernels* k = g_active.load();
  if (!k) {
    const char* env = std::getenv("SPARSECNN_ISA");
    k = choose(env ? env : "auto");
    g_active.store(k);
  }
  return *k;
}

const char* active_isa() { return isa_kernels().name; }

}  // namespace scnn
