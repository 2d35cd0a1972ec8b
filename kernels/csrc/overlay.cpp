#include "overlay.h"

#include <algorithm>
#include <thread>
#include <vector>

namespace clips4rt {

void blend_labels(const std::uint8_t* image, const std::int32_t* labels, std::size_t n,
                  const std::uint8_t* colours, std::size_t n_colours, int alpha,
                  std::uint8_t* out, int threads) {
  // colour * alpha + 128 per class and channel, precomputed
  std::vector<std::uint32_t> add(n_colours * 3);
  for (std::size_t i = 0; i < n_colours * 3; ++i)
    add[i] = static_cast<std::uint32_t>(colours[i]) * static_cast<std::uint32_t>(alpha) + 128u;
  const std::uint32_t keep = 256u - static_cast<std::uint32_t>(alpha);
  auto band = [&](std::size_t b, std::size_t e) {
    for (std::size_t p = b; p < e; ++p) {
      const std::int32_t k = labels[p];
      const std::uint8_t* src = image + 3 * p;
      std::uint8_t* dst = out + 3 * p;
      if (k < 0 || static_cast<std::size_t>(k) >= n_colours) {
        dst[0] = src[0], dst[1] = src[1], dst[2] = src[2];
        continue;
      }
      const std::uint32_t* a = add.data() + 3 * static_cast<std::size_t>(k);
      for (int c = 0; c < 3; ++c)
        dst[c] = static_cast<std::uint8_t>((src[c] * keep + a[c]) >> 8);
    }
  };
  std::size_t t = threads > 0 ? static_cast<std::size_t>(threads)
                              : std::max(1u, std::thread::hardware_concurrency());
  t = std::max<std::size_t>(1, std::min(t, n >> 20));  // a thread per ~1 M pixels
  if (t == 1) {
    band(0, n);
    return;
  }
  std::vector<std::thread> pool;
  const std::size_t chunk = (n + t - 1) / t;
  for (std::size_t i = 1; i < t; ++i)
    if (i * chunk < n) pool.emplace_back(band, i * chunk, std::min(n, (i + 1) * chunk));
  band(0, std::min(n, chunk));
  for (auto& th : pool) th.join();
}

}  // namespace clips4rt
