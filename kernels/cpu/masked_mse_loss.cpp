// CPU masked_mse_loss and its backward.
//
// Rows: a full pred (B,L,D) with mask (B,L) (row l weighs mask[b,l]*w_b), or a removed-only pred (B,L-K,D)
// with ids_removed (B,L-K) (row r is patch ids_removed[b,r], ids_shuffle[b,K+r], and weighs w_b); w = sample_weight or 1.
// loss = sum_rows weight * mean_d (pred - target)^2 / sum_rows weight, a float32 scalar. The target row is
// built from the pixels in patchify order ((t*ph+i)*pw+j)*C+c, or read from an explicit target (B,L,D); with
// norm_pix it is (t - mean) / sqrt(var_unbiased + eps).
//
// Every row is one task: its target is first copied into a small contiguous buffer (for pixels: pw-wide
// contiguous runs of each channel plane, interleaved to channel-last), then mean, variance and the squared
// error are lane-blocked float32 sums over that buffer and the contiguous pred row (float64 for float64
// inputs). Rows of weight 0 (kept patches under a mask) are never read, as in the Triton kernel; the backward
// writes zeros there. Per-row results go to their own slots and are added in order in float64: the same bits
// on every run and any number of threads.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <cmath>
#include <cstring>
#include <optional>
#include <vector>

#include "../geometry.h"
#include "output_cache.h"
#include "lanes.h"
#include "prefetch_patch.h"

namespace fastmae_native {
namespace {

constexpr int64_t kGrainElements = 16384;  // about this many pred elements per parallel task

// Everything the row loops need, checked and made contiguous once.
struct LossLayout : LossShape {
  at::Tensor pred, source;            // contiguous
  std::vector<int64_t> patch_of_row;  // (B*rows) patch index of every pred row
  std::vector<double> row_weight;     // (B*rows)
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

// Moves one target row between the source (image planes or an explicit (B,L,D) target) and a contiguous
// channel-last row of the accumulation type A. kChans > 0 fixes C at compile time (1 and 3 are the usual).
template <typename ST, typename A, int kChans>
struct RowIO {
  const LossLayout& lay;

  int64_t base(int64_t b, int64_t patch) const {
    return lay.pixels ? b * lay.geo.sample_stride() + lay.geo.patch_origin(patch) : (b * lay.length + patch) * lay.dim;
  }

  [[gnu::always_inline]] void read(const ST* src, A* row) const {
    if (!lay.pixels) {
      for (int64_t d = 0; d < lay.dim; ++d) row[d] = load_as<A>(src[d]);
      return;
    }
    const PatchGeometry& g = lay.geo;
    const int64_t chans = kChans > 0 ? kChans : g.chans, cs = g.channel_stride();
    for (int64_t t = 0; t < g.pt; ++t) {
      for (int64_t i = 0; i < g.ph; ++i) {
        const ST* line = src + (t * g.height + i) * g.width;  // channel 0 of this pixel row of the patch
        A* out = row + (t * g.ph + i) * g.pw * chans;
        if constexpr (kChans == 3) {  // one pass over the three runs: SIMD loads, a 3-way interleave
          const ST *r0 = line, *r1 = line + cs, *r2 = line + 2 * cs;
          for (int64_t j = 0; j < g.pw; ++j) {
            out[3 * j] = load_as<A>(r0[j]);
            out[3 * j + 1] = load_as<A>(r1[j]);
            out[3 * j + 2] = load_as<A>(r2[j]);
          }
          continue;
        }
        for (int64_t c = 0; c < chans; ++c) {
          const ST* run = line + c * cs;  // pw contiguous pixels of one channel
          for (int64_t j = 0; j < g.pw; ++j) out[j * chans + c] = load_as<A>(run[j]);
        }
      }
    }
  }

  // Asks for the cache lines of a pixel row about to be read (its patch's short runs; prefetch_patch.h).
  [[gnu::always_inline]] void prefetch(const ST* src) const {
    if (lay.pixels) prefetch_patch(lay.geo, src);  // else one contiguous row: the hardware streams it
  }

