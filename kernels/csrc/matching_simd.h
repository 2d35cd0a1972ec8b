// The matching kernels for one instruction set. Included by matching_<isa>.cpp with
// C4RT_ISA (a namespace), C4RT_NAME (its string), C4RT_LANES (floats per vector) and
// C4RT_TABLE (the IsaKernels object to define); those files are compiled with that ISA's flags.
//
// Rules for this file: everything has internal linkage except the table, and no
// standard-library template is used. An inline function instantiated here with
// AVX-512 flags could otherwise be the copy the linker keeps for the whole
// extension and crash a CPU without AVX-512.
//
// GCC/Clang vector extensions: one source for every width (the compiler lowers a
// 16-float vector to two AVX2 or four SSE/NEON registers where needed).
#include <cstddef>
#include <cstdint>

#include "matching.h"

#if defined(__SSE2__)
#include <immintrin.h>
#elif defined(__ARM_NEON)
#include <arm_neon.h>
#endif

namespace clips4rt {
namespace C4RT_ISA {
namespace {

constexpr std::size_t L = C4RT_LANES;
typedef float V __attribute__((vector_size(4 * L)));
typedef std::int32_t VI __attribute__((vector_size(4 * L)));

inline V splat(float x) { return V{} + x; }
inline VI splati(std::int32_t x) { return VI{} + x; }
inline V load(const float* p) {
  V v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}
inline void store(float* p, V v) { __builtin_memcpy(p, &v, sizeof v); }
inline void storei(std::int32_t* p, VI v) { __builtin_memcpy(p, &v, sizeof v); }
inline std::size_t min_(std::size_t a, std::size_t b) { return a < b ? a : b; }

// exp(x) for x <= 88 (x < -87 gives exp(-87) ~ 1.6e-38, harmless in our sums), as
// 2^y, y = x log2(e) = n + f, |f| <= 1/2: 2^f by its degree-6 Taylor polynomial
// (relative error <= (ln2 / 2)^7 / 7! = 1.2e-7, about 1 ulp), 2^n in the exponent
// bits (n >= -126: a normal float). 15 vector operations (Cephes' expf took 18).
inline V exp_(V x) {
  V y = x * 1.44269504088896341f;
  y = y < splat(-125.5f) ? splat(-125.5f) : y;
  const V magic = splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  const V n = (y + magic) - magic;
  const V f = y - n;
  V p = splat(1.5403530393381606e-4f);
  p = p * f + 1.3333558146428443e-3f;
  p = p * f + 9.6181291076284772e-3f;
  p = p * f + 5.5504108664821580e-2f;
  p = p * f + 2.4022650695910071e-1f;
  p = p * f + 6.9314718055994531e-1f;
  p = p * f + 1.0f;
  VI bits = (__builtin_convertvector(n, VI) + 127) << 23;
  V scale;
  __builtin_memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

// G classes x NB vectors of pixels per tile: G * NB accumulators stay in registers
// (14 of AVX-512's 32 at G = 7, NB = 2); each embedding load feeds G FMAs and each
// broadcast prototype weight NB FMAs. G = 7 (K = 21 in 3 groups) measured 10-40%
// faster than G = 6 or NB = 3 / 4 at D = 512, 1080p / 8 on this 2-core Zen 4.
constexpr std::size_t NB = 2;
constexpr std::size_t PFD = 2;
constexpr std::size_t G = L >= 16 ? 7 : 4;
static_assert(G <= 7, "cosines() dispatches tail groups of 1..6 classes");

template <std::size_t g, bool prefetch = false>
inline void cos_tile(const float* emb, std::size_t D, std::size_t P, const float* protos,
                     float* cos, std::size_t p) {
  V acc[g][NB];
  for (std::size_t j = 0; j < g; ++j)
    for (std::size_t n = 0; n < NB; ++n) acc[j][n] = V{};
  for (std::size_t d = 0; d < D; ++d) {
    V e[NB];
    for (std::size_t n = 0; n < NB; ++n) e[n] = load(emb + d * P + p + n * L);
    // A later tile's lines (D rows P floats apart defeat the hardware prefetchers),
    // into L2 (prefetcht1): a tile's D x 2 vectors (64 KB at D = 512) overflow L1, so
    // prefetching into L1 evicted lines before their use; L2 took the cosines of a
    // 1080p / 8 frame from 5.4-5.9 to 3.9-4.1 ms (2 threads).
    if (prefetch)
      for (std::size_t b = 0; b < NB * L * 4; b += 64)
        __builtin_prefetch(reinterpret_cast<const char*>(emb + d * P + p + PFD * NB * L) + b,
                           0, 2);
    for (std::size_t j = 0; j < g; ++j) {
      const V c = splat(protos[j * D + d]);
      for (std::size_t n = 0; n < NB; ++n) acc[j][n] += c * e[n];
    }
  }
  for (std::size_t j = 0; j < g; ++j)
    for (std::size_t n = 0; n < NB; ++n) store(cos + j * P + p + n * L, acc[j][n]);
}

bool cosines(const float* emb, std::size_t D, std::size_t P, const float* protos,
             std::size_t K, float* cos, std::size_t pb, std::size_t pe) {
  // Pixel tiles outside, class groups inside: a tile's D x 2L embeddings come from
  // memory once and stay in L1/L2 for the other groups.
  const std::size_t tiled = pb + (pe - pb) / (NB * L) * (NB * L);
  for (std::size_t p = pb; p < tiled; p += NB * L) {
    for (std::size_t k = 0; k < K; k += G) {
      const float* pk = protos + k * D;
      float* ck = cos + k * P;
      switch (min_(G, K - k)) {
        case 1: cos_tile<1>(emb, D, P, pk, ck, p); break;
        case 2: cos_tile<2>(emb, D, P, pk, ck, p); break;
        case 3: cos_tile<3>(emb, D, P, pk, ck, p); break;
        case 4: cos_tile<4>(emb, D, P, pk, ck, p); break;
        case 5: cos_tile<5>(emb, D, P, pk, ck, p); break;
        case 6: cos_tile<6>(emb, D, P, pk, ck, p); break;
        default:
          if (k == 0)
            cos_tile<G, true>(emb, D, P, pk, ck, p);
          else
            cos_tile<G>(emb, D, P, pk, ck, p);
          break;
      }
    }
  }
  for (std::size_t k = 0; k < K; ++k) {  // the last < NB * L pixels, one at a time
    for (std::size_t p = tiled; p < pe; ++p) {
      float acc = 0.f;
      for (std::size_t d = 0; d < D; ++d) acc += protos[k * D + d] * emb[d * P + p];
      cos[k * P + p] = acc;
    }
  }
  V bad = V{};  // 0 * inf and 0 * NaN are NaN: any non-finite cosine poisons it
  std::size_t nbad = 0;
  for (std::size_t k = 0; k < K; ++k) {
    const float* ck = cos + k * P;
    std::size_t p = pb;
    for (; p + L <= pe; p += L) bad += load(ck + p) * 0.0f;
    for (; p < pe; ++p) nbad += !(ck[p] * 0.0f == 0.0f);
  }
  for (std::size_t i = 0; i < L; ++i) nbad += !(bad[i] == 0.0f);
  return nbad == 0;
}

void resample_row(const float* cos, std::size_t K, std::size_t h, std::size_t w,
                  std::size_t yl, Taps tx, std::size_t xb, std::size_t n, float* out,
                  std::size_t stride) {
  // Runs of output columns share their taps: out = a + l[x] * d with a, d scalars, so
  // each run is a few vector FMAs (a vector may spill past its run: the next run, or
  // the padding at the end of the row, overwrites it).
  const std::size_t xe = xb + n;
  std::size_t r = 0;
  while (tx.run_end[r] <= xb) ++r;  // first run that reaches into the tile
  const std::size_t r0 = r;
  for (std::size_t k = 0; k < K; ++k) {
    const float* src = cos + (k * h + yl) * w;
    float* dst = out + k * stride - xb;
    std::size_t start = xb;
    for (r = r0; start < xe; ++r) {
      const std::size_t end = min_(tx.run_end[r], xe);
      const float va = src[tx.i0[start]], vd = src[tx.i1[start]] - va;
      for (std::size_t x = start; x < end; x += L) store(dst + x, va + load(tx.l + x) * vd);
      start = end;
    }
  }
}

// Whether every lane of a comparison result is true: one mask move where the ISA has
// it (the portable lane-by-lane loop compiled to 16 extracts and was 14 % of
// reduce_band's time at 1080p).
inline bool all_lanes(VI mask) {
#if C4RT_LANES == 16 && defined(__AVX512F__)
  return _mm512_movepi32_mask(reinterpret_cast<__m512i>(mask)) == 0xFFFF;
#elif C4RT_LANES == 8 && defined(__AVX2__)
  return _mm256_movemask_ps(reinterpret_cast<__m256>(mask)) == 0xFF;
#elif C4RT_LANES == 4 && defined(__SSE2__)
  return _mm_movemask_ps(reinterpret_cast<__m128>(mask)) == 0xF;
#elif C4RT_LANES == 4 && defined(__ARM_NEON)
  return vminvq_u32(reinterpret_cast<uint32x4_t>(mask)) != 0;
#else
  std::int32_t r = -1;
  for (std::size_t i = 0; i < L; ++i) r &= mask[i];
  return r != 0;
#endif
}

// A full vector to an aligned output address, bypassing the caches (no read for
// ownership of lines that are about to be overwritten whole: a fresh 720p labels
// array after a graph run took 1.1 ms of post-processing with plain stores, ~0.5 ms
// when its lines happened to be cached).
template <class T>
inline void stream_store(void* p, T v) {
#if C4RT_LANES == 16 && defined(__AVX512F__)
  _mm512_stream_si512(static_cast<__m512i*>(p), reinterpret_cast<__m512i>(v));
#elif C4RT_LANES == 8 && defined(__AVX2__)
  _mm256_stream_si256(static_cast<__m256i*>(p), reinterpret_cast<__m256i>(v));
#elif C4RT_LANES == 4 && defined(__SSE2__)
  _mm_stream_si128(static_cast<__m128i*>(p), reinterpret_cast<__m128i>(v));
#else
  __builtin_memcpy(p, &v, sizeof v);
#endif
}

// Streaming stores are weakly ordered: fence them before the thread reports done.
inline void stream_fence() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

inline void write(const MatchArgs& a, std::size_t o, std::size_t valid, VI best, V m, V prob) {
  // without probs (labels-only mode) prob is 1 and the threshold is 0
  const VI bg = (best >= splati(a.n_classes)) | (prob < splat(a.threshold));
  best = bg ? splati(-1) : best;
  if (valid >= L && a.stream) {
    stream_store(a.labels + o, best);
    if (a.scores) stream_store(a.scores + o, m);
    if (a.probs) stream_store(a.probs + o, prob);
  } else if (valid >= L) {
    storei(a.labels + o, best);
    if (a.scores) store(a.scores + o, m);
    if (a.probs) store(a.probs + o, prob);
  } else {
    for (std::size_t i = 0; i < valid; ++i) {
      a.labels[o + i] = best[i];
      if (a.scores) a.scores[o + i] = m[i];
      if (a.probs) a.probs[o + i] = prob[i];
    }
  }
}

// A band: output rows y .. y + rows - 1 between the same two x-resampled source rows
// A and B, at evenly spaced weights ly[0..rows). For each vector of columns:
//   s_k(j) = A_k + ly[j] * (B_k - A_k)                      (argmax, scores)
//   E_k(j) = exp(t (s_k(j) - c)) = E_k(j - 1) * exp(t dly (B_k - A_k))
// so the softmax needs 2 exps per class and band instead of one per output row
// (the band's reference c = max over both rows keeps every E_k <= 1). Where the band
// spans too wide a logit range for float32 (t (c - min_k s_k) >= 80: some E_k or
// R_k would leave the normal range), the vector falls back to one exp per class and row.
// Rows go in blocks of RB whose running max, argmax and sums stay in registers.
constexpr std::size_t RB = L >= 16 ? 4 : 2;

// sum[j] = sum_k E_k(j) for the next nb rows, E_k advanced in place: E_k *= R_k.
template <std::size_t nb>
inline void recurrence_sums(float* tE, const float* tR, std::size_t K, V (&sum)[nb]) {
  for (std::size_t j = 0; j < nb; ++j) sum[j] = V{};
  for (std::size_t k = 0; k < K; ++k) {
    V e = load(tE + k * L);
    const V r = load(tR + k * L);
    for (std::size_t j = 0; j < nb; ++j) {
      sum[j] += e;
      e *= r;
    }
    store(tE + k * L, e);
  }
}

// The argmax runs over the band's candidates only (classes that no class beats at
// both source rows: a class beaten at both ends is beaten on the whole band), the
// softmax sum over all K classes.
template <std::size_t nb, bool recur, bool sums>
inline void rows_block(const float* tA, const float* tD, float* tE, const float* tR,
                       std::size_t K, const std::int32_t* cand, std::size_t nc,
                       const float* ly, V t, V c, const MatchArgs& a, std::size_t o,
                       std::size_t valid) {
  V lj[nb], m[nb], sum[nb], ew[nb];
  VI best[nb];
  for (std::size_t j = 0; j < nb; ++j) {
    lj[j] = splat(ly[j]);
    m[j] = splat(-__builtin_huge_valf());
    sum[j] = ew[j] = splat(1.0f);
    best[j] = VI{};
  }
  for (std::size_t i = 0; i < nc; ++i) {  // ascending: the first index wins an exact tie
    const std::size_t k = static_cast<std::size_t>(cand[i]);
    const V va = load(tA + k * L), vd = load(tD + k * L);
    const VI vk = splati(cand[i]);
    for (std::size_t j = 0; j < nb; ++j) {
      const V v = va + lj[j] * vd;
      const VI gt = v > m[j];
      m[j] = gt ? v : m[j];
      best[j] = gt ? vk : best[j];
    }
  }
  if (sums && recur) {
    recurrence_sums<nb>(tE, tR, K, sum);
    for (std::size_t j = 0; j < nb; ++j) ew[j] = exp_(t * (m[j] - c));
  } else if (sums) {
    for (std::size_t j = 0; j < nb; ++j) sum[j] = V{};
    for (std::size_t k = 0; k < K; ++k) {
      const V va = load(tA + k * L), vd = load(tD + k * L);
      for (std::size_t j = 0; j < nb; ++j) sum[j] += exp_((va + lj[j] * vd - m[j]) * t);
    }
  }
  for (std::size_t j = 0; j < nb; ++j) {
    V p = ew[j] / sum[j];
    p = p > 1.0f ? splat(1.0f) : p;  // the recurrence's rounding may put it a hair over
    write(a, o + j * a.W, valid, best[j], m[j], p);
  }
}

template <bool recur, bool sums>
void rows_blocks(const float* tA, const float* tD, float* tE, const float* tR, std::size_t K,
                 const std::int32_t* cand, std::size_t nc, const float* ly, std::size_t rows,
                 V t, V c, const MatchArgs& a, std::size_t o, std::size_t valid) {
  std::size_t j = 0;
  for (; j + RB <= rows; j += RB)
    rows_block<RB, recur, sums>(tA, tD, tE, tR, K, cand, nc, ly + j, t, c, a, o + j * a.W,
                                valid);
  for (; j < rows; ++j)
    rows_block<1, recur, sums>(tA, tD, tE, tR, K, cand, nc, ly + j, t, c, a, o + j * a.W,
                               valid);
}

// Columns whose winner is the same class at both source rows keep it on the whole
// band (s_k is linear in ly, so a class that leads at both ends leads in between, and
// the first index still wins ties): there only the softmax sum is left to compute,
// 2 flops per class and pixel with the recurrence, RD rows of sums in registers.
constexpr std::size_t RD = L >= 16 ? 8 : 4;

template <std::size_t nb>
inline void decided_block(float* tE, const float* tR, std::size_t K, const float* ly, V aw,
                          V dw, VI w, V& ew, V rw, const MatchArgs& a, std::size_t o,
                          std::size_t valid) {
  V sum[nb];
  recurrence_sums<nb>(tE, tR, K, sum);
  for (std::size_t j = 0; j < nb; ++j) {
    write(a, o + j * a.W, valid, w, aw + splat(ly[j]) * dw, ew / sum[j]);
    ew *= rw;
  }
}

void reduce_band(const float* A, const float* B, const float* ly, std::size_t rows,
                 std::size_t K, std::size_t stride, std::size_t n, const MatchArgs& a,
                 std::size_t y, std::size_t xb, float* tmp, std::int32_t* cand) {
  float *tA = tmp, *tD = tmp + K * L, *tE = tmp + 2 * K * L, *tR = tmp + 3 * K * L;
  // labels-only columns whose winner is decided: (winner, value, slope) per vector,
  // written afterwards row by row, so that the stores run along memory
  float* held = tmp + 4 * K * L;
  std::uint8_t* is_held = reinterpret_cast<std::uint8_t*>(cand + K);
  const V t = splat(a.logit_scale), ninf = splat(-__builtin_huge_valf());
  const float dly = rows > 1 ? ly[1] - ly[0] : 0.0f;
  for (std::size_t x = 0; x < n; x += L) {
    // winners at both source rows (wa, wb), their values, the band's extremes
    V lo = -ninf, ma = ninf, mb = ninf, aw = V{}, dw = V{}, ab = V{};
    VI wa = VI{}, wb = VI{};
    for (std::size_t k = 0; k < K; ++k) {
      const V va = load(A + k * stride + x), vd = load(B + k * stride + x) - va;
      const V vb = va + vd;
      store(tA + k * L, va);
      store(tD + k * L, vd);
      const VI vk = splati(static_cast<std::int32_t>(k));
      const VI ga = va > ma, gb = vb > mb;
      ma = ga ? va : ma;
      wa = ga ? vk : wa;
      aw = ga ? va : aw;
      dw = ga ? vd : dw;
      mb = gb ? vb : mb;
      wb = gb ? vk : wb;
      ab = gb ? va : ab;
      const V low = va < vb ? va : vb;
      lo = lo < low ? lo : low;
    }
    const V c = ma > mb ? ma : mb;
    const std::size_t o = y * a.W + xb + x;
    const bool decided = all_lanes(wa == wb);
    const auto candidates = [&] {
      std::size_t nc = 0;
      const V bw = aw + dw;
      for (std::size_t k = 0; k < K; ++k) {
        const V va = load(tA + k * L), vb = va + load(tD + k * L);
        const VI beaten = ((va < aw) & (vb < bw)) | ((va < ab) & (vb < mb));
        if (!all_lanes(beaten)) cand[nc++] = static_cast<std::int32_t>(k);
      }
      return nc;
    };
    if (!a.probs) {  // labels (and scores) only: no softmax
      is_held[x / L] = decided;
      if (decided) {
        V w;
        __builtin_memcpy(&w, &wa, sizeof w);
        store(held + 3 * x, w);
        store(held + 3 * x + L, aw);
        store(held + 3 * x + 2 * L, dw);
      } else {
        rows_blocks<false, false>(tA, tD, tE, tR, K, cand, candidates(), ly, rows, t, c, a, o,
                                  n - x);
      }
      continue;
    }
    // every E_k(j) and R_k lies in [exp(-80), exp(80)]: normal floats, no clamping
    const bool recur = rows > 1 && all_lanes(t * (c - lo) < 80.0f);
    if (!recur) {
      rows_blocks<false, true>(tA, tD, tE, tR, K, cand, candidates(), ly, rows, t, c, a, o,
                               n - x);
      continue;
    }
    const V l0 = splat(ly[0]), step = t * dly;
    for (std::size_t k = 0; k < K; ++k) {
      const V va = load(tA + k * L), vd = load(tD + k * L);
      store(tE + k * L, exp_(t * (va + l0 * vd - c)));
      store(tR + k * L, exp_(step * vd));
    }
    if (decided) {
      V ew = exp_(t * (aw + l0 * dw - c));
      const V rw = exp_(step * dw);
      std::size_t j = 0;
      for (; j + RD <= rows; j += RD)
        decided_block<RD>(tE, tR, K, ly + j, aw, dw, wa, ew, rw, a, o + j * a.W, n - x);
      for (; j < rows; ++j)
        decided_block<1>(tE, tR, K, ly + j, aw, dw, wa, ew, rw, a, o + j * a.W, n - x);
    } else {
      rows_blocks<true, true>(tA, tD, tE, tR, K, cand, candidates(), ly, rows, t, c, a, o,
                              n - x);
    }
  }
  if (a.probs) {
    if (a.stream) stream_fence();
    return;
  }
  for (std::size_t j = 0; j < rows; ++j) {
    const V lj = splat(ly[j]);
    const std::size_t o = (y + j) * a.W + xb;
    for (std::size_t x = 0; x < n; x += L) {
      if (!is_held[x / L]) continue;
      VI w;
      const V v = load(held + 3 * x);
      __builtin_memcpy(&w, &v, sizeof w);
      write(a, o + x, n - x, w, load(held + 3 * x + L) + lj * load(held + 3 * x + 2 * L),
            splat(1.0f));
    }
  }
  if (a.stream) stream_fence();
}

}  // namespace
}  // namespace C4RT_ISA

const IsaKernels C4RT_TABLE = {C4RT_NAME, C4RT_LANES, C4RT_ISA::cosines, C4RT_ISA::resample_row,
                               C4RT_ISA::reduce_band};

}  // namespace clips4rt
