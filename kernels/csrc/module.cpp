// nanobind bindings of the runtime's CPU ops (private module kernels._cpu).
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include <stdexcept>

#include "matching.h"

namespace nb = nanobind;

template <class T, class Shape>
using In = nb::ndarray<const T, Shape, nb::c_contig, nb::device::cpu>;
template <class T, class Shape>
using Out = nb::ndarray<T, Shape, nb::c_contig, nb::device::cpu>;

static void match_upsample(In<float, nb::ndim<3>> emb, In<float, nb::ndim<2>> protos,
                           double logit_scale, Out<std::int32_t, nb::ndim<2>> labels,
                           Out<float, nb::ndim<2>> scores, Out<float, nb::ndim<2>> probs,
                           int threads) {
  const std::size_t D = emb.shape(0), h = emb.shape(1), w = emb.shape(2);
  const std::size_t K = protos.shape(0), H = labels.shape(0), W = labels.shape(1);
  if (protos.shape(1) != D)
    throw nb::value_error("protos must be (K, D) with D equal to emb's first axis");
  if (K == 0 || D == 0 || h == 0 || w == 0 || H == 0 || W == 0)
    throw nb::value_error("empty input: need K, D, h, w, H, W >= 1");
  if (K > 2147483647u) throw nb::value_error("too many prototypes");
  if (scores.shape(0) != H || scores.shape(1) != W || probs.shape(0) != H ||
      probs.shape(1) != W)
    throw nb::value_error("labels, scores and probs must all be (H, W)");
  bool ok;
  {
    nb::gil_scoped_release release;
    ok = clips4rt::match_upsample(emb.data(), D, h, w, protos.data(), K, logit_scale,
                                  labels.data(), scores.data(), probs.data(), H, W, threads);
  }
  if (!ok) throw nb::value_error("embeddings or prototypes contain NaN or inf");
}

NB_MODULE(_cpu, m) {
  m.doc() = "clips4rt CPU kernels (use kernels.cpu, not this module)";
  // noconvert: a wrong dtype or a strided view is a TypeError, never a silent copy
  m.def("match_upsample", &match_upsample, nb::arg("emb").noconvert(),
        nb::arg("protos").noconvert(), nb::arg("logit_scale"), nb::arg("labels").noconvert(),
        nb::arg("scores").noconvert(), nb::arg("probs").noconvert(),
        nb::arg("threads") = 0,
        "Prototype matching with fused bilinear upsampling; writes labels/scores/probs.");
}
