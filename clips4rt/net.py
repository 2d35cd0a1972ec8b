"""Images by URL: ``Segmenter.run("https://host/x.jpg", ...)`` and ``clips4rt segment URL``.

A fetch is bounded in size (:data:`MAX_BYTES`, checked against Content-Length before
the body is read and again while reading) and in time (:data:`TIMEOUT` seconds for the
whole transfer, not per packet: a server trickling one byte a second still ends it).
Only http and https are fetched, redirects included (never ``file:`` or ``ftp:``); the
bytes are then decoded with the same limits as a file (formats, pixel count).
"""

from __future__ import annotations

import http.client
import time
import urllib.error
import urllib.request

from clips4rt.errors import ImageError

SCHEMES = ("http://", "https://")
MAX_BYTES = 100 * 2**20  # an image file larger than this is refused (raise it for huge scans)
TIMEOUT = 30.0  # seconds for the whole fetch, connection included
CHUNK = 1 << 16


def is_url(text) -> bool:
    """Whether ``text`` is an http(s) URL (what load_image fetches)."""
    return isinstance(text, str) and text[:8].lower().startswith(SCHEMES)


def fetch(url: str, max_bytes: int | None = None, timeout: float | None = None) -> bytes:
    """The body of ``url`` (http or https), at most ``max_bytes`` (default
    :data:`MAX_BYTES`) within ``timeout`` seconds (default :data:`TIMEOUT`). Raises
    ImageError naming the URL and the cause (HTTP status, network error, too large,
    too slow)."""
    limit = MAX_BYTES if max_bytes is None else max_bytes
    budget = TIMEOUT if timeout is None else timeout
    if not is_url(url):
        raise ImageError(f"{url!r}: not an http(s) URL")
    deadline = time.monotonic() + budget
    opener = urllib.request.build_opener(_HttpOnlyRedirects)
    req = urllib.request.Request(url, headers={"User-Agent": "clips4rt", "Accept": "image/*"})
    try:
        resp = opener.open(req, timeout=budget)
    except ImageError:  # a redirect refused
        raise
    except urllib.error.HTTPError as e:
        e.close()
        raise ImageError(f"{url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as e:
        raise ImageError(f"{url}: cannot fetch ({getattr(e, 'reason', e)})") from None
    with resp:
        size = resp.headers.get("Content-Length", "")
        if size.isdigit() and int(size) > limit:
            raise ImageError(
                f"{url}: {int(size)} bytes, over the {limit} byte limit for an image "
                "(raise clips4rt.net.MAX_BYTES for a genuine one)"
            )
        parts: list[bytes] = []
        done = 0
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ImageError(
                    f"{url}: not received within {budget:g} s ({done} bytes so far); raise "
                    "clips4rt.net.TIMEOUT for a slow server"
                )
            _set_timeout(resp, left)
            try:
                chunk = resp.read1(CHUNK)
            except TimeoutError:
                continue  # the deadline check above ends it
            except (OSError, http.client.HTTPException) as e:
                raise ImageError(
                    f"{url}: the transfer broke after {done} bytes ({e!r:.100})"
                ) from None
            if not chunk:
                break
            done += len(chunk)
            if done > limit:
                raise ImageError(f"{url}: more than the {limit} byte limit for an image (raise "
                                 "clips4rt.net.MAX_BYTES for a genuine one)")  # fmt: skip
            parts.append(chunk)
    if size.isdigit() and done != int(size):
        raise ImageError(f"{url}: the connection closed at {done} of {size} bytes")
    return b"".join(parts)


def _set_timeout(resp, seconds: float) -> None:
    """Each socket read waits at most what is left of the fetch's time."""
    sock = getattr(getattr(getattr(resp, "fp", None), "raw", None), "_sock", None)
    if sock is not None:
        sock.settimeout(max(0.01, seconds))


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    max_redirections = 5

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if not is_url(newurl):
            raise ImageError(f"{req.full_url}: redirected to {newurl!r}, which is not "
                             "http(s); not followed")  # fmt: skip
        return super().redirect_request(req, fp, code, msg, headers, newurl)
