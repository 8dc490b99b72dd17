// CPU masked_mse_loss and its backward.
//
// Rows: a full pred (B,L,D) with mask (B,L) (row l weighs mask[b,l]*w_b), or a removed-only pred (B,L-K,D)
// with ids_removed (B,L-K) (row r is patch ids_removed[b,r], ids_shuffle[b,K+r], and weighs w_b); w = sample_weight or 1.
// loss = sum_rows weight * mean_d (pred - target)^2 / sum_rows weight, a float32 scalar. The target row is
// read from the pixels in patchify order ((t*ph+i)*pw+j)*C+c, or from an explicit target (B,L,D); with
// norm_pix it is (t - mean) / sqrt(var_unbiased + eps). Sums are accumulated in double (one rounding at the
// end), in a fixed order: each row's partial is written to its own slot and the slots are added in order.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <cmath>
#include <optional>
#include <vector>

#include "../geometry.h"

namespace fastmae_native {
namespace {

// Everything the row loops need, checked and made contiguous once.
struct LossLayout : LossShape {
  at::Tensor pred, source;                 // contiguous
  std::vector<int64_t> patch_of_row;       // (B*rows) patch index of every pred row
  std::vector<double> row_weight;          // (B*rows)
  double denominator = 0.0;
};

LossLayout make_layout(const at::Tensor& pred, const std::optional<at::Tensor>& imgs,
                       const std::optional<at::Tensor>& ids_removed, const std::optional<at::Tensor>& mask,
                       const std::optional<at::Tensor>& target, const std::optional<at::Tensor>& sample_weight,
                       at::IntArrayRef patch_size, bool norm_pix) {
  LossLayout lay;
  static_cast<LossShape&>(lay) =
      check_loss_shapes(pred, imgs, ids_removed, mask, target, sample_weight, patch_size, norm_pix);
  std::vector<double> weight_of_sample(lay.batch, 1.0);
  if (sample_weight.has_value()) {
    const at::Tensor w = sample_weight->to(at::kDouble).contiguous();
    std::copy_n(w.const_data_ptr<double>(), lay.batch, weight_of_sample.begin());
  }
  lay.patch_of_row.resize(lay.batch * lay.rows);
  lay.row_weight.resize(lay.batch * lay.rows);
  if (lay.removed_only) {
    const at::Tensor ids = ids_removed->to(at::kLong).contiguous();
    check_distinct_rows_cpu(ids, lay.length, "ids_removed");
    std::copy_n(ids.const_data_ptr<int64_t>(), lay.batch * lay.rows, lay.patch_of_row.begin());
    for (int64_t n = 0; n < lay.batch * lay.rows; ++n) lay.row_weight[n] = weight_of_sample[n / lay.rows];
  } else {
    const at::Tensor m = mask->to(at::kDouble).contiguous();
    const double* md = m.const_data_ptr<double>();
    for (int64_t n = 0; n < lay.batch * lay.rows; ++n) {
      lay.patch_of_row[n] = n % lay.rows;
      lay.row_weight[n] = md[n] * weight_of_sample[n / lay.rows];
    }
  }
  for (double w : lay.row_weight) lay.denominator += w;
  lay.pred = pred.contiguous();
  lay.source = (lay.pixels ? *imgs : *target).contiguous();
  return lay;
}

// Element d of a patch lives at sample offset patch_origin + source_offset[d] (pixel sources).
std::vector<int64_t> pixel_offsets(const PatchGeometry& g) {
  std::vector<int64_t> offsets(g.patch_dim());
  int64_t d = 0;
  for (int64_t t = 0; t < g.pt; ++t)
    for (int64_t i = 0; i < g.ph; ++i)
      for (int64_t j = 0; j < g.pw; ++j)
        for (int64_t c = 0; c < g.chans; ++c) offsets[d++] = c * g.channel_stride() + (t * g.height + i) * g.width + j;
  return offsets;
}

// Reads one target row (as double) and returns its offsets' base in the source; normalises it when norm_pix.
template <typename ST>
struct TargetReader {
  const LossLayout& lay;
  const std::vector<int64_t>& offsets;
  bool norm_pix;
  double eps;

  int64_t base(int64_t b, int64_t patch) const {
    return lay.pixels ? b * lay.geo.sample_stride() + lay.geo.patch_origin(patch) : (b * lay.length + patch) * lay.dim;
  }
  int64_t offset(int64_t d) const { return lay.pixels ? offsets[d] : d; }

