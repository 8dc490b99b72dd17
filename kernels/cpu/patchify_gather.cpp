// CPU patchify_gather and its backward scatter.
//
// forward:  imgs (B,C,[T,]H,W), ids_keep (B,K) -> (B, K, prod(patch_size)*C), element ((t*ph+i)*pw+j)*C+c
// backward: grad (B,K,P*C), ids_keep, patch_size, imgs_shape -> grad_imgs (B,C,[T,]H,W): the kept patches' gradients, zeros elsewhere.
//
// Both are pure copies, so they move raw bits (templated on the element width, not the dtype) and are
// bitwise equal to the reference. Work is split over (sample, patch) pairs; inside a patch each image
// row is a contiguous run per channel, and the NCHW -> channel-last reorder is the innermost loop.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cstring>
#include <vector>

#include "../geometry.h"

namespace fastmae_native {
namespace {

// -0.0 becomes +0.0 on the way back into the image, as autograd's zeros + scatter_add gives (bitwise equal
// gradients); for every float format the negative zero is the sign bit alone.
template <typename Bits>
inline Bits positive_zero(Bits v) {
  constexpr Bits kNegativeZero = Bits(1) << (sizeof(Bits) * 8 - 1);
  return v == kNegativeZero ? Bits(0) : v;
}

// Copies one patch between the image (channel planes) and its channel-last row.
// kChans > 0 fixes C at compile time (1 and 3 are the common cases); 0 reads it from g.
template <typename Bits, int kChans, bool kToPatch>
void copy_patch(const PatchGeometry& g, Bits* image, Bits* patch) {
  const int64_t chans = kChans > 0 ? kChans : g.chans;
  const int64_t cstride = g.channel_stride();
  for (int64_t t = 0; t < g.pt; ++t) {
    for (int64_t i = 0; i < g.ph; ++i) {
      Bits* img_row = image + (t * g.height + i) * g.width;
      Bits* patch_row = patch + (t * g.ph + i) * g.pw * chans;
      if (chans == 1) {
        if constexpr (kToPatch) {
          std::memcpy(patch_row, img_row, g.pw * sizeof(Bits));
        } else {
          for (int64_t j = 0; j < g.pw; ++j) img_row[j] = positive_zero(patch_row[j]);
        }
        continue;
      }
      for (int64_t j = 0; j < g.pw; ++j) {
        for (int64_t c = 0; c < chans; ++c) {
          if constexpr (kToPatch) {
            patch_row[j * chans + c] = img_row[c * cstride + j];
          } else {
            img_row[c * cstride + j] = positive_zero(patch_row[j * chans + c]);
          }
        }
      }
    }
  }
}

template <typename Bits, bool kToPatch>
void copy_patch_any(const PatchGeometry& g, Bits* image, Bits* patch) {
  switch (g.chans) {
    case 1: return copy_patch<Bits, 1, kToPatch>(g, image, patch);
    case 3: return copy_patch<Bits, 3, kToPatch>(g, image, patch);
    default: return copy_patch<Bits, 0, kToPatch>(g, image, patch);
  }
}

template <typename Bits>
void gather_patches(const PatchGeometry& g, const at::Tensor& imgs, const at::Tensor& ids, at::Tensor& out) {
  const int64_t keep = ids.size(1);
  const int64_t patch_dim = g.patch_dim();
  auto* src = const_cast<Bits*>(static_cast<const Bits*>(imgs.const_data_ptr()));
  auto* dst = static_cast<Bits*>(out.mutable_data_ptr());
  const int64_t* id = ids.const_data_ptr<int64_t>();
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(patch_dim, 1));
  at::parallel_for(0, g.batch * keep, grain, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const int64_t b = n / keep;
      copy_patch_any<Bits, true>(g, src + b * g.sample_stride() + g.patch_origin(id[n]), dst + n * patch_dim);
    }
  });
}

