"""The HTTP service: every route, every bad request, batching, back-pressure, the web page in Chromium."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import io
import json
import logging
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import warnings
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from fastapi.responses import Response  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from padim import PaDiM  # noqa: E402
from padim.cli import build_parser, main  # noqa: E402
from padim.errors import PadimError  # noqa: E402
from padim.deployment.service import VERDICT_COLOURS, Batcher, create_app, running_in_thread  # noqa: E402

from conftest import TINY  # noqa: E402


# ----------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def model(texture_set: Path) -> PaDiM:
    """TINY ResNet18 fitted on the brick training images, thresholds from a 25% hold-out."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # too few hold-out images for a 1% FPR: expected here
        return PaDiM(**TINY, holdout=0.25).fit(texture_set / "train" / "good")


@pytest.fixture(scope="module")
def defect_image(texture_set: Path) -> Path:
    return sorted((texture_set / "test" / "hole").glob("*.png"))[0]


@pytest.fixture(scope="module")
def good_image(texture_set: Path) -> Path:
    return sorted((texture_set / "test" / "good").glob("*.png"))[0]


@pytest.fixture(scope="module")
def client(model: PaDiM):
    app = create_app(model, max_upload_bytes=100_000, max_pixels=20_000, max_batch=8)
    with TestClient(app) as c:
        yield c


def upload(path: Path, content_type: str = "image/png") -> dict:
    return {"files": {"file": (path.name, path.read_bytes(), content_type)}}


