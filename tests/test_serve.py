"""clips4rt serve: the HTTP API on a real uvicorn server bound to 127.0.0.1 (labels equal
to in-process runs, bounds and bad input), and its web page in headless Chromium."""

from __future__ import annotations

import base64
import http.client
import io
import json
import shutil
import socket
import threading
import time
from importlib import resources

import numpy as np
import pytest
from PIL import Image

import clips4rt

pytest.importorskip("starlette", reason="the `serve` extra is not installed")
uvicorn = pytest.importorskip("uvicorn", reason="the `serve` extra is not installed")
from clips4rt import serve as S  # noqa: E402

SCENE = resources.files("clips4rt") / "data" / "demo_scene.png"
TOY = ["sky", "grass", "water", "sand", "brick wall", "snow", "ball", "star", "tree", "car",
       "pyramid"]  # fmt: skip


class _Server:
    """A uvicorn server for ``app`` in a thread, on a free port of 127.0.0.1."""

    def __init__(self, app):
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                timeout_keep_alive=5)  # fmt: skip
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        for _ in range(200):
            if self.server.started:
                break
            time.sleep(0.05)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def request(self, method, path, body=None, headers=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, dict(resp.getheaders()), resp.read()
        finally:
            conn.close()


def _multipart(fields: dict) -> tuple[bytes, dict]:
    boundary = "clips4rt-test-boundary"
    parts = []
    for key, value in fields.items():
        if isinstance(value, bytes):
            head = f'Content-Disposition: form-data; name="{key}"; filename="x"\r\n' \
                   "Content-Type: application/octet-stream\r\n\r\n"  # fmt: skip
            parts.append(f"--{boundary}\r\n{head}".encode() + value + b"\r\n")
        else:
            head = f'Content-Disposition: form-data; name="{key}"\r\n\r\n'
            parts.append(f"--{boundary}\r\n{head}{value}\r\n".encode())
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


@pytest.fixture(scope="module")
def seg():
    return clips4rt.Segmenter(threads=2)


@pytest.fixture(scope="module")
def server(seg):
    limits = S.Limits(max_body=2 * 2**20, body_timeout=1.5, max_classes=32)
    srv = _Server(S.create_app(seg, limits))
    yield srv
    srv.stop()


def _labels(png: bytes) -> np.ndarray:
    a = np.asarray(Image.open(io.BytesIO(png))).astype(np.int32)
    return np.where(a == 255, -1, a)


def test_segment_equals_the_in_process_run(server, seg):
    data = SCENE.read_bytes()
    want = seg.run(data, TOY)
    body, headers = _multipart({"image": data, "classes": ",".join(TOY), "overlay": "true",
                                "coco": "1", "polygons": "yes"})  # fmt: skip
    status, _, raw = server.request("POST", "/v1/segment", body, headers)
    assert status == 200, raw
    out = json.loads(raw)
    np.testing.assert_array_equal(_labels(base64.b64decode(out["labels_png"])), want.labels)
    counts = np.bincount(want.labels.ravel() + 1, minlength=len(TOY) + 1)
    assert out["share"] == {c: counts[k + 1] / want.labels.size for k, c in enumerate(TOY)}
    assert out["classes"] == TOY and (out["width"], out["height"]) == (128, 128)
    assert Image.open(io.BytesIO(base64.b64decode(out["overlay_png"]))).size == (128, 128)
    from pycocotools import mask as mu  # the dev extra has it (else the server says 422)

    for ann in out["coco"]["annotations"]:
        k = ann["category_id"] - 1
        np.testing.assert_array_equal(mu.decode(ann["segmentation"]), want.labels == k)
    assert len(out["coco"]["annotations"]) == int((counts[1:] > 0).sum())
    assert set(out["polygons"]) == {c for k, c in enumerate(TOY) if counts[k + 1]}
    # JSON with base64, a threshold, and the PNG itself by format / Accept
    payload = {"image": base64.b64encode(data).decode(), "classes": TOY, "threshold": 0.5}
    for extra, accept in (({"format": "labels"}, None), ({}, "image/png")):
        hdrs = {"Content-Type": "application/json", **({"Accept": accept} if accept else {})}
        status, h, raw = server.request("POST", "/v1/segment",
                                        json.dumps({**payload, **extra}), hdrs)  # fmt: skip
        assert status == 200 and h["content-type"] == "image/png"
        np.testing.assert_array_equal(_labels(raw), seg.run(data, TOY, threshold=0.5).labels)
    status, h, raw = server.request("POST", "/v1/segment", *_multipart(
        {"image": data, "classes": ",".join(TOY), "format": "raw"}))  # fmt: skip
    assert status == 200 and (h["x-width"], h["x-height"], h["x-dtype"]) == ("128", "128", "uint8")
    got = np.frombuffer(raw, np.uint8).reshape(128, 128).astype(np.int32)
    np.testing.assert_array_equal(np.where(got == 255, -1, got), want.labels)
    status, _, raw = server.request("GET", "/v1/info")
    assert status == 200 and json.loads(raw)["kind"] == seg.info.kind
    assert server.request("GET", "/healthz")[0] == 200
    assert "/v1/segment" in json.loads(server.request("GET", "/openapi.json")[2])["paths"]


def _error(status_raw) -> tuple[int, dict]:
    status, _, raw = status_raw
    assert b"Traceback" not in raw
    return status, json.loads(raw)["error"]


def test_bad_input_gets_4xx_with_the_reason(server, tmp_path):
    data = SCENE.read_bytes()
    post = lambda fields: server.request("POST", "/v1/segment", *_multipart(fields))  # noqa: E731
    status, err = _error(post({"image": b"not an image", "classes": "sky"}))
    assert status == 400 and err["type"] == "ImageError" and "supported format" in err["message"]
    bomb = io.BytesIO()
    Image.new("1", (12000, 10000)).save(bomb, format="PNG")  # 120 M pixels in a few KB
    status, err = _error(post({"image": bomb.getvalue(), "classes": "sky"}))
    assert status == 400 and "over the limit" in err["message"]
    status, err = _error(post({"image": data, "classes": "sky", "colour": "red"}))
    assert status == 422 and "colour" in err["message"]
    status, err = _error(post({"image": data, "classes": ",".join(f"c{i}" for i in range(40))}))
    assert status == 422 and err["type"] == "TooManyClasses"
    status, err = _error(post({"image": data, "classes": "sky", "threshold": "2"}))
    assert status == 422 and "threshold" in err["message"]
    status, err = _error(post({"image": data, "classes": "sky", "window": "big"}))
    assert status == 422 and "window" in err["message"]
    status, err = _error(post({"url": "http://127.0.0.1:1/x.png", "classes": "sky"}))
    assert status == 422 and "--allow-urls" in err["message"]
    status, err = _error(post({"classes": "sky"}))
    assert status == 422 and err["type"] == "MissingImage"
    secret = tmp_path / "secret.png"
    secret.write_bytes(data)  # a path in JSON is never read on the server
    status, err = _error(
        server.request(
            "POST",
            "/v1/segment",
            json.dumps({"image": str(secret), "classes": ["sky"]}),
            {"Content-Type": "application/json"},
        )
    )
    assert status == 400 and "base64" in err["message"]
    status, err = _error(server.request("POST", "/v1/segment", b"{", {"Content-Type":
                                        "application/json"}))  # fmt: skip
    assert status == 400 and "JSON" in err["message"]
    status, err = _error(server.request("POST", "/v1/segment", b"x", {"Content-Type":
                                        "text/plain"}))  # fmt: skip
    assert status == 415


def test_oversized_bodies_are_refused(server):
    big = b"\0" * (2 * 2**20 + 1)
    status, err = _error(server.request("POST", "/v1/segment", *_multipart(
        {"image": big, "classes": "sky"})))  # fmt: skip
    assert status == 413 and "limit" in err["message"]
    # no Content-Length (chunked): counted while it arrives
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    body, headers = _multipart({"image": big, "classes": "sky"})
    conn.request("POST", "/v1/segment", body=iter([body[i : i + 65536] for i in
                 range(0, len(body), 65536)]), headers=headers, encode_chunked=True)  # fmt: skip
    resp = conn.getresponse()
    assert resp.status == 413
    conn.close()


def test_a_slow_upload_times_out(server):
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"POST /v1/segment HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 1000\r\n\r\n{")  # fmt: skip
        reply = b""
        for _ in range(40):  # a byte every 0.1 s: would take 100 s
            try:
                s.sendall(b" ")
            except OSError:
                break
            s.settimeout(0.1)
            try:
                reply += s.recv(4096)
                if reply:
                    break
            except TimeoutError:
                continue
    assert reply.startswith(b"HTTP/1.1 408"), reply[:100]
    assert time.monotonic() - t0 < 4


