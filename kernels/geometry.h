// Host-side shape logic shared by the CPU and CUDA kernels of the fastmae_kernels ops.
// Device-independent and free of kernels: every check here reads shapes and dtypes only.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <optional>
#include <string_view>
#include <vector>

namespace fastmae_native {

// Patch grid of an image (B,C,H,W) with patch_size [ph,pw], or of a video (B,C,T,H,W) with
// [pt,ph,pw]. An image is a video with T = pt = 1, so one code path serves both.
// A patch element's index is ((t*ph + i)*pw + j)*C + c; patch l = (lt*gh + lh)*gw + lw.
struct PatchGeometry {
  int64_t batch, chans, frames, height, width;  // frames = 1 for images
  int64_t pt, ph, pw;                           // pt = 1 for images
  int64_t gt, gh, gw;

  int64_t num_patches() const { return gt * gh * gw; }
  int64_t patch_dim() const { return pt * ph * pw * chans; }
  int64_t plane() const { return height * width; }          // one frame of one channel
  int64_t channel_stride() const { return frames * plane(); }
  int64_t sample_stride() const { return chans * channel_stride(); }
  // offset of the patch's first element (t = i = j = c = 0) inside one sample
  int64_t patch_origin(int64_t patch) const {
    const int64_t lw = patch % gw;
    const int64_t lh = (patch / gw) % gh;
    const int64_t lt = patch / (gw * gh);
    return (lt * pt * height + lh * ph) * width + lw * pw;
  }
};

inline PatchGeometry patch_geometry(at::IntArrayRef sizes, at::IntArrayRef patch_size, const char* name) {
  const int64_t dims = static_cast<int64_t>(sizes.size());
  TORCH_CHECK_VALUE(dims == 4 || dims == 5, name, " must have shape (B, C, H, W) or (B, C, T, H, W), got ", dims,
                    " dims ", sizes);
  TORCH_CHECK_VALUE(static_cast<int64_t>(patch_size.size()) == dims - 2, "patch_size must have ", dims - 2,
                    " entries for ", name, " of shape ", sizes, ", got ", patch_size);
  for (int64_t p : patch_size) TORCH_CHECK_VALUE(p > 0, "patch_size entries must be positive, got ", patch_size);
  PatchGeometry g{};
  g.batch = sizes[0];
  g.chans = sizes[1];
  g.frames = dims == 5 ? sizes[2] : 1;
  g.height = sizes[dims - 2];
  g.width = sizes[dims - 1];
  g.pt = dims == 5 ? patch_size[0] : 1;
  g.ph = patch_size[dims - 4];
  g.pw = patch_size[dims - 3];
  TORCH_CHECK_VALUE(g.frames % g.pt == 0 && g.height % g.ph == 0 && g.width % g.pw == 0, name, " spatial shape ",
                    sizes.slice(2), " is not divisible by patch_size ", patch_size);
  g.gt = g.frames / g.pt;
  g.gh = g.height / g.ph;
  g.gw = g.width / g.pw;
  return g;
}

// FASTMAE_DEBUG=1, as in fastmae.ops._backend: value checks that cost a device sync, poisoned outputs.
inline bool debug_checks_enabled() {
  const char* flag = std::getenv("FASTMAE_DEBUG");
  return flag != nullptr && *flag != '\0' && std::string_view(flag) != "0";
}

// Allocates an op output; in debug mode it is poisoned with NaN so that unwritten elements show.
inline at::Tensor new_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  if (debug_checks_enabled()) {
    return at::full(sizes, std::numeric_limits<double>::quiet_NaN(), options);
  }
  return at::empty(sizes, options);
}

inline void check_float_dtype(const at::Tensor& t, const char* name) {
  const auto dtype = t.scalar_type();
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf || dtype == at::kDouble, name,
                   " must be float32, bfloat16, float16 or float64, got ", dtype);
}

// ids (B, n) of integer patch indices on `like`'s device.
inline void check_ids(const at::Tensor& ids, int64_t batch, const at::Tensor& like, const char* name) {
  TORCH_CHECK_TYPE(ids.scalar_type() == at::kLong, name, " must be int64, got ", ids.scalar_type());
  TORCH_CHECK_VALUE(ids.dim() == 2 && ids.size(0) == batch, name, " must have shape (B, n) with B = ", batch,
                    ", got ", ids.sizes());
  TORCH_CHECK_VALUE(ids.device() == like.device(), name, " must be on ", like.device(), ", got ", ids.device());
}

// Patch indices must lie in [0, limit): checked on the CPU, where it costs no device sync.
inline void check_ids_in_range_cpu(const at::Tensor& ids, int64_t limit, const char* name) {
  const int64_t* data = ids.const_data_ptr<int64_t>();
  for (int64_t n = 0, total = ids.numel(); n < total; ++n) {
    TORCH_CHECK_VALUE(data[n] >= 0 && data[n] < limit, name, " holds ", data[n], " at flat position ", n,
                      ", outside [0, ", limit, ")");
  }
}

}  // namespace fastmae_native

