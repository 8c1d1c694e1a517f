// Hot loops are compiled for AVX-512 (x86-64-v4), AVX2+FMA (x86-64-v3) and the baseline, and
// the loader picks the best one for the CPU at hand (GCC function multi-versioning). A wheel
// thus stays portable while getting the ~5-10x that wider vectors give the exp-heavy loops.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define VPP_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define VPP_CPU_CLONES
#endif
