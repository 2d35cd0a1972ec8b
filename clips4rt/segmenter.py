"""Segmenter: prompt-conditioned segmentation with an exported bundle on onnxruntime."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from clips4rt import background as BG
from clips4rt import bundle as B
from clips4rt import device as DV
from clips4rt import hub
from clips4rt import query as Q
from clips4rt.device import resolve_providers
from clips4rt.errors import BundleError, ImageError
from clips4rt.images import load_image
from clips4rt.kernels import match_upsample, resize_rgb
from clips4rt.prompts import check_classes
from clips4rt.query import Query
from clips4rt.result import SegmentationResult, absolute_scores
from clips4rt.stream import newest, pipelined
from clips4rt.text import TextEncoder
from clips4rt.window import MAX_BATCH as WINDOW_BATCH
from clips4rt.window import check_window, embed_windows

__all__ = [
    "SegmentationResult",
    "Segmenter",
    "check_classes",
    "default_model",
    "resolve_providers",
]


# Bounds checked before anything is allocated (each error names its bound and fix).
MAX_SIZE = 4096  # the ``size`` option (short side of the graph input)
MAX_INPUT_PIXELS = 1 << 22  # graph input pixels (2048 x 2048), Segmenter(max_input_pixels=)
MAX_BATCH = 16  # images per graph run in run_batch (larger groups run in chunks)


def default_model() -> Path:
    """Path of the embedded bundle: a small CLIP-S4 student trained on the toy world
    (shapes and textures in ~20 classes, see the README), not a model of real photos."""
    from importlib import resources

    model = Path(str(resources.files("clips4rt") / "models" / "toy.onnx"))
    if not model.is_file():
        raise FileNotFoundError(f"the embedded model {model} is missing: reinstall clips4rt")
    return model


def _positive_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1


class Segmenter:
    """Open-vocabulary segmentation with a clips4rt bundle.

    >>> seg = Segmenter("model.onnx")
    >>> result = seg.run("photo.jpg", ["cat", "dog", "sofa"])
    >>> result.labels.shape  # (H, W) of the photo

    Args:
        path: the image graph ``model.onnx`` (the text graph named in its metadata
            must sit beside it); or an open_clip name such as ``"ViT-B-16/openai"``,
            built once into the cache (needs ``clips4rt[export]`` that once); or an
            ``https://`` URL of a bundle, downloaded once (:mod:`clips4rt.hub`).
            None = the embedded toy model (:func:`default_model`).
        providers: onnxruntime execution providers; None = TensorRT/CUDA if
            available, else CPU.
        threads: intra-op threads of the CPU provider (None or 0 = onnxruntime's
            default, all cores; at most 4x the cores, each is an OS thread).
        post_threads: at most this many threads for the C++ resize and matching
            (0 = all cores; None = ``threads`` up to the core count, or all
            cores). Small frames use fewer (one per ~0.5 M units of work).
        spin: let onnxruntime's threads spin-wait for work after a graph run (its
            default). Off by default here: spinning threads hold the cores that the
            post-processing threads and a stream's graph worker need right after each
            run (1080p ``run`` 18.3 -> 17.3 ms with 2 post threads on 2 cores, the
            graph itself ~2 % slower; BENCHMARKS.md). Turn it on for a graph-only loop.
        max_pixels: largest image (width x height) accepted, checked before decoding
            ("default" = ``clips4rt.images.MAX_PIXELS``, PIL's decompression-bomb
            limit; None = no limit).
        max_input_pixels: largest graph input (pixels after the resize to ``size``);
            default 2048 x 2048. Raise it only if the model and memory allow.
        cache_dir: folder for an on-disk cache of prompt embeddings (keyed by the
            text graph's sha256, the templates and the class name), so that a
            restarted app skips the text graph; None = in memory only; "auto"
            (default) = ``<cache home>/text`` for a model given by name or URL (it
            lives in that cache already), in memory only for a bundle's path.
        postprocess: "cpu" (the C++ kernels on the host), "graph" (matching and
            upsampling inside onnxruntime, the embeddings never leaving the device:
            ``clips4rt.device``), or "auto" (default): "graph" on CUDA/TensorRT,
            "cpu" on the CPU provider.
        trt_fp16, trt_cache, trt_max_side: TensorRT settings (used only with its
            provider): fp16 kernels (default on), the engine cache folder (default
            ``~/.cache/clips4rt/trt``: the first run builds engines, minutes; later
            runs load them), the largest frame side of the dynamic-shape profile
            (default 4x the bundle's input size).
    """

    def __init__(
        self,
        path=None,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        cache_dir="auto",
        post_threads: int | None = None,
        spin: bool = False,
        max_pixels: int | None | str = "default",
        max_input_pixels: int = MAX_INPUT_PIXELS,
        postprocess: str = "auto",
        trt_fp16: bool = True,
        trt_cache=None,
        trt_max_side: int | None = None,
    ):
        self.path = default_model() if path is None else hub.resolve(path)
        if isinstance(cache_dir, str) and cache_dir == "auto":
            cache_dir = hub.home() / "text" if hub.is_name(path) or hub.is_url(path) else None
        self.providers = resolve_providers(providers)
        if postprocess not in DV.POSTPROCESS:
            raise ValueError(f"postprocess must be one of {DV.POSTPROCESS}, got {postprocess!r}")
        self._trt = None
        cores = os.cpu_count() or 1
        if threads is not None and not (
            isinstance(threads, int) and not isinstance(threads, bool) and 0 <= threads
        ):
            raise ValueError(f"threads must be None or an int >= 0, got {threads!r}")
        if threads is not None and threads > max(4 * cores, 16):
            raise ValueError(
                f"threads={threads} is over the limit of {max(4 * cores, 16)} (4x the "
                f"{cores} cores): each is an OS thread; use threads={cores}"
            )
        self.threads = threads
        if not (max_pixels in ("default", None) or _positive_int(max_pixels)):
            raise ValueError(f"max_pixels must be a positive int or None, got {max_pixels!r}")
        if not _positive_int(max_input_pixels):
            raise ValueError(f"max_input_pixels must be a positive int, got {max_input_pixels!r}")
        self.max_pixels = max_pixels
        self.max_input_pixels = max_input_pixels
        if post_threads is None:
            post_threads = min(int(threads), os.cpu_count() or 1) if threads else 0
        if not (
            isinstance(post_threads, int)
            and not isinstance(post_threads, bool)
            and 0 <= post_threads <= 1024
        ):
            raise ValueError(f"post_threads must be an int in [0, 1024], got {post_threads!r}")
        self.post_threads = post_threads
        self.spin = bool(spin)
        if "TensorrtExecutionProvider" in self.providers:  # profiles need the metadata first
            meta = self._session(self.path, ["CPUExecutionProvider"], light=True)
            info = B.BundleInfo.from_metadata(meta.get_modelmeta().custom_metadata_map,
                                              str(self.path))  # fmt: skip
            cache = Path(trt_cache).expanduser() if trt_cache else hub.home() / "trt"
            self._trt = DV.trt_options(cache, info.stride, info.input_size, trt_fp16,
                                       trt_max_side, opt_side=info.window)  # fmt: skip
            del meta
        self._image = self._session(self.path)
        meta = self._image.get_modelmeta().custom_metadata_map
        self.info = B.BundleInfo.from_metadata(meta, str(self.path))
        if self.info.precision == "int8" and self.providers[0] == "CUDAExecutionProvider":
            raise BundleError(
                f"{self.path} is an int8 bundle: onnxruntime's CUDA provider runs its "
                "quantized layers slowly or not at all. Use providers=['CPUExecutionProvider'] "
                "(int8 on AVX-512 VNNI / ARM dot-product CPUs) or TensorRT "
                "(providers=['TensorrtExecutionProvider', ...]), or export a float bundle "
                "for CUDA (--fp16)"
            )
        text_path = self.path.parent / self.info.text_model
        if not text_path.is_file():
            raise BundleError(
                f"text graph {text_path} named by {self.path.name} is missing: keep the "
                "bundle's files together"
            )
        if B.sha256_file(text_path) != self.info.text_model_sha256:
            raise BundleError(
                f"{text_path} does not match the sha256 recorded in {self.path.name}: it "
                "belongs to another export. Re-export the bundle."
            )
        self._text = self._session(text_path, [p for p in self.providers
                                               if p != "TensorrtExecutionProvider"])  # fmt: skip
        self._check_io()
        mode = postprocess
        if mode == "auto":
            mode = "graph" if DV.device_type(self.providers) == "cuda" else "cpu"
        self.postprocess = mode
        self._matcher = None
        if mode == "graph":
            self._matcher = DV.GraphMatcher(self._image, self.providers, self._options())
        self.text = TextEncoder(self._text, self.info, text_path, cache_dir)
        self._last_prompts = None
        self._image_sha: str | None = None

    def _options(self) -> ort.SessionOptions:
        opts = ort.SessionOptions()
        if self.threads:
            opts.intra_op_num_threads = int(self.threads)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spin else "0")
        return opts

    def _session(self, path: Path, providers=None, light=False) -> ort.InferenceSession:
        opts = self._options()
        if light:  # only to read the metadata
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        providers = DV.provider_list(providers or self.providers, self._trt)
        try:
            return ort.InferenceSession(str(path), opts, providers=providers)
        except Exception as e:  # onnxruntime raises several private types here
            raise BundleError(
                f"{path} is not a loadable ONNX model ({type(e).__name__}: {e}). Is the "
                "file truncated or of another format? Re-export with `clips4rt export`."
            ) from e

    def _check_io(self) -> None:
        # a probe at a new shape would make TensorRT build an engine (minutes)
        probe = "TensorrtExecutionProvider" not in self.providers
        B.check_graphs(self._image, self._text, self.info, self.path, probe=probe)

    # ------------------------------------------------------------------ text side
    def text_embeddings(self, classes: Sequence[str], templates=None) -> np.ndarray:
        """(K, D) float32 prototypes: per class, the unit mean of its unit-length
        prompt embeddings over ``templates`` (default: the bundle's). Cached per (class,
        templates): in memory (the 4096 most recent) and in ``cache_dir`` if given."""
        return self.text.embeddings(classes, templates)

    # ----------------------------------------------------------------- image side
    def working_size(self, h: int, w: int, size: int | None = None) -> tuple[int, int]:
        """(H', W') the graph runs at: short side ~``size``, multiples of the stride,
        long side at most 4x ``size``."""
        s = self.info.stride
        if size is None:
            size = self.info.input_size
        elif not _positive_int(size):
            raise ValueError(f"size must be a positive int (pixels) or None, got {size!r}")
        size = int(size)
        if not s <= size <= MAX_SIZE:
            raise ValueError(
                f"size {size} is outside [{s}, {MAX_SIZE}] (the model's stride .. "
                "clips4rt.segmenter.MAX_SIZE); None = the bundle's default "
                f"{self.info.input_size}"
            )
        if min(h, w) < s:
            raise ImageError(
                f"image is {w}x{h} pixels, smaller than one {s}x{s} patch of the model"
            )
        scale = size / min(h, w)
        cap = (4 * size // s) * s
        hh, ww = (int(min(cap, max(s, round(n * scale / s) * s))) for n in (h, w))
        if hh * ww > self.max_input_pixels:
            raise ValueError(
                f"the graph would run at {ww}x{hh} = {hh * ww} pixels (size={size}), over "
                f"this Segmenter's limit of {self.max_input_pixels} "
                "(max_input_pixels): pass a smaller size, or raise "
                "Segmenter(..., max_input_pixels=) if the model and memory allow it"
            )
        return hh, ww

    def embed(self, images: np.ndarray) -> np.ndarray:
        """Run the image graph: (B, H, W, 3) uint8 -> (B, D, H/stride, W/stride) float32."""
        return B.run_graph(self._image, B.IMAGE_INPUT, images, self.path)

    def embed_image(
        self, image, size: int | None = None, window="default", window_stride=None
    ) -> np.ndarray:
        """Pixel embeddings of one image as ``run`` computes them: the image (path, PIL
        image or HxWx3 uint8 RGB) resized to ``working_size`` (short side ``size``,
        default the bundle's), then the image graph, whole or in sliding windows (as in
        ``run``). Returns (D, h, w) float32, h x w = the working size / stride (the grid
        ``run`` upsamples): unit vectors, or with windows the mean of the crops' unit
        vectors (``clips4rt.window``)."""
        win = self.window_setting(window, window_stride)
        return self._embed_one(image, size, win)[1]

    def run(self, image, classes, **options) -> SegmentationResult:
        """Segment one image by class names.

        Args:
            image: file path, PIL image, or HxWx3 uint8 RGB array.
            classes: class names (distinct, non-empty strings), or a dict
                {class: [names]} when a class has several names (``clips4rt.vocab``:
                labels index the keys; a class scores by its best name).
            threshold: background if the winner's probability is under it
                (default: the bundle's; 0 disables).
            background: extra class names whose pixels become -1 (default: the
                bundle's; a name also in ``classes`` counts as a class).
            templates: prompt templates with one '{}' (default: the bundle's).
            size: short side the image is resized to (default: the bundle's).
            window, window_stride: sliding-window inference (``clips4rt.window``):
                square crops of ``window`` pixels of the working size, ``window_stride``
                apart (default half the window), overlaps averaged; None = one pass
                over the whole image; default: the bundle's setting.
            logit_scale: the softmax temperature of the probabilities (default: the
                bundle's); changes ``scores`` and what a ``threshold`` keeps, never the
                labels.
            head: a fitted head (``clips4rt.fit_head``; a ``Head`` or its file): its
                classes follow ``classes`` in the labels (``classes`` may then be None
                or [] for the head's alone); they have no ``probability``.
        """
        q = self._query(classes, **options)
        if self._matcher is not None:
            return self._run_graph_post(image, q)
        image, emb = self._embed_one(image, q.size, q.window)
        return self._postprocess(emb, image, q)

    def _run_graph_post(self, image, q: Query) -> SegmentationResult:
        """``run`` with the post-processing inside onnxruntime (``clips4rt.device``)."""
        image = load_image(image, self.max_pixels)
        hh, ww = self.working_size(*image.shape[:2], q.size)
        frame = self._resize(image, hh, ww)
        args = (q.protos, image.shape[:2], q.logit_scale, len(q.vocab.names), q.threshold)
        emb = None
        if q.window is None:
            labels, scores, probs = self._matcher.run(frame[None], *args)
        else:  # the crops' mean embeddings come from the host
            emb = self._embed_windows(frame, q.window)
            labels, scores, probs = self._matcher.run_embeddings(emb[None], *args)
        labels = q.vocab.map_labels(labels[0])
        if q.class_thresholds is not None:
            BG.apply_class_thresholds(labels, probs[0], q.class_thresholds)
        extra = self._absolute(
            lambda: emb if emb is not None else self.embed(frame[None])[0],
            image.shape[:2], q,
        )  # fmt: skip
        return SegmentationResult(labels, probs[0], scores[0], list(q.vocab.classes), image,
                                  **extra)  # fmt: skip

    def _embed_one(self, image, size, win=None) -> tuple[np.ndarray, np.ndarray]:
        """(the image as HxWx3 uint8, its (D, h, w) embeddings)."""
        image = load_image(image, self.max_pixels)
        hh, ww = self.working_size(*image.shape[:2], size)
        frame = self._resize(image, hh, ww)
        if win is not None:
            return image, self._embed_windows(frame, win)
        return image, self.embed(frame[None])[0]

    def _embed_windows(self, frame, win) -> np.ndarray:
        # TensorRT's profile takes one image a run (an engine per batch size otherwise)
        batch = 1 if self._trt is not None else WINDOW_BATCH
        return embed_windows(self.embed, frame, *win, self.info.stride, batch=batch)

    def discover(self, image, k: int | None = None, vocabulary=None, **options):
        """Class-free segments of ``image``: clusters of its pixel embeddings (``k``, or
        chosen by the best mean silhouette in [2, ``max_k``]), each optionally named by
        its ``top`` nearest ``vocabulary`` entries with cosine and, where the bundle is
        calibrated, an absolute score. Returns a ``clips4rt.discover.Discovery`` (labels,
        segments, overlay()). Options: max_k, top, seed, min_silhouette, size, window,
        window_stride; the method: ``clips4rt.discover``."""
        from clips4rt.discover import discover

        return discover(self, image, k, vocabulary, **options)

    def run_batch(
        self,
        images: Sequence,
        classes,
        **options,
    ) -> list[SegmentationResult]:
        """Segment several images (options as in ``run``); images of the same working
        size share one graph run (with windows, each image's crops do)."""
        q = self._query(classes, **options)
        if self._matcher is not None:  # one frame at a time: each has its own output size
            return [self._run_graph_post(im, q) for im in images]
        if q.window is not None:  # each image's crops batch together
            pairs = (self._embed_one(im, q.size, q.window) for im in images)
            return [self._postprocess(emb, image, q) for image, emb in pairs]
        arrays = [load_image(im, self.max_pixels) for im in images]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, a in enumerate(arrays):
            groups.setdefault(self.working_size(*a.shape[:2], q.size), []).append(i)
        results: list[SegmentationResult | None] = [None] * len(arrays)
        chunks = [
            (hw, idx[i : i + MAX_BATCH])
            for hw, idx in groups.items()
            for i in range(0, len(idx), MAX_BATCH)
        ]
        for (hh, ww), idx in chunks:
            if len(idx) == 1:  # a view, no copy
                batch = self._resize(arrays[idx[0]], hh, ww)[None]
            else:
                batch = np.stack([self._resize(arrays[i], hh, ww) for i in idx])
            emb = self.embed(batch)
            for j, i in enumerate(idx):
                results[i] = self._postprocess(emb[j], arrays[i], q)
        return results

    def stream(
        self,
        frames: Iterable,
        classes,
        *,
        prefetch: int = 2,
        latest: bool = False,
        **options,
    ) -> Iterator[SegmentationResult]:
        """Segment a stream of frames (arrays, PIL images or paths), yielding one
        result per frame, in order; each equals ``run(frame, classes, **options)``.

        Pipelined: a worker thread decodes, resizes and runs the graph on the next
        frames (at most ``prefetch`` waiting) while this thread post-processes, so a
        video runs at about the graph's rate. A bad frame raises its error
        (ImageError, ...) when the stream reaches it, after the frames before it.
        Options are checked now; break out of the loop or ``close()`` the generator
        to stop the worker early.

        ``latest=True`` is for live sources (cameras, network streams) that deliver
        faster than frames are segmented: a reader thread keeps only the newest frame
        and the graph always takes that one, one frame in flight (``prefetch`` 1), so a
        result is never older than one source period plus one frame's processing
        (``clips4rt.stream.newest``); the frames in between are dropped, and results are
        no longer one per frame.
        """
        q = self._query(classes, **options)
        if not (isinstance(prefetch, int) and 1 <= prefetch <= 64):
            raise ValueError(f"prefetch must be an int in [1, 64], got {prefetch!r}")

        def produce(frame):
            if self._matcher is not None:  # the device does it all
                return self._run_graph_post(frame, q)
            return self._embed_one(frame, q.size, q.window)

        def consume(item):
            if self._matcher is not None:
                return item
            image, emb = item
            return self._postprocess(emb, image, q)

        if latest:
            return pipelined(newest(frames), produce, consume, 1)
        return pipelined(frames, produce, consume, prefetch)

    def _query(self, classes, **options) -> Query:
        """Every option of a call, checked before any image is read (``clips4rt.query``)."""
        return Q.build(self, classes, **options)

    def window_setting(self, window="default", window_stride=None) -> tuple[int, int] | None:
        """The (window, stride) in pixels a call with these options uses (None = whole
        image); checks them (``clips4rt.window.check_window``)."""
        if isinstance(window, str) and window == "default":
            window = self.info.window or None
            if window_stride is None:
                window_stride = self.info.window_stride or None
        return check_window(window, window_stride, self.info.stride)

    def _check_prompts(self, *args):
        """The checked prompts of a new question (``clips4rt.query.check_prompts``;
        ``clips4rt.query.remembered`` calls it through here)."""
        return Q.check_prompts(self, *args)

    def image_sha256(self) -> str:
        """sha256 of the image graph file (computed once): what a fitted head records."""
        if self._image_sha is None:
            self._image_sha = B.sha256_file(self.path)
        return self._image_sha

    def _resize(self, a: np.ndarray, h: int, w: int) -> np.ndarray:
        return resize_rgb(a, (h, w), threads=self.post_threads)

    def _postprocess(self, emb, image, q: Query) -> SegmentationResult:
        """Labels now; probabilities and cosines now only if the threshold needs
        them, else on first access (the same kernel, the same values)."""
        vocab = q.vocab

        def match(**kw):
            labels, sims, probs = match_upsample(
                emb, q.protos, image.shape[:2], q.logit_scale, threads=self.post_threads,
                n_classes=len(vocab.names), **kw,
            )  # fmt: skip
            return vocab.map_labels(labels), sims, probs

        def finish():
            labels, sims, probs = match(threshold=q.threshold)
            if q.class_thresholds is not None:
                BG.apply_class_thresholds(labels, probs, q.class_thresholds)
            return labels, sims, probs

        classes = list(vocab.classes)
        extra = self._absolute(emb, image.shape[:2], q)
        if q.threshold > 0 or q.class_thresholds is not None:
            labels, sims, probs = finish()
            return SegmentationResult(labels, probs, sims, classes, image, **extra)
        labels, _, _ = match(labels_only=True)
        return SegmentationResult(labels, None, None, classes, image, finish=finish, **extra)

    def _absolute(self, emb, size, q: Query) -> dict:
        return absolute_scores(self.info, q.vocab, q.protos, emb, size, self.post_threads)