  // the inverse of read: row (channel-last) -> source layout
  [[gnu::always_inline]] void write(const A* row, ST* dst) const {
    if (!lay.pixels) {
      for (int64_t d = 0; d < lay.dim; ++d) dst[d] = store_as<ST>(row[d]);
      return;
    }
    const PatchGeometry& g = lay.geo;
    const int64_t chans = kChans > 0 ? kChans : g.chans, cs = g.channel_stride();
    for (int64_t t = 0; t < g.pt; ++t) {
      for (int64_t i = 0; i < g.ph; ++i) {
        ST* line = dst + (t * g.height + i) * g.width;
        const A* in = row + (t * g.ph + i) * g.pw * chans;
        if constexpr (kChans == 3) {
          ST *r0 = line, *r1 = line + cs, *r2 = line + 2 * cs;
          for (int64_t j = 0; j < g.pw; ++j) {
            r0[j] = store_as<ST>(in[3 * j]);
            r1[j] = store_as<ST>(in[3 * j + 1]);
            r2[j] = store_as<ST>(in[3 * j + 2]);
          }
          continue;
        }
        for (int64_t c = 0; c < chans; ++c) {
          ST* run = line + c * cs;
          for (int64_t j = 0; j < g.pw; ++j) run[j] = store_as<ST>(in[j * chans + c]);
        }
      }
    }
  }

  // zeros over the row's place in the source layout
  [[gnu::always_inline]] void zero(ST* dst) const {
    if (!lay.pixels) {
      std::memset(dst, 0, lay.dim * sizeof(ST));
      return;
    }
    const PatchGeometry& g = lay.geo;
    for (int64_t c = 0; c < g.chans; ++c)
      for (int64_t t = 0; t < g.pt; ++t)
        for (int64_t i = 0; i < g.ph; ++i)
          std::memset(dst + c * g.channel_stride() + (t * g.height + i) * g.width, 0, g.pw * sizeof(ST));
  }
};

// The first row at or after n that is read (weight != 0), or total.
[[gnu::always_inline]] inline int64_t next_active(const LossLayout& lay, int64_t n, int64_t total) {
  while (n < total && lay.row_weight[n] == 0.0) ++n;
  return n;
}

// Keeps the source lines of the next kAhead rows that are read on their way into the cache.
template <typename IO, typename ST>
struct Lookahead {
  static constexpr int kAhead = 3;
  const LossLayout& lay;
  const IO& io;
  const ST* source;
  int64_t end, pos;  // pos: the last row asked for
  int pending = 0;