def test_token_is_required_when_set(seg, monkeypatch):
    srv = _Server(S.create_app(seg, token="s3cret"))
    try:
        body, headers = _multipart({"image": SCENE.read_bytes(), "classes": "sky"})
        for auth in (None, "Bearer wrong", "s3cret"):
            hdrs = {**headers, **({"Authorization": auth} if auth else {})}
            status, h, _ = srv.request("POST", "/v1/segment", body, hdrs)
            assert status == 401 and h["www-authenticate"] == "Bearer"
        assert srv.request("GET", "/v1/info")[0] == 401
        hdrs = {**headers, "Authorization": "Bearer s3cret"}
        assert srv.request("POST", "/v1/segment", body, hdrs)[0] == 200
        assert srv.request("GET", "/healthz")[0] == 200  # liveness needs none
    finally:
        srv.stop()
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("served without a token"))
    with pytest.raises(ValueError, match="--token"):
        S.serve(host="0.0.0.0")  # reachable from elsewhere: refused before anything starts
    assert S.is_loopback("127.0.0.2") and S.is_loopback("::1") and not S.is_loopback("10.0.0.1")


def test_a_served_head_adds_its_classes_to_every_answer(server, seg, tmp_path):
    """--head: the answer is run(image, classes, head=...) - named classes then the head's,
    or the head's alone with no classes; "head": false leaves it out; a server without
    one refuses "head": true; a head of another width stops the start."""
    from clips4rt.fewshot import _unit

    protos = _unit(seg.text_embeddings(["tree", "car"]).astype(np.float32))
    head = clips4rt.Head(["shrub", "vehicle"], protos, [0, 1])
    path = head.save(tmp_path / "h.npz")
    data = SCENE.read_bytes()
    srv = _Server(S.create_app(seg, head=path))
    try:
        post = lambda fields: srv.request("POST", "/v1/segment", *_multipart(fields))  # noqa: E731
        for fields, named in (({"classes": "sky,grass"}, ["sky", "grass"]), ({}, []),
                              ({"classes": ""}, [])):  # fmt: skip
            status, _, raw = post({"image": data, **fields})
            assert status == 200, raw
            out = json.loads(raw)
            want = seg.run(data, named, head=head)
            assert out["classes"] == named + ["shrub", "vehicle"] == want.classes
            np.testing.assert_array_equal(_labels(base64.b64decode(out["labels_png"])),
                                          want.labels)  # fmt: skip
            assert out["share"]["vehicle"] > 0.01  # the scene's car, found by the head
        status, _, raw = post({"image": data, "classes": "sky,grass", "head": "false"})
        assert status == 200 and json.loads(raw)["classes"] == ["sky", "grass"]
        np.testing.assert_array_equal(_labels(base64.b64decode(json.loads(raw)["labels_png"])),
                                      seg.run(data, ["sky", "grass"]).labels)  # fmt: skip
        status, err = _error(post({"image": data, "head": "false"}))
        assert status == 422 and "classes" in err["message"]
        assert json.loads(srv.request("GET", "/v1/info")[2])["head"] == {
            "classes": ["shrub", "vehicle"], "prototypes": 2}
    finally:
        srv.stop()
    status, err = _error(server.request("POST", "/v1/segment", *_multipart(
        {"image": data, "classes": "sky", "head": "true"})))  # fmt: skip
    assert status == 422 and "--head" in err["message"]
    assert json.loads(server.request("GET", "/v1/info")[2])["head"] is None
    narrow = clips4rt.Head(["x"], np.eye(1, 8, dtype=np.float32), [0])
    with pytest.raises(ValueError, match="fit the head with this model"):
        S.create_app(seg, head=narrow)


