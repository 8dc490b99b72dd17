// Large CPU outputs are fresh mmap'd memory (glibc maps blocks over 32 MiB anew on every allocation), and
// the first write to each 4 KiB page costs a page fault: for a ViT-B image gradient that took several times
// longer than writing the data itself. Asking for transparent huge pages on the untouched range before the
// kernel writes it turns ~512 faults per 2 MiB into one (PyTorch offers the same via THP_MEM_ALLOC_ENABLE).
// Only a hint: a kernel without THP, or memory already touched, is unaffected and results are identical.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "../geometry.h"

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace fastmae_native {

inline void advise_huge_pages(const at::Tensor& out) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(out.data_ptr());
  const uintptr_t end = begin + static_cast<uintptr_t>(out.nbytes());
  const uintptr_t first = (begin + kHuge - 1) & ~(kHuge - 1), last = end & ~(kHuge - 1);
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);  // failure: no hint
#else
  (void)out;
#endif
}

// new_output (geometry.h) with the hint, for outputs the kernel then writes in full.
inline at::Tensor new_cpu_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor out = new_output(sizes, options);
  advise_huge_pages(out);
  return out;
}

}  // namespace fastmae_native
