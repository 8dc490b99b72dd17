// Schemas of the fastmae_native ops. The forward schemas are exactly those of the Triton-backed
// torch.ops.fastmae ops, so fastmae.ops can call either namespace with the same arguments.
// Kernels: kernels/cpu/*.cpp (CPU) and kernels/cuda/ops_cuda.cu (CUDA, when built).
// Autograd and fake (meta) implementations are registered from Python in fastmae/_native.py.
#include <torch/library.h>

TORCH_LIBRARY(fastmae_native, m) {
  // torch imports this module when it needs a Python-registered piece (fake impl, autograd).
  m.set_python_module("fastmae._native");

  m.def("patchify_gather(Tensor imgs, Tensor ids_keep, int[] patch_size) -> Tensor");
  m.def("patchify_gather_backward(Tensor grad, Tensor ids_keep, SymInt[] imgs_shape, int[] patch_size) -> Tensor");
}
