"""padim-run: the runtime's command line (predict, serve), one line and exit 2 for bad input."""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from padim_runtime.argtypes import positive_int, positive_seconds
from padim_runtime.bundle import NAME_CHARS, BundleError, check_name
from padim_runtime.drift import DEFAULT_WINDOW
from padim_runtime.image import MAX_PIXELS
from padim_runtime.overlay import NOT_INSPECTED, hatch, jet, scaled
from padim_runtime.predictor import load

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
MAX_UPLOAD_MB = 4096  # serve --max-upload-mb: an upload is held in memory whole


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


def bundle_specs(specs: list[str]) -> dict[str, str]:
    """NAME=DIR or DIR (named after its folder) -> {name: folder}; names must be distinct."""
    out: dict[str, str] = {}
    for spec in specs:
        name, sep, folder = spec.partition("=")
        if not (sep and name and set(name) <= NAME_CHARS):  # a folder, maybe with '=' in its path
            name, folder = Path(spec.rstrip("/\\")).name or spec, spec
        if name in out:
            raise BundleError(f"bundle name {name!r} given twice: name them, NAME=DIR")
        out[name] = folder
    return out


def cmd_serve(args: argparse.Namespace) -> None:
    """padim-run serve: FastAPI + uvicorn until Ctrl-C."""
    try:
        from padim_runtime.service import serve
    except ImportError as exc:
        raise BundleError(str(exc)) from None
    if not 0 < args.max_upload_mb <= MAX_UPLOAD_MB:
        raise BundleError(f"--max-upload-mb must be a number in (0, {MAX_UPLOAD_MB}], got {args.max_upload_mb}")
    Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, args.max_pixels)  # --max-pixels decides, not Pillow
    folders = {check_name(name): folder for name, folder in bundle_specs(args.bundles).items()}
    loaded: dict[str, Any] = {}  # one predictor per folder, however many names it has
    bundles = {}
    for name, folder in folders.items():
        key = str(Path(folder).resolve())
        if key not in loaded:
            loaded[key] = load(folder, engine=args.engine, batch_size=args.max_batch)
        bundles[name] = loaded[key]
    serve(bundles, host=args.host, port=args.port, access_log=not args.quiet, default=args.default,
          window=args.window, max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), max_pixels=args.max_pixels,
          max_batch=args.max_batch, body_timeout_s=args.body_timeout,
          max_uploads_per_client=args.max_uploads_per_client)


def _add_serve(sub: Any) -> None:
    """The serve subcommand's arguments."""
    serve = sub.add_parser("serve", help="HTTP API, page, drift and /metrics (needs the 'serve' extra)")
    serve.add_argument("bundles", nargs="+", metavar="BUNDLE",
                       help="bundle folder (named after the folder) or NAME=FOLDER; several: /models/NAME/predict")
    serve.add_argument("--default", metavar="NAME", help="the bundle POST /predict uses when several are served")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1: this machine)")
    serve.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0 picks a free one)")
    serve.add_argument("--window", type=positive_int, default=DEFAULT_WINDOW, metavar="N",
                       help="drift: the last N scores of each bundle against its calibration (default: %(default)s)")
    serve.add_argument("--max-upload-mb", type=float, default=20, help="largest accepted upload in MiB (default: 20)")
    serve.add_argument("--max-pixels", type=positive_int, default=MAX_PIXELS,
                       help=f"largest accepted image in pixels, read from its header (default: {MAX_PIXELS:,})")
    serve.add_argument("--max-batch", type=positive_int, default=8, help="most requests in one pass (default: 8)")
    serve.add_argument("--body-timeout", type=positive_seconds, default=30.0, metavar="SECONDS",
                       help="an upload not received within this is answered 408, its connection closed (default: 30)")
    serve.add_argument("--max-uploads-per-client", type=positive_int, default=8, metavar="N",
                       help="uploads received at once from one client address; more are answered 429 (default: 8)")
    serve.add_argument("--engine", choices=["auto", "openvino", "onnxruntime"], default="auto")
    serve.add_argument("--quiet", action="store_true", help="no access log")


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
    _add_serve(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: one-line errors, exit 2."""
    args = build_parser().parse_args(argv)
    try:
        {"predict": cmd_predict, "serve": cmd_serve}[args.command](args)
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
