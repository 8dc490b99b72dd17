// CUDA kernels of the fastmae_kernels ops: checks, block sizes and launches of the kernels in
// kernels.cuh on the current stream. Same semantics and checks as kernels/cpu/*.cpp; the id-value checks
// (a device sync) run only with FASTMAE_DEBUG=1. Built only when torch has CUDA and nvcc is found.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>
#include <limits>
#include <optional>

#include "../geometry.h"
#include "kernels.cuh"

namespace fastmae_native {
namespace {

using fastmae_cuda::Geometry;

template <typename T> struct CudaType { using type = T; };
template <> struct CudaType<at::Half> { using type = __half; };
template <> struct CudaType<at::BFloat16> { using type = __nv_bfloat16; };

template <typename T>
auto* device_ptr(const at::Tensor& t) {
  return reinterpret_cast<const typename CudaType<T>::type*>(t.const_data_ptr<T>());
}
template <typename T>
auto* device_mut_ptr(at::Tensor& t) {
  return reinterpret_cast<typename CudaType<T>::type*>(t.mutable_data_ptr<T>());
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % fastmae_cuda::kVecBytes == 0; }

Geometry device_geometry(const PatchGeometry& g) {
  return Geometry{g.chans, g.frames, g.height, g.width, g.pt, g.ph, g.pw, g.gt, g.gh, g.gw};
}

constexpr int64_t kMaxSharedBytes = 48 * 1024;
constexpr int kPatchThreads = 128;

unsigned int grid_size(int64_t blocks, const char* what) {
  TORCH_CHECK_VALUE(blocks <= std::numeric_limits<int32_t>::max(), what, ": ", blocks, " blocks exceed the grid limit");
  return static_cast<unsigned int>(std::max<int64_t>(blocks, 1));
}

void debug_check_ids(const at::Tensor& ids, int64_t limit, const char* name) {
  if (!debug_checks_enabled() || ids.numel() == 0) return;
  const int64_t low = ids.min().item<int64_t>(), high = ids.max().item<int64_t>();  // a device sync
  TORCH_CHECK_VALUE(low >= 0 && high < limit, name, " holds values in [", low, ", ", high, "], outside [0, ", limit,
                    ")");
}

// Dispatch two runtime bools into template arguments.
template <typename F>
void with_bools(bool a, bool b, F&& f) {
  if (a && b) f(std::true_type{}, std::true_type{});
  else if (a) f(std::true_type{}, std::false_type{});
  else if (b) f(std::false_type{}, std::true_type{});
  else f(std::false_type{}, std::false_type{});
}

// ------------------------------------------------------------------------------------ patchify_gather
at::Tensor patchify_gather_cuda(const at::Tensor& imgs, const at::Tensor& ids_keep, at::IntArrayRef patch_size) {
  const PatchGeometry g = patch_geometry(imgs.sizes(), patch_size, "imgs");
  check_float_dtype(imgs, "imgs");
  check_ids(ids_keep, g.batch, imgs, "ids_keep");
  const c10::cuda::CUDAGuard guard(imgs.device());
  const at::Tensor ids = ids_keep.contiguous();
  debug_check_ids(ids, g.num_patches(), "ids_keep");
  const at::Tensor src = imgs.contiguous();
  at::Tensor out = new_output({g.batch, ids.size(1), g.patch_dim()}, imgs.options());
  if (out.numel() == 0) return out;
  const int64_t smem = g.patch_dim() * static_cast<int64_t>(imgs.element_size());
  TORCH_CHECK_VALUE(smem <= kMaxSharedBytes, "a patch of ", g.patch_dim(), " elements exceeds the shared memory");
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, imgs.scalar_type(), "patchify_gather_cuda", [&] {
    using T = typename CudaType<scalar_t>::type;
    constexpr int64_t V = fastmae_cuda::kVecBytes / sizeof(T);
    const bool vec_rows = g.pw % V == 0 && g.width % V == 0 && aligned16(src.const_data_ptr());
    const bool vec_out = g.patch_dim() % V == 0 && aligned16(out.const_data_ptr());
    with_bools(vec_rows, vec_out, [&](auto rows_flag, auto out_flag) {
      fastmae_cuda::patchify_gather_kernel<T, decltype(rows_flag)::value, decltype(out_flag)::value>
          <<<grid_size(g.batch * ids.size(1), "patchify_gather"), kPatchThreads, smem, stream>>>(
              device_ptr<scalar_t>(src), ids.const_data_ptr<int64_t>(), device_mut_ptr<scalar_t>(out),
              device_geometry(g), ids.size(1));
    });
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor patchify_gather_backward_cuda(const at::Tensor& grad, const at::Tensor& ids_keep,
                                         at::IntArrayRef patch_size, at::IntArrayRef imgs_shape) {
  const PatchGeometry g = patch_geometry(imgs_shape, patch_size, "imgs_shape");
  check_float_dtype(grad, "grad");
  check_ids(ids_keep, g.batch, grad, "ids_keep");
  const int64_t keep = ids_keep.size(1), length = g.num_patches();
  TORCH_CHECK_VALUE(grad.dim() == 3 && grad.size(0) == g.batch && grad.size(1) == keep &&
                        grad.size(2) == g.patch_dim(),
                    "grad must have shape (", g.batch, ", ", keep, ", ", g.patch_dim(), "), got ", grad.sizes());
  const c10::cuda::CUDAGuard guard(grad.device());
  const at::Tensor ids = ids_keep.contiguous();
  debug_check_ids(ids, length, "ids_keep");
  const at::Tensor src = grad.contiguous();  // the gradient of a .sum() arrives with stride 0
  at::Tensor out = new_output(imgs_shape, grad.options());
  if (out.numel() == 0) return out;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor slot_of_patch = at::full({g.batch * length}, -1, ids.options());
  if (ids.numel() > 0) {
    fastmae_cuda::invert_keep_kernel<<<grid_size((ids.numel() + 255) / 256, "invert"), 256, 0, stream>>>(
        ids.const_data_ptr<int64_t>(), slot_of_patch.mutable_data_ptr<int64_t>(), g.batch, keep, length);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  const int64_t smem = g.patch_dim() * static_cast<int64_t>(grad.element_size());
  TORCH_CHECK_VALUE(smem <= kMaxSharedBytes, "a patch of ", g.patch_dim(), " elements exceeds the shared memory");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "patchify_scatter_cuda", [&] {
    using T = typename CudaType<scalar_t>::type;
    constexpr int64_t V = fastmae_cuda::kVecBytes / sizeof(T);
    const bool vec_rows = g.pw % V == 0 && g.width % V == 0 && aligned16(out.const_data_ptr());
    const bool vec_in = g.patch_dim() % V == 0 && aligned16(src.const_data_ptr());
    with_bools(vec_rows, vec_in, [&](auto rows_flag, auto in_flag) {
      fastmae_cuda::patchify_scatter_kernel<T, decltype(rows_flag)::value, decltype(in_flag)::value>
          <<<grid_size(g.batch * length, "patchify_gather_backward"), kPatchThreads, smem, stream>>>(
              device_ptr<scalar_t>(src), slot_of_patch.const_data_ptr<int64_t>(), device_mut_ptr<scalar_t>(out),
              device_geometry(g), keep);
    });
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

// ------------------------------------------------------------------------- unshuffle_with_mask_token
constexpr int kRowThreads = 128;

at::Tensor unshuffle_with_mask_token_cuda(const at::Tensor& x_vis, const at::Tensor& mask_token,
                                          const at::Tensor& ids_restore, const std::optional<at::Tensor>& pos_embed) {
  TORCH_CHECK_VALUE(x_vis.dim() == 3, "x_vis must have shape (B, 1+K, d), got ", x_vis.sizes());
  check_float_dtype(x_vis, "x_vis");
  check_float_dtype(mask_token, "mask_token");
  check_ids(ids_restore, x_vis.size(0), x_vis, "ids_restore");
  const int64_t batch = x_vis.size(0), width = x_vis.size(2), length = ids_restore.size(1);
  const int64_t visible = x_vis.size(1) - 1;
  TORCH_CHECK_VALUE(visible >= 0 && visible <= length, "x_vis must hold the cls row plus K <= L = ", length,
                    " tokens, got ", x_vis.size(1), " rows");
  TORCH_CHECK_VALUE(mask_token.numel() == width, "mask_token must have shape (1, 1, ", width, ")");
  if (pos_embed.has_value()) {
    check_float_dtype(*pos_embed, "pos_embed");
    TORCH_CHECK_VALUE(pos_embed->dim() == 3 && pos_embed->size(1) == 1 + length && pos_embed->size(2) == width,
                      "pos_embed must have shape (1, ", 1 + length, ", ", width, "), got ", pos_embed->sizes());
  }
  const c10::cuda::CUDAGuard guard(x_vis.device());
  const at::Tensor ids = ids_restore.contiguous();
  debug_check_ids(ids, length, "ids_restore");
  const auto out_dtype =
      pos_embed.has_value() ? c10::promoteTypes(x_vis.scalar_type(), pos_embed->scalar_type()) : x_vis.scalar_type();
  const at::Tensor x = x_vis.contiguous();
  const at::Tensor token = mask_token.to(x_vis.scalar_type()).contiguous();  // the reference's cast
  const at::Tensor pos = pos_embed.has_value() ? pos_embed->to(out_dtype).contiguous() : at::Tensor();
  at::Tensor out = new_output({batch, 1 + length, width}, x.options().dtype(out_dtype));
  if (out.numel() == 0) return out;
  const int64_t row_blocks = (1 + length + fastmae_cuda::kUnshuffleRows - 1) / fastmae_cuda::kUnshuffleRows;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out_dtype, "unshuffle_cuda_out", [&] {
    using OS = scalar_t;
    using OT = typename CudaType<OS>::type;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "unshuffle_cuda_x", [&] {
      using XT = typename CudaType<scalar_t>::type;
      constexpr int V = fastmae_cuda::kVecBytes / sizeof(OT);
      const bool vec = width % V == 0 && aligned16(x.const_data_ptr()) && aligned16(token.const_data_ptr()) &&
                       aligned16(out.const_data_ptr()) && (!pos.defined() || aligned16(pos.const_data_ptr()));
      const OT* pos_ptr = pos.defined() ? device_ptr<OS>(pos) : nullptr;
      auto launch = [&](auto vec_width, auto has_pos) {
        fastmae_cuda::unshuffle_fwd_kernel<XT, OT, decltype(vec_width)::value, decltype(has_pos)::value>
            <<<grid_size(batch * row_blocks, "unshuffle"), kRowThreads, 0, stream>>>(
                device_ptr<scalar_t>(x), device_ptr<scalar_t>(token), ids.const_data_ptr<int64_t>(), pos_ptr,
                device_mut_ptr<OS>(out), length, visible, width, row_blocks);
      };
      using VecW = std::integral_constant<int, V>;
      using OneW = std::integral_constant<int, 1>;
      if (vec && pos.defined()) launch(VecW{}, std::true_type{});
      else if (vec) launch(VecW{}, std::false_type{});
      else if (pos.defined()) launch(OneW{}, std::true_type{});
      else launch(OneW{}, std::false_type{});
    });
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> unshuffle_with_mask_token_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& ids_restore, int64_t num_visible, at::ScalarType x_vis_dtype,
    at::ScalarType mask_token_dtype, std::optional<at::ScalarType> pos_embed_dtype,
    const c10::List<bool>& needs_grad) {
  TORCH_CHECK_VALUE(grad_out.dim() == 3, "grad_out must have shape (B, 1+L, d), got ", grad_out.sizes());
  check_float_dtype(grad_out, "grad_out");
  check_ids(ids_restore, grad_out.size(0), grad_out, "ids_restore");
  TORCH_CHECK_VALUE(ids_restore.size(1) + 1 == grad_out.size(1), "grad_out must have 1 + L rows");
  TORCH_CHECK_VALUE(needs_grad.size() == 3, "needs_grad must have 3 entries");
  const bool need_x = needs_grad.get(0), need_mask = needs_grad.get(1);
  const bool need_pos = needs_grad.get(2) && pos_embed_dtype.has_value();
  const c10::cuda::CUDAGuard guard(grad_out.device());
  const at::Tensor ids = ids_restore.contiguous();
  const at::Tensor grad = grad_out.contiguous();  // the gradient of a .sum() arrives with stride 0
  const int64_t batch = grad.size(0), rows = grad.size(1), width = grad.size(2), length = rows - 1;
  const at::Tensor empty = at::empty({0}, grad.options());
  at::Tensor grad_x = need_x ? new_output({batch, 1 + num_visible, width}, grad.options().dtype(x_vis_dtype))
                             : at::empty({0}, grad.options());  // fresh: op outputs must not alias
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t reduce_blocks = (rows + fastmae_cuda::kReduceRows - 1) / fastmae_cuda::kReduceRows;
  const auto f32 = grad.options().dtype(at::kFloat);
  at::Tensor mask_partials = need_mask ? at::empty({reduce_blocks, width}, f32) : empty;
  at::Tensor pos_sum = need_pos ? at::empty({rows, width}, f32) : empty;
  if (grad.numel() == 0) {  // nothing to reduce: the sums asked for are zeros
    return {grad_x,
            need_mask ? at::zeros({1, 1, width}, grad.options().dtype(mask_token_dtype)) : at::empty({0}, grad.options()),
            need_pos ? at::zeros({1, rows, width}, grad.options().dtype(*pos_embed_dtype)) : at::empty({0}, grad.options())};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "unshuffle_bwd_cuda", [&] {
    using GS = scalar_t;
    using GT = typename CudaType<GS>::type;
    if (need_x) {
      const int64_t row_blocks = (rows + fastmae_cuda::kUnshuffleRows - 1) / fastmae_cuda::kUnshuffleRows;
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x_vis_dtype, "unshuffle_bwd_x_cuda", [&] {
        using XT = typename CudaType<scalar_t>::type;
        constexpr int V = fastmae_cuda::kVecBytes / sizeof(GT);
        const bool vec = width % V == 0 && aligned16(grad.const_data_ptr()) && aligned16(grad_x.const_data_ptr());
        const dim3 blocks(grid_size(batch * row_blocks, "unshuffle backward"));
        if (vec) {
          fastmae_cuda::unshuffle_grad_x_kernel<GT, XT, V><<<blocks, kRowThreads, 0, stream>>>(
              device_ptr<GS>(grad), ids.const_data_ptr<int64_t>(), device_mut_ptr<scalar_t>(grad_x), length,
              num_visible, width, row_blocks);
        } else {
          fastmae_cuda::unshuffle_grad_x_kernel<GT, XT, 1><<<blocks, kRowThreads, 0, stream>>>(
              device_ptr<GS>(grad), ids.const_data_ptr<int64_t>(), device_mut_ptr<scalar_t>(grad_x), length,
              num_visible, width, row_blocks);
        }
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    }
    if (need_mask || need_pos) {
      TORCH_CHECK_VALUE(reduce_blocks <= 65535, "1 + L = ", rows, " rows exceed the reduction grid");
      const dim3 blocks(grid_size((width + kRowThreads - 1) / kRowThreads, "reduce"), reduce_blocks);
      fastmae_cuda::unshuffle_reduce_kernel<GT><<<blocks, kRowThreads, 0, stream>>>(
          device_ptr<GS>(grad), ids.const_data_ptr<int64_t>(),
          need_mask ? mask_partials.mutable_data_ptr<float>() : nullptr,
          need_pos ? pos_sum.mutable_data_ptr<float>() : nullptr, batch, length, num_visible, width);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  at::Tensor grad_mask = need_mask ? mask_partials.sum(0).to(mask_token_dtype).view({1, 1, width})
                                 : at::empty({0}, grad.options());
  at::Tensor grad_pos = need_pos ? pos_sum.to(*pos_embed_dtype).unsqueeze(0) : at::empty({0}, grad.options());
  return {grad_x, grad_mask, grad_pos};
}

// ----------------------------------------------------------------------------------- masked_mse_loss
constexpr int kLossThreads = 256;

struct LossCall : LossShape {
  at::Tensor pred, source, patch_of_row, row_weight;  // patch_of_row undefined for a full pred
};

// Shape checks as on the CPU; the per-row inputs are built with device ops (no sync).
LossCall make_call(const at::Tensor& pred, const std::optional<at::Tensor>& imgs,
                   const std::optional<at::Tensor>& ids_removed, const std::optional<at::Tensor>& mask,
                   const std::optional<at::Tensor>& target, const std::optional<at::Tensor>& sample_weight,
                   at::IntArrayRef patch_size, bool norm_pix) {
  LossCall call;
  static_cast<LossShape&>(call) =
      check_loss_shapes(pred, imgs, ids_removed, mask, target, sample_weight, patch_size, norm_pix);
  TORCH_CHECK_VALUE(call.dim * 4 <= kMaxSharedBytes, "D = ", call.dim, " exceeds the shared-memory row buffer");
  const auto f32 = pred.options().dtype(at::kFloat);
  if (call.removed_only) {
    call.patch_of_row = ids_removed->to(at::kLong).contiguous();
    debug_check_ids(call.patch_of_row, call.length, "ids_removed");
    call.row_weight = sample_weight.has_value()
                          ? sample_weight->to(at::kFloat).unsqueeze(1).expand({call.batch, call.rows}).contiguous()
                          : at::ones({call.batch, call.rows}, f32);
  } else {
    at::Tensor weight = mask->to(at::kFloat);
    if (sample_weight.has_value()) weight = weight * sample_weight->to(at::kFloat).unsqueeze(1);
    call.row_weight = weight.contiguous();
  }
  call.pred = pred.contiguous();
  call.source = (call.pixels ? *imgs : *target).contiguous();
  return call;
}

fastmae_cuda::LossRows loss_rows(const LossCall& call) {
  return fastmae_cuda::LossRows{
      call.patch_of_row.defined() ? call.patch_of_row.const_data_ptr<int64_t>() : nullptr,
      call.row_weight.const_data_ptr<float>(),
      call.rows,
      call.length,
      call.dim,
      call.pixels,
      call.pixels ? device_geometry(call.geo) : Geometry{1, 1, 1, 1, 1, 1, 1, 1, 1, 1}};
}

at::Tensor masked_mse_loss_cuda(const at::Tensor& pred, const std::optional<at::Tensor>& imgs,
                                const std::optional<at::Tensor>& ids_removed, const std::optional<at::Tensor>& mask,
                                const std::optional<at::Tensor>& target,
                                const std::optional<at::Tensor>& sample_weight, at::IntArrayRef patch_size,
                                bool norm_pix, double eps) {
  const c10::cuda::CUDAGuard guard(pred.device());
  const LossCall call = make_call(pred, imgs, ids_removed, mask, target, sample_weight, patch_size, norm_pix);
  at::Tensor row_loss = new_output({call.batch * call.rows}, pred.options().dtype(at::kFloat));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t smem = call.dim * static_cast<int64_t>(sizeof(float));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, call.pred.scalar_type(), "masked_mse_cuda_pred", [&] {
    using PS = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, call.source.scalar_type(), "masked_mse_cuda_src", [&] {
      using PT = typename CudaType<PS>::type;
      using ST = typename CudaType<scalar_t>::type;
      const unsigned int blocks = grid_size(call.batch * call.rows, "masked_mse_loss");
      if (norm_pix) {
        fastmae_cuda::masked_mse_fwd_kernel<PT, ST, true, kLossThreads><<<blocks, kLossThreads, smem, stream>>>(
            device_ptr<PS>(call.pred), device_ptr<scalar_t>(call.source), loss_rows(call), static_cast<float>(eps),
            row_loss.mutable_data_ptr<float>());
      } else {
        fastmae_cuda::masked_mse_fwd_kernel<PT, ST, false, kLossThreads><<<blocks, kLossThreads, smem, stream>>>(
            device_ptr<PS>(call.pred), device_ptr<scalar_t>(call.source), loss_rows(call), static_cast<float>(eps),
            row_loss.mutable_data_ptr<float>());
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return row_loss.sum() / call.row_weight.sum();  // fixed-order device reductions, a float32 0-d tensor
}

std::tuple<at::Tensor, at::Tensor> masked_mse_loss_backward_cuda(
    const at::Tensor& grad_loss, const at::Tensor& pred, const std::optional<at::Tensor>& imgs,
    const std::optional<at::Tensor>& ids_removed, const std::optional<at::Tensor>& mask,
    const std::optional<at::Tensor>& target, const std::optional<at::Tensor>& sample_weight, at::IntArrayRef patch_size,
    bool norm_pix, double eps, bool source_grad) {
  const c10::cuda::CUDAGuard guard(pred.device());
  const LossCall call = make_call(pred, imgs, ids_removed, mask, target, sample_weight, patch_size, norm_pix);
  TORCH_CHECK_VALUE(grad_loss.numel() == 1, "grad_loss must be a scalar, got ", grad_loss.sizes());
  const at::Tensor coef =
      (grad_loss.to(at::kFloat).reshape({1}) * 2.0 / (static_cast<double>(call.dim) * call.row_weight.sum()))
          .contiguous();
  at::Tensor grad_pred = new_output(pred.sizes(), pred.options());
  at::Tensor grad_source = loss_source_grad(call, call.source, source_grad);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t smem = call.dim * static_cast<int64_t>(sizeof(float));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, call.pred.scalar_type(), "masked_mse_bwd_cuda_pred", [&] {
    using PS = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, call.source.scalar_type(), "masked_mse_bwd_cuda_src", [&] {
      using PT = typename CudaType<PS>::type;
      using ST = typename CudaType<scalar_t>::type;
      ST* source_out = source_grad ? device_mut_ptr<scalar_t>(grad_source) : nullptr;
      with_bools(norm_pix, source_grad, [&](auto norm_flag, auto source_flag) {
        fastmae_cuda::masked_mse_bwd_kernel<PT, ST, decltype(norm_flag)::value, decltype(source_flag)::value,
                                            kLossThreads>
            <<<grid_size(call.batch * call.rows, "masked_mse_loss_backward"), kLossThreads, smem, stream>>>(
                device_ptr<PS>(call.pred), device_ptr<scalar_t>(call.source), loss_rows(call),
                static_cast<float>(eps), coef.const_data_ptr<float>(), device_mut_ptr<PS>(grad_pred), source_out);
      });
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {grad_pred, grad_source};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastmae_kernels, CUDA, m) {
  m.impl("patchify_gather", &patchify_gather_cuda);
  m.impl("patchify_gather_backward", &patchify_gather_backward_cuda);
  m.impl("unshuffle_with_mask_token", &unshuffle_with_mask_token_cuda);
  m.impl("unshuffle_with_mask_token_backward", &unshuffle_with_mask_token_backward_cuda);
  m.impl("masked_mse_loss", &masked_mse_loss_cuda);
  m.impl("masked_mse_loss_backward", &masked_mse_loss_backward_cuda);
}

}  // namespace fastmae_native
