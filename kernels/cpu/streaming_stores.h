// Streaming (non-temporal) stores for outputs a kernel writes once and does not read back: they write whole
// lines without first reading them (no read for ownership) and past the caches. Worth it for outputs larger
// than a core's L2, which leave the caches before their consumer reads them anyway; smaller outputs are
// stored through the cache, where the next op finds them.
#pragma once

#include <cstdint>
#include <cstring>

#include "simd_path.h"

namespace fastmae_native {

// The kernels with a streaming path take it for outputs from this size on.
constexpr int64_t kStreamMinBytes = int64_t(1) << 20;

// Whether an output of `bytes` at `data` is large enough to stream and 64-byte aligned (so are its rows when
// their size is a multiple of 64 bytes).
inline bool stream_output(const void* data, int64_t bytes) {
  return bytes >= kStreamMinBytes && reinterpret_cast<uintptr_t>(data) % 64 == 0;
}

// Streaming stores are weakly ordered: a parallel task that made them fences before it ends.
inline void fence_streaming_stores(bool streamed) {
#if defined(FASTMAE_AVX512_PATH) || defined(FASTMAE_AVX2_PATH)
  if (streamed) _mm_sfence();
#else
  (void)streamed;
#endif
}

// Stores v at p: streaming when kStream (then p is aligned to the register's size), else a plain unaligned
// store. The kernels' explicit SIMD bodies take kStream as a template argument.
#if defined(FASTMAE_AVX2_PATH)
template <bool kStream>
FASTMAE_AVX2_TARGET inline void store_out(void* p, __m256i v) {
  if constexpr (kStream) {
    _mm256_stream_si256(static_cast<__m256i*>(p), v);
  } else {
    _mm256_storeu_si256(static_cast<__m256i*>(p), v);
  }
}

FASTMAE_AVX2_TARGET inline void stream_copy_avx2(void* dst, const void* src, int64_t bytes) {
  auto* out = static_cast<__m256i*>(dst);
  const auto* in = static_cast<const __m256i*>(src);
  for (int64_t k = 0; k < bytes / 32; ++k) store_out<true>(out + k, _mm256_loadu_si256(in + k));
}
#endif
#if defined(FASTMAE_AVX512_PATH)
template <bool kStream>
FASTMAE_AVX512_TARGET inline void store_out(void* p, __m512i v) {
  if constexpr (kStream) {
    _mm512_stream_si512(static_cast<__m512i*>(p), v);
  } else {
    _mm512_storeu_si512(p, v);
  }
}
#endif

// Whether copy_row can stream rows of `bytes`: a CPU with the AVX2 path (AVX-512 CPUs have it too) and
// rows of whole 32-byte parts.
inline bool can_stream_rows(int64_t bytes) {
#if defined(FASTMAE_AVX2_PATH)
  return avx2_path() && bytes % 32 == 0;
#else
  (void)bytes;
  return false;
#endif
}

// memcpy, or with streaming stores when `stream` (which only can_stream_rows(bytes) and a 32-byte aligned
// dst allow).
inline void copy_row(void* dst, const void* src, int64_t bytes, bool stream) {
#if defined(FASTMAE_AVX2_PATH)
  if (stream) return stream_copy_avx2(dst, src, bytes);
#endif
  std::memcpy(dst, src, bytes);
}

}  // namespace fastmae_native
