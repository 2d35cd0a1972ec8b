// Prototype matching with fused bilinear upsampling: threads, buffers and the choice
// of instruction set. The arithmetic is in matching_simd.h.
//
// Work, for an (H, W) output of K classes from (D, h, w) embeddings:
//   1. cosines: K x D x h*w multiply-adds, reading the embeddings once (tiles of
//      G classes x 2 vectors of pixels, accumulators in registers);
//   2. each needed low-resolution row resampled along x into (K, tile) buffers that
//      stay in L2 (K x h x W lerps in all: the scattered reads happen at low
//      resolution only);
//   3. per band of output rows between two source rows, in vectors of columns: the
//      winner decided where one class leads at both source rows, else an argmax
//      over the band's candidate classes; the softmax sum by a recurrence along the
//      band (2 exps per class and band); the (H, W) outputs written once.
// Nothing of size K x H x W is ever materialised.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

#include "matching.h"

namespace clips4rt {
namespace {

template <class Fn>
void parallel_for(std::size_t n, std::size_t t, Fn fn) {
  t = std::max<std::size_t>(1, std::min(t, n));
  if (t == 1) {
    fn(std::size_t{0}, std::size_t{0}, n);
    return;
  }
  std::vector<std::thread> pool;
  pool.reserve(t - 1);
  const std::size_t chunk = (n + t - 1) / t;
  for (std::size_t i = 1; i < t; ++i) {
    const std::size_t b = i * chunk, e = std::min(n, b + chunk);
    if (b < e) pool.emplace_back(fn, i, b, e);
  }
  fn(std::size_t{0}, std::size_t{0}, std::min(n, chunk));
  for (auto& th : pool) th.join();
}

// torch's bilinear source taps (align_corners=False), computed in float64.
struct TapTable {
  std::vector<std::int32_t> i0, i1;
  std::vector<float> l;
  std::vector<std::uint32_t> run_end;
  TapTable(std::size_t in, std::size_t out, std::size_t pad)
      : i0(out), i1(out), l(out + pad, 0.0f) {
    const double scale = static_cast<double>(in) / static_cast<double>(out);
    for (std::size_t o = 0; o < out; ++o) {
      const double src = std::max(0.0, (static_cast<double>(o) + 0.5) * scale - 0.5);
      const std::size_t a = std::min(static_cast<std::size_t>(src), in - 1);
      i0[o] = static_cast<std::int32_t>(a);
      i1[o] = static_cast<std::int32_t>(std::min(a + 1, in - 1));
      l[o] = static_cast<float>(src - static_cast<double>(a));
    }
    for (std::size_t o = 1; o <= out; ++o)
      if (o == out || i0[o] != i0[o - 1] || i1[o] != i1[o - 1])
        run_end.push_back(static_cast<std::uint32_t>(o));
  }
  Taps view() const { return {i0.data(), i1.data(), l.data(), run_end.data()}; }
};

// End of the band that starts at output row y: the rows that share both source
// rows and whose weights are evenly spaced (the clamped top rows are a band of their own).
std::size_t band_end(const TapTable& t, std::size_t y, std::size_t stop) {
  std::size_t e = y + 1;
  while (e < stop && t.i0[e] == t.i0[y] && t.i1[e] == t.i1[y] &&
         (e == y + 1 ||
          std::fabs((t.l[e] - t.l[e - 1]) - (t.l[y + 1] - t.l[y])) <= 1e-6f))
    ++e;
  return e;
}

// Threads worth starting for `work` units (~0.3 ns each): one per 2^19, so that
// small frames do not pay ~50 us per thread start (720p labels, 1.6 M units, run
// ~0.05-0.1 ms faster on two threads than on one).
std::size_t threads_for(std::size_t work, std::size_t most) {
  return std::max<std::size_t>(1, std::min(most, work >> 19));
}

bool cpu_has(const char* isa) {
#if defined(CLIPS4RT_X86) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  if (!std::strcmp(isa, "avx512"))
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (!std::strcmp(isa, "avx2"))
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
  return !std::strcmp(isa, "generic");
}

const IsaKernels* const kAll[] = {
#if defined(CLIPS4RT_X86)
    &kAvx512, &kAvx2,
#endif
    &kGeneric};

struct Available {
  std::vector<const IsaKernels*> kernels;
  std::vector<const char*> names;
  Available() {
    for (const IsaKernels* k : kAll)
      if (cpu_has(k->name)) {
        kernels.push_back(k);
        names.push_back(k->name);
      }
  }
};

const Available& available() {
  static const Available a;
  return a;
}

}  // namespace

const char* const* available_isas(std::size_t* count) {
  *count = available().names.size();
  return available().names.data();
}

bool match_upsample(const MatchArgs& args, int threads, const char* isa) {
  const IsaKernels* kern = nullptr;
  for (const IsaKernels* k : available().kernels)
    if (!std::strcmp(isa, "auto") || !std::strcmp(isa, k->name)) {
      kern = k;
      break;
    }
  if (kern == nullptr) return false;  // the binding checks the name first
  MatchArgs a = args;
  const auto aligned = [&](const void* p) {
    return p == nullptr || reinterpret_cast<std::uintptr_t>(p) % (4 * kern->lanes) == 0;
  };
  // (only for outputs of 1 MB and more: a small result stays in cache for its reader)
  a.stream = a.H * a.W >= (std::size_t{1} << 18) && a.W % kern->lanes == 0 &&
             aligned(a.labels) && aligned(a.scores) && aligned(a.probs);
  const std::size_t nthreads =
      threads > 0 ? static_cast<std::size_t>(threads)
                  : std::max(1u, std::thread::hardware_concurrency());
  const std::size_t K = a.K, P = a.h * a.w, lanes = kern->lanes;

  // 1) cosines (K, h, w); threads take chunks of whole pixel tiles
  // Scratch lives on the calling thread between calls (a video loop allocates and
  // page-faults nothing), worker threads allocate their own.
  static thread_local std::vector<float> cos_buf;
  if (cos_buf.size() < K * P) cos_buf.resize(K * P);
  float* const cos = cos_buf.data();
  const std::size_t tile = 2 * lanes;
  const std::size_t ntiles = (P + tile - 1) / tile;
  std::vector<char> ok(nthreads, 1);
  parallel_for(ntiles, threads_for(K * a.D * P, nthreads), [&](std::size_t t, std::size_t b, std::size_t e) {
    ok[t] = kern->cosines(a.emb, a.D, P, a.protos, K, cos, b * tile,
                          std::min(P, e * tile));
  });
  if (std::find(ok.begin(), ok.end(), 0) != ok.end()) return false;

  // 2) + 3) threads take bands of output rows; each walks its band once per column
  // tile, keeping the two x-resampled low-res rows the current output row needs.
  const TapTable ty(a.h, a.H, 0), tx(a.w, a.W, 2 * lanes);
  const std::size_t budget = 256 * 1024 / (2 * sizeof(float) * K);  // both rows in L2
  const std::size_t cols = std::max(lanes, budget / lanes * lanes);
  const std::size_t width = std::min(cols, (a.W + lanes - 1) / lanes * lanes);
  const std::size_t stride = width + lanes;  // a run's last vector may spill past n
  // Bands are cut the same way whatever the thread count, so results do not depend
  // on it (the softmax recurrence restarts at each band).
  std::vector<std::size_t> bands{0};
  while (bands.back() < a.H) bands.push_back(band_end(ty, bands.back(), a.H));
  const std::size_t work = a.H * a.W * (a.probs ? K : 1) + a.h * a.W * K;
  parallel_for(bands.size() - 1, threads_for(work, nthreads), [&](std::size_t t, std::size_t bb,
                                                                     std::size_t be) {
    static thread_local std::vector<float> tl_rows, tl_tmp;
    static thread_local std::vector<std::int32_t> tl_cand;
    std::vector<float> own_rows, own_tmp;
    std::vector<std::int32_t> own_cand;
    auto& rows = t == 0 ? tl_rows : own_rows;  // t == 0 runs on the calling thread
    auto& tmp = t == 0 ? tl_tmp : own_tmp;
    auto& cand = t == 0 ? tl_cand : own_cand;
    rows.resize(std::max(rows.size(), 2 * K * stride));
    tmp.resize(std::max(tmp.size(), 4 * K * lanes + 3 * width));
    cand.resize(std::max(cand.size(), K + width / lanes / 4 + 1));
    for (std::size_t xb = 0; xb < a.W; xb += width) {
      const std::size_t n = std::min(width, a.W - xb);
      std::int64_t held[2] = {-1, -1};  // which low-res row each slot holds
      for (std::size_t b = bb; b < be; ++b) {
        const std::size_t y = bands[b], end = bands[b + 1];
        const std::int32_t r[2] = {ty.i0[y], ty.i1[y]};
        for (std::int32_t yl : r) {
          float* slot = rows.data() + (yl & 1) * K * stride;
          if (held[yl & 1] != yl) {
            kern->resample_row(cos, K, a.h, a.w, yl, tx.view(), xb, n, slot, stride);
            held[yl & 1] = yl;
          }
        }
        kern->reduce_band(rows.data() + (r[0] & 1) * K * stride,
                          rows.data() + (r[1] & 1) * K * stride, ty.l.data() + y, end - y, K,
                          stride, n, a, y, xb, tmp.data(), cand.data());
      }
    }
  });
  return true;
}

}  // namespace clips4rt
