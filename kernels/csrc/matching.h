// Prototype matching with fused bilinear upsampling (CPU).
#pragma once
#include <cstddef>
#include <cstdint>

namespace clips4rt {

// What match_upsample computes (the numpy oracle is clips4rt/kernels.py:
// match_upsample_reference):
//   emb (D, h, w) float32 pixel embeddings, protos (K, D) float32 prototypes;
//   c_k = protos[k] . emb[:, y, x] on the (h, w) grid;
//   s_k(Y, X) = c_k bilinearly resampled to (H, W) (torch interpolate,
//     align_corners=False): first along x, then along y, each as a + l * (b - a);
//   labels = argmax_k s_k (first index on exact ties), scores = max_k s_k,
//   probs = 1 / sum_k exp(logit_scale * (s_k - max)) (softmax of the winner);
//   labels -> -1 where label >= n_classes or probs < threshold (background rule).
// Everything runs in float32 (taps computed in float64, rounded once). Against
// the float64 oracle, labels can differ only where the oracle's top two values
// are within the float32 error of the dot products: |delta| <= ~(D + 8) * 2^-24
// * |p| * |e| (unit vectors: ~3e-5 at D = 512).
struct MatchArgs {
  const float* emb;
  std::size_t D, h, w;
  const float* protos;
  std::size_t K;
  float logit_scale;
  std::int32_t n_classes;  // labels >= n_classes become -1 (pass K for none)
  float threshold;         // probs < threshold become -1 (0 for none)
  std::int32_t* labels;
  float* scores;  // may be null: not written
  float* probs;   // may be null: no softmax at all (threshold must be 0)
  std::size_t H, W;
  // set by match_upsample: every output is aligned to the vector width and W is a
  // multiple of it, so full vectors go out with non-temporal (streaming) stores
  bool stream = false;
};

// Returns false (and leaves the outputs undefined) if a cosine is not finite.
// threads <= 0: all cores. isa: "auto", "avx512", "avx2" or "generic".
bool match_upsample(const MatchArgs& a, int threads, const char* isa);

// Instruction sets compiled in and supported by this CPU, best first.
const char* const* available_isas(std::size_t* count);

// ---- per-ISA kernels (matching_simd.h, compiled once per instruction set) ----
struct Taps {
  const std::int32_t* i0;
  const std::int32_t* i1;
  const float* l;               // out = in[i0] + l * (in[i1] - in[i0]); padded with zeros
  const std::uint32_t* run_end;  // run_end[r]: end of the r-th run of equal (i0, i1)
};

struct IsaKernels {
  const char* name;
  std::size_t lanes;
  // cos[k * P + p] for p in [pb, pe) (P = h * w); false if one is not finite.
  bool (*cosines)(const float* emb, std::size_t D, std::size_t P, const float* protos,
                  std::size_t K, float* cos, std::size_t pb, std::size_t pe);
  // Row yl of every class resampled along x for output columns [xb, xb + n):
  // out[k * stride + j]; stride >= round_up(n, lanes) + lanes (columns from n on are
  // scratch, finite).
  void (*resample_row)(const float* cos, std::size_t K, std::size_t h, std::size_t w,
                       std::size_t yl, Taps tx, std::size_t xb, std::size_t n, float* out,
                       std::size_t stride);
  // Output rows y .. y + rows - 1 from two x-resampled rows A, B (layout of
  // resample_row) at evenly spaced weights ly[0..rows); writes n pixels of each row
  // at column xb; tmp holds 4 * K * lanes + 3 * round_up(n, lanes) floats, cand
  // K ints + round_up(n, lanes) / lanes bytes.
  void (*reduce_band)(const float* A, const float* B, const float* ly, std::size_t rows,
                      std::size_t K, std::size_t stride, std::size_t n, const MatchArgs& a,
                      std::size_t y, std::size_t xb, float* tmp, std::int32_t* cand);
};

extern const IsaKernels kGeneric;
#if defined(CLIPS4RT_X86)
extern const IsaKernels kAvx2;
extern const IsaKernels kAvx512;
#endif

}  // namespace clips4rt
