// CPU unshuffle_with_mask_token and its backward.
//
// forward: x_vis (B,1+K,d), mask_token (1,1,d), ids_restore (B,L), pos_embed (1,1+L,d) or None -> (B,1+L,d)
//   row 0 = x_vis[b,0]; row 1+l = x_vis[b,1+ids_restore[b,l]] if that id < K, else mask_token.to(x_vis.dtype);
//   then + pos_embed[0,row]. Output dtype: promote(x_vis, pos_embed) (x_vis's without pos_embed).
//   Each element is computed as the reference's add is: both operands in the output's opmath type
//   (float for half/bf16), one rounding to the output dtype, so the result is bitwise the reference's.
// backward: grad_out -> grad_x_vis (a pure scatter, bitwise), grad_mask_token (sum over masked rows of all
//   samples) and grad_pos_embed (sum over the batch), both accumulated in float32 in a fixed order.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/List.h>
#include <c10/core/ScalarType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <cstring>
#include <optional>
#include <type_traits>
#include <vector>

#include "../geometry.h"
#include "simd_path.h"
#include "output_cache.h"
#include "lanes.h"
#include "streaming_stores.h"

namespace fastmae_native {
namespace {

constexpr int64_t kRowsPerTask = 8;  // backward: rows per task; fixes the float32 summation order

// The backward sums one row r of a group of up to kSamplesPerGroup samples into a single addend per sum:
// pos_embed's adds the group's rows pairwise ((g0 + g1) + (g2 + g3)), mask_token's adds the masked ones in
// sample order (((g0 + g1) + g2) + g3). Summing a group in registers first divides the traffic to the float32
// accumulator (1+L by d: in L2, not L1, at ViT-B) by the group size. The portable loop and the AVX2 and AVX-512
// bodies associate the adds the same way, so all give the same bits.
constexpr int kSamplesPerGroup = 4;

enum class Order { kPairwise, kSequential };

// *sum = the group's sum of v[0..N) in kOrder. V is float or a SIMD register, add(&z, x, y) sets z = x + y
// (through pointers and references: no vector passes by value through this untargeted template).
template <int N, Order kOrder, typename V, typename Add>
[[gnu::always_inline]] inline void group_sum(const V* v, V* sum, Add add) {
  static_assert(N >= 1 && N <= 4);
  if constexpr (N == 1) {
    *sum = v[0];
  } else if constexpr (N == 4 && kOrder == Order::kPairwise) {
    V low, high;
    add(&low, v[0], v[1]);
    add(&high, v[2], v[3]);
    add(sum, low, high);
  } else {
    add(sum, v[0], v[1]);
    for (int i = 2; i < N; ++i) add(sum, *sum, v[i]);
  }
}

// add_rows' SIMD body for one ISA (register VEC of LANES floats; LOAD widens LANES row elements to it):
// columns [0, LANES * floor(width / LANES)) with group_sum's association; returns the first column it left.
// Stamped once per ISA, as the RGB16 kernels are, so that the intrinsics inline into code of their target.
#define FASTMAE_ADD_ROWS_KERNEL(ISA, TARGET, VEC, LANES, LOAD, ADD, LOADU, STOREU)                      \
  struct Add_##ISA {                                                                                   \
    TARGET void operator()(VEC* z, const VEC& x, const VEC& y) const { *z = ADD(x, y); }              \
  };                                                                                                   \
  template <int N, Order kOrder, typename GT>                                                          \
  TARGET int64_t add_rows_##ISA(const GT* const* rows, float* acc, int64_t width) {                   \
    int64_t j = 0;                                                                                     \
    for (; j + LANES <= width; j += LANES) {                                                           \
      VEC v[N];                                                                                        \
      for (int i = 0; i < N; ++i) v[i] = LOAD(rows[i] + j);                                            \
      VEC sum;                                                                                         \
      group_sum<N, kOrder>(v, &sum, Add_##ISA{});                                                      \
      STOREU(acc + j, ADD(LOADU(acc + j), sum));                                                       \
    }                                                                                                  \
    return j;                                                                                          \
  }

#if defined(FASTMAE_AVX2_PATH)
// add_round_bf16_avx512 with AVX2, 16 elements at a time. Interleaving zeros below the bf16 values widens
// them to float32 in a lane order (0-3 and 8-11, then 4-7 and 12-15) that the saturating pack undoes, so no
// cross-lane step is needed; NaN sums take the quiet upper half, as store_as does.
template <bool kStream>
FASTMAE_AVX2_TARGET void add_round_bf16_avx2(const c10::BFloat16* src, const c10::BFloat16* pos, c10::BFloat16* dst,
                                             int64_t n) {
  const __m256i zero = _mm256_setzero_si256(), one = _mm256_set1_epi32(1), bias = _mm256_set1_epi32(0x7FFF);
  const __m256i quiet = _mm256_set1_epi32(0x40);
  auto round = [&](__m256 sum) FASTMAE_AVX2_TARGET {
    const __m256i bits = _mm256_castps_si256(sum);
    const __m256i upper = _mm256_srli_epi32(bits, 16);
    const __m256i rounded =
        _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(bits, bias), _mm256_and_si256(upper, one)), 16);
    const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(sum, sum, _CMP_UNORD_Q));
    return _mm256_blendv_epi8(rounded, _mm256_or_si256(upper, quiet), nan);
  };
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + j));
    const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(pos + j));
    const __m256 low = _mm256_add_ps(_mm256_castsi256_ps(_mm256_unpacklo_epi16(zero, a)),
                                     _mm256_castsi256_ps(_mm256_unpacklo_epi16(zero, b)));
    const __m256 high = _mm256_add_ps(_mm256_castsi256_ps(_mm256_unpackhi_epi16(zero, a)),
                                      _mm256_castsi256_ps(_mm256_unpackhi_epi16(zero, b)));
    store_out<kStream>(dst + j, _mm256_packus_epi32(round(low), round(high)));
  }
  for (; j < n; ++j) dst[j] = store_as<c10::BFloat16>(load_as<float>(src[j]) + load_as<float>(pos[j]));
}
#endif