class _Sleepy:
    """A stand-in segmenter that takes ``delay`` seconds a call."""

    def __init__(self, seg, delay):
        self.seg, self.delay, self.info = seg, delay, seg.info
        self.running = self.most = 0
        self.lock = threading.Lock()

    def run(self, image, classes, **options):
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        time.sleep(self.delay)
        with self.lock:
            self.running -= 1
        return self.seg.run(image, classes, **options)


def test_concurrency_is_bounded_busy_and_timeouts(seg):
    slow = _Sleepy(seg, 1.0)
    limits = S.Limits(max_concurrent=1, queue_timeout=0.3, timeout=0.5)
    srv = _Server(S.create_app(slow, limits))
    try:
        body, headers = _multipart({"image": SCENE.read_bytes(), "classes": "sky"})
        results = []

        def call():
            results.append(srv.request("POST", "/v1/segment", body, headers))

        threads = [threading.Thread(target=call) for _ in range(3)]
        for t in threads:
            t.start()
            time.sleep(0.05)
        for t in threads:
            t.join()
        statuses = sorted(r[0] for r in results)
        assert statuses == [503, 503, 504], statuses  # one runs (too long), two find it busy
        busy = next(r for r in results if r[0] == 503)
        assert busy[1]["retry-after"] == "1" and json.loads(busy[2])["error"]["type"] == "Busy"
        assert slow.most == 1
        assert slow.running == 1  # the timed-out inference still runs, and holds its slot:
        assert srv.request("POST", "/v1/segment", body, headers)[0] == 503
        time.sleep(0.8)  # until it ends and frees the slot
        slow.delay = 0.0
        assert srv.request("POST", "/v1/segment", body, headers)[0] == 200
    finally:
        srv.stop()