  // at the start of row n (rows come in increasing order)
  [[gnu::always_inline]] void at(int64_t n) {
    if (pending > 0 && n <= pos) --pending;
    pos = std::max(pos, n);
    while (pending < kAhead) {
      pos = next_active(lay, pos + 1, end);
      if (pos >= end) return;
      io.prefetch(source + io.base(pos / lay.rows, lay.patch_of_row[pos]));
      ++pending;
    }
  }
};

// norm_pix statistics of a target row: t_norm = (t - mean) * rstd; mean 0 and rstd 1 without norm_pix.
// Two passes over the (L1-resident) row, mean then the centred squares, as accurate as PyTorch's var.
template <typename A>
struct RowStats {
  A mean = 0, rstd = 1;
  [[gnu::always_inline]] RowStats(const A* row, int64_t dim, bool norm_pix, double eps) {
    if (!norm_pix) return;
    mean = lane_sum<A>(dim, [&](int64_t d) { return row[d]; }) / static_cast<A>(dim);
    const A sq = lane_sum<A>(dim, [&](int64_t d) {
      const A c = row[d] - mean;
      return c * c;
    });
    rstd = A(1) / std::sqrt(sq / static_cast<A>(dim - 1) + static_cast<A>(eps));
  }
};

// The accumulation type: float32 unless an input is float64.
template <typename PT, typename ST>
using loss_acc_t = std::conditional_t<std::is_same_v<PT, double> || std::is_same_v<ST, double>, double, float>;

// Loss of rows [begin, end) into row_loss (one parallel task).
template <typename PT, typename ST, int kChans>
FASTMAE_ISA_CLONES void loss_rows(const LossLayout& lay, bool norm_pix, double eps, int64_t begin, int64_t end,
                                  double* row_loss) {
  using A = loss_acc_t<PT, ST>;
  const RowIO<ST, A, kChans> io{lay};
  const PT* pred = lay.pred.const_data_ptr<PT>();
  const ST* source = lay.source.const_data_ptr<ST>();
  const int64_t dim = lay.dim;
  std::vector<A> row(dim);
  Lookahead<decltype(io), ST> ahead{lay, io, source, end, begin};
  for (int64_t n = next_active(lay, begin, end); n < end; n = next_active(lay, n + 1, end)) {
    ahead.at(n);  // rows of weight 0 (kept patches) are not read at all
    io.read(source + io.base(n / lay.rows, lay.patch_of_row[n]), row.data());
    const RowStats<A> st(row.data(), dim, norm_pix, eps);
    const PT* p = pred + n * dim;
    const A sq = lane_sum<A>(dim, [&](int64_t d) {
      const A diff = load_as<A>(p[d]) - (row[d] - st.mean) * st.rstd;
      return diff * diff;
    });
    row_loss[n] = static_cast<double>(sq) / static_cast<double>(dim) * lay.row_weight[n];
  }
}

template <typename PT, typename ST, int kChans>
double loss_sum(const LossLayout& lay, bool norm_pix, double eps) {
  const int64_t total = lay.batch * lay.rows;
  std::vector<double> row_loss(total, 0.0);
  at::parallel_for(0, total, std::max<int64_t>(1, kGrainElements / lay.dim), [&](int64_t begin, int64_t end) {
    loss_rows<PT, ST, kChans>(lay, norm_pix, eps, begin, end, row_loss.data());
  });
  double sum = 0.0;
  for (double v : row_loss) sum += v;
  return sum;
}

// Calls fn.template operator()<PT, ST, kChans>() for the runtime dtypes and channel count.
template <typename Fn>
void dispatch_loss(const LossLayout& lay, Fn&& fn) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, lay.pred.scalar_type(), "masked_mse_loss_pred", [&] {
    using PT = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, lay.source.scalar_type(), "masked_mse_loss_source", [&] {
      const int64_t chans = lay.pixels ? lay.geo.chans : 0;
      if (chans == 3) {
        fn.template operator()<PT, scalar_t, 3>();
      } else if (chans == 1) {
        fn.template operator()<PT, scalar_t, 1>();
      } else {
        fn.template operator()<PT, scalar_t, 0>();
      }
    });
  });
}

at::Tensor masked_mse_loss_cpu(const at::Tensor& pred, const std::optional<at::Tensor>& imgs,
                               const std::optional<at::Tensor>& ids_removed, const std::optional<at::Tensor>& mask,
                               const std::optional<at::Tensor>& target, const std::optional<at::Tensor>& sample_weight,
                               at::IntArrayRef patch_size, bool norm_pix, double eps) {
  const LossLayout lay = make_layout(pred, imgs, ids_removed, mask, target, sample_weight, patch_size, norm_pix);
  double sum = 0.0;
  dispatch_loss(lay, [&]<typename PT, typename ST, int kChans>() {
    sum = loss_sum<PT, ST, kChans>(lay, norm_pix, eps);
  });
  at::Tensor out = new_output({}, pred.options().dtype(at::kFloat));
  *out.mutable_data_ptr<float>() = static_cast<float>(sum / lay.denominator);
  return out;
}

