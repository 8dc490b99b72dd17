// CPU outputs of 1 MiB or more from a cache of freed blocks.
//
// glibc serves a block over its mmap threshold (128 KiB at first, raised up to 32 MiB by the blocks freed
// since) with fresh pages from the OS and unmaps it on free, so which outputs start untouched depends on the
// process's history, and for those the OS faults in and zeroes every page at the kernel's first write: for a
// ViT-B float32 image gradient (38.5 MB) that took twice as long as the kernel's own writes (docs/native.md).
// So outputs of at least kCachedBytes come from a small cache, as the CUDA caching allocator does on the GPU:
// a block whose tensor dies is kept (up to FASTMAE_NATIVE_CACHE_MB in all, default 512; 0 turns the cache
// off; oldest blocks freed first) and handed out again for a request of the same rounded size. A fresh block
// of 2 MiB or more is 2 MiB aligned and asks for transparent huge pages (one fault per 2 MiB, not 512).
// Only where memory comes from changes: every output is written in full by its kernel, results identical.
#pragma once

#include <ATen/EmptyTensor.h>
#include <ATen/core/Tensor.h>
#include <c10/core/Allocator.h>

#include <cstdint>
#include <cstdlib>
#include <list>
#include <mutex>

#include "../geometry.h"

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace fastmae_native {

class OutputCache final : public c10::Allocator {
 public:
  static constexpr size_t kCachedBytes = size_t(1) << 20;
  static constexpr size_t kHugePage = size_t(2) << 20;  // a transparent huge page
  static constexpr size_t kPage = size_t(4) << 10;

  static OutputCache& instance() {
    static OutputCache* cache = new OutputCache();  // never destroyed: tensors may outlive static teardown
    return *cache;
  }

  c10::DataPtr allocate(size_t nbytes) override {
    const size_t grain = nbytes >= kHugePage ? kHugePage : kPage;  // blocks of a size class are alike
    const size_t size = (nbytes + grain - 1) / grain * grain;
    void* data = take(size);
    if (data == nullptr) data = fresh(size, grain);
    return {data, new Block{data, size}, &release, c10::Device(c10::DeviceType::CPU)};
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

 private:
  struct Block {
    void* data;
    size_t size;
  };

  OutputCache() : limit_(limit_from_env()) {}

  static size_t limit_from_env() {
    const char* value = std::getenv("FASTMAE_NATIVE_CACHE_MB");
    if (value == nullptr || *value == '\0') return size_t(512) << 20;
    char* end = nullptr;
    const long long mib = std::strtoll(value, &end, 10);
    TORCH_CHECK_VALUE(end != value && *end == '\0' && mib >= 0,
                      "FASTMAE_NATIVE_CACHE_MB must be a whole number of MiB >= 0, got '", value, "'");
    return static_cast<size_t>(mib) << 20;
  }

  static void* fresh(size_t size, size_t align) {
    void* data = std::aligned_alloc(align, size);
    TORCH_CHECK(data != nullptr, "fastmae native: out of memory allocating ", size, " bytes");
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (align == kHugePage) madvise(data, size, MADV_HUGEPAGE);  // only a hint: failure changes nothing
#endif
    return data;
  }

  void* take(size_t size) {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto it = free_.begin(); it != free_.end(); ++it) {
      if (it->size == size) {
        void* data = it->data;
        held_ -= size;
        free_.erase(it);
        return data;
      }
    }
    return nullptr;
  }

  static void release(void* context) {
    Block* block = static_cast<Block*>(context);
    instance().keep(*block);
    delete block;
  }

  void keep(const Block& block) {
    std::list<Block> evicted;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      free_.push_back(block);  // newest last
      held_ += block.size;
      while (held_ > limit_ && !free_.empty()) {
        held_ -= free_.front().size;
        evicted.splice(evicted.end(), free_, free_.begin());
      }
    }
    for (const Block& old : evicted) std::free(old.data);
  }

  const size_t limit_;
  std::mutex mutex_;
  std::list<Block> free_;
  size_t held_ = 0;
};

// new_output (geometry.h) for outputs the kernel then writes in full: large ones from OutputCache.
inline at::Tensor new_cpu_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  if (debug_checks_enabled()) return new_output(sizes, options);  // poisoned, from the default allocator
  const c10::ScalarType dtype = c10::typeMetaToScalarType(options.dtype());
  if (c10::multiply_integers(sizes) * c10::elementSize(dtype) < OutputCache::kCachedBytes) {
    return at::empty(sizes, options);
  }
  return at::Tensor(at::detail::empty_generic(sizes, &OutputCache::instance(),
                                              c10::DispatchKeySet(c10::DispatchKey::CPU), dtype, std::nullopt));
}

}  // namespace fastmae_native
