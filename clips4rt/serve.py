"""``clips4rt serve``: the segmenter over HTTP, with a web page, for other processes and
languages. Starlette + uvicorn (the ``serve`` extra: ``pip install "clips4rt[serve]"``).

Endpoints (``GET /openapi.json`` describes them):

- ``POST /v1/segment``: an image as multipart (``image`` file field) or JSON
  (``"image"``: base64; ``"url"``: only with ``--allow-urls``), ``classes`` (a list, or
  "cat,dog") and ``run``'s options (threshold, background, window, window_stride, size,
  logit_scale; ``head``: false leaves out the server's fitted head). Answers JSON -
  size, classes, each class's share of the pixels, the label PNG in base64, with
  ``overlay`` the overlay PNG, with ``polygons`` each class's polygons, with ``coco`` a
  one-image COCO dataset (RLE masks)
  - or, with ``format`` labels / overlay (or ``Accept: image/png``), the PNG itself, or
  with ``format=raw`` the labels as bytes, row-major uint8 with 255 = background (uint16
  little-endian, 65535, above 255 classes; headers X-Width, X-Height, X-Dtype): no
  decoder needed in a C++ or Go client, and no PNG encoding on the server.
- ``GET /v1/info``: the bundle's metadata (and the head's classes); ``GET /healthz``:
  liveness; ``GET /``: the page.

With a few-shot head (``serve(..., head=FILE)``, ``clips4rt serve --head FILE``: read and
checked against the model once, at start) every request's answer has the head's
classes after its named ones, as ``run(image, classes, head=...)`` labels them;
``classes`` may then be empty (the head's alone), and ``"head": false`` asks for the
named classes only.

Bounded: the request body (``max_body`` bytes, and ``body_timeout`` seconds to send it:
a slow upload gets 408), the image (the runtime's pixel limit), ``max_classes`` names,
``max_concurrent`` inferences at once (others wait up to ``queue_timeout`` s, then 503
with Retry-After), ``timeout`` s per inference (504; the inference still holds its slot
until it ends, so the bound holds). Binds 127.0.0.1 by default; any other address needs
a token (``--token`` or ``CLIPS4RT_TOKEN``), then sent as ``Authorization: Bearer T``.
Errors are JSON ``{"error": {"type", "message"}}``: 4xx for bad input, never a traceback.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import io
import ipaddress
import json
import logging
import os
from dataclasses import asdict, dataclass
from importlib import resources

import numpy as np

from clips4rt.errors import BundleError, ImageError

log = logging.getLogger("clips4rt.serve")

TOKEN_ENV = "CLIPS4RT_TOKEN"
FIELDS = ("image", "url", "classes", "threshold", "background", "window", "window_stride",
          "size", "logit_scale", "format", "overlay", "polygons", "coco", "head")  # fmt: skip
FORMATS = ("json", "labels", "overlay", "raw")


@dataclass(frozen=True)
class Limits:
    max_body: int = 20 * 2**20  # bytes of one request
    body_timeout: float = 30.0  # seconds to receive it
    max_classes: int = 256
    max_name: int = 200  # characters of one class name
    max_concurrent: int = 2  # inferences at once
    queue_timeout: float = 10.0  # seconds a request waits for a slot
    timeout: float = 60.0  # seconds of one inference


class HTTPError(Exception):
    def __init__(self, status: int, kind: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.kind, self.message, self.headers = status, kind, message, headers


def _require():
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise ImportError(
            "clips4rt serve needs Starlette and uvicorn: pip install 'clips4rt[serve]'"
        ) from None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def create_app(segmenter, limits: Limits = Limits(), token: str | None = None,  # noqa: B008
               allow_urls: bool = False, head=None):  # fmt: skip
    """The ASGI app serving ``segmenter`` (shared by all requests: its text cache stays
    warm). ``token``: required on /v1/* when given. ``head``: a few-shot head (a
    ``clips4rt.Head`` or its file) whose classes every answer adds to the named ones."""
    _require()
    if head is not None:
        from clips4rt.fewshot import check_head

        head = check_head(head, segmenter)  # a bad file stops the start, not a request
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route

    slots: asyncio.Semaphore | None = None  # made on the server's event loop

    def error(status: int, kind: str, message: str, headers=None) -> JSONResponse:
        body = {"error": {"type": kind, "message": message}}
        return JSONResponse(body, status_code=status, headers=headers)

    def check_token(request) -> None:
        if token is None:
            return
        got = request.headers.get("authorization", "")
        if not hmac.compare_digest(got.encode(), f"Bearer {token}".encode()):
            raise HTTPError(401, "Unauthorized", "a valid token is needed: send the header "
                            "'Authorization: Bearer <token>'",
                            {"WWW-Authenticate": "Bearer"})  # fmt: skip

    async def read_body(request) -> bytes:
        size = request.headers.get("content-length", "")
        if size.isdigit() and int(size) > limits.max_body:
            raise HTTPError(413, "PayloadTooLarge", f"the request is {size} bytes, over the "
                            f"limit of {limits.max_body} (clips4rt serve --max-body)")  # fmt: skip
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limits.body_timeout
        chunks, n = [], 0
        stream = request.stream().__aiter__()
        while True:
            left = deadline - loop.time()
            try:
                if left <= 0:
                    raise asyncio.TimeoutError
                chunk = await asyncio.wait_for(stream.__anext__(), left)
            except StopAsyncIteration:
                break
            except asyncio.TimeoutError:
                raise HTTPError(408, "RequestTimeout", f"the request body did not arrive "
                                f"within {limits.body_timeout:g} s") from None  # fmt: skip
            n += len(chunk)
            if n > limits.max_body:
                raise HTTPError(413, "PayloadTooLarge", f"the request is over the limit of "
                                f"{limits.max_body} bytes (clips4rt serve --max-body)")  # fmt: skip
            chunks.append(chunk)
        return b"".join(chunks)

    async def parse(request) -> dict:
        body = await read_body(request)
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "application/json":
            try:
                fields = json.loads(body)
            except (ValueError, UnicodeDecodeError) as e:
                raise HTTPError(400, "BadRequest", f"the body is not valid JSON ({e})") from None
            if not isinstance(fields, dict):
                raise HTTPError(400, "BadRequest", "the JSON body must be an object")
        elif kind == "multipart/form-data":
            fields = await _multipart(request, body)
        else:
            raise HTTPError(415, "UnsupportedMediaType", "send multipart/form-data (an "
                            "'image' file) or application/json (base64 'image')")  # fmt: skip
        unknown = sorted(set(fields) - set(FIELDS))
        if unknown:
            raise HTTPError(422, "UnknownFields", f"unknown fields {unknown}; known: "
                            f"{', '.join(FIELDS)}")  # fmt: skip
        return fields

    async def _multipart(request, body: bytes) -> dict:
        async def replay():
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(request.scope, replay).form(
                max_files=1, max_fields=len(FIELDS), max_part_size=limits.max_body
            )
        except Exception as e:  # noqa: BLE001 - Starlette's parser errors vary by version
            raise HTTPError(400, "BadRequest", f"cannot read the multipart body ({e})") from None
        fields = {}
        for key, value in form.multi_items():
            if key in fields:
                raise HTTPError(422, "DuplicateField", f"field {key!r} given twice")
            fields[key] = await value.read() if hasattr(value, "read") else value
        return fields

    def image_of(fields: dict):
        if ("image" in fields) == ("url" in fields):
            raise HTTPError(422, "MissingImage", "give one of 'image' (a file, or base64 in "
                            "JSON) and 'url'")  # fmt: skip
        if "url" in fields:
            if not allow_urls:
                raise HTTPError(422, "UrlsOff", "this server does not fetch URLs (start it "
                                "with --allow-urls); send the image itself")  # fmt: skip
            from clips4rt.net import fetch

            return fetch(str(fields["url"]))
        image = fields["image"]
        if isinstance(image, str):  # JSON: base64, never a path on the server
            try:
                return base64.b64decode(image, validate=True)
            except (binascii.Error, ValueError):
                raise HTTPError(400, "BadRequest", "'image' is not valid base64") from None
        if not isinstance(image, bytes):
            raise HTTPError(422, "BadField", "'image' must be a file or a base64 string")
        return image

    def options_of(fields: dict) -> tuple[list[str], dict, str, dict]:
        from clips4rt.cli import _split, _threshold

        asked = fields.get("head") not in (None, "")
        if asked and _flag(fields["head"]) and head is None:
            raise HTTPError(422, "BadField", "'head': this server has no few-shot head (start "
                            "it with clips4rt serve --head FILE)")  # fmt: skip
        use_head = head is not None and (not asked or _flag(fields["head"]))
        classes = fields.get("classes")
        if isinstance(classes, str):
            text = classes.strip()
            classes = json.loads(text) if text.startswith("[") else _split(text)
        if use_head and classes in (None, ""):
            classes = []
        if not (isinstance(classes, list) and (classes or use_head)
                and all(isinstance(c, str) for c in classes)):
            raise HTTPError(422, "BadField", "'classes' must be a non-empty list of names, or "
                            '"cat,dog"' + (" (or empty, for the head's classes alone)"
                                           if head is not None else ""))  # fmt: skip
        if len(classes) > limits.max_classes:
            raise HTTPError(422, "TooManyClasses", f"{len(classes)} classes, over the limit "
                            f"of {limits.max_classes}")  # fmt: skip
        if any(len(c) > limits.max_name for c in classes):
            raise HTTPError(422, "BadField", f"a class name is over {limits.max_name} characters")
        opts: dict = {}
        if fields.get("threshold") not in (None, ""):
            t = fields["threshold"]
            opts["threshold"] = _threshold(t) if isinstance(t, str) else t
        if fields.get("background") not in (None, ""):
            b = fields["background"]
            opts["background"] = _split(b) if isinstance(b, str) else b
        for key, cast in (("window", int), ("window_stride", int), ("size", int),
                          ("logit_scale", float)):  # fmt: skip
            if fields.get(key) not in (None, ""):
                try:
                    value = cast(fields[key])
                except (TypeError, ValueError):
                    raise HTTPError(422, "BadField", f"'{key}' must be a number") from None
                opts[key] = (value or None) if key == "window" else value
        fmt = str(fields.get("format") or "json").lower()
        if fmt not in FORMATS:
            raise HTTPError(422, "BadField", f"'format' must be one of {', '.join(FORMATS)}")
        extras = {k: _flag(fields.get(k)) for k in ("overlay", "polygons", "coco")}
        for key, module in (("polygons", "cv2"), ("coco", "pycocotools")):
            if extras[key]:
                from clips4rt.labels import require

                try:
                    require(module)
                except ImportError as e:
                    raise HTTPError(422, "Unavailable", f"'{key}' on this server: {e}") from None
        if use_head:
            opts["head"] = head
        return classes, opts, fmt, extras

    def infer(image: bytes, classes, opts, fmt: str, extras: dict):
        """The inference and its encoding (in a worker thread)."""
        from clips4rt.visualize import label_png

        r = segmenter.run(image, classes, **opts)
        if fmt == "raw":  # row-major uint8 (255 = background), uint16 above 255 classes
            h, w = r.labels.shape
            dtype = np.uint8 if len(r.classes) <= 255 else np.dtype("<u2")
            return r.labels.astype(dtype).tobytes(), {"X-Width": str(w), "X-Height": str(h),
                                                      "X-Dtype": np.dtype(dtype).name}  # fmt: skip
        if fmt == "labels":
            return _png(label_png(r.labels, len(r.classes)))
        if fmt == "overlay":
            return _png(r.overlay())
        counts = np.bincount(r.labels.ravel() + 1, minlength=len(r.classes) + 1)
        h, w = r.labels.shape
        out = {
            "width": int(w),
            "height": int(h),
            "classes": list(r.classes),
            "share": {c: int(counts[k + 1]) / r.labels.size for k, c in enumerate(r.classes)},
            "background": int(counts[0]) / r.labels.size,
            "labels_png": base64.b64encode(_png(label_png(r.labels, len(r.classes)))).decode(),
        }
        if extras["overlay"]:
            out["overlay_png"] = base64.b64encode(_png(r.overlay())).decode()
        if extras["coco"]:  # one image (id 1), one RLE annotation per class present
            out["coco"] = r.to_coco("image")
        if extras["polygons"]:
            from clips4rt.labels import polygons as polys

            out["polygons"] = {c: [p.astype(int).ravel().tolist() for p in polys(r.labels == k)]
                               for k, c in enumerate(r.classes) if counts[k + 1]}  # fmt: skip
        return out

    async def segment(request):
        nonlocal slots
        check_token(request)
        fields = await parse(request)
        image = await run_in_threadpool(image_of, fields) if "url" in fields else image_of(fields)
        classes, opts, fmt, extras = options_of(fields)
        if "format" not in fields and "image/png" in request.headers.get("accept", ""):
            fmt = "labels"
        if slots is None:
            slots = asyncio.Semaphore(limits.max_concurrent)
        try:
            await asyncio.wait_for(slots.acquire(), limits.queue_timeout)
        except asyncio.TimeoutError:
            raise HTTPError(503, "Busy", f"{limits.max_concurrent} inferences running and "
                            f"none ended within {limits.queue_timeout:g} s; retry later",
                            {"Retry-After": "1"}) from None  # fmt: skip
        task = asyncio.ensure_future(run_in_threadpool(infer, image, classes, opts, fmt, extras))
        task.add_done_callback(lambda _: slots.release())  # the slot is held until it ends
        try:
            out = await asyncio.wait_for(asyncio.shield(task), limits.timeout)
        except asyncio.TimeoutError:
            raise HTTPError(504, "Timeout", f"the inference took over {limits.timeout:g} s "
                            "(clips4rt serve --timeout)") from None  # fmt: skip
        if isinstance(out, tuple):
            return Response(out[0], media_type="application/octet-stream", headers=out[1])
        if isinstance(out, bytes):
            return Response(out, media_type="image/png")
        return JSONResponse(out)

    async def info(request):
        check_token(request)
        meta = asdict(segmenter.info)
        meta["prompt_templates"] = len(segmenter.info.prompt_templates)
        meta["head"] = None if head is None else {"classes": list(head.classes),
                                                  "prototypes": len(head.prototypes)}
        return JSONResponse(meta)

    async def healthz(request):
        return JSONResponse({"ok": True})

    async def page(request):
        return HTMLResponse(_page())

    async def openapi(request):
        return JSONResponse(OPENAPI)

    async def on_error(request, exc):
        if isinstance(exc, HTTPError):
            return error(exc.status, exc.kind, exc.message, exc.headers)
        if isinstance(exc, ImageError):
            return error(400, "ImageError", str(exc))
        if isinstance(exc, (ValueError, TypeError)) and not isinstance(exc, BundleError):
            return error(422, type(exc).__name__, str(exc))
        log.exception("clips4rt serve: %s %s failed", request.method, request.url.path)
        return error(500, "InternalError", "the server failed on this request (see its log)")

    routes = [
        Route("/", page),
        Route("/healthz", healthz),
        Route("/openapi.json", openapi),
        Route("/v1/info", info),
        Route("/v1/segment", segment, methods=["POST"]),
    ]
    handlers = {HTTPError: on_error, ValueError: on_error, TypeError: on_error,
                Exception: on_error}  # fmt: skip
    return Starlette(routes=routes, exception_handlers=handlers)


def _flag(value) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).lower() in ("1", "true", "yes", "on") if value is not None else False


def _png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)  # fast: the bytes go out at once
    return buf.getvalue()


def _page() -> str:
    return (resources.files("clips4rt") / "data" / "index.html").read_text(encoding="utf-8")


def serve(model=None, host: str = "127.0.0.1", port: int = 8080, token: str | None = None,
          limits: Limits = Limits(), allow_urls: bool = False, threads: int | None = None,  # noqa: B008
          head=None, **segmenter_options) -> None:  # fmt: skip
    """Run the server (blocks; Ctrl-C stops it)."""
    _require()
    import uvicorn

    from clips4rt.segmenter import Segmenter

    token = token or os.environ.get(TOKEN_ENV) or None
    if not is_loopback(host) and token is None:
        raise ValueError(f"--host {host} is reachable from other machines: give --token "
                         f"TOKEN (or set {TOKEN_ENV}); clients send 'Authorization: Bearer "
                         "TOKEN'")  # fmt: skip
    seg = Segmenter(model, threads=threads, **segmenter_options)
    app = create_app(seg, limits, token, allow_urls, head)
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_keep_alive=5,
                limit_concurrency=limits.max_concurrent * 16 + 16)  # fmt: skip


OPENAPI = {
    "openapi": "3.1.0",
    "info": {"title": "clips4rt", "version": "1"},
    "paths": {
        "/v1/segment": {"post": {
            "summary": "Segment an image by class names",
            "requestBody": {"content": {
                "multipart/form-data": {"schema": {"type": "object",
                    "required": ["image", "classes"], "properties": {
                        "image": {"type": "string", "format": "binary"},
                        "classes": {"type": "string", "description": '"cat,dog" or a JSON list'},
                        "threshold": {"type": "string"}, "background": {"type": "string"},
                        "window": {"type": "integer", "description": "0 = whole image"},
                        "window_stride": {"type": "integer"}, "size": {"type": "integer"},
                        "logit_scale": {"type": "number"},
                        "format": {"enum": list(FORMATS)},
                        "overlay": {"type": "boolean"}, "polygons": {"type": "boolean"},
                        "coco": {"type": "boolean"},
                        "head": {"type": "boolean", "description": "false: without the "
                                 "server's head (default true)"}}}},
                "application/json": {"schema": {"type": "object", "required": ["classes"],
                    "properties": {
                        "image": {"type": "string", "description": "base64 of an image file"},
                        "url": {"type": "string", "description": "only with --allow-urls"},
                        "classes": {"type": "array", "items": {"type": "string"}}}}}}},
            "responses": {
                "200": {"description": "JSON (width, height, classes, share, background, "
                        "labels_png base64, overlay_png, polygons), image/png, or "
                        "application/octet-stream (format=raw)"},
                "400": {"description": "not an image, a decompression bomb, bad JSON"},
                "401": {"description": "token missing or wrong"},
                "408": {"description": "the body arrived too slowly"},
                "413": {"description": "body over the limit"},
                "415": {"description": "neither multipart nor JSON"},
                "422": {"description": "unknown or bad fields"},
                "503": {"description": "busy: retry after Retry-After seconds"},
                "504": {"description": "the inference took too long"}}}},
        "/v1/info": {"get": {"summary": "The model's metadata"}},
        "/healthz": {"get": {"summary": "Liveness"}},
    },
}  # fmt: skip
