"""Drift figures of `padim-run serve`: a stream of good images, then changed ones, through the HTTP API in-process.

Fits Lite0 (real weights) on TRAIN good brick crops with a 25% hold-out for the thresholds, exports the bundle,
serves it with padim_runtime's app (FastAPI's test client: nothing listens on a port) with a drift window of N,
and uploads N images per phase:

    normal      unseen good crops from the training band of the photo (what the calibration saw)
    other band  good crops from the photo's test band (a mild texture change the hold-out does not show)
    dark 40%    the normal crops at 60% brightness (a dimmer lamp)
    blur        the normal crops blurred (Gaussian, radius 1.5 px: focus lost)
    grass       good crops of another texture (the wrong product)
    normal      the normal crops again (the window recovers)

After each phase the window holds that phase alone; the script prints the drift report (share above the
threshold against the expected share, frame-check rejects, PSI and KS against their limits, status) and writes
the rows to benchmarks/results/drift.json. Needs the main package (to fit and export) and fastapi + httpx:

    PYTHONPATH=runtime python benchmarks/drift.py                 # N = 200, 120 training images: ~5 min on 2 CPUs
    PYTHONPATH=runtime python benchmarks/drift.py --n 50 --train 40
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
import warnings
from pathlib import Path

from PIL import Image, ImageEnhance, ImageFilter

FIELDS = ("count", "share_above", "expected_share_above", "share_above_limit", "frame_reject_share", "psi",
          "psi_limit", "ks", "ks_limit", "status")


def png(image: Image.Image) -> bytes:
    """An image as PNG bytes."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def rgb(paths: list[Path]) -> list[Image.Image]:
    """Image files, decoded."""
    return [Image.open(p).convert("RGB") for p in paths]


def build(work: Path, n: int, train: int, size: int, seed: int) -> tuple[Path, dict[str, list[Image.Image]]]:
    """Fit and export the bundle; the phases' images."""
    from padim import PaDiM
    from padim.deployment.bundle import export_bundle
    from padim.evaluation.synthetic import load_split, make_inspection_set

    brick = make_inspection_set(work / "data", "brick", n_train=train + n, n_test_good=n, n_test_defect=0,
                                size=size, seed=seed)
    grass = make_inspection_set(work / "data", "grass", n_train=n, n_test_good=0, n_test_defect=0, size=size,
                                seed=seed + 1)
    files, other, _ = load_split(brick)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fewer hold-out images than a 1% FPR wants: said in the output
        model = PaDiM(holdout=0.25, seed=seed).fit(files[:train])
    print(f"fit on {train} images ({model.calibration_.describe()}) in {time.perf_counter() - t0:.0f} s")
    export_bundle(model, work / "bundle")
    normal = rgb(files[train:])
    phases = {"normal": normal, "other band": rgb(other),
              "dark 40%": [ImageEnhance.Brightness(im).enhance(0.6) for im in normal],
              "blur": [im.filter(ImageFilter.GaussianBlur(1.5)) for im in normal],
              "grass": rgb(load_split(grass)[0]), "normal again": normal}
    return work / "bundle", phases


def run(bundle: Path, phases: dict[str, list[Image.Image]], n: int) -> list[dict]:
    """Upload every phase's images and read the drift window after each phase."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient
    import padim_runtime
    from padim_runtime.service import create_app

    app = create_app({"brick": padim_runtime.load(bundle)}, window=n)
    rows = []
    with TestClient(app) as client:
        for phase, images in phases.items():
            t0 = time.perf_counter()
            for i, image in enumerate(images):
                r = client.post("/models/brick/predict", files={"file": (f"{i:04d}.png", png(image), "image/png")})
                r.raise_for_status()
            report = client.get("/models/brick/drift").json()
            rows.append({"phase": phase, "seconds": round(time.perf_counter() - t0, 1),
                         **{k: report[k] for k in FIELDS}, "reasons": report["reasons"]})
            show(rows[-1])
        metrics = client.get("/metrics").text
    print("\n".join(line for line in metrics.splitlines() if line.startswith(("padim_predictions_total",
                                                                               "padim_frame_rejections_total"))))
    return rows


def show(row: dict) -> None:
    """One phase as a line."""
    def pct(x: float) -> str:
        return f"{100 * x:5.1f}%"

    print(f"{row['phase']:<13} n={row['count']:<4} above {pct(row['share_above'])} (expected "
          f"{pct(row['expected_share_above'])}, limit {pct(row['share_above_limit'])})  frame rejects "
          f"{pct(row['frame_reject_share'])}  PSI {row['psi']:6.3f} (limit {row['psi_limit']:.3f})  "
          f"KS {row['ks']:.3f} (limit {row['ks_limit']:.3f})  {row['status']}", flush=True)


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=200, help="images per phase, and the drift window")
    parser.add_argument("--train", type=int, default=120, help="training images (25%% of them calibrate)")
    parser.add_argument("--size", type=int, default=128, help="crop side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "drift.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bundle, phases = build(Path(tmp), args.n, args.train, args.size, args.seed)
        rows = run(bundle, phases, args.n)
        calibration = json.loads((bundle / "bundle.json").read_text())["calibration"]
    Path(args.out).write_text(json.dumps({"n": args.n, "train": args.train, "size": args.size, "seed": args.seed,
                                          "calibration_images": len(calibration["image_scores"]),
                                          "image_threshold": calibration["image_threshold"], "phases": rows},
                                         indent=2) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
