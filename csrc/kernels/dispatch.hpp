// Dispatch tables of the micro-kernels: Entry<V, A, B>::fn for A = 1..4 (images or output rows
// per tile) x B = 1..16 (vectors or pixels per row), nullptr where a pair is not instantiated.
// Included by each ISA translation unit before the kernels.
#pragma once

#define SCNN_KERNEL_ROW(E, V, A)                                                                       \
  {                                                                                                    \
    E<V, A, 1>::fn, E<V, A, 2>::fn, E<V, A, 3>::fn, E<V, A, 4>::fn, E<V, A, 5>::fn, E<V, A, 6>::fn,    \
        E<V, A, 7>::fn, E<V, A, 8>::fn, E<V, A, 9>::fn, E<V, A, 10>::fn, E<V, A, 11>::fn,              \
        E<V, A, 12>::fn, E<V, A, 13>::fn, E<V, A, 14>::fn, E<V, A, 15>::fn, E<V, A, 16>::fn             \
  }
#define SCNN_KERNEL_TABLE(E, V) \
  { SCNN_KERNEL_ROW(E, V, 1), SCNN_KERNEL_ROW(E, V, 2), SCNN_KERNEL_ROW(E, V, 3), SCNN_KERNEL_ROW(E, V, 4) }
