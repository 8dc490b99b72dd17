// The 3-channel, 16-pixel-wide patch interleave (the ViT RGB case) with explicit AVX-512 permutes: a patch row
// of C = 3 planes' 16-element runs becomes one channel-last run of 48 elements (gather) and back (scatter).
// GCC's own vectorisation of the strided loop does this with many narrow shuffles; two vpermt2ps (fp32) or
// one vpermt2w (16-bit) per 64-byte output stays close to load/store speed. Callers take it only when
// avx512_path() (simd_path.h) says so; interleave_avx2.h does the same with AVX2.
#pragma once

#include <cstdint>

#include "simd_path.h"
#include "streaming_stores.h"

namespace fastmae_native {

#if defined(FASTMAE_AVX512_PATH)

// Permute indices, built once. Element k of a channel-last row is pixel j = k / 3 of channel c = k % 3.
struct InterleaveTables {
  // fp32 gather, output vector v: step 1 takes channels 0, 1 from (r0, r1), step 2 channel 2 from r2
  alignas(64) int32_t gather_a[3][16], gather_b[3][16];
  // fp32 scatter, channel c: step 1 takes row elements < 32 from (p0, p1), step 2 the rest from p2
  alignas(64) int32_t scatter_a[3][16], scatter_b[3][16];
  // 16-bit gather: (r0 | r1, r2) -> output halves 0 (32 lanes) and 1 (16 lanes); scatter: channel c
  alignas(64) int16_t gather16[2][32], scatter16[3][32];

  InterleaveTables() {
    for (int v = 0; v < 3; ++v)
      for (int q = 0; q < 16; ++q) {
        const int k = 16 * v + q, j = k / 3, c = k % 3;
        gather_a[v][q] = c == 0 ? j : 16 + j;  // lanes of channel 2 are replaced in step 2
        gather_b[v][q] = c == 2 ? 16 + j : q;
      }
    for (int c = 0; c < 3; ++c)
      for (int j = 0; j < 16; ++j) {
        const int k = 3 * j + c;
        scatter_a[c][j] = k < 32 ? k : 0;
        scatter_b[c][j] = k < 32 ? j : 16 + (k - 32);
      }
    for (int h = 0; h < 2; ++h)
      for (int q = 0; q < 32; ++q) {
        const int k = 32 * h + q, j = (k / 3) & 15, c = k % 3;  // lanes past 47 are not stored
        gather16[h][q] = static_cast<int16_t>(16 * c + j);
      }
    for (int c = 0; c < 3; ++c)
      for (int j = 0; j < 32; ++j) scatter16[c][j] = static_cast<int16_t>(j < 16 ? 3 * j + c : 0);
  }
};

inline const InterleaveTables& interleave_tables() {
  static const InterleaveTables tables;
  return tables;
}

// 32-bit elements: three 16-element runs -> 48 interleaved elements (192 bytes: 64-byte aligned outputs stay
// aligned row after row).
template <bool kStream>
FASTMAE_AVX512_TARGET inline void interleave3x16_avx512(const uint32_t* r0, const uint32_t* r1, const uint32_t* r2,
                                                        uint32_t* out) {
  const InterleaveTables& t = interleave_tables();
  const __m512i a = _mm512_loadu_si512(r0), b = _mm512_loadu_si512(r1), c = _mm512_loadu_si512(r2);
  for (int v = 0; v < 3; ++v) {
    const __m512i ab = _mm512_permutex2var_epi32(a, _mm512_load_si512(t.gather_a[v]), b);
    store_out<kStream>(out + 16 * v, _mm512_permutex2var_epi32(ab, _mm512_load_si512(t.gather_b[v]), c));
  }
}

// 16-bit elements: the same, one permute per output part. A 96-byte row is 64-byte aligned every other row,
// so the streaming version stores 32-byte parts (aligned when the output is).
template <bool kStream>
FASTMAE_AVX512_TARGET inline void interleave3x16_avx512(const uint16_t* r0, const uint16_t* r1, const uint16_t* r2,
                                                        uint16_t* out) {
  const InterleaveTables& t = interleave_tables();
  const __m512i ab = _mm512_inserti64x4(
      _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(r0))),
      _mm256_loadu_si256(reinterpret_cast<const __m256i*>(r1)), 1);
  const __m512i c = _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(r2)));
  const __m512i head = _mm512_permutex2var_epi16(ab, _mm512_load_si512(t.gather16[0]), c);
  const __m256i tail = _mm512_castsi512_si256(_mm512_permutex2var_epi16(ab, _mm512_load_si512(t.gather16[1]), c));
  auto* o = reinterpret_cast<__m256i*>(out);
  if constexpr (kStream) {
    store_out<true>(o, _mm512_castsi512_si256(head));
    store_out<true>(o + 1, _mm512_extracti64x4_epi64(head, 1));
    store_out<true>(o + 2, tail);
  } else {
    _mm512_storeu_si512(out, head);
    _mm256_storeu_si256(o + 2, tail);
  }
}