  // fills row (D) with the (normalised) target; returns rstd (1 without norm_pix)
  double read(int64_t b, int64_t patch, double* row) const {
    const ST* src = lay.source.const_data_ptr<ST>() + base(b, patch);
    for (int64_t d = 0; d < lay.dim; ++d) row[d] = static_cast<double>(src[offset(d)]);
    if (!norm_pix) return 1.0;
    double mean = 0.0;
    for (int64_t d = 0; d < lay.dim; ++d) mean += row[d];
    mean /= static_cast<double>(lay.dim);
    double sq = 0.0;
    for (int64_t d = 0; d < lay.dim; ++d) {
      row[d] -= mean;
      sq += row[d] * row[d];
    }
    const double rstd = 1.0 / std::sqrt(sq / static_cast<double>(lay.dim - 1) + eps);
    for (int64_t d = 0; d < lay.dim; ++d) row[d] *= rstd;
    return rstd;
  }
};

template <typename PT, typename ST>
double loss_sum(const LossLayout& lay, bool norm_pix, double eps) {
  const std::vector<int64_t> offsets = lay.pixels ? pixel_offsets(lay.geo) : std::vector<int64_t>{};
  const TargetReader<ST> reader{lay, offsets, norm_pix, eps};
  const PT* pred = lay.pred.const_data_ptr<PT>();
  const int64_t total = lay.batch * lay.rows;
  std::vector<double> row_loss(total);
  at::parallel_for(0, total, std::max<int64_t>(1, 8192 / lay.dim), [&](int64_t begin, int64_t end) {
    std::vector<double> row(lay.dim);
    for (int64_t n = begin; n < end; ++n) {
      reader.read(n / lay.rows, lay.patch_of_row[n], row.data());
      const PT* p = pred + n * lay.dim;
      double sq = 0.0;
      for (int64_t d = 0; d < lay.dim; ++d) {
        const double diff = static_cast<double>(p[d]) - row[d];
        sq += diff * diff;
      }
      row_loss[n] = sq / static_cast<double>(lay.dim) * lay.row_weight[n];
    }
  });
  double sum = 0.0;
  for (double v : row_loss) sum += v;
  return sum;
}

at::Tensor masked_mse_loss_cpu(const at::Tensor& pred, const std::optional<at::Tensor>& imgs,
                               const std::optional<at::Tensor>& ids_removed, const std::optional<at::Tensor>& mask,
                               const std::optional<at::Tensor>& target, const std::optional<at::Tensor>& sample_weight,
                               at::IntArrayRef patch_size, bool norm_pix, double eps) {
  const LossLayout lay = make_layout(pred, imgs, ids_removed, mask, target, sample_weight, patch_size, norm_pix);
  double sum = 0.0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, lay.pred.scalar_type(), "masked_mse_loss_pred", [&] {
    using PT = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, lay.source.scalar_type(), "masked_mse_loss_src", [&] {
      sum = loss_sum<PT, scalar_t>(lay, norm_pix, eps);
    });
  });
  at::Tensor out = new_output({}, pred.options().dtype(at::kFloat));
  *out.mutable_data_ptr<float>() = static_cast<float>(sum / lay.denominator);
  return out;
}

template <typename PT, typename ST>
void loss_backward(const LossLayout& lay, bool norm_pix, double eps, double coef, at::Tensor& grad_pred,
                   at::Tensor* grad_source) {
  const std::vector<int64_t> offsets = lay.pixels ? pixel_offsets(lay.geo) : std::vector<int64_t>{};
  const TargetReader<ST> reader{lay, offsets, norm_pix, eps};
  const PT* pred = lay.pred.const_data_ptr<PT>();
  PT* gp = grad_pred.mutable_data_ptr<PT>();
  ST* gs = grad_source != nullptr ? grad_source->mutable_data_ptr<ST>() : nullptr;
  const int64_t total = lay.batch * lay.rows;
  const double dim = static_cast<double>(lay.dim);
  at::parallel_for(0, total, std::max<int64_t>(1, 8192 / lay.dim), [&](int64_t begin, int64_t end) {
    std::vector<double> row(lay.dim), grad_row(lay.dim);
    for (int64_t n = begin; n < end; ++n) {
      const int64_t b = n / lay.rows, patch = lay.patch_of_row[n];
      const double rstd = reader.read(b, patch, row.data());
      const double scale = coef * lay.row_weight[n];
      const PT* p = pred + n * lay.dim;
      double grad_sum = 0.0, grad_dot = 0.0;
      for (int64_t d = 0; d < lay.dim; ++d) {
        grad_row[d] = (static_cast<double>(p[d]) - row[d]) * scale;
        gp[n * lay.dim + d] = static_cast<PT>(grad_row[d]);
        grad_sum += grad_row[d];
        grad_dot += grad_row[d] * row[d];
      }
      if (gs == nullptr) continue;
      // d loss / d target = -grad_row; through norm_pix: rstd * (g - mean(g) - t_norm * <g, t_norm> / (D-1))
      ST* dst = gs + reader.base(b, patch);
      for (int64_t d = 0; d < lay.dim; ++d) {
        double g = -grad_row[d];
        if (norm_pix) g = (g + grad_sum / dim + row[d] * grad_dot / (dim - 1.0)) * rstd;
        dst[reader.offset(d)] = static_cast<ST>(g);
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> masked_mse_loss_backward_cpu(
    const at::Tensor& grad_loss, const at::Tensor& pred, const std::optional<at::Tensor>& imgs,
    const std::optional<at::Tensor>& ids_removed, const std::optional<at::Tensor>& mask,
    const std::optional<at::Tensor>& target, const std::optional<at::Tensor>& sample_weight, at::IntArrayRef patch_size,
    bool norm_pix, double eps, bool source_grad) {
  const LossLayout lay = make_layout(pred, imgs, ids_removed, mask, target, sample_weight, patch_size, norm_pix);
  TORCH_CHECK_VALUE(grad_loss.numel() == 1, "grad_loss must be a scalar, got ", grad_loss.sizes());
  const double coef = 2.0 * grad_loss.to(at::kDouble).item<double>() / (static_cast<double>(lay.dim) * lay.denominator);
  at::Tensor grad_pred = new_output(pred.sizes(), pred.options());
  at::Tensor grad_source = loss_source_grad(lay, lay.source, source_grad);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, lay.pred.scalar_type(), "masked_mse_bwd_pred", [&] {
    using PT = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, lay.source.scalar_type(), "masked_mse_bwd_src", [&] {
      loss_backward<PT, scalar_t>(lay, norm_pix, eps, coef, grad_pred, source_grad ? &grad_source : nullptr);
    });
  });
  return {grad_pred, grad_source};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastmae_kernels, CPU, m) {
  m.impl("masked_mse_loss", &masked_mse_loss_cpu);
  m.impl("masked_mse_loss_backward", &masked_mse_loss_backward_cpu);
}

}  // namespace fastmae_native