def png_bytes(height: int, width: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels, with almost no pixel data (a 'bomb')."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def multipart_body(name: str, data: bytes, content_type: str, boundary: str = "padimtestboundary") -> bytes:
    return (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
            f"Content-Type: {content_type}\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()


# ----------------------------------------------------------------------------------- routes
def test_health(client: TestClient, model: PaDiM) -> None:
    r = client.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok"
    assert body["model"] == "resnet18"
    assert body["n_features"] == 32
    assert body["image_size"] == [64, 64]
    assert body["calibrated"] is True
    assert body["limits"]["max_batch"] == 8
    assert body["limits"]["body_timeout_s"] == 30 and body["limits"]["max_uploads_per_client"] == 8


def test_page_is_self_contained(client: TestClient) -> None:
    r = client.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    page = r.text
    assert '<input type="file"' in page and "predict?overlay=true" in page and "drop" in page
    assert "resnet18" in page
    for external in ('src="http', "src='http", 'href="http', "@import", "//cdn"):
        assert external not in page
    assert "default-src 'none'" in r.headers["content-security-policy"]


def test_page_comes_from_its_template_files_filled_in(client: TestClient) -> None:
    from padim.utils.templates import PLACEHOLDER, read_template

    page = client.get("/").text
    assert not PLACEHOLDER.search(page)
    for name in ("page.css", "page.js"):
        assert read_template("padim_runtime", name).strip() in page
    for verdict, colour in VERDICT_COLOURS.items():  # the banner colours the Chromium test looks for
        assert f"#verdict.{verdict}{{background:{colour}}}" in page
    assert 'data-crop-note=""' in page  # the test model has no centre crop: no note in the legend


def test_predict_matches_model(client: TestClient, model: PaDiM, defect_image: Path, good_image: Path) -> None:
    for path in (defect_image, good_image):
        expected = model.predict([path])
        r = client.post("/predict", **upload(path))
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["score"] == pytest.approx(float(expected.scores[0]), abs=1e-5)
        assert body["defective"] is bool(expected.decisions[0])
        assert body["normalized_score"] == pytest.approx(float(expected.normalized_scores[0]), abs=1e-5)
        assert body["image_threshold"] == pytest.approx(expected.image_threshold)
        assert body["pixel_threshold"] == pytest.approx(expected.pixel_threshold)
        assert body["threshold_source"] == model.calibration_.describe()
        assert body["image"] == {"name": path.name, "width": 96, "height": 96}
        assert body["batch_size"] >= 1
        assert set(body["timing_ms"]) >= {"queue", "inference", "total"}
        assert body["timing_ms"]["total"] >= body["timing_ms"]["inference"] >= 0
        assert "overlay_png_base64" not in body


def test_predict_raw_body(client: TestClient, model: PaDiM, defect_image: Path) -> None:
    for media in ("image/png", "application/octet-stream"):
        r = client.post("/predict", content=defect_image.read_bytes(),
                        headers={"content-type": media, "x-filename": "part-17.png"})
        assert r.status_code == 200, r.text
        assert r.json()["score"] == pytest.approx(float(model.predict([defect_image]).scores[0]), abs=1e-5)
        assert r.json()["image"]["name"] == "part-17.png"


def test_overlay_json_and_png(client: TestClient, defect_image: Path) -> None:
    r = client.post("/predict?overlay=true", **upload(defect_image))
    assert r.status_code == 200
    panel = Image.open(io.BytesIO(base64.b64decode(r.json()["overlay_png_base64"])))
    assert panel.format == "PNG" and panel.mode == "RGB"
    assert panel.size == (2 * 96 + 4, 96)  # image | gap | heat map, at the image's own size
    left = np.asarray(panel)[:, :96]
    original = np.asarray(Image.open(defect_image).convert("RGB"))
    assert np.abs(left.astype(int) - original.astype(int)).max() <= 1

    r = client.post("/predict?format=png", **upload(defect_image))
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/png"
    assert r.headers["x-padim-defective"] in ("true", "false")
    assert float(r.headers["x-padim-score"]) > 0
    assert Image.open(io.BytesIO(r.content)).size == (196, 96)


def test_large_images_get_a_smaller_overlay(model: PaDiM) -> None:
    app = create_app(model, max_overlay_side=64)
    with TestClient(app) as c:
        r = c.post("/predict?format=png", files={"file": ("wide.png", png_bytes(100, 200), "image/png")})
    assert r.status_code == 200
    assert Image.open(io.BytesIO(r.content)).size == (2 * 64 + 4, 32)


def test_uncalibrated_model_gives_scores_only(model: PaDiM, defect_image: Path) -> None:
    plain = copy.copy(model)
    plain.calibration_ = None
    with TestClient(create_app(plain)) as c:
        assert c.get("/health").json()["calibrated"] is False
        body = c.post("/predict?overlay=true", **upload(defect_image)).json()
    assert body["score"] == pytest.approx(float(model.predict([defect_image]).scores[0]), abs=1e-5)
    assert body["defective"] is None and body["normalized_score"] is None
    assert body["image_threshold"] is None and body["threshold_source"] is None
    assert body["overlay_png_base64"]


# ----------------------------------------------------------------------------------- bad requests
def detail(r: httpx.Response) -> str:
    text = r.json()["detail"]
    assert isinstance(text, str) and "\n" not in text
    return text


def test_too_large_upload_is_413(client: TestClient) -> None:
    big = png_bytes(200, 200)  # ~120 KB of noise, the limit is 100 KB
    assert len(big) > 100_000
    r = client.post("/predict", files={"file": ("big.png", big, "image/png")})
    assert r.status_code == 413 and "limit" in detail(r)
    r = client.post("/predict", content=big, headers={"content-type": "image/png"})
    assert r.status_code == 413 and "limit" in detail(r)
    # without a Content-Length (chunked): the stream is cut off at the limit
    r = client.post("/predict", content=iter([big[i:i + 8192] for i in range(0, len(big), 8192)]),
                    headers={"content-type": "image/png"})
    assert r.status_code == 413
    body = multipart_body("big.png", big, "image/png")
    r = client.post("/predict", content=iter([body[i:i + 8192] for i in range(0, len(body), 8192)]),
                    headers={"content-type": "multipart/form-data; boundary=padimtestboundary"})
    assert r.status_code == 413
    # the limit is on the file itself, not on the multipart envelope around it
    r = client.post("/predict", files={"file": ("edge.png", b"x" * 100_001, "image/png")})
    assert r.status_code == 413
    r = client.post("/predict", files={"file": ("edge.png", b"x" * 100_000, "image/png")})
    assert r.status_code == 422  # within the limit: read, then found not to be an image


def test_too_many_pixels_is_413(client: TestClient) -> None:
    r = client.post("/predict", files={"file": ("wide.png", png_bytes(150, 150), "image/png")})  # 22,500 > 20,000
    assert r.status_code == 413
    assert "150x150" in detail(r) and "20,000" in detail(r)
    # a header claiming 50000 x 50000 pixels is refused before any decoding
    for side in (1000, 50_000):
        r = client.post("/predict", files={"file": ("bomb.png", png_header(side, side), "image/png")})
        assert r.status_code == 413, r.text
        assert "pixels" in detail(r)


def test_upload_is_turned_upright_by_its_exif_orientation_like_files(
    client: TestClient, model: PaDiM, tmp_path: Path
) -> None:
    from camera_files import decoded_as_stored, rotated_jpeg

    path = rotated_jpeg(tmp_path / "cam.jpg", 6)
    r = client.post("/predict", **upload(path, "image/jpeg"))
    assert r.status_code == 200, r.text
    assert r.json()["image"] == {"name": "cam.jpg", "width": 24, "height": 40}  # stored 40 wide, 24 high
    assert r.json()["score"] == pytest.approx(float(model.predict([path]).scores[0]), abs=1e-5)
    upright = np.ascontiguousarray(np.rot90(decoded_as_stored(path), -1))
    assert r.json()["score"] == pytest.approx(float(model.predict([upright]).scores[0]), abs=1e-5)


@pytest.mark.parametrize("payload, message", [
    (b"hello, this is not an image", "not a readable image"),
    (b"", "empty file"),
    (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "not a readable image"),
])
def test_not_an_image_is_422(client: TestClient, payload: bytes, message: str) -> None:
    r = client.post("/predict", files={"file": ("x.png", payload, "image/png")})
    assert r.status_code == 422
    assert message in detail(r) and detail(r).startswith("x.png: ")


def test_truncated_image_is_422(client: TestClient, defect_image: Path) -> None:
    data = defect_image.read_bytes()
    r = client.post("/predict", files={"file": ("cut.png", data[: len(data) // 2], "image/png")})
    assert r.status_code == 422
    assert detail(r).startswith("cut.png: ")


def test_wrong_content_type_is_415(client: TestClient, defect_image: Path) -> None:
    r = client.post("/predict", **upload(defect_image, "text/plain"))
    assert r.status_code == 415 and "text/plain" in detail(r)
    r = client.post("/predict", content=b'{"image": 1}', headers={"content-type": "application/json"})
    assert r.status_code == 415 and "application/json" in detail(r)
    r = client.post("/predict", content=defect_image.read_bytes(), headers={"content-type": ""})
    assert r.status_code == 415 and "Content-Type" in detail(r)


def test_missing_file_is_422(client: TestClient) -> None:
    r = client.post("/predict")
    assert r.status_code == 422 and "no image uploaded" in detail(r)
    r = client.post("/predict", data={"note": "no file here"})
    assert r.status_code == 422 and "no image uploaded" in detail(r)
    body = b'--b0\r\nContent-Disposition: form-data; name="note"\r\n\r\nhello\r\n--b0--\r\n'
    r = client.post("/predict", content=body, headers={"content-type": "multipart/form-data; boundary=b0"})
    assert r.status_code == 422 and "no image uploaded" in detail(r)


def test_malformed_requests(client: TestClient, defect_image: Path) -> None:
    r = client.post("/predict", content=b"--x\r\n", headers={"content-type": "multipart/form-data"})  # no boundary
    assert r.status_code == 400 and "multipart" in detail(r)
    r = client.post("/predict?format=gif", **upload(defect_image))
    assert r.status_code == 422  # FastAPI's own validation of the query
    assert client.get("/predict").status_code == 405


def test_create_app_checks_limits(model: PaDiM) -> None:
    with pytest.raises(PadimError, match="max_upload_bytes"):
        create_app(model, max_upload_bytes=0)
    with pytest.raises(PadimError, match="max_batch"):
        create_app(model, max_batch=0)
    with pytest.raises(PadimError, match="not fitted"):
        create_app(PaDiM(**TINY))
    for bad in (float("nan"), float("inf"), -1.0, 0, "5"):
        with pytest.raises(PadimError, match="body_timeout_s"):
            create_app(model, body_timeout_s=bad)
    for bad in (0, -3, 2.5):
        with pytest.raises(PadimError, match="max_uploads_per_client"):
            create_app(model, max_uploads_per_client=bad)


def test_api_docs_are_off_unless_asked_for(model: PaDiM) -> None:
    with TestClient(create_app(model)) as c:
        for route in ("/docs", "/redoc", "/openapi.json"):
            assert c.get(route).status_code == 404, route
        assert c.get("/health").status_code == 200
    with TestClient(create_app(model, api_docs=True)) as c:
        assert "swagger" in c.get("/docs").text.lower()
        assert c.get("/redoc").status_code == 200
        assert "/predict" in c.get("/openapi.json").json()["paths"]


# ----------------------------------------------------------------------------------- batching and back-pressure
def test_batcher_groups_requests_and_isolates_failures() -> None:
    calls: list[list] = []

    def run(items: list) -> list:
        calls.append(list(items))
        if "bad" in items:
            raise PadimError("bad input")
        return [f"{x}!" for x in items]

    async def scenario() -> list:
        batcher = Batcher(run, max_batch=4, max_wait_ms=200)
        try:
            first = await asyncio.gather(*(batcher.submit(f"a{i}") for i in range(6)))
            second = await asyncio.gather(*(batcher.submit(x) for x in ("b0", "bad", "b2")), return_exceptions=True)
        finally:
            await batcher.close()
        return [first, second]

    first, second = asyncio.run(scenario())
    assert [r for r, _ in first] == [f"a{i}!" for i in range(6)]
    assert [info.batch_size for _, info in first] == [4, 4, 4, 4, 2, 2]
    assert calls[:2] == [["a0", "a1", "a2", "a3"], ["a4", "a5"]]
    assert second[0][0] == "b0!" and second[2][0] == "b2!"
    assert isinstance(second[1], PadimError)
    assert calls[2:] == [["b0", "bad", "b2"], ["b0"], ["bad"], ["b2"]]  # the batch failed: retried one by one


def test_concurrent_requests_share_batches(model: PaDiM, texture_set: Path) -> None:
    paths = sorted((texture_set / "test").glob("*/*.png"))[:8]
    expected = model.predict(paths).scores
    app = create_app(model, max_batch=8, max_wait_ms=300)
    results: list = [None] * len(paths)
    start = threading.Barrier(len(paths))

    with running_in_thread(app) as url:
        assert url.startswith("http://127.0.0.1:")

        def call(i: int) -> None:
            with httpx.Client(base_url=url, timeout=30) as c:
                start.wait()
                results[i] = c.post("/predict", files={"file": (paths[i].name, paths[i].read_bytes(), "image/png")})

        threads = [threading.Thread(target=call, args=(i,)) for i in range(len(paths))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert all(r is not None and r.status_code == 200 for r in results)
    bodies = [r.json() for r in results]
    assert max(b["batch_size"] for b in bodies) > 1
    assert max(app.state.batcher.batch_sizes) > 1
    np.testing.assert_allclose([b["score"] for b in bodies], expected, rtol=1e-5, atol=1e-5)


def test_busy_server_answers_503(model: PaDiM, defect_image: Path) -> None:
    entered, release = threading.Event(), threading.Event()
    gated = copy.copy(model)

    def slow_predict(*args, **kwargs):
        entered.set()
        release.wait(30)
        return model.predict(*args, **kwargs)

    gated.predict = slow_predict
    app = create_app(gated, max_queue=1)
    first: list = []
    with TestClient(app) as c:
        worker = threading.Thread(target=lambda: first.append(c.post("/predict", **upload(defect_image))))
        worker.start()
        try:
            assert entered.wait(30)
            r = c.post("/predict", **upload(defect_image))
            assert r.status_code == 503
            assert r.headers["retry-after"] == "1" and "busy" in detail(r)
            assert c.get("/health").json()["in_flight"] == 1  # health still answers
        finally:
            release.set()
            worker.join(30)
        assert first[0].status_code == 200
        assert c.post("/predict", **upload(defect_image)).status_code == 200  # free again


# ----------------------------------------------------------------------------------- hostile clients, on real sockets
def stalled_upload(port: int, source: str, declared: int = 1024 * 1024, sent: int = 1024) -> socket.socket:
    """A raw connection from `source` that declares a `declared`-byte image, sends `sent` bytes of it and stalls."""
    sock = socket.socket()
    try:
        sock.bind((source, 0))  # any 127.x.y.z is this machine on Linux: a distinct client address
    except OSError as exc:
        sock.close()
        pytest.skip(f"cannot use {source} as a client address here: {exc}")
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"POST /predict HTTP/1.1\r\nHost: test\r\nContent-Type: image/png\r\n"
                 f"Content-Length: {declared}\r\n\r\n".encode() + b"x" * sent)
    return sock


def answer(sock: socket.socket, timeout: float) -> tuple[int | None, str | None, bool]:
    """What the server sent on a raw connection within `timeout`: status, one-line detail, and whether it closed."""
    sock.settimeout(timeout)
    data, closed = b"", False
    try:
        while chunk := sock.recv(65536):
            data += chunk
        closed = True
    except TimeoutError:
        pass
    except ConnectionResetError:
        closed = True
    if not data.startswith(b"HTTP/1.1 "):
        return None, None, closed
    head, _, body = data.partition(b"\r\n\r\n")
    text = json.loads(body)["detail"]
    assert isinstance(text, str) and "\n" not in text
    return int(head.split()[1]), text, closed


def wait_in_flight(c: httpx.Client, n: int, timeout: float = 10) -> None:
    """Wait until the server reports `n` requests in flight."""
    deadline = time.monotonic() + timeout
    while c.get("/health").json()["in_flight"] != n:
        assert time.monotonic() < deadline, f"never {n} requests in flight"
        time.sleep(0.02)


def test_stalled_clients_leave_room_for_others(model: PaDiM, good_image: Path) -> None:
    """70 connections from one address send 1 kB of a declared 1 MiB and stall: others are still served."""
    app = create_app(model, body_timeout_s=60, max_uploads_per_client=8)  # the timeout plays no part here
    with running_in_thread(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        port = int(url.rsplit(":", 1)[1])
        stalled = [stalled_upload(port, "127.0.0.2") for _ in range(70)]
        try:
            wait_in_flight(c, 8)
            t0 = time.monotonic()
            r = c.post("/predict", **upload(good_image))
            latency = time.monotonic() - t0
            assert r.status_code == 200, r.text
            assert latency < 5
            answers = [answer(s, 0.3) for s in stalled]
        finally:
            for s in stalled:
                s.close()
    statuses = Counter(status for status, _, _ in answers)
    assert statuses == {429: 62, None: 8}  # 8 still receiving (stalled), the rest refused at once
    refused = [(text, closed) for status, text, closed in answers if status == 429]
    assert all(closed and "127.0.0.2" in text and "limit 8" in text for text, closed in refused)


def test_stalled_uploads_get_408_and_free_their_slots(model: PaDiM, good_image: Path) -> None:
    """70 stalled uploads from 70 addresses fill the queue until the body timeout answers them 408."""
    app = create_app(model, body_timeout_s=2)
    with running_in_thread(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        port = int(url.rsplit(":", 1)[1])
        t0 = time.monotonic()
        stalled = [stalled_upload(port, f"127.0.0.{2 + i}") for i in range(70)]
        trickling = threading.Event()

        def trickle() -> None:  # the first one keeps sending a byte at a time: the timeout is on the whole body
            with contextlib.suppress(OSError):
                while not trickling.wait(0.1):
                    stalled[0].send(b"x")

        thread = threading.Thread(target=trickle)
        thread.start()
        try:
            wait_in_flight(c, 64)
            assert c.post("/predict", **upload(good_image)).status_code == 503  # what clients got before
            deadline = t0 + 15  # one deadline for all: without a timeout this fails in 15 s, not 70 x 15
            answers = [answer(s, max(0.01, deadline - time.monotonic())) for s in stalled]
            elapsed = time.monotonic() - t0
        finally:
            trickling.set()
            thread.join(10)
            for s in stalled:
                s.close()
        assert c.post("/predict", **upload(good_image)).status_code == 200
    assert Counter(status for status, _, _ in answers) == {408: 64, 503: 6}
    assert all(closed for _, _, closed in answers)  # every stalled connection is closed by the server
    assert answers[0][0] == 408 and "2 s" in answers[0][1]
    assert 2 <= elapsed < 10


def test_disconnect_mid_upload_is_one_log_line(model: PaDiM) -> None:
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    server_log = logging.getLogger("uvicorn.error")  # where uvicorn writes "Exception in ASGI application"
    multipart_start = (b'--b0\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
                       b"Content-Type: image/png\r\n\r\n" + b"x" * 1000)
    with running_in_thread(create_app(model)) as url, httpx.Client(base_url=url, timeout=30) as c:
        server_log.addHandler(handler)
        try:
            for media, sent in (("image/png", b"x" * 1000), ("multipart/form-data; boundary=b0", multipart_start)):
                with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1]))) as sock:
                    sock.sendall(f"POST /predict HTTP/1.1\r\nHost: test\r\nContent-Type: {media}\r\n"
                                 f"Content-Length: 100000\r\n\r\n".encode() + sent)
                    wait_in_flight(c, 1)
                wait_in_flight(c, 0)
            assert c.get("/health").status_code == 200
        finally:
            server_log.removeHandler(handler)
    assert len(records) == 2, [r.getMessage() for r in records]
    for record in records:
        assert record.exc_info is None and record.levelno == logging.WARNING
        message = record.getMessage()
        assert "\n" not in message and "disconnected during the upload" in message and "127.0.0.1" in message


# ----------------------------------------------------------------------------------- command line
def test_serve_options(tmp_path: Path, model: PaDiM, monkeypatch) -> None:
    args = build_parser().parse_args(["serve", "m.safetensors"])
    assert (args.body_timeout, args.max_uploads_per_client, args.api_docs) == (30, 8, False)
    for option, bad in (("--body-timeout", "nan"), ("--body-timeout", "inf"), ("--body-timeout", "-1"),
                        ("--body-timeout", "0"), ("--body-timeout", "soon"), ("--max-uploads-per-client", "0")):
        with pytest.raises(SystemExit) as exit_info:
            build_parser().parse_args(["serve", "m.safetensors", option, bad])
        assert exit_info.value.code == 2

    import padim.deployment.service

    seen: dict = {}
    monkeypatch.setattr(padim.deployment.service, "serve", lambda model, **kwargs: seen.update(kwargs))
    path = tmp_path / "m.safetensors"
    model.save(path)
    assert main(["serve", str(path), "--body-timeout", "2.5", "--max-uploads-per-client", "3", "--api-docs"]) == 0
    assert (seen["body_timeout_s"], seen["max_uploads_per_client"], seen["api_docs"]) == (2.5, 3, True)
    assert main(["serve", str(path)]) == 0
    assert (seen["body_timeout_s"], seen["max_uploads_per_client"], seen["api_docs"]) == (30, 8, False)


def test_serve_command_line(tmp_path: Path, model: PaDiM, defect_image: Path, capsys) -> None:
    args = build_parser().parse_args(["serve", "m.safetensors"])
    assert (args.host, args.port, args.max_upload_mb, args.max_pixels, args.max_batch) == (
        "127.0.0.1", 8000, 20, 40_000_000, 8)

    assert main(["serve", str(tmp_path / "missing.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "missing.safetensors" in err

    path = tmp_path / "m.safetensors"
    model.save(path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert main(["serve", str(path), "--port", str(taken.getsockname()[1])]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "cannot listen on 127.0.0.1" in err

    # the real thing: `padim serve` in a subprocess on a free port of 127.0.0.1
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "padim.cli", "serve", str(path), "--port", "0", "-q"],
                                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline, url = time.monotonic() + 60, None
        while url is None and time.monotonic() < deadline and proc.poll() is None:
            for line in log.read_text().splitlines():
                if "listening on http://127.0.0.1:" in line:
                    url = line.split("listening on ")[1].split("/ ")[0]
            time.sleep(0.1)
        assert url, log.read_text()
        with httpx.Client(base_url=url, timeout=30) as c:
            assert c.get("/health").json()["calibrated"] is True
            body = c.post("/predict", **upload(defect_image)).json()
            assert c.get("/docs").status_code == 404
            with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1]))) as sock:  # leaves mid-upload
                sock.sendall(b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: image/png\r\n"
                             b"Content-Length: 5000\r\n\r\n" + b"x" * 100)
                wait_in_flight(c, 1)
            wait_in_flight(c, 0)
        assert body["score"] == pytest.approx(float(model.predict([defect_image]).scores[0]), abs=1e-5)
        text = log.read_text()
        assert "Traceback" not in text and "Exception" not in text, text
        assert [line for line in text.splitlines() if "disconnected" in line] == [
            "WARNING:  127.0.0.1 disconnected during the upload to /predict: request dropped"], text
    finally:
        proc.terminate()
        proc.wait(30)


# ----------------------------------------------------------------------------------- the web page in Chromium
CHROMIUM = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)


def screenshot(chromium: str, url: str, out: Path, profile: Path, size: str = "900,1000") -> None:
    """Headless Chromium: load the page, let its scripts run (virtual time), save a PNG."""
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
                    "--disable-extensions", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
                    f"--window-size={size}", "--virtual-time-budget=15000", f"--screenshot={out}", url],
                   check=False, timeout=90, capture_output=True)


def colour_mask(rgb: np.ndarray, hex_colour: str, tolerance: int = 8) -> np.ndarray:
    target = np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)])
    return np.abs(rgb.astype(int) - target).max(axis=2) <= tolerance


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_web_page_in_headless_chromium(model: PaDiM, defect_image: Path, tmp_path: Path) -> None:
    verdict = "defect" if bool(model.predict([defect_image]).decisions[0]) else "ok"
    app = create_app(model)
    image = defect_image.read_bytes()
    app.add_api_route("/test-image.png", lambda: Response(image, media_type="image/png"))  # test-only route
    shot = tmp_path / "page.png"
    with running_in_thread(app) as url:
        screenshot(CHROMIUM, f"{url}/?demo=/test-image.png", shot, tmp_path / "profile")
    assert shot.is_file(), "chromium wrote no screenshot"
    rgb = np.asarray(Image.open(shot).convert("RGB"))
    assert rgb.std() > 10  # not blank
    # the verdict banner is drawn in its colour, the other verdict's colour is absent
    banner = colour_mask(rgb, VERDICT_COLOURS[verdict])
    assert banner.sum() > 10_000
    other = "ok" if verdict == "defect" else "defect"
    assert colour_mask(rgb, VERDICT_COLOURS[other]).sum() < 500
    # the overlay is there: under the banner, an area full of distinct colours (photo + heat map)
    banner_rows = np.where(banner.sum(axis=1) > 200)[0]
    below = rgb[banner_rows.max() + 1:]
    colours = len(np.unique(below.reshape(-1, 3), axis=0))
    assert colours > 2000, f"only {colours} distinct colours under the verdict: no overlay?"
