"""padim-run: the runtime's command line (predict), one line and exit 2 for bad input."""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from padim_runtime.bundle import BundleError
from padim_runtime.overlay import NOT_INSPECTED, hatch, jet, scaled
from padim_runtime.predictor import load

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _atomic_write(path: Path, data: bytes) -> None:
    """Write a file so that readers see the old one or the whole new one."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _cell(value: object) -> object:
    """A CSV cell that a spreadsheet cannot run as a formula (OWASP: a leading quote)."""
    return "'" + value if isinstance(value, str) and value.startswith(FORMULA_START) else value


def heatmap(amap: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """A map in jet-like colours (uint8 RGB), not-inspected (NaN) pixels hatched grey."""
    out = (jet(scaled(amap, vmin, vmax)) * 255).round().astype(np.uint8)
    unseen = ~np.isfinite(amap)
    out[unseen] = 64
    out[unseen & hatch(amap.shape)] = NOT_INSPECTED
    return out


def cmd_predict(args: argparse.Namespace) -> None:
    """padim-run predict."""
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    predictor = load(args.bundle, engine=args.engine, batch_size=args.batch_size)
    rows, maps = [], []
    for inputs in args.inputs:
        for r in predictor.iter_predict(inputs, args.image_threshold):
            rows.append({"image": r.name, "score": r.score, "normalized_score": r.normalized_score,
                         "defective": r.defective, "reason": r.reason, "frame_score": r.frame_score})
            if args.heatmaps:
                maps.append((r.name, r.anomaly_map))
    if args.heatmaps and maps:
        (out / "heatmaps").mkdir(exist_ok=True)
        finite = [m[np.isfinite(m)] for _, m in maps]
        vmin = min(float(f.min()) for f in finite if f.size)
        vmax = max(float(f.max()) for f in finite if f.size)
        for i, (name, amap) in enumerate(maps):
            buf = io.BytesIO()
            Image.fromarray(heatmap(amap, vmin, vmax)).save(buf, format="PNG")
            _atomic_write(out / "heatmaps" / f"{i:04d}_{Path(name).stem}.png", buf.getvalue())
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]) if rows else ["image", "score"], quoting=csv.QUOTE_NONNUMERIC)
    writer.writeheader()
    writer.writerows([{k: _cell(v) for k, v in row.items()} for row in rows])
    _atomic_write(out / "scores.csv", text.getvalue().encode())
    _atomic_write(out / "scores.json", (json.dumps({"images": rows}, indent=2) + "\n").encode())
    print(f"scored {len(rows)} images -> {out}/scores.csv, scores.json ({predictor.engine.name})")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser."""
    parser = argparse.ArgumentParser(prog="padim-run", description="Score images with a torch-padim bundle.")
    sub = parser.add_subparsers(dest="command", required=True)
    predict = sub.add_parser("predict", help="score images: scores.csv / scores.json (+ heat maps)")
    predict.add_argument("bundle", help="bundle folder written by `padim export MODEL -o BUNDLE_DIR`")
    predict.add_argument("inputs", nargs="+", help="image files or folders")
    predict.add_argument("-o", "--output", required=True, help="results folder")
    predict.add_argument("--heatmaps", action="store_true", help="also write heat-map PNGs")
    predict.add_argument("--image-threshold", type=float, help="override the calibrated image threshold")
    predict.add_argument("--engine", choices=["auto", "openvino", "onnxruntime"], default="auto")
    predict.add_argument("--batch-size", type=int, default=32)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: one-line errors, exit 2."""
    args = build_parser().parse_args(argv)
    try:
        {"predict": cmd_predict}[args.command](args)
    except BundleError as exc:
        print(f"padim-run: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"padim-run: error: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
