// The 3-channel, 16-pixel-wide patch interleave (the ViT RGB case) with AVX2, for CPUs without AVX-512: the
// same results as interleave_avx512.h, built from in-lane shuffles and blends.
//
// Eight pixels of three runs a, b, c interleave into o0 = a0 b0 c0 a1 b1 c1 a2 b2, o1 = c2 a3 b3 c3 a4 b4 c4 a5,
// o2 = b5 c5 a6 b6 c6 a7 b7 c7. Lane p of an output takes run p % 3 shifted: so each run is permuted once
// (a' = a[0 3 6 1 4 7 2 5], b' = b[5 0 3 6 1 4 7 2], c' = c[2 5 0 3 6 1 4 7]) and every output is two blends of
// a', b', c' (o0 takes b' at lanes 1 4 7 and c' at 2 5; o1 b' at 2 5, c' at 0 3 6; o2 b' at 0 3 6, c' at 1 4 7).
// The scatter runs it backwards: two blends give a', b' or c', one permute its run. 32-bit elements do eight
// pixels per register (vpermd); 16-bit ones sixteen, eight per 128-bit lane (vpshufb), then swap lanes.
// Callers take it only when avx2_path() (simd_path.h) says so.
#pragma once

#include <cstdint>

#include "simd_path.h"
#include "streaming_stores.h"

namespace fastmae_native {

#if defined(FASTMAE_AVX2_PATH)

// Blend immediates of run k' into an output (or out of one, in the scatter): the lanes p with p % 3 == s.
constexpr int kLanes0 = 0x49, kLanes1 = 0x92, kLanes2 = 0x24;  // p in {0, 3, 6}, {1, 4, 7}, {2, 5}

// 32-bit elements -------------------------------------------------------------------------------------

template <bool kStream>
FASTMAE_AVX2_TARGET inline void interleave3x8(const uint32_t* r0, const uint32_t* r1, const uint32_t* r2,
                                              uint32_t* out) {
  const __m256i a = _mm256_permutevar8x32_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(r0)),
                                                _mm256_setr_epi32(0, 3, 6, 1, 4, 7, 2, 5));
  const __m256i b = _mm256_permutevar8x32_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(r1)),
                                                _mm256_setr_epi32(5, 0, 3, 6, 1, 4, 7, 2));
  const __m256i c = _mm256_permutevar8x32_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(r2)),
                                                _mm256_setr_epi32(2, 5, 0, 3, 6, 1, 4, 7));
  __m256i* o = reinterpret_cast<__m256i*>(out);
  store_out<kStream>(o, _mm256_blend_epi32(_mm256_blend_epi32(a, b, kLanes1), c, kLanes2));
  store_out<kStream>(o + 1, _mm256_blend_epi32(_mm256_blend_epi32(a, b, kLanes2), c, kLanes0));
  store_out<kStream>(o + 2, _mm256_blend_epi32(_mm256_blend_epi32(a, b, kLanes0), c, kLanes1));
}

template <bool kStream>
FASTMAE_AVX2_TARGET inline void interleave3x16_avx2(const uint32_t* r0, const uint32_t* r1, const uint32_t* r2,
                                                    uint32_t* out) {
  interleave3x8<kStream>(r0, r1, r2, out);
  interleave3x8<kStream>(r0 + 8, r1 + 8, r2 + 8, out + 24);
}

// Stores v at run (32 bytes), -0.0 made +0.0 (positive_zero in patchify_gather.cpp); streaming when aligned:
// the scatter writes a whole image it does not read again.
FASTMAE_AVX2_TARGET inline void store_run_part(__m256i v, __m256i negative_zero, void* run) {
  v = _mm256_andnot_si256(_mm256_cmpeq_epi32(v, negative_zero), v);
  if ((reinterpret_cast<uintptr_t>(run) & 31) == 0) {
    _mm256_stream_si256(reinterpret_cast<__m256i*>(run), v);
  } else {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(run), v);
  }
}

// Channel c's 8 pixels out of the 24 interleaved elements at row.
FASTMAE_AVX2_TARGET inline __m256i deinterleave3x8(const uint32_t* row, int c) {
  const auto* p = reinterpret_cast<const __m256i*>(row);
  const __m256i o0 = _mm256_loadu_si256(p), o1 = _mm256_loadu_si256(p + 1), o2 = _mm256_loadu_si256(p + 2);
  switch (c) {
    case 0:
      return _mm256_permutevar8x32_epi32(_mm256_blend_epi32(_mm256_blend_epi32(o0, o1, kLanes1), o2, kLanes2),
                                         _mm256_setr_epi32(0, 3, 6, 1, 4, 7, 2, 5));
    case 1:
      return _mm256_permutevar8x32_epi32(_mm256_blend_epi32(_mm256_blend_epi32(o0, o1, kLanes2), o2, kLanes0),
                                         _mm256_setr_epi32(1, 4, 7, 2, 5, 0, 3, 6));
    default:
      return _mm256_permutevar8x32_epi32(_mm256_blend_epi32(_mm256_blend_epi32(o0, o1, kLanes0), o2, kLanes1),
                                         _mm256_setr_epi32(2, 5, 0, 3, 6, 1, 4, 7));
  }
}

FASTMAE_AVX2_TARGET inline void deinterleave3x16_avx2(const uint32_t* row, int c, uint32_t* run) {
  const __m256i negative_zero = _mm256_set1_epi32(INT32_MIN);
  store_run_part(deinterleave3x8(row, c), negative_zero, run);
  store_run_part(deinterleave3x8(row + 24, c), negative_zero, run + 8);
}

