"""`padim-run serve` against the CI bundle: the API of `padim serve`, bundles by name, /metrics, drift, bad input."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
with warnings.catch_warnings():  # newer Starlette asks for httpx2 in its test client; httpx still works
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

import padim_runtime  # noqa: E402
from padim_runtime.bundle import BundleError  # noqa: E402
from padim_runtime.cli import main  # noqa: E402
from padim_runtime.service import create_app  # noqa: E402

from test_drift import parse_exposition  # noqa: E402

BUNDLE = os.environ.get("PADIM_RUNTIME_BUNDLE")
EXPECTED = os.environ.get("PADIM_RUNTIME_EXPECTED")
pytestmark = pytest.mark.skipif(not (BUNDLE and EXPECTED), reason="set PADIM_RUNTIME_BUNDLE and PADIM_RUNTIME_EXPECTED")


@pytest.fixture(scope="module")
def images() -> list[Path]:
    return [Path(p) for p in json.loads(Path(EXPECTED).read_text())["images"]]


@pytest.fixture(scope="module")
def goods(images: list[Path]) -> list[Path]:
    return [p for p in images if p.parent.name == "good"]


@pytest.fixture(scope="module")
def predictor() -> padim_runtime.Predictor:
    return padim_runtime.load(BUNDLE)


@pytest.fixture(scope="module")
def client(predictor):
    app = create_app({"a": predictor, "b": predictor}, default="a", window=24, min_count=10,
                     max_upload_bytes=100_000, max_pixels=20_000)
    with TestClient(app) as c:
        yield c


def upload(path: Path, content_type: str = "image/png") -> dict:
    return {"files": {"file": (path.name, path.read_bytes(), content_type)}}


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def detail(r: httpx.Response) -> str:
    text = r.json()["detail"]
    assert isinstance(text, str) and "\n" not in text and text
    return text


def metrics(c: TestClient) -> dict:
    r = c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse_exposition(r.text)


def key(name: str, **labels: str) -> tuple[str, frozenset]:
    return name, frozenset(labels.items())


# ----------------------------------------------------------------------------------- the API
def test_predict_over_http_equals_the_predictor(client: TestClient, predictor, images: list[Path]) -> None:
    expected = predictor.predict(images)
    for path, want in zip(images, expected):
        r = client.post("/predict", **upload(path))
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["score"] == pytest.approx(want.score, rel=1e-6)
        assert body["defective"] is want.defective and body["reason"] == want.reason
        assert body["normalized_score"] == pytest.approx(want.normalized_score, rel=1e-6)
        assert body["frame_score"] == pytest.approx(want.frame_score, rel=1e-6)
        assert body["image_threshold"] == pytest.approx(predictor.calibration["image_threshold"])
        assert body["pixel_threshold"] == pytest.approx(predictor.calibration["pixel_threshold"])
        assert body["threshold_source"].startswith("thresholds at a 1.00% false-positive rate on 6 good images")
        assert body["image"] == {"name": path.name, "width": 128, "height": 128}
        assert set(body) == {"image", "score", "normalized_score", "defective", "reason", "frame_score",
                             "image_threshold", "pixel_threshold", "threshold_source", "batch_size", "timing_ms"}
        assert body["timing_ms"]["total"] >= body["timing_ms"]["inference"] >= 0 and body["batch_size"] >= 1
    assert any(r.defective for r in expected) and not all(r.defective for r in expected)
    raw = client.post("/models/b/predict", content=images[0].read_bytes(),
                      headers={"content-type": "application/octet-stream", "x-filename": "part-17.png"})
    assert raw.status_code == 200 and raw.json()["image"]["name"] == "part-17.png"
    assert raw.json()["score"] == pytest.approx(expected[0].score, rel=1e-6)


def test_overlay_json_and_png(client: TestClient, images: list[Path]) -> None:
    r = client.post("/predict?overlay=true", **upload(images[0]))
    panel = Image.open(io.BytesIO(base64.b64decode(r.json()["overlay_png_base64"])))
    assert panel.format == "PNG" and panel.mode == "RGB" and panel.size == (2 * 128 + 4, 128)
    left = np.asarray(panel)[:, :128].astype(int)
    assert np.abs(left - np.asarray(Image.open(images[0]).convert("RGB"), int)).max() <= 1
    heat = np.asarray(panel)[:, 132:]
    assert (heat[0, 0] == 128).all() or (heat[0, 0] < 128).all()  # outside the centre crop: hatched, not coloured
    r = client.post("/models/b/predict?format=png", **upload(images[0]))
    assert r.headers["content-type"] == "image/png" and r.headers["x-padim-defective"] in ("true", "false")
    assert Image.open(io.BytesIO(r.content)).size == (260, 128) and float(r.headers["x-padim-score"]) > 0


def test_bundles_by_name_and_unknown_names_404(client: TestClient, predictor, goods: list[Path]) -> None:
    before = client.get("/drift").json()
    a = client.post("/models/a/predict", **upload(goods[0])).json()
    after = client.get("/drift").json()
    assert after["a"]["count"] == min(24, before["a"]["count"] + 1) and after["b"]["count"] == before["b"]["count"]
    assert client.post("/models/b/predict", **upload(goods[0])).json()["score"] == a["score"]
    for r in (client.post("/models/c/predict", **upload(goods[0])), client.get("/models/c/drift")):
        assert r.status_code == 404 and detail(r) == "no bundle named 'c': this service has a, b"
    models = client.get("/models").json()
    assert models["default"] == "a" and [m["name"] for m in models["models"]] == ["a", "b"]
    health = client.get("/health").json()
    assert health["model"] == "efficientnet_lite0" and set(health["models"]) == {"a", "b"}
    assert health["limits"]["max_upload_bytes"] == 100_000 and health["drift_window"] == 24
    with TestClient(create_app({"a": predictor, "b": predictor})) as two:  # no default: /predict must name one
        r = two.post("/predict", **upload(goods[0]))
        assert r.status_code == 404 and "/models/NAME/predict" in detail(r)
        assert two.post("/models/b/predict", **upload(goods[0])).status_code == 200


def test_metrics_parse_and_move(client: TestClient, goods: list[Path]) -> None:
    before = metrics(client)
    assert client.post("/models/b/predict", **upload(goods[1])).json()["defective"] is False
    client.post("/models/nope/predict", **upload(goods[1]))
    after = metrics(client)
    ok = key("padim_predictions_total", model="b", decision="ok")
    assert after[ok] == before[ok] + 1
    assert after[key("padim_predictions_total", model="a", decision="ok")] == \
        before[key("padim_predictions_total", model="a", decision="ok")]
    count = key("padim_request_duration_seconds_count", model="b")
    assert after[count] == before[count] + 1
    assert after[key("padim_request_duration_seconds_bucket", model="b", le="+Inf")] == after[count]
    not_found = key("padim_http_errors_total", code="404")
    assert after[not_found] == before.get(not_found, 0) + 1
    assert after[key("padim_drift_window_size", model="b")] == 24
    assert after[key("padim_drift_window_count", model="b")] >= 1
    assert after[key("padim_model_info", model="b", backbone="efficientnet_lite0", engine="openvino")] == 1 or \
        after[key("padim_model_info", model="b", backbone="efficientnet_lite0", engine="onnxruntime")] == 1


def variants(goods: list[Path], change) -> list[bytes]:
    """24 uploads: each good image and its mirror at 97/100/103% brightness (the data's own variation), changed."""
    out = []
    for path in goods:
        image = Image.open(path).convert("RGB")
        for side in (image, ImageOps.mirror(image)):
            out += [png(change(ImageEnhance.Brightness(side).enhance(k))) for k in (0.97, 1.0, 1.03)]
    return out


def test_drift_rises_when_the_images_change(client: TestClient, goods: list[Path]) -> None:
    def window(uploads: list[bytes]) -> dict:
        for data in uploads:
            assert client.post("/models/a/predict", files={"file": ("x.png", data, "image/png")}).status_code == 200
        return client.get("/models/a/drift").json()

    normal = window(variants(goods, lambda im: im))
    assert normal["count"] == 24 and normal["status"] == "ok", normal
    assert normal["share_above"] <= normal["share_above_limit"] and normal["frame_reject_share"] == 0
    assert normal["psi"] < normal["psi_limit"] and normal["ks"] < normal["ks_limit"]
    brighter = window(variants(goods, lambda im: ImageEnhance.Brightness(im).enhance(1.4)))
    assert brighter["status"] == "drifting", brighter
    assert brighter["share_above"] > max(normal["share_above"], brighter["share_above_limit"])
    assert brighter["psi"] > max(normal["psi"], brighter["psi_limit"]) and brighter["ks"] > brighter["ks_limit"]
    assert brighter["frame_reject_share"] > 0.5
    shown = metrics(client)
    assert shown[key("padim_drift_status", model="a", status="drifting")] == 1
    assert shown[key("padim_drift_psi", model="a")] == pytest.approx(brighter["psi"])
    assert window(variants(goods, lambda im: im))["status"] == "ok"  # the window rolled past the change


def test_page_has_the_selector_and_the_drift_panel(client: TestClient) -> None:
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in r.headers["content-security-policy"]
    page = r.text
    assert '<input type="file"' in page and 'id="drift"' in page and '<option value="b">b</option>' in page
    assert "efficientnet_lite0" in page and "{{" not in page
    script = client.get("/assets/page.js")
    assert script.status_code == 200 and "predict?overlay=true" in script.text and 'route("drift")' in script.text
    assert client.get("/assets/page.css").headers["content-type"].startswith("text/css")
    assert client.get("/assets/secret.py").status_code == 404
    for external in ('src="http', 'href="http', "@import", "//cdn"):
        assert external not in page + script.text


# ----------------------------------------------------------------------------------- bad input
def test_bad_uploads_get_one_line_and_the_main_packages_status(client: TestClient, images: list[Path]) -> None:
    rng = np.random.default_rng(0)
    noise = png(Image.fromarray(rng.integers(0, 256, (200, 200, 3), dtype=np.uint8)))  # > 100 KB
    cases = [
        (413, "limit", {"files": {"file": ("big.png", noise, "image/png")}}),
        (413, "limit", {"content": noise, "headers": {"content-type": "image/png"}}),
        (413, "limit", {"content": iter([noise[i:i + 8192] for i in range(0, len(noise), 8192)]),
                        "headers": {"content-type": "image/png"}}),
        (413, "150x150 = 22,500 pixels exceeds the limit of 20,000",
         {"files": {"file": ("wide.png", png(Image.new("RGB", (150, 150))), "image/png")}}),
        (415, "text/plain", upload(images[0], "text/plain")),
        (415, "application/json", {"content": b"{}", "headers": {"content-type": "application/json"}}),
        (415, "Content-Type", {"content": images[0].read_bytes(), "headers": {"content-type": ""}}),
        (422, "x.png: not a readable image", {"files": {"file": ("x.png", b"hello, not an image", "image/png")}}),
        (422, "x.png: empty file", {"files": {"file": ("x.png", b"", "image/png")}}),
        (422, "cut.png: ", {"files": {"file": ("cut.png", images[0].read_bytes()[:3000], "image/png")}}),
        (422, "no image uploaded", {}),
        (422, "no image uploaded", {"data": {"note": "no file here"}}),
        (422, "format must be", {**upload(images[0]), "params": {"format": "gif"}}),
        (400, "multipart", {"content": b"--x\r\n", "headers": {"content-type": "multipart/form-data"}}),
    ]
    for status, words, request in cases:
        r = client.post("/predict", **request)
        assert r.status_code == status, (status, words, r.text)
        assert words in detail(r), (words, detail(r))
        assert ".png: " not in words or detail(r).startswith(words.split(": ")[0] + ": ")  # names the file first
    assert client.get("/predict").status_code == 405


def test_busy_and_greedy_clients_are_refused_at_once(client: TestClient, images: list[Path]) -> None:
    state = client.app.state.requests
    state["pending"] += 64
    try:
        r = client.post("/predict", **upload(images[0]))
        assert r.status_code == 503 and r.headers["retry-after"] == "1" and "busy" in detail(r)
    finally:
        state["pending"] -= 64
    state["uploading"]["testclient"] += 8
    try:
        r = client.post("/predict", **upload(images[0]))
        assert r.status_code == 429 and "too many uploads at once" in detail(r)
    finally:
        del state["uploading"]["testclient"]
    assert client.post("/predict", **upload(images[0])).status_code == 200


def test_create_app_checks_what_it_is_given(predictor) -> None:
    for bad in ({"max_upload_bytes": 0}, {"max_batch": 2.5}, {"body_timeout_s": float("nan")}, {"max_queue": "5"},
                {"max_overlay_side": 8}, {"nonsense": 1}):
        with pytest.raises(BundleError, match=next(iter(bad))):
            create_app({"a": predictor}, **bad)
    with pytest.raises(BundleError, match="bundle name"):
        create_app({"a/b": predictor})
    with pytest.raises(BundleError, match="default bundle 'c'"):
        create_app({"a": predictor}, default="c")


# ----------------------------------------------------------------------------------- the command
def test_serve_command_refuses_bad_bundles_in_one_line(tmp_path: Path, capsys) -> None:
    for argv, words in ((["serve", str(tmp_path)], "not a bundle"),
                        (["serve", f"a={BUNDLE}", f"a={BUNDLE}"], "given twice"),
                        (["serve", f"a={BUNDLE}", "--max-upload-mb", "0"], "--max-upload-mb")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("padim-run: error: ") and words in err[0], err


def _stalled_status(port: int) -> str:
    """What the server answers an upload that announces 10,000 bytes and sends 10."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(b"POST /models/b/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                     b"Content-Length: 10000\r\n\r\n0123456789")
        return sock.recv(65536).decode("latin-1").split("\r\n", 1)[0]


def test_serve_command_runs_two_names_of_one_bundle(goods: list[Path]) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "padim_runtime.cli", "serve", f"a={BUNDLE}", f"b={BUNDLE}",
                             "--port", "0", "--default", "a", "--window", "7", "--body-timeout", "1", "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = proc.stdout.readline()
        found = re.search(r"listening on http://127\.0\.0\.1:(\d+)/", line)
        assert found, line
        base = f"http://127.0.0.1:{found.group(1)}"
        deadline = time.monotonic() + 30
        while True:
            try:
                health = httpx.get(f"{base}/health").json()
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert health["default"] == "a" and health["drift_window"] == 7 and health["limits"]["body_timeout_s"] == 1
        r = httpx.post(f"{base}/models/b/predict", files={"file": ("g.png", goods[0].read_bytes(), "image/png")})
        assert r.status_code == 200 and r.json()["defective"] is False
        assert _stalled_status(int(found.group(1))).startswith("HTTP/1.1 408")
        assert "padim_predictions_total{model=\"b\",decision=\"ok\"} 1" in httpx.get(f"{base}/metrics").text
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode in (0, -15) and "Application shutdown complete" in out, out  # uvicorn re-raises SIGTERM