#if defined(FASTMAE_AVX512_PATH)
// dst[j] = bf16(float(src[j]) + float(pos[j])) for bf16 rows, 16 lanes at a time: the add and the integer
// round-to-nearest-even of store_as (NaN kept NaN, quiet, sign and upper payload kept), so bitwise the
// portable loop's results. (vcvtneps2bf16 would round in one instruction but flushes subnormals.)
FASTMAE_AVX512_TARGET inline __m512i widen_bf16(const c10::BFloat16* p) {  // 16 bf16 -> their float32 bits
  return _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16);
}

template <bool kStream>
FASTMAE_AVX512_TARGET void add_round_bf16_avx512(const c10::BFloat16* src, const c10::BFloat16* pos, c10::BFloat16* dst,
                                                 int64_t n) {
  const __m512i one = _mm512_set1_epi32(1), bias = _mm512_set1_epi32(0x7FFF);
  const __m512i magnitude = _mm512_set1_epi32(0x7FFFFFFF), inf = _mm512_set1_epi32(0x7F800000);
  const __m512i quiet = _mm512_set1_epi32(0x40);
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    const __m512i bits = _mm512_castps_si512(
        _mm512_add_ps(_mm512_castsi512_ps(widen_bf16(src + j)), _mm512_castsi512_ps(widen_bf16(pos + j))));
    const __m512i upper = _mm512_srli_epi32(bits, 16);
    const __m512i rounded =
        _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(bits, bias), _mm512_and_si512(upper, one)), 16);
    const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(bits, magnitude), inf);
    const __m512i out = _mm512_mask_mov_epi32(rounded, nan, _mm512_or_si512(upper, quiet));
    store_out<kStream>(dst + j, _mm512_cvtepi32_epi16(out));
  }
  for (; j < n; ++j) dst[j] = store_as<c10::BFloat16>(load_as<float>(src[j]) + load_as<float>(pos[j]));
}

FASTMAE_AVX512_TARGET inline __m512 load16_as_float(const float* p) { return _mm512_loadu_ps(p); }
FASTMAE_AVX512_TARGET inline __m512 load16_as_float(const c10::BFloat16* p) {
  return _mm512_castsi512_ps(widen_bf16(p));
}

FASTMAE_ADD_ROWS_KERNEL(avx512, FASTMAE_AVX512_TARGET, __m512, 16, load16_as_float, _mm512_add_ps, _mm512_loadu_ps,
                        _mm512_storeu_ps)
#endif

