"""The HTML report: one self-contained file, rows by score, metrics equal to padim.evaluation.metrics, rendered by Chromium."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import warnings
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from padim import PaDiM, PadimError
from padim.evaluation.paper_tables import evaluate
from padim.cli import main
from padim.evaluation.datasets import mvtec_category
from padim.evaluation.transforms import transform_masks
from padim.evaluation.metrics import au_pro, image_auroc, pixel_auroc
from padim.model import Prediction
from padim.reporting.report import NOT_CALIBRATED, display_names, given_note, render_report, write_report

from conftest import TINY


class Tags(HTMLParser):
    """Every start tag with its attributes, and the page's text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(text: str) -> Tags:
    tags = Tags()
    tags.feed(text)
    return tags


def rows(text: str) -> list[dict[str, str | None]]:
    return [a for t, a in parse(text).tags if t == "tr" and a.get("class") == "row"]


def row_names(text: str) -> list[str]:
    return [a["title"] for t, a in parse(text).tags if t == "div" and a.get("class") == "name"]


def metric(text: str, key: str) -> float:
    found = [a["data-value"] for t, a in parse(text).tags if a.get("data-metric") == key]
    assert len(found) == 1, key
    return float(found[0])


@pytest.fixture(scope="module")
def inspected(texture_set: Path):
    """A TINY model fitted on the texture set (25% held out to calibrate), its test-set prediction and truth."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 3 calibration images: the few-images warning is expected
        model = PaDiM(**TINY, holdout=0.25).fit(texture_set / "train" / "good")
    split = mvtec_category(texture_set.parent, texture_set.name)
    pred = model.predict(split.test_images)
    masks = transform_masks(split.test, model.preprocessing)
    images = [np.asarray(Image.open(p).convert("RGB").resize((64, 64), Image.Resampling.BICUBIC))
              for p in split.test_images]
    return model, split, pred, masks, images


@pytest.fixture(scope="module")
def report(inspected, tmp_path_factory: pytest.TempPathFactory) -> Path:
    model, split, pred, masks, images = inspected
    path = tmp_path_factory.mktemp("report") / "report.html"
    write_report(path, [str(p) for p in split.test_images], images, pred, list(masks), split.labels, model=model)
    return path


def test_report_is_one_self_contained_file(report: Path) -> None:
    text = report.read_text()
    assert [p.name for p in report.parent.iterdir()] == ["report.html"]  # nothing beside it, no temp file left
    assert "http:" not in text.lower() and "https:" not in text.lower()
    assert "<script" not in text.lower() and "<link" not in text.lower() and "url(" not in text.lower()
    tags = parse(text).tags
    sources = [a.get("src") for _, a in tags if "src" in a]
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert not [a for _, a in tags if "href" in a]


def test_one_row_per_image_highest_score_first(report: Path, inspected) -> None:
    _, split, pred, _, _ = inspected
    text = report.read_text()
    scores = [float(r["data-score"]) for r in rows(text)]
    assert len(scores) == len(split.test) == 12
    assert scores == sorted(scores, reverse=True)
    order = np.argsort(-pred.scores, kind="stable")
    assert row_names(text) == [str(split.test_images[i]) for i in order]
    assert sum(f'#{rank}<' in text for rank in range(1, 13)) == 12
    # each row: original, heat map and outlines (red predicted contour, green ground truth)
    assert sum(1 for t, a in parse(text).tags if t == "img" and a.get("class") == "panel") == 3 * 12


def test_verdicts_follow_the_decisions(report: Path, inspected) -> None:
    _, split, pred, _, _ = inspected
    text = report.read_text()
    assert text.count('class="verdict defect"') == int(pred.decisions.sum())
    assert text.count('class="verdict ok"') == int((~pred.decisions).sum())
    missed = int((~pred.decisions & (split.labels == 1)).sum())
    false_alarms = int((pred.decisions & (split.labels == 0)).sum())
    assert text.count(">missed defect<") == missed and text.count(">false alarm<") == false_alarms


def test_images_called_ok_get_no_predicted_outline(report: Path) -> None:
    import base64

    verdicts, outlines = [], []
    for tag, a in parse(report.read_text()).tags:
        if tag == "span" and str(a.get("class", "")).startswith("verdict "):
            verdicts.append(a["class"].split()[1])
        if tag == "img" and a.get("alt") == "outlines":
            outlines.append(np.asarray(Image.open(io.BytesIO(base64.b64decode(a["src"].split(",", 1)[1]))).convert("RGB")))
    assert len(verdicts) == len(outlines) == 12 and "ok" in verdicts and "defect" in verdicts
    red = [bool(np.all(pixels == (255, 0, 0), axis=2).any()) for pixels in outlines]
    assert not any(r for r, v in zip(red, verdicts) if v == "ok")
    assert any(r for r, v in zip(red, verdicts) if v == "defect")


def test_metric_table_equals_padim_metrics(report: Path, inspected) -> None:
    model, split, pred, masks, _ = inspected
    text = report.read_text()
    assert metric(text, "image_auroc") == image_auroc(split.labels, pred.scores)
    assert metric(text, "pixel_auroc") == pixel_auroc(masks, pred.maps)
    assert metric(text, "au_pro") == au_pro(masks, pred.maps)
    assert metric(text, "image_auroc") == evaluate(model, split)["image_auroc"]  # same as `padim evaluate`
    assert 'alt="ROC and PRO curves"' in text


def test_threshold_and_how_it_was_chosen(report: Path, inspected) -> None:
    import html

    model, _, pred, _, _ = inspected
    text = report.read_text()
    sentence = model.calibration_.describe()
    assert "held-out training images" in sentence and html.escape(sentence) in text
    assert f"{pred.image_threshold:.4g} &mdash; an image scoring above it is called DEFECT" in text
    assert f"{pred.pixel_threshold:.4g} &mdash; pixels scoring above it are outlined in red" in text
    assert "resnet18" in text and "RANDOM WEIGHTS" in text and "32 of 448 channels" in text
    assert "training images</th><td>9<" in text  # 12 good images, 3 held out
    assert "only 3 good calibration images: the image threshold is their highest score" in text


def test_given_thresholds_are_said_to_be_given(inspected) -> None:
    model = inspected[0]
    assert given_note(model, None, None) is None
    assert given_note(model, 3.0, 2.0) == "image and pixel thresholds given on the command line"
    note = given_note(model, 3.0, None)
    assert note.startswith("image threshold given on the command line; pixel threshold from the model's calibration")


def test_names_are_escaped_and_an_uncalibrated_prediction_has_no_verdicts() -> None:
    rng = np.random.default_rng(0)
    maps = rng.random((2, 20, 30)).astype(np.float32)
    pred = Prediction(["<b>bold</b> & co.png", "plain.png"], maps.max(axis=(1, 2)), maps)
    images = [rng.integers(0, 256, (20, 30, 3), dtype=np.uint8) for _ in range(2)]
    text = render_report(pred.names, images, pred, title="<i>line 3</i>")
    assert "<b>bold" not in text and "<i>line" not in text
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; co.png" in text and "&lt;i&gt;line 3&lt;/i&gt;" in text
    assert NOT_CALIBRATED in text and text.count("no verdict</span>") == 2
    assert "Metrics</h2>" not in text and "data-metric" not in text
    assert sum(1 for t, a in parse(text).tags if t == "img") == 4  # original + heat map, no outlines to draw


def test_mismatched_sizes_are_refused() -> None:
    maps = np.zeros((1, 8, 8), np.float32)
    pred = Prediction(["a.png"], np.zeros(1, np.float32), maps)
    with pytest.raises(PadimError, match="ground-truth mask"):
        render_report(["a.png"], [np.zeros((8, 8, 3), np.uint8)], pred, [np.zeros((4, 4), bool)])
    with pytest.raises(PadimError, match="differ in size"):
        render_report(["a.png"], [np.zeros((9, 8, 3), np.uint8)], pred)


def test_thumbnails_are_at_most_256_pixels() -> None:
    maps = np.random.default_rng(1).random((1, 300, 600)).astype(np.float32)
    pred = Prediction(["big.png"], maps.max(axis=(1, 2)), maps)
    text = render_report(pred.names, [np.zeros((300, 600, 3), np.uint8)], pred)
    for _, a in parse(text).tags:
        if "src" in a:
            import base64

            img = Image.open(io.BytesIO(base64.b64decode(a["src"].split(",", 1)[1])))
            assert img.size == (256, 128)


def test_colour_scale_ignores_the_zero_border_of_cropped_models() -> None:
    from padim.reporting.overlay import colour_scale

    maps = np.zeros((3, 40, 40), np.float32)
    maps[:, 5:35, 5:35] = 100 + np.random.default_rng(0).random((3, 30, 30)) * 10
    maps[0, 20, 20] = 500
    vmin, vmax = colour_scale(maps, basis="median")
    assert 100 < vmin < 110 and vmax == 500
    assert colour_scale([np.full((4, 4), 7.0)], basis="median") == (7.0, 7.0)


def test_display_names_drop_the_shared_folder() -> None:
    assert display_names(["/d/cat/test/crack/0.png", "/d/cat/test/good/1.png"]) == ["crack/0.png", "good/1.png"]
    assert display_names(["/d/x/a.png"]) == ["a.png"]


def screenshot(html_file: Path, png: Path, tmp: Path) -> None:
    """Render a page with headless Chromium (Debian's package) into a PNG."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp / 'chromium-profile'}", f"--screenshot={png}", "--window-size=1280,2000",
                    html_file.resolve().as_uri()], capture_output=True, timeout=60, check=False)
    assert png.is_file(), "chromium wrote no screenshot"


