#include "resize.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <thread>
#include <vector>

namespace clips4rt {
namespace {

// Pillow's precompute_coeffs for the bilinear filter: out sample o reads
// in[first[o] .. first[o] + count[o]) with weights w[o * taps ..].
struct Coeffs {
  std::vector<std::size_t> first, count;
  std::vector<float> w;
  std::size_t taps;
  Coeffs(std::size_t in, std::size_t out) : first(out), count(out) {
    const double scale = static_cast<double>(in) / static_cast<double>(out);
    const double fs = std::max(scale, 1.0), support = fs;
    taps = static_cast<std::size_t>(std::ceil(support)) * 2 + 1;
    w.assign(out * taps, 0.0f);
    std::vector<double> k(taps);
    for (std::size_t o = 0; o < out; ++o) {
      const double center = (static_cast<double>(o) + 0.5) * scale;
      const auto lo = static_cast<std::int64_t>(center - support + 0.5);
      const auto hi = static_cast<std::int64_t>(center + support + 0.5);
      const std::size_t a = static_cast<std::size_t>(std::max<std::int64_t>(lo, 0));
      const std::size_t b = std::min(static_cast<std::size_t>(std::max<std::int64_t>(hi, 0)), in);
      double total = 0;
      std::size_t n = 0;
      for (std::size_t i = a; i < b && n < taps; ++i, ++n) {
        const double x = std::fabs((static_cast<double>(i) - center + 0.5) / fs);
        k[n] = x < 1.0 ? 1.0 - x : 0.0;
        total += k[n];
      }
      first[o] = a;
      count[o] = n;
      for (std::size_t i = 0; i < n; ++i)
        w[o * taps + i] = static_cast<float>(total > 0 ? k[i] / total : 0.0);
    }
  }
};

// acc += w * s, the vertical pass's inner loop: built for AVX-512 (x86-64-v4), AVX2
// and plain x86-64 and chosen when the extension loads (GCC function multiversioning;
// the AVX-512 clone took 720p -> 344x192 from 0.76 to 0.70 ms, 1080p 1.40 -> 1.25 ms). (Keeping the sum
// of all taps in registers, 8 columns at a time, measured 3x slower: 12 source rows
// read in lockstep.)
#if defined(CLIPS4RT_X86) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#endif
void axpy_u8(float* __restrict acc, const std::uint8_t* __restrict s, float w, std::size_t n) {
  for (std::size_t j = 0; j < n; ++j) acc[j] += w * static_cast<float>(s[j]);
}

// Two source rows per pass over acc (half the acc loads and stores).
#if defined(CLIPS4RT_X86) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#endif
void axpy2_u8(float* __restrict acc, const std::uint8_t* __restrict s0, float w0,
              const std::uint8_t* __restrict s1, float w1, std::size_t n) {
  for (std::size_t j = 0; j < n; ++j)
    acc[j] += w0 * static_cast<float>(s0[j]) + w1 * static_cast<float>(s1[j]);
}

// Horizontal pass for 3 interleaved channels: each tap is one 4-float load (R, G, B
// and the next pixel's R, ignored) and one 4-wide multiply-add, instead of three
// scalar ones. acc must hold one float past the row.
typedef float F4 __attribute__((vector_size(16)));
typedef std::int32_t I4 __attribute__((vector_size(16)));

void horizontal_rgb(const float* acc, const Coeffs& cx, std::size_t w, std::uint8_t* d) {
  for (std::size_t x = 0; x < w; ++x) {
    const float* wx = cx.w.data() + x * cx.taps;
    const float* a = acc + cx.first[x] * 3;
    F4 v = {0.0f, 0.0f, 0.0f, 0.0f};
    for (std::size_t i = 0; i < cx.count[x]; ++i) {
      F4 p;
      std::memcpy(&p, a + i * 3, sizeof p);
      v += wx[i] * p;
    }
    v += 0.5f;  // round half up, clamp, convert: in the vector, 3 byte stores
    v = v < 0.0f ? F4{} : v;
    v = v > 255.0f ? F4{} + 255.0f : v;
    const I4 q = __builtin_convertvector(v, I4);
    d[x * 3] = static_cast<std::uint8_t>(q[0]);
    d[x * 3 + 1] = static_cast<std::uint8_t>(q[1]);
    d[x * 3 + 2] = static_cast<std::uint8_t>(q[2]);
  }
}

}  // namespace

void resize_bilinear_u8(const std::uint8_t* src, std::size_t H, std::size_t W, std::size_t C,
                        std::uint8_t* dst, std::size_t h, std::size_t w, int threads) {
  const Coeffs cy(H, h), cx(W, w);
  const std::size_t row = W * C;
  std::size_t t = threads > 0 ? static_cast<std::size_t>(threads)
                              : std::max(1u, std::thread::hardware_concurrency());
  // a thread per ~2 M multiply-adds: 720p -> 344x192 (8 M) 0.88 -> 0.59 ms on two
  // threads right after a graph run whose onnxruntime threads sleep (the Segmenter's
  // default; with spinning ones one thread was faster); a thread start costs ~50 us
  const std::size_t work = h * cy.taps * row + h * w * C * cx.taps;
  t = std::max<std::size_t>(1, std::min({t, h, work >> 21}));
  auto band = [&](std::size_t yb, std::size_t ye) {
    std::vector<float> acc(row + 1, 0.0f);  // + 1: horizontal_rgb's 4-float loads
    for (std::size_t y = yb; y < ye; ++y) {
      // vertical: a weighted sum of whole source rows (contiguous, vectorises)
      std::fill(acc.begin(), acc.begin() + row, 0.0f);
      const std::uint8_t* s0 = src + cy.first[y] * row;
      const float* wy = cy.w.data() + y * cy.taps;
      std::size_t i = 0;
      for (; i + 2 <= cy.count[y]; i += 2)
        axpy2_u8(acc.data(), s0 + i * row, wy[i], s0 + (i + 1) * row, wy[i + 1], row);
      if (i < cy.count[y]) axpy_u8(acc.data(), s0 + i * row, wy[i], row);
      // horizontal, then round half up and clamp once
      std::uint8_t* d = dst + y * w * C;
      if (C == 3) {
        horizontal_rgb(acc.data(), cx, w, d);
        continue;
      }
      for (std::size_t x = 0; x < w; ++x) {
        const float* wx = cx.w.data() + x * cx.taps;
        const float* a = acc.data() + cx.first[x] * C;
        for (std::size_t c = 0; c < C; ++c) {
          float v = 0.0f;
          for (std::size_t i = 0; i < cx.count[x]; ++i) v += wx[i] * a[i * C + c];
          v = std::min(255.0f, std::max(0.0f, v + 0.5f));
          d[x * C + c] = static_cast<std::uint8_t>(v);
        }
      }
    }
  };
  if (t == 1) {
    band(0, h);
    return;
  }
  std::vector<std::thread> pool;
  const std::size_t chunk = (h + t - 1) / t;
  for (std::size_t i = 1; i < t; ++i) {
    const std::size_t b = i * chunk, e = std::min(h, b + chunk);
    if (b < e) pool.emplace_back(band, b, e);
  }
  band(0, std::min(h, chunk));
  for (auto& th : pool) th.join();
}

}  // namespace clips4rt
