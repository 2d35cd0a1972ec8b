"""The text side of a bundle: class names -> (K, D) prototypes through the text graph,
averaged over prompt templates, cached in memory (the 4096 most recent) and optionally
on disk (``clips4rt.textcache``)."""

from __future__ import annotations

import threading
import warnings
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from clips4rt import bundle as B
from clips4rt.prompts import MAX_NAME_CHARS, check_templates
from clips4rt.textcache import TextCache
from clips4rt.tokenizer import get_tokenizer, tokenize

MAX_TEMPLATES = 1000
#: prompts per text-graph call (see BENCHMARKS.md, "Prompt latency")
BATCH = 64


def token_lengths(tokens: np.ndarray) -> np.ndarray:
    """Per row of zero-padded tokens: the length up to and including its last non-zero
    token (the end token)."""
    nonzero = tokens != 0
    return np.where(nonzero.any(axis=1), tokens.shape[1] - np.argmax(nonzero[:, ::-1], axis=1), 1)


class TextEncoder:
    """``embeddings(classes, templates)`` of one bundle's text graph (``session``)."""

    def __init__(self, session, info: B.BundleInfo, path, cache_dir=None):
        self.session, self.info, self.path = session, info, path
        shape = session.get_inputs()[0].shape
        #: the token length the text graph requires (exports before the length axis:
        #: context_length), or None when it takes any (the runtime cuts the padding)
        self.fixed_length = shape[1] if len(shape) > 1 and isinstance(shape[1], int) else None
        self._cache: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._disk = (
            None
            if cache_dir is None
            else TextCache(cache_dir, info.text_model_sha256, info.embed_dim)
        )

    def encode_tokens(self, tokens: np.ndarray) -> np.ndarray:
        """(N, D) float64 text-graph outputs of (N, context_length) zero-padded tokens.
        A graph of dynamic length gets the prompts sorted by length in batches of
        ``BATCH``, each cut after its longest prompt's end token: the tower is causal, so
        the cut changes nothing but the work (8-10x less for the ImageNet templates on a
        ViT-B/16). No cache: ``embeddings`` is the cached way in."""
        if self.fixed_length is None:
            order = np.argsort(token_lengths(tokens), kind="stable")
        else:
            order = np.arange(len(tokens))
        chunks = range(0, len(tokens), BATCH)
        if len(tokens) > 1024:  # many new prompts: show progress where a terminal is
            try:
                from tqdm import tqdm

                chunks = tqdm(chunks, desc="text prompts", unit=f"x{BATCH}", disable=None)
            except ImportError:
                pass
        out = np.empty((len(tokens), self.info.embed_dim), np.float64)
        for i in chunks:
            rows = order[i : i + BATCH]
            batch = tokens[rows]
            if self.fixed_length is None:
                batch = np.ascontiguousarray(batch[:, : token_lengths(batch).max()])
            out[rows] = B.run_graph(self.session, B.TEXT_INPUT, batch, self.path)
        return out

    def embeddings(self, classes: Sequence[str], templates=None) -> np.ndarray:
        """(K, D) float32 prototypes: per class, the unit mean of its unit-length
        prompt embeddings over ``templates``. Cached per (class, templates): in
        memory (the 4096 most recent) and in ``cache_dir`` if given."""
        templates = check_templates(templates or self.info.prompt_templates)
        if len(templates) > MAX_TEMPLATES or any(len(t) > MAX_NAME_CHARS for t in templates):
            raise ValueError(
                f"templates: at most {MAX_TEMPLATES} of at most {MAX_NAME_CHARS} characters each"
            )
        found = {}
        with self._cache_lock:  # what is cached now is kept now: another thread may evict it
            for c in dict.fromkeys(classes):
                v = self._cache.get((c, templates))
                if v is not None:
                    found[c] = v
            todo = [c for c in dict.fromkeys(classes) if c not in found]
        if self._disk is not None:
            for c in todo:
                v = self._disk.get(c, templates)
                if v is not None:
                    found[c] = v
            todo = [c for c in todo if c not in found]
        if todo:
            prompts = [t.replace("{}", c) for c in todo for t in templates]
            ctx = self.info.context_length
            tokens = tokenize(prompts, ctx)
            full = np.nonzero(tokens[:, -1])[0]  # rows that fill the context: cut?
            cut = [prompts[i] for i in full if len(get_tokenizer().encode(prompts[i])) + 2 > ctx]
            if cut:
                warnings.warn(
                    f"{len(cut)} prompt(s) are longer than the text model's {ctx} tokens and "
                    f"were cut, e.g. {cut[0][:80]!r}; shorten the class names",
                    UserWarning,
                    stacklevel=4,
                )
            emb = self.encode_tokens(tokens)
            emb /= np.linalg.norm(emb, axis=1, keepdims=True)
            emb = emb.reshape(len(todo), len(templates), -1).mean(axis=1)
            emb /= np.linalg.norm(emb, axis=1, keepdims=True)
            for c, e in zip(todo, emb.astype(np.float32)):
                found[c] = e
                if self._disk is not None:
                    self._disk.put(c, templates, e)
        with self._cache_lock:
            for c, e in found.items():  # (re)inserted as the most recent
                self._cache[(c, templates)] = e
                self._cache.move_to_end((c, templates))
            while len(self._cache) > max(4096, len(found)):
                self._cache.popitem(last=False)
        return np.stack([found[c] for c in classes])