def test_headless_chromium_renders_a_page_that_is_not_blank(report: Path, tmp_path: Path) -> None:
    png = tmp_path / "report.png"
    screenshot(report, png, tmp_path)
    pixels = np.asarray(Image.open(png).convert("RGB"))
    assert pixels.shape == (2000, 1280, 3)
    assert pixels.std() > 30  # a blank (or error) page is one flat colour
    colours = np.unique(pixels.reshape(-1, 3), axis=0)
    assert len(colours) > 2000  # photos, heat maps and curves, not just text
    red = (pixels[..., 0] > 200) & (pixels[..., 1] < 60) & (pixels[..., 2] < 60)
    green = (pixels[..., 1] > 200) & (pixels[..., 0] < 60) & (pixels[..., 2] < 60)
    assert red.sum() > 200 and green.sum() > 200  # predicted and ground-truth contours are drawn


# ----------------------------------------------------------------------------------------------- command line
@pytest.fixture(scope="module")
def model_file(inspected, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "brick.safetensors"
    inspected[0].save(path)
    return path


def run_cli(argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> str:
    monkeypatch.setenv("TQDM_DISABLE", "1")
    rc = main(argv)
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    return captured.out


def test_cli_report_on_a_category_folder(model_file: Path, texture_set: Path, inspected, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _, split, pred, masks, _ = inspected
    out = tmp_path / "report.html"
    stdout = run_cli(["report", str(model_file), str(texture_set), "-o", str(out), "-q"], monkeypatch, capsys)
    assert "report of 12 images" in stdout
    text = out.read_text()
    assert len(rows(text)) == 12
    # the same numbers as the Python API on the model's input grid
    assert metric(text, "image_auroc") == pytest.approx(image_auroc(split.labels, pred.scores), abs=1e-6)
    assert metric(text, "pixel_auroc") == pytest.approx(pixel_auroc(masks, pred.maps), abs=1e-6)
    assert metric(text, "au_pro") == pytest.approx(au_pro(masks, pred.maps), abs=1e-6)
    assert "held-out training images" in text
    assert re.search(r'class="name" title="[^"]*">(hole|stain|scratch|foreign)/\d+\.png<', text)


def test_cli_report_with_a_masks_folder_and_given_threshold(
    model_file: Path, texture_set: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str]
) -> None:
    images, mask_dir = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    mask_dir.mkdir()
    for p in sorted((texture_set / "test").glob("*/*.png")):
        shutil.copy(p, images / f"{p.parent.name}_{p.name}")
        mask = texture_set / "ground_truth" / p.parent.name / f"{p.stem}_mask.png"
        if mask.is_file():
            shutil.copy(mask, mask_dir / f"{p.parent.name}_{p.stem}_mask.png")
    out = tmp_path / "masked.html"
    run_cli(["report", str(model_file), str(images), "-o", str(out), "--masks-dir", str(mask_dir),
             "--image-threshold", "1e9", "-q"], monkeypatch, capsys)
    text = out.read_text()
    assert len(rows(text)) == 12 and "data-metric=\"au_pro\"" in text
    assert "ground truth: 8 defective, 4 good" in text
    # Nothing scores above 1e9: only frames the frame check rejects (padim.frame) are called DEFECT, with the reason.
    frame_fails = sum(bool(r) for r in PaDiM.load(model_file).predict(sorted(images.iterdir()), image_threshold=1e9).reasons)
    assert text.count('class="verdict ok"') == 12 - frame_fails
    assert text.count('class="reason muted"') == frame_fails
    assert "image threshold given on the command line" in text


def test_predict_report_writes_report_html(model_file: Path, texture_set: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "results"
    stdout = run_cli(["predict", str(model_file), str(texture_set / "test" / "good"), "-o", str(out),
                      "--no-overlays", "--report", "-q"], monkeypatch, capsys)
    assert "report.html" in stdout
    text = (out / "report.html").read_text()
    assert len(rows(text)) == 4 and "Metrics</h2>" not in text  # plain folder: no ground truth
    assert "held-out training images" in text
    assert all(s.startswith("data:") for _, a in parse(text).tags for k, s in a.items() if k == "src")
