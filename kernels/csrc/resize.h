// Antialiased bilinear resize of 8-bit images (CPU).
#pragma once
#include <cstddef>
#include <cstdint>

namespace clips4rt {

// src (H, W, C) uint8 -> dst (h, w, C) uint8, C-contiguous. Pillow's BILINEAR
// filter: triangle kernel widened by the scale when shrinking (antialiasing), taps
// centred at (o + 0.5) * in / out, weights normalised per output sample. Computed
// separably in float32 (vertical pass first, no rounding in between) and rounded
// half up once, so a pixel can differ from Pillow's (which rounds after each pass)
// by 1. threads <= 0: all cores.
void resize_bilinear_u8(const std::uint8_t* src, std::size_t H, std::size_t W, std::size_t C,
                        std::uint8_t* dst, std::size_t h, std::size_t w, int threads);

}  // namespace clips4rt