#if defined(FASTMAE_AVX2_PATH)
FASTMAE_AVX2_TARGET inline __m256 load8_as_float(const float* p) { return _mm256_loadu_ps(p); }
FASTMAE_AVX2_TARGET inline __m256 load8_as_float(const c10::BFloat16* p) {
  const __m128i bits = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(bits), 16));
}

FASTMAE_ADD_ROWS_KERNEL(avx2, FASTMAE_AVX2_TARGET, __m256, 8, load8_as_float, _mm256_add_ps, _mm256_loadu_ps,
                        _mm256_storeu_ps)
#endif
#undef FASTMAE_ADD_ROWS_KERNEL

// acc[j] += the group_sum of rows[0..N)[j] for j < width.
template <int N, Order kOrder, typename GT>
[[gnu::always_inline]] inline void add_rows(const GT* const* rows, float* acc, int64_t width) {
  int64_t j = 0;
#if defined(FASTMAE_AVX512_PATH)
  if constexpr (std::is_same_v<GT, float> || std::is_same_v<GT, c10::BFloat16>) {
    if (avx512_path()) j = add_rows_avx512<N, kOrder>(rows, acc, width);
  }
#endif
#if defined(FASTMAE_AVX2_PATH)
  if constexpr (std::is_same_v<GT, float> || std::is_same_v<GT, c10::BFloat16>) {
    if (j == 0 && avx2_path()) j = add_rows_avx2<N, kOrder>(rows, acc, width);  // AVX-512 did none
  }
#endif
  const auto add = [](float* z, float x, float y) { *z = x + y; };
#pragma GCC ivdep  // acc is a float32 accumulator, never one of the rows: no dependence between columns
  for (; j < width; ++j) {
    float v[N];
    for (int i = 0; i < N; ++i) v[i] = load_as<float>(rows[i][j]);
    float sum;
    group_sum<N, kOrder>(v, &sum, add);
    acc[j] += sum;
  }
}

template <Order kOrder, typename GT>
[[gnu::always_inline]] inline void add_rows(const GT* const* rows, int n, float* acc, int64_t width) {
  switch (n) {
    case 4: return add_rows<4, kOrder>(rows, acc, width);
    case 3: return add_rows<3, kOrder>(rows, acc, width);
    case 2: return add_rows<2, kOrder>(rows, acc, width);
    case 1: return add_rows<1, kOrder>(rows, acc, width);
    default: return;
  }
}

// Output rows [begin, end) of (B, 1+L) (one parallel task); `stream`: the bf16 add's SIMD bodies stream
// their stores (stream_output and can_stream_rows hold).
template <typename XT, typename OT>
FASTMAE_ISA_CLONES void unshuffle_row_range(const XT* x_data, const XT* token_data, const int64_t* id,
                                            const OT* pos_data, OT* out_data, int64_t length, int64_t visible,
                                            int64_t width, bool stream, int64_t begin, int64_t end) {
  using Op = at::opmath_type<OT>;
  const int64_t rows = 1 + length;
  for (int64_t n = begin; n < end; ++n) {
    const int64_t b = n / rows, r = n % rows;
    const XT* src = token_data;
    if (r == 0) {
      src = x_data + b * (visible + 1) * width;
    } else if (const int64_t slot = id[b * length + r - 1]; slot < visible) {
      src = x_data + (b * (visible + 1) + 1 + slot) * width;
    }
    OT* dst = out_data + n * width;
    if (pos_data == nullptr) {
      if constexpr (std::is_same_v<XT, OT>) {
        std::memcpy(dst, src, width * sizeof(OT));
      } else {
        for (int64_t j = 0; j < width; ++j) dst[j] = static_cast<OT>(src[j]);
      }
    } else {
      const OT* pos_row = pos_data + r * width;
      if constexpr (std::is_same_v<XT, c10::BFloat16> && std::is_same_v<OT, c10::BFloat16>) {
#if defined(FASTMAE_AVX512_PATH)
        if (avx512_path()) {
          (stream ? add_round_bf16_avx512<true> : add_round_bf16_avx512<false>)(src, pos_row, dst, width);
          continue;
        }
#endif
#if defined(FASTMAE_AVX2_PATH)
        if (avx2_path()) {
          (stream ? add_round_bf16_avx2<true> : add_round_bf16_avx2<false>)(src, pos_row, dst, width);
          continue;
        }
#endif
      }
#pragma GCC ivdep  // the output is a fresh tensor: it overlaps neither input
      for (int64_t j = 0; j < width; ++j) {
        dst[j] = store_as<OT>(load_as<Op>(src[j]) + load_as<Op>(pos_row[j]));
      }
    }
  }
}