// Gradients of rows [begin, end) (one parallel task); gs is null without a source gradient.
template <typename PT, typename ST, int kChans>
FASTMAE_ISA_CLONES void backward_rows(const LossLayout& lay, bool norm_pix, double eps, double coef, PT* gp, ST* gs,
                                      int64_t begin, int64_t end) {
  using A = loss_acc_t<PT, ST>;
  const RowIO<ST, A, kChans> io{lay};
  const PT* pred = lay.pred.const_data_ptr<PT>();
  const ST* source = lay.source.const_data_ptr<ST>();
  const int64_t dim = lay.dim;
  const A inv_dim = A(1) / static_cast<A>(dim), inv_dof = A(1) / static_cast<A>(dim - 1);
  std::vector<A> row(dim), grad_row(dim);
  Lookahead<decltype(io), ST> ahead{lay, io, source, end, begin};
  for (int64_t n = begin; n < end; ++n) {
    const int64_t b = n / lay.rows, base = io.base(b, lay.patch_of_row[n]);
    PT* gp_row = gp + n * dim;
    if (lay.row_weight[n] == 0.0) {  // a kept patch: zero gradients, its inputs never read
      std::memset(static_cast<void*>(gp_row), 0, dim * sizeof(PT));
      if (gs != nullptr && !lay.removed_only) io.zero(gs + base);
      continue;
    }
    ahead.at(n);
    io.read(source + base, row.data());
    const RowStats<A> st(row.data(), dim, norm_pix, eps);
    const A scale = static_cast<A>(coef * lay.row_weight[n]);
    const PT* p = pred + n * dim;
    if (norm_pix) {
      for (int64_t d = 0; d < dim; ++d) row[d] = (row[d] - st.mean) * st.rstd;
    }
    for (int64_t d = 0; d < dim; ++d) {
      const A g = (load_as<A>(p[d]) - row[d]) * scale;
      grad_row[d] = g;
      gp_row[d] = store_as<PT>(g);
    }
    if (gs == nullptr) continue;
    // d loss / d target = -g; through norm_pix: rstd * (-g + sum(g)/D + t_norm * <g, t_norm> / (D-1))
    if (norm_pix) {
      const A grad_sum = lane_sum<A>(dim, [&](int64_t d) { return grad_row[d]; }) * inv_dim;
      const A grad_dot = lane_sum<A>(dim, [&](int64_t d) { return grad_row[d] * row[d]; }) * inv_dof;
      for (int64_t d = 0; d < dim; ++d) grad_row[d] = (grad_sum + row[d] * grad_dot - grad_row[d]) * st.rstd;
    } else {
      for (int64_t d = 0; d < dim; ++d) grad_row[d] = -grad_row[d];
    }
    io.write(grad_row.data(), gs + base);
  }
}

template <typename PT, typename ST, int kChans>
void loss_backward(const LossLayout& lay, bool norm_pix, double eps, double coef, at::Tensor& grad_pred,
                   at::Tensor* grad_source) {
  PT* gp = grad_pred.mutable_data_ptr<PT>();
  ST* gs = grad_source != nullptr ? grad_source->mutable_data_ptr<ST>() : nullptr;
  at::parallel_for(0, lay.batch * lay.rows, std::max<int64_t>(1, kGrainElements / lay.dim),
                   [&](int64_t begin, int64_t end) {
    backward_rows<PT, ST, kChans>(lay, norm_pix, eps, coef, gp, gs, begin, end);
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
  at::Tensor grad_pred = new_cpu_output(pred.sizes(), pred.options());
  at::Tensor grad_source = loss_source_grad(lay, lay.source, source_grad);
  dispatch_loss(lay, [&]<typename PT, typename ST, int kChans>() {
    loss_backward<PT, ST, kChans>(lay, norm_pix, eps, coef, grad_pred, source_grad ? &grad_source : nullptr);
  });
  return {grad_pred, grad_source};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastmae_kernels, CPU, m) {
  m.impl("masked_mse_loss", &masked_mse_loss_cpu);
  m.impl("masked_mse_loss_backward", &masked_mse_loss_backward_cpu);
}

}  // namespace fastmae_native
