#include "matching.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <thread>
#include <vector>

namespace clips4rt {
namespace {

// Runs fn(begin, end) over [0, n) split into contiguous chunks, one per thread.
template <class Fn>
void parallel_for(std::size_t n, int threads, Fn fn) {
  std::size_t t = threads > 0 ? static_cast<std::size_t>(threads)
                              : std::max(1u, std::thread::hardware_concurrency());
  t = std::max<std::size_t>(1, std::min(t, n));
  if (t == 1) {
    fn(std::size_t{0}, n);
    return;
  }
  std::vector<std::thread> pool;
  pool.reserve(t - 1);
  const std::size_t chunk = (n + t - 1) / t;
  for (std::size_t i = 1; i < t; ++i) {
    const std::size_t b = i * chunk, e = std::min(n, b + chunk);
    if (b < e) pool.emplace_back(fn, b, e);
  }
  fn(std::size_t{0}, std::min(n, chunk));
  for (auto& th : pool) th.join();
}

// Source index pair and weight of torch's bilinear, align_corners=False.
struct Tap {
  std::size_t i0, i1;
  double l1;
};

std::vector<Tap> make_taps(std::size_t in, std::size_t out) {
  std::vector<Tap> taps(out);
  const double scale = static_cast<double>(in) / static_cast<double>(out);
  for (std::size_t o = 0; o < out; ++o) {
    double src = (static_cast<double>(o) + 0.5) * scale - 0.5;
    if (src < 0) src = 0;
    std::size_t i0 = std::min(static_cast<std::size_t>(src), in - 1);
    std::size_t i1 = std::min(i0 + 1, in - 1);
    taps[o] = {i0, i1, src - static_cast<double>(i0)};
  }
  return taps;
}

}  // namespace

bool match_upsample(const float* emb, std::size_t D, std::size_t h, std::size_t w,
                    const float* protos, std::size_t K, double logit_scale,
                    std::int32_t* labels, float* scores, float* probs,
                    std::size_t H, std::size_t W, int threads) {
  const std::size_t P = h * w;
  // 1) Low-resolution cosines, laid out (P, K) so the upsampling reads K contiguous.
  std::vector<double> cos(P * K);
  std::atomic<bool> finite{true};
  parallel_for(P, threads, [&](std::size_t b, std::size_t e) {
    std::vector<double> acc(e - b);
    for (std::size_t k = 0; k < K; ++k) {
      std::fill(acc.begin(), acc.end(), 0.0);
      const float* pk = protos + k * D;
      for (std::size_t d = 0; d < D; ++d) {
        const double c = pk[d];
        const float* row = emb + d * P;
        for (std::size_t p = b; p < e; ++p) acc[p - b] += c * static_cast<double>(row[p]);
      }
      for (std::size_t p = b; p < e; ++p) {
        if (!std::isfinite(acc[p - b])) finite = false;
        cos[p * K + k] = acc[p - b];
      }
    }
  });
  if (!finite) return false;

  // 2) Separable bilinear resampling fused with argmax / max / softmax-of-winner.
  const std::vector<Tap> ty = make_taps(h, H), tx = make_taps(w, W);
  const float fscale = static_cast<float>(logit_scale);
  parallel_for(H, threads, [&](std::size_t yb, std::size_t ye) {
    std::vector<double> line(w * K);  // the output row interpolated along y, (w, K)
    std::vector<double> v(K);
    for (std::size_t y = yb; y < ye; ++y) {
      const Tap t = ty[y];
      const double* r0 = cos.data() + t.i0 * w * K;
      const double* r1 = cos.data() + t.i1 * w * K;
      for (std::size_t i = 0; i < w * K; ++i) line[i] = r0[i] + t.l1 * (r1[i] - r0[i]);
      // (a + l*(b-a)) equals torch's (1-l)*a + l*b up to rounding; labels are
      // compared against the numpy reference, which uses this same form.
      for (std::size_t x = 0; x < W; ++x) {
        const Tap s = tx[x];
        const double* a = line.data() + s.i0 * K;
        const double* c = line.data() + s.i1 * K;
        std::size_t best = 0;
        double vmax = -INFINITY;
        for (std::size_t k = 0; k < K; ++k) {
          v[k] = a[k] + s.l1 * (c[k] - a[k]);
          if (v[k] > vmax) {
            vmax = v[k];
            best = k;
          }
        }
        float denom = 0.f;
        for (std::size_t k = 0; k < K; ++k)
          denom += std::exp(fscale * static_cast<float>(v[k] - vmax));
        const std::size_t o = y * W + x;
        labels[o] = static_cast<std::int32_t>(best);
        scores[o] = static_cast<float>(vmax);
        probs[o] = 1.f / denom;
      }
    }
  });
  return true;
}

}  // namespace clips4rt
