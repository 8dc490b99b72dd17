// CPU patchify_gather and its backward scatter.
//
// forward:  imgs (B,C,[T,]H,W), ids_keep (B,K) -> (B, K, prod(patch_size)*C), element ((t*ph+i)*pw+j)*C+c
// backward: grad (B,K,P*C), ids_keep, patch_size, imgs_shape -> grad_imgs (B,C,[T,]H,W): the kept patches' gradients, zeros elsewhere.
//
// Both are pure copies, so they move raw bits (templated on the element width, not the dtype) and are
// bitwise equal to the reference. The forward is split over (sample, kept patch) pairs: inside a patch each
// image row is a contiguous run per channel, the runs of patches a few ahead are prefetched, and the
// NCHW -> channel-last reorder is the innermost loop. The backward writes the image in its own order. Both
// stream their stores on the AVX-512 and AVX2 paths (the forward from streaming_stores.h's size on).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cstring>
#include <vector>

#include "../geometry.h"
#include "output_cache.h"
#include "interleave_avx2.h"
#include "interleave_avx512.h"
#include "lanes.h"
#include "prefetch_patch.h"
#include "streaming_stores.h"

namespace fastmae_native {
namespace {

// -0.0 becomes +0.0 on the way back into the image, as autograd's zeros + scatter_add gives (bitwise equal
// gradients); for every float format the negative zero is the sign bit alone.
template <typename Bits>
inline Bits positive_zero(Bits v) {
  constexpr Bits kNegativeZero = Bits(1) << (sizeof(Bits) * 8 - 1);
  return v == kNegativeZero ? Bits(0) : v;
}

// Copies one patch from the image (channel planes) into its channel-last row. kChans > 0 fixes C at compile
// time (1 and 3 are the common cases); 0 reads it from g.
template <typename Bits, int kChans>
FASTMAE_ISA_CLONES void gather_patch(const PatchGeometry& g, const Bits* image, Bits* patch) {
  const int64_t chans = kChans > 0 ? kChans : g.chans;
  const int64_t cstride = g.channel_stride();
  for (int64_t t = 0; t < g.pt; ++t) {
    for (int64_t i = 0; i < g.ph; ++i) {
      const Bits* img_row = image + (t * g.height + i) * g.width;
      Bits* patch_row = patch + (t * g.ph + i) * g.pw * chans;
      if constexpr (kChans == 1) {
        std::memcpy(patch_row, img_row, g.pw * sizeof(Bits));
      } else if constexpr (kChans == 3) {  // one pass over the three runs: a 3-way interleave
        const Bits *r0 = img_row, *r1 = img_row + cstride, *r2 = img_row + 2 * cstride;
        for (int64_t j = 0; j < g.pw; ++j) {
          patch_row[3 * j] = r0[j];
          patch_row[3 * j + 1] = r1[j];
          patch_row[3 * j + 2] = r2[j];
        }
      } else {
        for (int64_t j = 0; j < g.pw; ++j)
          for (int64_t c = 0; c < chans; ++c) patch_row[j * chans + c] = img_row[c * cstride + j];
      }
    }
  }
}

// One line of the image's plane c in a strip of patches (see scatter_strip): each patch's pw-element run,
// read from row r of its gradient row (stride C) when the patch was kept, zeros otherwise.
template <typename Bits, int kChans>
FASTMAE_ISA_CLONES void scatter_line(const PatchGeometry& g, const Bits* rows, const int64_t* slots, int64_t r, int c,
                                     Bits* line) {
  const int64_t chans = kChans > 0 ? kChans : g.chans, patch_dim = g.patch_dim();
  const int64_t offset = r * g.pw * chans + c;  // of this run's first element in a patch row
  for (int64_t lw = 0; lw < g.gw; ++lw) {
    Bits* run = line + lw * g.pw;
    if (slots[lw] < 0) {
      std::memset(run, 0, g.pw * sizeof(Bits));
      continue;
    }
    const Bits* patch = rows + slots[lw] * patch_dim + offset;
    for (int64_t j = 0; j < g.pw; ++j) run[j] = positive_zero(patch[j * chans]);
  }
}

// The same two kernels for C = 3 and pw = 16 with an ISA's permute interleave (interleave_avx512.h,
// interleave_avx2.h): stamped once per ISA so that the primitives inline into code of their target.
#define FASTMAE_RGB16_KERNELS(ISA, TARGET)                                                                    \
  template <typename Bits, bool kStream>                                                                      \
  TARGET void gather_patch_rgb16_##ISA(const PatchGeometry& g, const Bits* image, Bits* patch_row) {          \
    const int64_t cstride = g.channel_stride();                                                               \
    for (int64_t t = 0; t < g.pt; ++t) {                                                                      \
      const Bits* img_row = image + t * g.height * g.width;                                                   \
      for (int64_t i = 0; i < g.ph; ++i, img_row += g.width, patch_row += 48)                                 \
        interleave3x16_##ISA<kStream>(img_row, img_row + cstride, img_row + 2 * cstride, patch_row);          \
    }                                                                                                         \
  }                                                                                                           \
  template <typename Bits>                                                                                    \
  TARGET void scatter_line_rgb16_##ISA(const PatchGeometry& g, const Bits* rows, const int64_t* slots,        \
                                       int64_t r, int c, Bits* line) {                                        \
    const int64_t patch_dim = g.patch_dim();                                                                  \
    for (int64_t lw = 0; lw < g.gw; ++lw) {                                                                   \
      if (slots[lw] < 0) {                                                                                    \
        zero_run16_##ISA(line + lw * 16);                                                                     \
      } else {                                                                                                \
        deinterleave3x16_##ISA(rows + slots[lw] * patch_dim + r * 48, c, line + lw * 16);                     \
      }                                                                                                       \
    }                                                                                                         \
  }

