// Loop helpers the compiler turns into SIMD code on any ISA it targets (SSE2 by default, AVX2/AVX-512 with
// FASTMAE_NATIVE_MARCH or through FASTMAE_ISA_CLONES): conversions of one element to and from the accumulation
// type written as plain integer arithmetic (no calls, so loops over them vectorise), and a lane-blocked sum.
#pragma once

// FASTMAE_ISA_CLONES on a hot loop's function: GCC compiles it for AVX-512, AVX2 and the baseline and picks
// one when the library loads (an ifunc resolver), so a portable build still runs wide SIMD where the CPU has
// it. The helpers it calls must be inlined into each clone (else they run the baseline code): they are
// marked always_inline. Off when the whole library targets one ISA
// (FASTMAE_NATIVE_MARCH) or with CMake's FASTMAE_NATIVE_DISPATCH=OFF, and on compilers/platforms without ifuncs.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && \
    !defined(FASTMAE_NO_ISA_CLONES)
#define FASTMAE_ISA_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define FASTMAE_ISA_CLONES
#endif

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

namespace fastmae_native {

// float for every storage type but double (fp16/bf16/fp32 rows accumulate in float32).
template <typename T>
using acc_type_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

template <typename A, typename T>
[[gnu::always_inline]] inline A load_as(T v) {
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    const uint32_t bits = static_cast<uint32_t>(v.x) << 16;  // exact: bf16 is float32's upper half
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return static_cast<A>(f);
  } else {
    return static_cast<A>(v);
  }
}

template <typename T, typename A>
[[gnu::always_inline]] inline T store_as(A v) {
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    // round to nearest even, NaN kept NaN (quiet, sign kept), as c10::BFloat16(float) does
    const float f = static_cast<float>(v);
    uint32_t bits;
    std::memcpy(&bits, &f, sizeof bits);
    const uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
    const bool nan = (bits & 0x7FFFFFFFu) > 0x7F800000u;
    T out;
    out.x = static_cast<uint16_t>(nan ? ((bits >> 16) | 0x0040u) : rounded);
    return out;
  } else {
    return static_cast<T>(v);
  }
}

// sum_{d < n} f(d) with kLanes independent partial sums (a SIMD register's worth or two), combined pairwise at
// the end: vectorisable without reassociation flags, and more accurate than one running sum.
template <typename A, typename F>
[[gnu::always_inline]] inline A lane_sum(int64_t n, F&& f) {
  constexpr int kLanes = 16;
  A acc[kLanes] = {};
  int64_t d = 0;
  for (; d + kLanes <= n; d += kLanes) {
    for (int k = 0; k < kLanes; ++k) acc[k] += f(d + k);
  }
  for (int k = 0; d < n; ++d, ++k) acc[k] += f(d);
  for (int width = kLanes / 2; width > 0; width /= 2) {
    for (int k = 0; k < width; ++k) acc[k] += acc[k + width];
  }
  return acc[0];
}

}  // namespace fastmae_native
