// Prototype matching with fused bilinear upsampling (CPU).
#pragma once
#include <cstddef>
#include <cstdint>

namespace clips4rt {

// emb: (D, h, w) float32, unit-length pixel embeddings (C order).
// protos: (K, D) float32 class prototypes (C order).
// For every output pixel (y, x) of an (H, W) grid the K cosine maps emb . protos
// are bilinearly resampled (torch interpolate, align_corners=False) and reduced:
//   labels[y, x] = argmax_k s_k   (first index on ties)
//   scores[y, x] = max_k s_k
//   probs[y, x]  = softmax(logit_scale * s)_argmax
// Cosines and interpolation run in float64 (so labels match the float64 numpy
// reference bit for bit except on exact ties); the softmax sum runs in float32.
// Returns false if a cosine is not finite (NaN/inf in the inputs).
bool match_upsample(const float* emb, std::size_t D, std::size_t h, std::size_t w,
                    const float* protos, std::size_t K, double logit_scale,
                    std::int32_t* labels, float* scores, float* probs,
                    std::size_t H, std::size_t W, int threads);

}  // namespace clips4rt