#if defined(FASTMAE_AVX512_PATH)
FASTMAE_RGB16_KERNELS(avx512, FASTMAE_AVX512_TARGET)
#endif
#if defined(FASTMAE_AVX2_PATH)
FASTMAE_RGB16_KERNELS(avx2, FASTMAE_AVX2_TARGET)
#endif
#undef FASTMAE_RGB16_KERNELS

template <typename Bits>
using PatchKernel = void (*)(const PatchGeometry&, const Bits*, Bits*);
template <typename Bits>
using LineKernel = void (*)(const PatchGeometry&, const Bits*, const int64_t*, int64_t, int, Bits*);

// The kernels for one geometry: the gather's per-patch copy and whether it streams its stores, the scatter's
// per-line write and whether it streams (a task whose kernel streams ends with a fence).
template <typename Bits>
struct Kernels {
  PatchKernel<Bits> gather;
  bool gather_streams;
  LineKernel<Bits> scatter;
  bool scatter_streams;
};

// The permute interleave where it applies (ViT RGB patches of width 16 on an AVX-512 or AVX2 CPU, 16/32-bit
// elements), else the portable loops. stream_gather: the gather's output may be streamed (stream_output).
template <typename Bits>
Kernels<Bits> pick_kernels(const PatchGeometry& g, bool stream_gather = false) {
  if constexpr (sizeof(Bits) == 2 || sizeof(Bits) == 4) {
    if (g.chans == 3 && g.pw == 16) {
#if defined(FASTMAE_AVX512_PATH)
      if (avx512_path())
        return {stream_gather ? &gather_patch_rgb16_avx512<Bits, true> : &gather_patch_rgb16_avx512<Bits, false>,
                stream_gather, &scatter_line_rgb16_avx512<Bits>, true};
#endif
#if defined(FASTMAE_AVX2_PATH)
      if (avx2_path())
        return {stream_gather ? &gather_patch_rgb16_avx2<Bits, true> : &gather_patch_rgb16_avx2<Bits, false>,
                stream_gather, &scatter_line_rgb16_avx2<Bits>, true};
#endif
    }
  }
  switch (g.chans) {
    case 1: return {&gather_patch<Bits, 1>, false, &scatter_line<Bits, 1>, false};
    case 3: return {&gather_patch<Bits, 3>, false, &scatter_line<Bits, 3>, false};
    default: return {&gather_patch<Bits, 0>, false, &scatter_line<Bits, 0>, false};
  }
}

