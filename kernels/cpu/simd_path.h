// Explicit SIMD code paths of the CPU kernels (permute interleaves, bf16 rounding) for the loops GCC's own
// vectorisation handles poorly: AVX-512 (F + BW) and AVX2. Functions of such a path carry
// FASTMAE_AVX512_TARGET or FASTMAE_AVX2_TARGET and run only when avx512_path() / avx2_path() say so: a
// portable build asks the CPU once (like FASTMAE_ISA_CLONES, and off with it), a -march build with the ISA
// takes them always. Elsewhere (other ISAs, FASTMAE_NATIVE_DISPATCH=OFF) the macros FASTMAE_AVX512_PATH and
// FASTMAE_AVX2_PATH are undefined and the callers keep their portable loops. Every path gives the portable
// loop's bits.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && (!defined(FASTMAE_NO_ISA_CLONES) || defined(__AVX512BW__))
#define FASTMAE_AVX512_PATH 1
#define FASTMAE_AVX512_TARGET __attribute__((target("avx512f,avx512bw")))
#endif
#if defined(__x86_64__) && defined(__GNUC__) && (!defined(FASTMAE_NO_ISA_CLONES) || defined(__AVX2__))
#define FASTMAE_AVX2_PATH 1
#define FASTMAE_AVX2_TARGET __attribute__((target("avx2")))
#endif
#if defined(FASTMAE_AVX512_PATH) || defined(FASTMAE_AVX2_PATH)
#include <immintrin.h>
#endif

namespace fastmae_native {

inline bool avx512_path() {
#if defined(__AVX512BW__)
  return true;
#elif defined(FASTMAE_AVX512_PATH)
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
  return has;
#else
  return false;
#endif
}

inline bool avx2_path() {
#if defined(__AVX2__)
  return true;
#elif defined(FASTMAE_AVX2_PATH)
  static const bool has = __builtin_cpu_supports("avx2");
  return has;
#else
  return false;
#endif
}

}  // namespace fastmae_native