template <typename XT, typename OT>
void unshuffle_rows(const at::Tensor& x, const at::Tensor& token, const at::Tensor& ids, const at::Tensor* pos,
                    at::Tensor& out) {
  const int64_t batch = ids.size(0), length = ids.size(1), width = x.size(2);
  const XT* x_data = x.const_data_ptr<XT>();
  const XT* token_data = token.const_data_ptr<XT>();
  const int64_t* id = ids.const_data_ptr<int64_t>();
  const OT* pos_data = pos != nullptr ? pos->const_data_ptr<OT>() : nullptr;
  OT* out_data = out.mutable_data_ptr<OT>();
  // the decoder input, streamed when large: the bf16 add with pos_embed (the ViT decoder's case) has the path
  const bool stream = std::is_same_v<XT, c10::BFloat16> && std::is_same_v<OT, c10::BFloat16> &&
                      pos_data != nullptr && can_stream_rows(width * sizeof(OT)) &&
                      stream_output(out_data, out.nbytes());
  at::parallel_for(0, batch * (1 + length), std::max<int64_t>(1, 16384 / std::max<int64_t>(width, 1)),
                   [&](int64_t begin, int64_t end) {
    unshuffle_row_range<XT, OT>(x_data, token_data, id, pos_data, out_data, length, x.size(1) - 1, width, stream,
                                begin, end);
    fence_streaming_stores(stream);
  });
}

void check_unshuffle_inputs(const at::Tensor& x_vis, const at::Tensor& mask_token, const at::Tensor& ids_restore,
                            const std::optional<at::Tensor>& pos_embed) {
  TORCH_CHECK_VALUE(x_vis.dim() == 3, "x_vis must have shape (B, 1+K, d), got ", x_vis.sizes());
  check_float_dtype(x_vis, "x_vis");
  check_float_dtype(mask_token, "mask_token");
  const int64_t batch = x_vis.size(0), width = x_vis.size(2);
  check_ids(ids_restore, batch, x_vis, "ids_restore");
  const int64_t length = ids_restore.size(1);
  TORCH_CHECK_VALUE(x_vis.size(1) >= 1 && x_vis.size(1) <= 1 + length, "x_vis must hold the cls row plus K <= L = ",
                    length, " tokens, got ", x_vis.size(1), " rows");
  TORCH_CHECK_VALUE(mask_token.numel() == width && mask_token.dim() == 3, "mask_token must have shape (1, 1, ",
                    width, "), got ", mask_token.sizes());
  TORCH_CHECK_VALUE(mask_token.device() == x_vis.device(), "mask_token must be on ", x_vis.device());
  if (pos_embed.has_value()) {
    check_float_dtype(*pos_embed, "pos_embed");
    TORCH_CHECK_VALUE(pos_embed->dim() == 3 && pos_embed->size(0) == 1 && pos_embed->size(1) == 1 + length &&
                          pos_embed->size(2) == width,
                      "pos_embed must have shape (1, ", 1 + length, ", ", width, "), got ", pos_embed->sizes());
    TORCH_CHECK_VALUE(pos_embed->device() == x_vis.device(), "pos_embed must be on ", x_vis.device());
  }
}

at::Tensor unshuffle_with_mask_token_cpu(const at::Tensor& x_vis, const at::Tensor& mask_token,
                                         const at::Tensor& ids_restore, const std::optional<at::Tensor>& pos_embed) {
  check_unshuffle_inputs(x_vis, mask_token, ids_restore, pos_embed);
  const at::Tensor ids = ids_restore.contiguous();
  check_distinct_rows_cpu(ids, ids.size(1), "ids_restore");
  const auto out_dtype =
      pos_embed.has_value() ? c10::promoteTypes(x_vis.scalar_type(), pos_embed->scalar_type()) : x_vis.scalar_type();
  const at::Tensor x = x_vis.contiguous();
  // the reference casts the mask token to x_vis's dtype before anything else (d elements)
  const at::Tensor token = mask_token.to(x_vis.scalar_type()).contiguous();
  std::optional<at::Tensor> pos;
  if (pos_embed.has_value()) pos = pos_embed->to(out_dtype).contiguous();  // exact: out_dtype >= pos dtype
  at::Tensor out = new_cpu_output({x.size(0), 1 + ids.size(1), x.size(2)}, x.options().dtype(out_dtype));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out_dtype, "unshuffle_out", [&] {
    using OT = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "unshuffle_x", [&] {
      unshuffle_rows<scalar_t, OT>(x, token, ids, pos ? &*pos : nullptr, out);
    });
  });
  return out;
}