// 16-bit elements -------------------------------------------------------------------------------------

// vpshufb byte indices of the 16-bit permutes above (the same in both 128-bit lanes).
#define FASTMAE_SHUFFLE16(i0, i1, i2, i3, i4, i5, i6, i7)                                                   \
  _mm256_setr_epi8(2 * i0, 2 * i0 + 1, 2 * i1, 2 * i1 + 1, 2 * i2, 2 * i2 + 1, 2 * i3, 2 * i3 + 1, 2 * i4,  \
                   2 * i4 + 1, 2 * i5, 2 * i5 + 1, 2 * i6, 2 * i6 + 1, 2 * i7, 2 * i7 + 1, 2 * i0, 2 * i0 + 1, \
                   2 * i1, 2 * i1 + 1, 2 * i2, 2 * i2 + 1, 2 * i3, 2 * i3 + 1, 2 * i4, 2 * i4 + 1, 2 * i5,     \
                   2 * i5 + 1, 2 * i6, 2 * i6 + 1, 2 * i7, 2 * i7 + 1)

template <bool kStream>
FASTMAE_AVX2_TARGET inline void interleave3x16_avx2(const uint16_t* r0, const uint16_t* r1, const uint16_t* r2,
                                                    uint16_t* out) {
  // lane 0 holds pixels 0-7, lane 1 pixels 8-15: y_s = [o_s of pixels 0-7 | o_s of pixels 8-15]
  const __m256i a = _mm256_shuffle_epi8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(r0)),
                                        FASTMAE_SHUFFLE16(0, 3, 6, 1, 4, 7, 2, 5));
  const __m256i b = _mm256_shuffle_epi8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(r1)),
                                        FASTMAE_SHUFFLE16(5, 0, 3, 6, 1, 4, 7, 2));
  const __m256i c = _mm256_shuffle_epi8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(r2)),
                                        FASTMAE_SHUFFLE16(2, 5, 0, 3, 6, 1, 4, 7));
  const __m256i y0 = _mm256_blend_epi16(_mm256_blend_epi16(a, b, kLanes1), c, kLanes2);
  const __m256i y1 = _mm256_blend_epi16(_mm256_blend_epi16(a, b, kLanes2), c, kLanes0);
  const __m256i y2 = _mm256_blend_epi16(_mm256_blend_epi16(a, b, kLanes0), c, kLanes1);
  __m256i* o = reinterpret_cast<__m256i*>(out);  // o0 o1 | o2 o3 | o4 o5 (o3..o5: pixels 8-15)
  store_out<kStream>(o, _mm256_permute2x128_si256(y0, y1, 0x20));
  store_out<kStream>(o + 1, _mm256_permute2x128_si256(y2, y0, 0x30));
  store_out<kStream>(o + 2, _mm256_permute2x128_si256(y1, y2, 0x31));
}

FASTMAE_AVX2_TARGET inline void deinterleave3x16_avx2(const uint16_t* row, int c, uint16_t* run) {
  const auto* p = reinterpret_cast<const __m256i*>(row);
  const __m256i A = _mm256_loadu_si256(p), B = _mm256_loadu_si256(p + 1), C = _mm256_loadu_si256(p + 2);
  const __m256i y0 = _mm256_permute2x128_si256(A, B, 0x30);  // [o0 | o3]
  const __m256i y1 = _mm256_permute2x128_si256(A, C, 0x21);  // [o1 | o4]
  const __m256i y2 = _mm256_permute2x128_si256(B, C, 0x30);  // [o2 | o5]
  __m256i v;
  switch (c) {
    case 0:
      v = _mm256_shuffle_epi8(_mm256_blend_epi16(_mm256_blend_epi16(y0, y1, kLanes1), y2, kLanes2),
                              FASTMAE_SHUFFLE16(0, 3, 6, 1, 4, 7, 2, 5));
      break;
    case 1:
      v = _mm256_shuffle_epi8(_mm256_blend_epi16(_mm256_blend_epi16(y0, y1, kLanes2), y2, kLanes0),
                              FASTMAE_SHUFFLE16(1, 4, 7, 2, 5, 0, 3, 6));
      break;
    default:
      v = _mm256_shuffle_epi8(_mm256_blend_epi16(_mm256_blend_epi16(y0, y1, kLanes0), y2, kLanes1),
                              FASTMAE_SHUFFLE16(2, 5, 0, 3, 6, 1, 4, 7));
  }
  v = _mm256_andnot_si256(_mm256_cmpeq_epi16(v, _mm256_set1_epi16(INT16_MIN)), v);
  if ((reinterpret_cast<uintptr_t>(run) & 31) == 0) {
    _mm256_stream_si256(reinterpret_cast<__m256i*>(run), v);
  } else {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(run), v);
  }
}

#undef FASTMAE_SHUFFLE16

// Zeros for a removed patch's 16-element run, streamed like the runs around it.
template <typename Bits>
FASTMAE_AVX2_TARGET inline void zero_run16_avx2(Bits* run) {
  constexpr int kParts = 16 * sizeof(Bits) / 32;
  const bool aligned = (reinterpret_cast<uintptr_t>(run) & 31) == 0;
  for (int k = 0; k < kParts; ++k) {
    auto* part = reinterpret_cast<__m256i*>(run) + k;
    if (aligned) {
      _mm256_stream_si256(part, _mm256_setzero_si256());
    } else {
      _mm256_storeu_si256(part, _mm256_setzero_si256());
    }
  }
}

#endif

}  // namespace fastmae_native
