// Label overlay blending (CPU).
#pragma once
#include <cstddef>
#include <cstdint>

namespace clips4rt {

// out[p] = image[p] where labels[p] < 0 or labels[p] >= n_colours, else
// (image[p] * (256 - alpha) + colours[labels[p]] * alpha + 128) >> 8 per channel.
// image/out (n, 3) uint8 (may alias), labels (n,) int32, colours (n_colours, 3),
// alpha in [0, 256]. One pass over the pixels; threads <= 0: all cores.
void blend_labels(const std::uint8_t* image, const std::int32_t* labels, std::size_t n,
                  const std::uint8_t* colours, std::size_t n_colours, int alpha,
                  std::uint8_t* out, int threads);

}  // namespace clips4rt