// Row r of sample b: grad_x_vis's row for a kept (or cls) row, a copy of grad_out's (streamed when `stream`);
// returns whether the row is a mask token's (no grad_x_vis row).
template <typename GT, typename XT>
[[gnu::always_inline]] inline bool scatter_row(const GT* g_row, const int64_t* id, XT* gx, bool stream, int64_t b,
                                               int64_t r, int64_t length, int64_t visible, int64_t width) {
  const int64_t slot = r == 0 ? -1 : id[b * length + r - 1];
  if (r > 0 && slot >= visible) return true;
  if (gx != nullptr) {
    XT* dst = gx + (b * (visible + 1) + (r == 0 ? 0 : 1 + slot)) * width;
    if constexpr (std::is_same_v<GT, XT>) {
      copy_row(dst, g_row, width * sizeof(XT), stream);
    } else {
      for (int64_t j = 0; j < width; ++j) dst[j] = static_cast<XT>(g_row[j]);
    }
  }
  return false;
}

// Rows [r0, r1) of the n samples from b0: the grad_x_vis rows, the pos_embed sums (all n rows) and the
// mask-token sums (the masked ones).
template <typename GT, typename XT>
[[gnu::always_inline]] inline void backward_group(const GT* g, const int64_t* id, XT* gx, bool stream, float* mask_acc,
                                                  float* pos_sum, int64_t b0, int n, int64_t r0, int64_t r1,
                                                  int64_t rows, int64_t width, int64_t visible) {
  for (int64_t r = r0; r < r1; ++r) {
    const GT* g_rows[kSamplesPerGroup];
    const GT* masked_rows[kSamplesPerGroup];
    int masked = 0;
    for (int i = 0; i < n; ++i) {
      g_rows[i] = g + ((b0 + i) * rows + r) * width;
      if (scatter_row(g_rows[i], id, gx, stream, b0 + i, r, rows - 1, visible, width)) masked_rows[masked++] = g_rows[i];
    }
    if (mask_acc != nullptr) add_rows<Order::kSequential>(masked_rows, masked, mask_acc, width);
    if (pos_sum != nullptr) add_rows<Order::kPairwise>(g_rows, n, pos_sum + r * width, width);
  }
}

// Backward row tasks [begin, end) of kRowsPerTask rows each, over every sample (one parallel task). Samples
// go in groups of kSamplesPerGroup, group-major, so grad_out is read in memory order (N streams at once)
// and each sum adds the groups in ascending order: a fixed order for any thread count.
template <typename GT, typename XT>
FASTMAE_ISA_CLONES void unshuffle_backward_tasks(const GT* g, const int64_t* id, XT* gx, bool stream, float* mask_partials,
                                                 float* pos_sum, int64_t batch, int64_t rows, int64_t width,
                                                 int64_t visible, int64_t begin, int64_t end) {
  for (int64_t b0 = 0; b0 < batch; b0 += kSamplesPerGroup) {
    const int group = static_cast<int>(std::min<int64_t>(kSamplesPerGroup, batch - b0));
    for (int64_t task = begin; task < end; ++task) {
      const int64_t r0 = task * kRowsPerTask, r1 = std::min(rows, r0 + kRowsPerTask);
      float* mask_acc = mask_partials != nullptr ? mask_partials + task * width : nullptr;
      backward_group(g, id, gx, stream, mask_acc, pos_sum, b0, group, r0, r1, rows, width, visible);
    }
  }
}