// Every image element is written once: kept patches take their gradient row, others zeros.
template <typename Bits>
void scatter_patches(const PatchGeometry& g, const at::Tensor& grad, const std::vector<int64_t>& slot_of_patch,
                     at::Tensor& out) {
  const int64_t length = g.num_patches();
  const int64_t keep = grad.size(1);
  const int64_t patch_dim = g.patch_dim();
  auto* src = const_cast<Bits*>(static_cast<const Bits*>(grad.const_data_ptr()));
  auto* dst = static_cast<Bits*>(out.mutable_data_ptr());
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(patch_dim, 1));
  at::parallel_for(0, g.batch * length, grain, [&](int64_t begin, int64_t end) {
    std::vector<Bits> zeros(patch_dim, Bits(0));
    for (int64_t n = begin; n < end; ++n) {
      const int64_t b = n / length;
      const int64_t slot = slot_of_patch[n];
      Bits* patch = slot >= 0 ? src + (b * keep + slot) * patch_dim : zeros.data();
      copy_patch_any<Bits, false>(g, dst + b * g.sample_stride() + g.patch_origin(n % length), patch);
    }
  });
}

template <template <typename> class Fn, typename... Args>
void dispatch_bits(int64_t element_size, Args&&... args) {
  switch (element_size) {
    case 2: return Fn<uint16_t>::run(std::forward<Args>(args)...);
    case 4: return Fn<uint32_t>::run(std::forward<Args>(args)...);
    case 8: return Fn<uint64_t>::run(std::forward<Args>(args)...);
    default: TORCH_CHECK(false, "unsupported element size ", element_size);
  }
}

template <typename Bits>
struct Gather {
  template <typename... Args>
  static void run(Args&&... args) { gather_patches<Bits>(std::forward<Args>(args)...); }
};

template <typename Bits>
struct Scatter {
  template <typename... Args>
  static void run(Args&&... args) { scatter_patches<Bits>(std::forward<Args>(args)...); }
};

at::Tensor patchify_gather_cpu(const at::Tensor& imgs, const at::Tensor& ids_keep, at::IntArrayRef patch_size) {
  const PatchGeometry g = patch_geometry(imgs.sizes(), patch_size, "imgs");
  check_float_dtype(imgs, "imgs");
  check_ids(ids_keep, g.batch, imgs, "ids_keep");
  const at::Tensor ids = ids_keep.contiguous();
  check_ids_in_range_cpu(ids, g.num_patches(), "ids_keep");
  const at::Tensor src = imgs.contiguous();
  at::Tensor out = new_output({g.batch, ids.size(1), g.patch_dim()}, imgs.options());
  dispatch_bits<Gather>(imgs.element_size(), g, src, ids, out);
  return out;
}

at::Tensor patchify_gather_backward_cpu(const at::Tensor& grad, const at::Tensor& ids_keep, at::IntArrayRef patch_size,
                                        at::IntArrayRef imgs_shape) {
  const PatchGeometry g = patch_geometry(imgs_shape, patch_size, "imgs_shape");
  check_float_dtype(grad, "grad");
  check_ids(ids_keep, g.batch, grad, "ids_keep");
  const int64_t keep = ids_keep.size(1);
  TORCH_CHECK_VALUE(grad.dim() == 3 && grad.size(0) == g.batch && grad.size(1) == keep &&
                        grad.size(2) == g.patch_dim(),
                    "grad must have shape (", g.batch, ", ", keep, ", ", g.patch_dim(), "), got ", grad.sizes());
  const at::Tensor ids = ids_keep.contiguous();
  const int64_t length = g.num_patches();
  check_ids_in_range_cpu(ids, length, "ids_keep");
  // slot_of_patch[b*L + l] = k where ids_keep[b, k] == l, -1 for removed patches
  std::vector<int64_t> slot_of_patch(g.batch * length, -1);
  const int64_t* id = ids.const_data_ptr<int64_t>();
  for (int64_t b = 0; b < g.batch; ++b) {
    for (int64_t k = 0; k < keep; ++k) {
      int64_t& slot = slot_of_patch[b * length + id[b * keep + k]];
      TORCH_CHECK_VALUE(slot < 0, "ids_keep must not repeat a patch within a sample: sample ", b, " keeps patch ",
                        id[b * keep + k], " twice");
      slot = k;
    }
  }
  const at::Tensor src = grad.contiguous();  // the gradient of a .sum() arrives with stride 0
  at::Tensor out = new_output(imgs_shape, grad.options());
  dispatch_bits<Scatter>(grad.element_size(), g, src, slot_of_patch, out);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastmae_kernels, CPU, m) {
  m.impl("patchify_gather", &patchify_gather_cpu);
  m.impl("patchify_gather_backward", &patchify_gather_backward_cpu);
}

}  // namespace fastmae_native