// Channel c's 16-element run out of a 48-element channel-last row, -0.0 turned into +0.0 (see
// positive_zero in patchify_gather.cpp), stored with a streaming store when `run` is aligned: the scatter
// writes a whole image it does not read again, so skipping the read-for-ownership halves its DRAM traffic.
FASTMAE_AVX512_TARGET inline void deinterleave3x16_avx512(const uint32_t* row, int c, uint32_t* run) {
  const InterleaveTables& t = interleave_tables();
  const __m512i p0 = _mm512_loadu_si512(row), p1 = _mm512_loadu_si512(row + 16), p2 = _mm512_loadu_si512(row + 32);
  const __m512i lo = _mm512_permutex2var_epi32(p0, _mm512_load_si512(t.scatter_a[c]), p1);
  __m512i v = _mm512_permutex2var_epi32(lo, _mm512_load_si512(t.scatter_b[c]), p2);
  v = _mm512_mask_mov_epi32(v, _mm512_cmpeq_epi32_mask(v, _mm512_set1_epi32(INT32_MIN)), _mm512_setzero_si512());
  if ((reinterpret_cast<uintptr_t>(run) & 63) == 0) {
    _mm512_stream_si512(reinterpret_cast<__m512i*>(run), v);
  } else {
    _mm512_storeu_si512(run, v);
  }
}

FASTMAE_AVX512_TARGET inline void deinterleave3x16_avx512(const uint16_t* row, int c, uint16_t* run) {
  const InterleaveTables& t = interleave_tables();
  const __m512i p01 = _mm512_loadu_si512(row);
  const __m512i p2 = _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 32)));
  __m512i v = _mm512_permutex2var_epi16(p01, _mm512_load_si512(t.scatter16[c]), p2);
  v = _mm512_mask_mov_epi16(v, _mm512_cmpeq_epi16_mask(v, _mm512_set1_epi16(INT16_MIN)), _mm512_setzero_si512());
  const __m256i half = _mm512_castsi512_si256(v);
  if ((reinterpret_cast<uintptr_t>(run) & 31) == 0) {
    _mm256_stream_si256(reinterpret_cast<__m256i*>(run), half);
  } else {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(run), half);
  }
}

// Zeros for a removed patch's 16-element run, streamed like the runs around it.
template <typename Bits>
FASTMAE_AVX512_TARGET inline void zero_run16_avx512(Bits* run) {
  constexpr uintptr_t kBytes = 16 * sizeof(Bits);
  if constexpr (kBytes == 64) {
    if ((reinterpret_cast<uintptr_t>(run) & 63) == 0) return _mm512_stream_si512(reinterpret_cast<__m512i*>(run), _mm512_setzero_si512());
    return _mm512_storeu_si512(run, _mm512_setzero_si512());
  } else {
    if ((reinterpret_cast<uintptr_t>(run) & 31) == 0) return _mm256_stream_si256(reinterpret_cast<__m256i*>(run), _mm256_setzero_si256());
    return _mm256_storeu_si256(reinterpret_cast<__m256i*>(run), _mm256_setzero_si256());
  }
}

#endif

}  // namespace fastmae_native