template <typename GT, typename XT>
void unshuffle_backward_rows(const at::Tensor& grad, const at::Tensor& ids, int64_t visible, at::Tensor* grad_x,
                             float* mask_partials, float* pos_sum) {
  const int64_t batch = grad.size(0), rows = grad.size(1), width = grad.size(2);
  const GT* g = grad.const_data_ptr<GT>();
  const int64_t* id = ids.const_data_ptr<int64_t>();
  XT* gx = grad_x != nullptr ? grad_x->mutable_data_ptr<XT>() : nullptr;
  const int64_t tasks = (rows + kRowsPerTask - 1) / kRowsPerTask;
  // small problems stay on one thread: waking the pool costs more than they take
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(1, batch * kRowsPerTask * width));
  // grad_x_vis goes to the decoder embedding's matrix products, not read here: streamed when large
  const bool stream = gx != nullptr && std::is_same_v<GT, XT> && can_stream_rows(width * sizeof(XT)) &&
                      stream_output(gx, grad_x->nbytes());
  at::parallel_for(0, tasks, grain, [&](int64_t begin, int64_t end) {
    unshuffle_backward_tasks<GT, XT>(g, id, gx, stream, mask_partials, pos_sum, batch, rows, width, visible, begin,
                                     end);
    fence_streaming_stores(stream);
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> unshuffle_with_mask_token_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& ids_restore, int64_t num_visible, at::ScalarType x_vis_dtype,
    at::ScalarType mask_token_dtype, std::optional<at::ScalarType> pos_embed_dtype, const c10::List<bool>& needs_grad_raw) {
  TORCH_CHECK_VALUE(grad_out.dim() == 3, "grad_out must have shape (B, 1+L, d), got ", grad_out.sizes());
  check_float_dtype(grad_out, "grad_out");
  check_ids(ids_restore, grad_out.size(0), grad_out, "ids_restore");
  TORCH_CHECK_VALUE(ids_restore.size(1) + 1 == grad_out.size(1), "grad_out must have 1 + L = ",
                    ids_restore.size(1) + 1, " rows, got ", grad_out.size(1));
  TORCH_CHECK_VALUE(num_visible >= 0 && num_visible <= ids_restore.size(1), "num_visible must be in [0, L], got ",
                    num_visible);
  TORCH_CHECK_VALUE(needs_grad_raw.size() == 3, "needs_grad must have 3 entries, got ", needs_grad_raw.size());
  const bool need_x = needs_grad_raw.get(0), need_mask = needs_grad_raw.get(1);
  const bool need_pos = needs_grad_raw.get(2) && pos_embed_dtype.has_value();
  const at::Tensor ids = ids_restore.contiguous();
  check_distinct_rows_cpu(ids, ids.size(1), "ids_restore");
  const at::Tensor grad = grad_out.contiguous();  // the gradient of a .sum() arrives with stride 0
  const int64_t batch = grad.size(0), rows = grad.size(1), width = grad.size(2);
  const at::Tensor empty = at::empty({0}, grad.options());
  at::Tensor grad_x = need_x ? new_cpu_output({batch, 1 + num_visible, width}, grad.options().dtype(x_vis_dtype))
                             : at::empty({0}, grad.options());  // fresh: op outputs must not alias
  const int64_t tasks = (rows + kRowsPerTask - 1) / kRowsPerTask;
  const auto f32 = grad.options().dtype(at::kFloat);
  at::Tensor mask_partials = need_mask ? at::zeros({tasks, width}, f32) : empty;
  at::Tensor pos_sum = need_pos ? at::zeros({rows, width}, f32) : empty;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "unshuffle_bwd_grad", [&] {
    using GT = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x_vis_dtype, "unshuffle_bwd_x", [&] {
      unshuffle_backward_rows<GT, scalar_t>(grad, ids, num_visible, need_x ? &grad_x : nullptr,
                                            need_mask ? mask_partials.mutable_data_ptr<float>() : nullptr,
                                            need_pos ? pos_sum.mutable_data_ptr<float>() : nullptr);
    });
  });
  at::Tensor grad_mask = need_mask ? mask_partials.sum(0).to(mask_token_dtype).view({1, 1, width})
                                 : at::empty({0}, grad.options());
  at::Tensor grad_pos = need_pos ? pos_sum.to(*pos_embed_dtype).unsqueeze(0) : at::empty({0}, grad.options());
  return {grad_x, grad_mask, grad_pos};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastmae_kernels, CPU, m) {
  m.impl("unshuffle_with_mask_token", &unshuffle_with_mask_token_cpu);
  m.impl("unshuffle_with_mask_token_backward", &unshuffle_with_mask_token_backward_cpu);
}

}  // namespace fastmae_native