def test_many_clients_get_the_in_process_labels(server, seg):
    images = []
    for i in range(4):
        img = Image.open(SCENE).convert("RGB").rotate(90 * i)
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        images.append(buf.getvalue())
    want = [seg.run(d, TOY).labels for d in images]
    errors = []

    def client(c):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)  # keep-alive
        for j in range(8):
            k = (c + j) % 4
            body, headers = _multipart({"image": images[k], "classes": ",".join(TOY),
                                        "format": "labels"})  # fmt: skip
            conn.request("POST", "/v1/segment", body=body, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
            if resp.status != 200 or not np.array_equal(_labels(raw), want[k]):
                errors.append((c, j, resp.status))
        conn.close()

    threads = [threading.Thread(target=client, args=(c,)) for c in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def _browser():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("no Chromium + chromedriver (.ci/run installs Debian's where apt works)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--window-size=1200,900"):  # fmt: skip
        opts.add_argument(arg)
    opts.binary_location = chromium
    return webdriver.Chrome(options=opts, service=Service(driver))


def test_web_page_in_a_real_browser(server, seg, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser = _browser()
    try:
        browser.get(f"http://127.0.0.1:{server.port}/")
        browser.find_element(By.ID, "file").send_keys(str(SCENE))
        names = ["pyramid", "car", "sky"]
        box = browser.find_element(By.ID, "classes")
        box.clear()
        box.send_keys(", ".join(names))
        browser.find_element(By.ID, "go").click()
        WebDriverWait(browser, 60).until(
            lambda b: (
                b.find_elements(By.CSS_SELECTOR, "#legend li")
                or "error" in b.find_element(By.ID, "status").get_attribute("class")
            )
        )
        items = browser.find_elements(By.CSS_SELECTOR, "#legend li")
        assert [li.text.rsplit(" ", 1)[0] for li in items] == [*names, "(background)"]
        want = seg.run(SCENE.read_bytes(), names).labels
        shares = [float(li.get_attribute("data-share")) for li in items]
        counts = np.bincount(want.ravel() + 1, minlength=len(names) + 1)
        np.testing.assert_allclose(shares, [*(counts[1:] / want.size), counts[0] / want.size])
        src = browser.find_element(By.ID, "overlay").get_attribute("src")
        shown = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        assert shown.size == (128, 128)
        assert browser.execute_script("return document.getElementById('overlay').naturalWidth")
        assert "clip-s4" in browser.find_element(By.ID, "model").text  # from /v1/info
        browser.save_screenshot(str(tmp_path / "page.png"))
        assert (tmp_path / "page.png").stat().st_size > 1000
    finally:
        browser.quit()