// Output rows [begin, end) of (B*K): inside a patch each image row is a contiguous run per channel, the runs
// of patches a few ahead are prefetched, and copy_patch does the NCHW -> channel-last reorder.
template <typename Bits>
void gather_rows(PatchKernel<Bits> copy_patch, const PatchGeometry& g, const Bits* src, const int64_t* id,
                 int64_t keep, Bits* dst, int64_t begin, int64_t end) {
  constexpr int64_t kAhead = 3;  // patches in flight ahead of the copy
  const int64_t patch_dim = g.patch_dim();
  auto origin = [&](int64_t n) { return src + (n / keep) * g.sample_stride() + g.patch_origin(id[n]); };
  for (int64_t n = begin; n < std::min(end, begin + kAhead); ++n) prefetch_patch(g, origin(n));
  for (int64_t n = begin; n < end; ++n) {
    if (n + kAhead < end) prefetch_patch(g, origin(n + kAhead));
    copy_patch(g, origin(n), dst + n * patch_dim);
  }
}

template <typename Bits>
void gather_patches(const PatchGeometry& g, const at::Tensor& imgs, const at::Tensor& ids, at::Tensor& out) {
  const int64_t keep = ids.size(1);
  const int64_t patch_dim = g.patch_dim();
  const auto* src = static_cast<const Bits*>(imgs.const_data_ptr());
  auto* dst = static_cast<Bits*>(out.mutable_data_ptr());
  const int64_t* id = ids.const_data_ptr<int64_t>();
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(patch_dim, 1));
  // streaming saves each output line's read for ownership: 1.2-1.25x on the ViT-B batch on an AVX2 CPU, and
  // 1.02-1.03x for the gather followed by the patch embedding's matrix product (docs/native.md)
  const Kernels<Bits> kernels = pick_kernels<Bits>(g, stream_output(dst, out.nbytes()));
  at::parallel_for(0, g.batch * keep, grain, [&](int64_t begin, int64_t end) {
    gather_rows<Bits>(kernels.gather, g, src, id, keep, dst, begin, end);
    fence_streaming_stores(kernels.gather_streams);
  });
}

// Every image element is written once, in image order: each line of a strip of patches (one patch row of
// the grid, all channels) is written left to right, a kept patch's run read from its gradient row (the row
// stays in cache for the strip), zeros elsewhere. Sequential writes run at copy speed.
template <typename Bits>
void scatter_strip(LineKernel<Bits> write_line, const PatchGeometry& g, const Bits* src, const int64_t* slot_of_patch,
                   int64_t keep, Bits* dst, int64_t b, int64_t strip) {
  const int64_t lt = strip / g.gh, lh = strip % g.gh;
  const int64_t* slots = slot_of_patch + b * g.num_patches() + strip * g.gw;
  const Bits* rows = src + b * keep * g.patch_dim();
  for (int64_t c = 0; c < g.chans; ++c) {
    for (int64_t t = 0; t < g.pt; ++t) {
      Bits* line = dst + b * g.sample_stride() + c * g.channel_stride() + ((lt * g.pt + t) * g.height + lh * g.ph) * g.width;
      for (int64_t i = 0; i < g.ph; ++i, line += g.width) write_line(g, rows, slots, t * g.ph + i, static_cast<int>(c), line);
    }
  }
}

template <typename Bits>
void scatter_patches(const PatchGeometry& g, const at::Tensor& grad, const std::vector<int64_t>& slot_of_patch,
                     at::Tensor& out) {
  const int64_t keep = grad.size(1);
  const int64_t strips = g.gt * g.gh;
  const auto* src = static_cast<const Bits*>(grad.const_data_ptr());
  auto* dst = static_cast<Bits*>(out.mutable_data_ptr());
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(g.gw * g.patch_dim(), 1));
  const Kernels<Bits> kernels = pick_kernels<Bits>(g);
  at::parallel_for(0, g.batch * strips, grain, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n)
      scatter_strip<Bits>(kernels.scatter, g, src, slot_of_patch.data(), keep, dst, n / strips, n % strips);
    fence_streaming_stores(kernels.scatter_streams);
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
  at::Tensor out = new_cpu_output({g.batch, ids.size(1), g.patch_dim()}, imgs.options());
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
  at::Tensor out = new_cpu_output(imgs_shape, grad.options());
  dispatch_bits<Scatter>(grad.element_size(), g, src, slot_of_patch, out);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastmae_kernels, CPU, m) {
  m.impl("patchify_gather", &patchify_gather_cpu);
  m.impl("patchify_gather_backward", &patchify_gather_backward_cpu);
}

}  // namespace fastmae_native
