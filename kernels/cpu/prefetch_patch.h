// Software prefetch of one patch of the image: its pt*ph*C short runs lie far apart, which the hardware
// prefetchers do not follow, so the gather and the loss's target rows would otherwise wait on memory latency.
#pragma once

#include <cstdint>

#include "../geometry.h"

namespace fastmae_native {

// Asks for every cache line of the patch whose first pixel is `patch` (channel 0, frame 0, row 0 of the
// patch). Always inlined: GCC deems an out-of-line function of prefetches alone pure and drops its calls.
template <typename T>
[[gnu::always_inline]] inline void prefetch_patch(const PatchGeometry& g, const T* patch) {
  constexpr int64_t kLine = 64 / sizeof(T);
  for (int64_t c = 0; c < g.chans; ++c)
    for (int64_t t = 0; t < g.pt; ++t)
      for (int64_t i = 0; i < g.ph; ++i) {
        const T* run = patch + c * g.channel_stride() + (t * g.height + i) * g.width;
        for (int64_t j = 0; j < g.pw; j += kLine) __builtin_prefetch(run + j);
        __builtin_prefetch(run + g.pw - 1);  // a run that straddles a line boundary
      }
}

}  // namespace fastmae_native
