// Explicit AVX-512 code paths of the CPU kernels (permute interleaves, bf16 rounding) for the loops GCC's
// own vectorisation handles poorly. Functions of such a path carry FASTMAE_AVX512_TARGET and run only when
// avx512_path() says so: a portable build asks the CPU once (like FASTMAE_ISA_CLONES, and off with it), a
// -march build with AVX-512BW takes them always. Elsewhere (other ISAs, FASTMAE_NATIVE_DISPATCH=OFF)
// FASTMAE_AVX512_PATH is undefined and the callers keep their portable loops.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && (!defined(FASTMAE_NO_ISA_CLONES) || defined(__AVX512BW__))
#define FASTMAE_AVX512_PATH 1
#define FASTMAE_AVX512_TARGET __attribute__((target("avx512f,avx512bw")))
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

}  // namespace fastmae_native
