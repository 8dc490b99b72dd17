// Schemas of the fastmae_native ops. The forward schemas are exactly those of the Triton-backed
// torch.ops.fastmae ops, so fastmae.ops can call either namespace with the same arguments.
// Kernels: kernels/cpu/*.cpp (CPU) and kernels/cuda/ops_cuda.cu (CUDA, when built).
// Autograd and fake (meta) implementations are registered from Python in fastmae/_native.py.
#include <torch/library.h>

TORCH_LIBRARY(fastmae_native, m) {
  // torch imports this module when it needs a Python-registered piece (fake impl, autograd).
  m.set_python_module("fastmae._native");

  m.def("patchify_gather(Tensor imgs, Tensor ids_keep, int[] patch_size) -> Tensor");
  m.def("patchify_gather_backward(Tensor grad, Tensor ids_keep, int[] patch_size, SymInt[] imgs_shape) -> Tensor");

  m.def("unshuffle_with_mask_token(Tensor x_vis, Tensor mask_token, Tensor ids_restore, Tensor? pos_embed) -> Tensor");
  // -> (grad_x_vis, grad_mask_token, grad_pos_embed), each in its input's dtype; a gradient not asked for in
  // needs_grad = [x_vis, mask_token, pos_embed] comes back as a 0-element tensor.
  m.def(
      "unshuffle_with_mask_token_backward(Tensor grad_out, Tensor ids_restore, SymInt num_visible, "
      "ScalarType x_vis_dtype, ScalarType mask_token_dtype, ScalarType? pos_embed_dtype, bool[] needs_grad) "
      "-> (Tensor, Tensor, Tensor)");

  // pred (B,L,D) with mask, or removed-only (B,L-K,D) with ids_restore; target from imgs or explicit target.
  m.def(
      "masked_mse_loss(Tensor pred, Tensor? imgs, Tensor? ids_restore, Tensor? mask, Tensor? target, "
      "Tensor? sample_weight, int[] patch_size, bool norm_pix, float eps) -> Tensor");
  // -> (grad_pred, grad_source); grad_source (imgs' or target's shape and dtype) is a (0,) tensor
  // unless source_grad.
  m.def(
      "masked_mse_loss_backward(Tensor grad_loss, Tensor pred, Tensor? imgs, Tensor? ids_restore, Tensor? mask, "
      "Tensor? target, Tensor? sample_weight, int[] patch_size, bool norm_pix, float eps, bool source_grad) "
      "-> (Tensor, Tensor)");
}
