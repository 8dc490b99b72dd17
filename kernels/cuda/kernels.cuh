// CUDA kernels of the fastmae_native ops: pure device code, no torch headers, so that it can be
// compile-checked with nothing but nvcc (see docs/native.md). kernels/cuda/ops_cuda.cu launches them.
//
// Conventions: every offset that can pass 2^31 is int64; 16-byte vector loads/stores (uint4) are used
// where the host proved alignment (row lengths and base pointers multiple of 16 bytes), scalar code
// otherwise; reductions are per-row or per-row-block partials added in a fixed order (no float atomics),
// so results are deterministic.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace fastmae_cuda {

constexpr int kVecBytes = 16;

// ---------------------------------------------------------------------------------------------
// Scalar conversions (explicit intrinsics: torch builds with __CUDA_NO_HALF_CONVERSIONS__)
// ---------------------------------------------------------------------------------------------
template <typename T> struct OpMath { using type = float; };
template <> struct OpMath<double> { using type = double; };

__device__ __forceinline__ float to_op(float v) { return v; }
__device__ __forceinline__ double to_op(double v) { return v; }
__device__ __forceinline__ float to_op(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_op(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_op(float v);
template <typename T> __device__ __forceinline__ T from_op(double v);
template <> __device__ __forceinline__ float from_op<float>(float v) { return v; }
template <> __device__ __forceinline__ double from_op<double>(float v) { return v; }
template <> __device__ __forceinline__ __half from_op<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_op<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <> __device__ __forceinline__ float from_op<float>(double v) { return static_cast<float>(v); }
template <> __device__ __forceinline__ double from_op<double>(double v) { return v; }
template <> __device__ __forceinline__ __half from_op<__half>(double v) { return __double2half(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_op<__nv_bfloat16>(double v) {
  return __double2bfloat16(v);
}

// N consecutive elements moved as one aligned access (16 bytes when N * sizeof(T) == 16).
template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

template <typename T, int N>
__device__ __forceinline__ Pack<T, N> load_pack(const T* p) {
  return *reinterpret_cast<const Pack<T, N>*>(p);
}

template <typename T, int N>
__device__ __forceinline__ void store_pack(T* p, const Pack<T, N>& pack) {
  *reinterpret_cast<Pack<T, N>*>(p) = pack;
}

// ---------------------------------------------------------------------------------------------
// Patch geometry: image (B,C,H,W) = video (B,C,T,H,W) with T = pt = 1.
// Patch element d = ((t*ph + i)*pw + j)*C + c; patch l = (lt*gh + lh)*gw + lw.
// ---------------------------------------------------------------------------------------------
struct Geometry {
  int64_t chans, frames, height, width;
  int64_t pt, ph, pw;
  int64_t gt, gh, gw;

  __host__ __device__ int64_t num_patches() const { return gt * gh * gw; }
  __host__ __device__ int64_t patch_dim() const { return pt * ph * pw * chans; }
  __host__ __device__ int64_t channel_stride() const { return frames * height * width; }
  __host__ __device__ int64_t sample_stride() const { return chans * channel_stride(); }
  __host__ __device__ int64_t patch_origin(int64_t patch) const {
    const int64_t lw = patch % gw;
    const int64_t lh = (patch / gw) % gh;
    const int64_t lt = patch / (gw * gh);
    return (lt * pt * height + lh * ph) * width + lw * pw;
  }
  // offset of patch element d from the patch origin
  __host__ __device__ int64_t element_offset(int64_t d) const {
    const int64_t c = d % chans;
    const int64_t j = (d / chans) % pw;
    const int64_t i = (d / (chans * pw)) % ph;
    const int64_t t = d / (chans * pw * ph);
    return c * channel_stride() + (t * height + i) * width + j;
  }
};

// ---------------------------------------------------------------------------------------------
// patchify_gather: one block per visible patch (grid.x = B*K). The patch is staged in shared
// memory in source order (c, t, i, j), read with 16-byte row loads when VEC_ROWS, then written
// in channel-last order with 16-byte stores when VEC_OUT.
// ---------------------------------------------------------------------------------------------
template <typename T, bool VEC_ROWS, bool VEC_OUT>
__global__ void patchify_gather_kernel(const T* __restrict__ imgs, const int64_t* __restrict__ ids_keep,
                                       T* __restrict__ out, Geometry g, int64_t keep) {
  constexpr int V = kVecBytes / sizeof(T);
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* staged = reinterpret_cast<T*>(smem_raw);
  const int64_t n = blockIdx.x;
  const int64_t b = n / keep;
  const T* src = imgs + b * g.sample_stride() + g.patch_origin(ids_keep[n]);
  const int64_t rows = g.chans * g.pt * g.ph;  // source rows (c, t, i) of pw elements
  const int64_t per_row = VEC_ROWS ? g.pw / V : g.pw;
  for (int64_t v = threadIdx.x; v < rows * per_row; v += blockDim.x) {
    const int64_t q = v / per_row, j = (v % per_row) * (VEC_ROWS ? V : 1);
    const int64_t c = q / (g.pt * g.ph), ti = q % (g.pt * g.ph);
    const T* row = src + c * g.channel_stride() + ((ti / g.ph) * g.height + ti % g.ph) * g.width;
    if constexpr (VEC_ROWS) {
      store_pack<T, V>(staged + q * g.pw + j, load_pack<T, V>(row + j));
    } else {
      staged[q * g.pw + j] = row[j];
    }
  }
  __syncthreads();
  const int64_t dim = g.patch_dim();
  T* dst = out + n * dim;
  auto staged_index = [&](int64_t d) {  // channel-last d -> source-order index
    const int64_t c = d % g.chans, rest = d / g.chans;  // rest = (t*ph + i)*pw + j
    return c * g.pt * g.ph * g.pw + rest;
  };
  if constexpr (VEC_OUT) {
    for (int64_t d = threadIdx.x * V; d < dim; d += blockDim.x * V) {
      Pack<T, V> pack;
#pragma unroll
      for (int e = 0; e < V; ++e) pack.v[e] = staged[staged_index(d + e)];
      store_pack<T, V>(dst + d, pack);
    }
  } else {
    for (int64_t d = threadIdx.x; d < dim; d += blockDim.x) dst[d] = staged[staged_index(d)];
  }
}

// slot_of_patch (B*L, pre-filled with -1): slot_of_patch[b*L + ids_keep[b,k]] = k
__global__ void invert_keep_kernel(const int64_t* __restrict__ ids_keep, int64_t* __restrict__ slot_of_patch,
                                   int64_t batch, int64_t keep, int64_t length) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n < batch * keep) slot_of_patch[(n / keep) * length + ids_keep[n]] = n % keep;
}

// -0.0 becomes +0.0 (x + 0 in IEEE arithmetic), as autograd's zeros + scatter_add gives: bitwise equal gradients.
template <typename T>
__device__ __forceinline__ T positive_zero(T x) { return from_op<T>(to_op(x) + 0.0f); }

// Backward scatter: one block per patch of the image (grid.x = B*L); kept patches take their
// gradient row, removed ones zeros, so every element is written exactly once (no memset).
template <typename T, bool VEC_ROWS, bool VEC_IN>
__global__ void patchify_scatter_kernel(const T* __restrict__ grad, const int64_t* __restrict__ slot_of_patch,
                                        T* __restrict__ grad_imgs, Geometry g, int64_t keep) {
  constexpr int V = kVecBytes / sizeof(T);
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* staged = reinterpret_cast<T*>(smem_raw);  // the gradient row, channel-last order
  const int64_t length = g.num_patches();
  const int64_t n = blockIdx.x;
  const int64_t b = n / length, patch = n % length;
  const int64_t slot = slot_of_patch[n];
  const int64_t dim = g.patch_dim();
  if (slot >= 0) {
    const T* row = grad + (b * keep + slot) * dim;
    if constexpr (VEC_IN) {
      for (int64_t d = threadIdx.x * V; d < dim; d += blockDim.x * V) store_pack<T, V>(staged + d, load_pack<T, V>(row + d));
    } else {
      for (int64_t d = threadIdx.x; d < dim; d += blockDim.x) staged[d] = row[d];
    }
  }
  __syncthreads();
  T* dst = grad_imgs + b * g.sample_stride() + g.patch_origin(patch);
  const int64_t rows = g.chans * g.pt * g.ph;
  const int64_t per_row = VEC_ROWS ? g.pw / V : g.pw;
  for (int64_t v = threadIdx.x; v < rows * per_row; v += blockDim.x) {
    const int64_t q = v / per_row, j = (v % per_row) * (VEC_ROWS ? V : 1);
    const int64_t c = q / (g.pt * g.ph), ti = q % (g.pt * g.ph);
    T* row = dst + c * g.channel_stride() + ((ti / g.ph) * g.height + ti % g.ph) * g.width;
    const int64_t base = (ti * g.pw + j) * g.chans + c;  // channel-last index of element (t, i, j, c)
    if constexpr (VEC_ROWS) {
      Pack<T, V> pack;
#pragma unroll
      for (int e = 0; e < V; ++e) pack.v[e] = slot >= 0 ? positive_zero(staged[base + e * g.chans]) : from_op<T>(0.0f);
      store_pack<T, V>(row + j, pack);
    } else {
      row[j] = slot >= 0 ? positive_zero(staged[base]) : from_op<T>(0.0f);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// unshuffle_with_mask_token. grid.x = B * row_blocks, row_blocks = ceil((1+L) / kUnshuffleRows)
// (flattened so that neither B nor L meets the 65535 limit of grid.y); V elements per access
// (V * sizeof(OT) == 16 when aligned, else 1). The mask token arrives already in x_vis's dtype.
// ---------------------------------------------------------------------------------------------
constexpr int kUnshuffleRows = 4;

template <typename XT, typename OT, int V, bool HAS_POS>
__global__ void unshuffle_fwd_kernel(const XT* __restrict__ x_vis, const XT* __restrict__ token,
                                     const int64_t* __restrict__ ids_restore, const OT* __restrict__ pos,
                                     OT* __restrict__ out, int64_t length, int64_t visible, int64_t width,
                                     int64_t row_blocks) {
  const int64_t b = blockIdx.x / row_blocks, row_block = blockIdx.x % row_blocks;
  const int64_t rows = 1 + length;
  const int64_t vecs = width / V;
  for (int64_t e = threadIdx.x; e < kUnshuffleRows * vecs; e += blockDim.x) {
    const int64_t r = row_block * kUnshuffleRows + e / vecs;
    if (r >= rows) break;
    const int64_t j = (e % vecs) * V;
    const XT* src = token;
    if (r == 0) {
      src = x_vis + b * (visible + 1) * width;
    } else {
      const int64_t slot = ids_restore[b * length + r - 1];
      if (slot < visible) src = x_vis + (b * (visible + 1) + 1 + slot) * width;
    }
    const Pack<XT, V> x = load_pack<XT, V>(src + j);
    Pack<OT, V> y;
    if constexpr (HAS_POS) {
      const Pack<OT, V> p = load_pack<OT, V>(pos + r * width + j);
#pragma unroll
      for (int k = 0; k < V; ++k) y.v[k] = from_op<OT>(to_op(x.v[k]) + to_op(p.v[k]));
    } else {
#pragma unroll
      for (int k = 0; k < V; ++k) y.v[k] = from_op<OT>(to_op(x.v[k]));
    }
    store_pack<OT, V>(out + (b * rows + r) * width + j, y);
  }
}

// grad_x_vis: each output row that came from x_vis sends its gradient back (a pure scatter).
template <typename GT, typename XT, int V>
__global__ void unshuffle_grad_x_kernel(const GT* __restrict__ grad, const int64_t* __restrict__ ids_restore,
                                        XT* __restrict__ grad_x, int64_t length, int64_t visible, int64_t width,
                                        int64_t row_blocks) {
  const int64_t b = blockIdx.x / row_blocks, row_block = blockIdx.x % row_blocks;
  const int64_t rows = 1 + length;
  const int64_t vecs = width / V;
  for (int64_t e = threadIdx.x; e < kUnshuffleRows * vecs; e += blockDim.x) {
    const int64_t r = row_block * kUnshuffleRows + e / vecs;
    if (r >= rows) break;
    const int64_t slot = r == 0 ? -1 : ids_restore[b * length + r - 1];
    if (slot >= visible) continue;  // a mask-token row
    const int64_t j = (e % vecs) * V;
    const Pack<GT, V> g = load_pack<GT, V>(grad + (b * rows + r) * width + j);
    Pack<XT, V> y;
#pragma unroll
    for (int k = 0; k < V; ++k) y.v[k] = from_op<XT>(to_op(g.v[k]));
    store_pack<XT, V>(grad_x + (b * (visible + 1) + 1 + slot) * width + j, y);
  }
}

// mask_token / pos_embed gradients: grid = (ceil(width / blockDim), ceil((1+L) / kReduceRows));
// each thread owns one column and loops over the batch: reads are coalesced along the width, and the
// float32 sums have a fixed order. mask_partials (row blocks, width); pos_sum (1+L, width).
constexpr int kReduceRows = 8;

template <typename GT>
__global__ void unshuffle_reduce_kernel(const GT* __restrict__ grad, const int64_t* __restrict__ ids_restore,
                                        float* __restrict__ mask_partials, float* __restrict__ pos_sum, int64_t batch,
                                        int64_t length, int64_t visible, int64_t width) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= width) return;
  const int64_t rows = 1 + length;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * kReduceRows;
  float mask_acc = 0.0f;
  for (int64_t r = r0; r < r0 + kReduceRows && r < rows; ++r) {
    float pos_acc = 0.0f;
    for (int64_t b = 0; b < batch; ++b) {
      const float v = to_op(grad[(b * rows + r) * width + j]);
      pos_acc += v;
      if (r > 0 && ids_restore[b * length + r - 1] >= visible) mask_acc += v;
    }
    if (pos_sum != nullptr) pos_sum[r * width + j] = pos_acc;
  }
  if (mask_partials != nullptr) mask_partials[blockIdx.y * width + j] = mask_acc;
}

// ---------------------------------------------------------------------------------------------
// masked_mse_loss: one block per pred row n = b*R + r. The target row is staged in shared memory
// as float (from pixels through the geometry, or from an explicit (B,L,D) target), normalised when
// NORM_PIX. Forward writes weight * mse per row (the host adds them in order); backward writes
// grad_pred and, when asked, the target source's gradient.
// ---------------------------------------------------------------------------------------------
template <int THREADS>
__device__ __forceinline__ float block_sum(float v, float* scratch) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // scratch may still be read from a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float total = 0.0f;
#pragma unroll
  for (int w = 0; w < THREADS / 32; ++w) total += scratch[w];
  return total;
}

struct LossRows {
  const int64_t* patch_of_row;  // (B*R) patch index of each pred row, or nullptr: row r is patch r
  const float* row_weight;      // (B*R)
  int64_t rows, length, dim;
  bool pixels;
  Geometry g;  // pixel sources
};

template <typename ST, bool NORM_PIX, int THREADS>
__device__ __forceinline__ float stage_target(const ST* __restrict__ source, const LossRows& lr, int64_t b,
                                              int64_t patch, float eps, float* target, float* scratch,
                                              int64_t* base_out) {
  const int64_t base =
      lr.pixels ? b * lr.g.sample_stride() + lr.g.patch_origin(patch) : (b * lr.length + patch) * lr.dim;
  *base_out = base;
  float sum = 0.0f;
  for (int64_t d = threadIdx.x; d < lr.dim; d += THREADS) {
    const float v = to_op(source[base + (lr.pixels ? lr.g.element_offset(d) : d)]);
    target[d] = v;
    sum += v;
  }
  if (!NORM_PIX) {
    __syncthreads();
    return 1.0f;
  }
  const float mean = block_sum<THREADS>(sum, scratch) / static_cast<float>(lr.dim);
  float sq = 0.0f;
  for (int64_t d = threadIdx.x; d < lr.dim; d += THREADS) {
    const float c = target[d] - mean;
    target[d] = c;
    sq += c * c;
  }
  const float rstd = rsqrtf(block_sum<THREADS>(sq, scratch) / static_cast<float>(lr.dim - 1) + eps);
  for (int64_t d = threadIdx.x; d < lr.dim; d += THREADS) target[d] *= rstd;
  __syncthreads();
  return rstd;
}

template <typename PT, typename ST, bool NORM_PIX, int THREADS>
__global__ void __launch_bounds__(THREADS) masked_mse_fwd_kernel(const PT* __restrict__ pred,
                                                                 const ST* __restrict__ source, LossRows lr,
                                                                 float eps, float* __restrict__ row_loss) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  float* target = reinterpret_cast<float*>(smem_raw);
  __shared__ float scratch[THREADS / 32];
  const int64_t n = blockIdx.x;
  const int64_t b = n / lr.rows;
  const int64_t patch = lr.patch_of_row != nullptr ? lr.patch_of_row[n] : n % lr.rows;
  int64_t base;
  stage_target<ST, NORM_PIX, THREADS>(source, lr, b, patch, eps, target, scratch, &base);
  float sq = 0.0f;
  for (int64_t d = threadIdx.x; d < lr.dim; d += THREADS) {
    const float diff = to_op(pred[n * lr.dim + d]) - target[d];
    sq += diff * diff;
  }
  const float total = block_sum<THREADS>(sq, scratch);
  if (threadIdx.x == 0) row_loss[n] = total / static_cast<float>(lr.dim) * lr.row_weight[n];
}

// coef = 2 * grad_loss / (D * sum of weights), a device scalar (no host sync).
template <typename PT, typename ST, bool NORM_PIX, bool SOURCE_GRAD, int THREADS>
__global__ void __launch_bounds__(THREADS) masked_mse_bwd_kernel(const PT* __restrict__ pred,
                                                                 const ST* __restrict__ source, LossRows lr,
                                                                 float eps, const float* __restrict__ coef,
                                                                 PT* __restrict__ grad_pred,
                                                                 ST* __restrict__ grad_source) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  float* target = reinterpret_cast<float*>(smem_raw);
  __shared__ float scratch[THREADS / 32];
  const int64_t n = blockIdx.x;
  const int64_t b = n / lr.rows;
  const int64_t patch = lr.patch_of_row != nullptr ? lr.patch_of_row[n] : n % lr.rows;
  int64_t base;
  const float rstd = stage_target<ST, NORM_PIX, THREADS>(source, lr, b, patch, eps, target, scratch, &base);
  const float scale = coef[0] * lr.row_weight[n];
  float grad_sum = 0.0f, grad_dot = 0.0f;
  for (int64_t d = threadIdx.x; d < lr.dim; d += THREADS) {
    const float g = (to_op(pred[n * lr.dim + d]) - target[d]) * scale;
    grad_pred[n * lr.dim + d] = from_op<PT>(g);
    grad_sum += g;
    grad_dot += g * target[d];
  }
  if constexpr (SOURCE_GRAD) {
    if constexpr (NORM_PIX) {
      grad_sum = block_sum<THREADS>(grad_sum, scratch);
      grad_dot = block_sum<THREADS>(grad_dot, scratch);
    }
    const float dim = static_cast<float>(lr.dim);
    for (int64_t d = threadIdx.x; d < lr.dim; d += THREADS) {
      // d loss / d target = -(grad row); through norm_pix: rstd * (g - mean(g) - t * <g, t> / (D-1))
      float g = -(to_op(pred[n * lr.dim + d]) - target[d]) * scale;
      if constexpr (NORM_PIX) g = (g + grad_sum / dim + target[d] * grad_dot / (dim - 1.0f)) * rstd;
      grad_source[base + (lr.pixels ? lr.g.element_offset(d) : d)] = from_op<ST>(g);
    }
  }
}

}  // namespace fastmae_cuda