namespace fastmae_native {

// Each row of ids (B, n) must hold distinct values in [0, limit), a permutation when n == limit:
// checked on the CPU (O(B*max(n, limit)), no device sync).
inline void check_distinct_rows_cpu(const at::Tensor& ids, int64_t limit, const char* name) {
  const int64_t batch = ids.size(0), count = ids.size(1);
  const int64_t* data = ids.const_data_ptr<int64_t>();
  std::vector<char> seen(limit);
  for (int64_t b = 0; b < batch; ++b) {
    std::fill(seen.begin(), seen.end(), 0);
    for (int64_t n = 0; n < count; ++n) {
      const int64_t v = data[b * count + n];
      TORCH_CHECK_VALUE(v >= 0 && v < limit, name, " holds ", v, " in row ", b, ", outside [0, ", limit, ")");
      TORCH_CHECK_VALUE(!seen[v], name, " row ", b,
                        count == limit ? " is not a permutation of [0, " : " does not hold distinct patches of [0, ",
                        limit, "): ", v, " appears twice");
      seen[v] = 1;
    }
  }
}

// Shapes of a masked_mse_loss call: a full pred (B,L,D) with mask (B,L), or a removed-only pred (B,L-K,D)
// with ids_removed (B,L-K) (row r is patch ids_removed[b,r]); target from imgs or an explicit target (B,L,D).
// The same checks on the CPU and on CUDA; every check reads shapes, dtypes and devices only.
struct LossShape {
  int64_t batch = 0, length = 0, rows = 0, dim = 0;
  bool removed_only = false, pixels = false;
  PatchGeometry geo{};
};

inline LossShape check_loss_shapes(const at::Tensor& pred, const std::optional<at::Tensor>& imgs,
                                   const std::optional<at::Tensor>& ids_removed, const std::optional<at::Tensor>& mask,
                                   const std::optional<at::Tensor>& target,
                                   const std::optional<at::Tensor>& sample_weight, at::IntArrayRef patch_size,
                                   bool norm_pix) {
  LossShape s;
  TORCH_CHECK_VALUE(pred.dim() == 3, "pred must have shape (B, L, D) or (B, L-K, D), got ", pred.sizes());
  check_float_dtype(pred, "pred");
  TORCH_CHECK_VALUE(imgs.has_value() != target.has_value(), "pass exactly one of imgs and target");
  s.batch = pred.size(0);
  s.rows = pred.size(1);
  s.dim = pred.size(2);
  s.pixels = imgs.has_value();
  const at::Tensor& source = s.pixels ? *imgs : *target;
  check_float_dtype(source, s.pixels ? "imgs" : "target");
  TORCH_CHECK_VALUE(source.device() == pred.device(), "imgs/target must be on ", pred.device());
  if (s.pixels) {
    s.geo = patch_geometry(source.sizes(), patch_size, "imgs");
    s.length = s.geo.num_patches();
    TORCH_CHECK_VALUE(s.dim == s.geo.patch_dim(), "pred last dim must be prod(patch_size) * C = ", s.geo.patch_dim(),
                      ", got ", s.dim);
  } else {
    TORCH_CHECK_VALUE(source.dim() == 3 && source.size(0) == s.batch && source.size(2) == s.dim,
                      "target must have shape (B, L, D) = (", s.batch, ", L, ", s.dim, "), got ", source.sizes());
    s.length = source.size(1);
  }
  TORCH_CHECK_VALUE(source.size(0) == s.batch, "imgs/target batch ", source.size(0), " != pred batch ", s.batch);
  TORCH_CHECK_VALUE(!norm_pix || s.dim >= 2, "norm_pix needs D >= 2, got ", s.dim);
  TORCH_CHECK_VALUE(s.rows >= 1 && s.rows <= s.length, "pred must have L = ", s.length,
                    " rows (full) or 1..L-1 rows (removed-only), got ", s.rows);
  s.removed_only = s.rows < s.length;
  if (s.removed_only) {
    TORCH_CHECK_VALUE(ids_removed.has_value() && !mask.has_value(),
                      "a removed-only pred takes ids_removed (and no mask)");
    TORCH_CHECK_TYPE(ids_removed->scalar_type() == at::kLong || ids_removed->scalar_type() == at::kInt,
                     "ids_removed must be int64 or int32, got ", ids_removed->scalar_type());
    TORCH_CHECK_VALUE(ids_removed->dim() == 2 && ids_removed->size(0) == s.batch && ids_removed->size(1) == s.rows,
                      "ids_removed must have shape (B, L-K) = (", s.batch, ", ", s.rows, "), got ",
                      ids_removed->sizes());
    TORCH_CHECK_VALUE(ids_removed->device() == pred.device(), "ids_removed must be on ", pred.device());
  } else {
    TORCH_CHECK_VALUE(mask.has_value() && !ids_removed.has_value(), "a full pred takes mask (and no ids_removed)");
    TORCH_CHECK_VALUE(mask->dim() == 2 && mask->size(0) == s.batch && mask->size(1) == s.length,
                      "mask must have shape (", s.batch, ", ", s.length, "), got ", mask->sizes());
  }
  if (sample_weight.has_value()) {
    TORCH_CHECK_VALUE(sample_weight->dim() == 1 && sample_weight->size(0) == s.batch,
                      "sample_weight must have shape (", s.batch, ",), got ", sample_weight->sizes());
  }
  return s;
}

// grad_source of the loss backward: (0,) unless asked for; zeros for a removed-only pred (the kept patches
// are never visited); else every element is written (poisoned in debug mode).
inline at::Tensor loss_source_grad(const LossShape& s, const at::Tensor& source, bool source_grad) {
  if (!source_grad) return at::empty({0}, source.options());
  if (s.removed_only) return at::zeros(source.sizes(), source.options());
  return new_output(source.sizes(), source.options());
}

}  // namespace fastmae_native
