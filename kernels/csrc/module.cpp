// nanobind bindings of the runtime's CPU ops (private module clips4rt._cpu).
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <optional>
#include <string>
#include <vector>

#include "matching.h"
#include "overlay.h"
#include "resize.h"

namespace nb = nanobind;

template <class T, class Shape>
using In = nb::ndarray<const T, Shape, nb::c_contig, nb::device::cpu>;
template <class T, class Shape>
using Out = nb::ndarray<T, Shape, nb::c_contig, nb::device::cpu>;

static std::vector<std::string> available_isas() {
  std::size_t n = 0;
  const char* const* names = clips4rt::available_isas(&n);
  return std::vector<std::string>(names, names + n);
}

static void match_upsample(In<float, nb::ndim<3>> emb, In<float, nb::ndim<2>> protos,
                           double logit_scale, Out<std::int32_t, nb::ndim<2>> labels,
                           std::optional<Out<float, nb::ndim<2>>> scores,
                           std::optional<Out<float, nb::ndim<2>>> probs,
                           int threads, std::int64_t n_classes, double threshold,
                           const std::string& isa) {
  const std::size_t D = emb.shape(0), h = emb.shape(1), w = emb.shape(2);
  const std::size_t K = protos.shape(0), H = labels.shape(0), W = labels.shape(1);
  if (protos.shape(1) != D)
    throw nb::value_error("protos must be (K, D) with D equal to emb's first axis");
  if (K == 0 || D == 0 || h == 0 || w == 0 || H == 0 || W == 0)
    throw nb::value_error("empty input: need K, D, h, w, H, W >= 1");
  if (K > 2147483647u || h > 2147483647u || w > 2147483647u)
    throw nb::value_error("too many prototypes or embedding rows/columns (max 2^31 - 1)");
  for (const auto& o : {scores, probs})
    if (o && (o->shape(0) != H || o->shape(1) != W))
      throw nb::value_error("labels, scores and probs must all be (H, W)");
  if (!probs && threshold > 0)
    throw nb::value_error("a threshold needs the probs output");
  if (n_classes < 0) n_classes = static_cast<std::int64_t>(K);  // -1: no class is background
  if (n_classes > static_cast<std::int64_t>(K))
    throw nb::value_error("n_classes must be within [0, K]");
  const auto isas = available_isas();
  if (isa != "auto" && std::find(isas.begin(), isas.end(), isa) == isas.end())
    throw nb::value_error(("isa '" + isa + "' is not available on this CPU/build").c_str());
  const clips4rt::MatchArgs a{emb.data(),  D,
                              h,           w,
                              protos.data(), K,
                              static_cast<float>(logit_scale),
                              static_cast<std::int32_t>(n_classes),
                              static_cast<float>(threshold),
                              labels.data(), scores ? scores->data() : nullptr,
                              probs ? probs->data() : nullptr, H,
                              W};
  bool ok;
  {
    nb::gil_scoped_release release;
    ok = clips4rt::match_upsample(a, threads, isa.c_str());
  }
  if (!ok) throw nb::value_error("embeddings or prototypes contain NaN or inf");
}

static void resize_bilinear(In<std::uint8_t, nb::ndim<3>> src, Out<std::uint8_t, nb::ndim<3>> dst,
                            int threads) {
  if (src.shape(2) != dst.shape(2))
    throw nb::value_error("src and dst must have the same number of channels");
  if (src.shape(0) == 0 || src.shape(1) == 0 || dst.shape(0) == 0 || dst.shape(1) == 0)
    throw nb::value_error("empty image");
  nb::gil_scoped_release release;
  clips4rt::resize_bilinear_u8(src.data(), src.shape(0), src.shape(1), src.shape(2), dst.data(),
                               dst.shape(0), dst.shape(1), threads);
}

static void blend_labels(In<std::uint8_t, nb::ndim<3>> image, In<std::int32_t, nb::ndim<2>> labels,
                         In<std::uint8_t, nb::ndim<2>> colours, int alpha,
                         Out<std::uint8_t, nb::ndim<3>> out, int threads) {
  const std::size_t H = image.shape(0), W = image.shape(1);
  if (image.shape(2) != 3 || out.shape(2) != 3 || colours.shape(1) != 3)
    throw nb::value_error("image, out and colours need 3 channels");
  if (labels.shape(0) != H || labels.shape(1) != W || out.shape(0) != H || out.shape(1) != W)
    throw nb::value_error("labels and out must match the image's (H, W)");
  if (alpha < 0 || alpha > 256) throw nb::value_error("alpha must be within [0, 256]");
  nb::gil_scoped_release release;
  clips4rt::blend_labels(image.data(), labels.data(), H * W, colours.data(), colours.shape(0),
                         alpha, out.data(), threads);
}

NB_MODULE(_cpu, m) {
  m.doc() = "clips4rt CPU kernels (use clips4rt.kernels, not this module)";
  // noconvert: a wrong dtype or a strided view is a TypeError, never a silent copy
  m.def("match_upsample", &match_upsample, nb::arg("emb").noconvert(),
        nb::arg("protos").noconvert(), nb::arg("logit_scale"), nb::arg("labels").noconvert(),
        nb::arg("scores").noconvert().none(), nb::arg("probs").noconvert().none(),
        nb::arg("threads") = 0, nb::arg("n_classes") = -1, nb::arg("threshold") = 0.0,
        nb::arg("isa") = "auto",
        "Prototype matching with fused bilinear upsampling; writes labels/scores/probs.");
  m.def("resize_bilinear", &resize_bilinear, nb::arg("src").noconvert(),
        nb::arg("dst").noconvert(), nb::arg("threads") = 0,
        "Antialiased bilinear resize of an (H, W, C) uint8 image into dst (h, w, C).");
  m.def("blend_labels", &blend_labels, nb::arg("image").noconvert(),
        nb::arg("labels").noconvert(), nb::arg("colours").noconvert(), nb::arg("alpha"),
        nb::arg("out").noconvert(), nb::arg("threads") = 0,
        "Blend class colours over an (H, W, 3) uint8 image where labels >= 0.");
  m.def("available_isas", &available_isas,
        "Instruction sets of the matching kernel usable on this CPU, best first.");
}
