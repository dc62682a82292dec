"""The `padim` command: a thin layer over the Python API."""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from padim import paper
from padim.errors import PadimError

EXIT_BAD_INPUT = 2  # bad input, a bad model file or an environment problem (disk, memory, device)
EXIT_INTERNAL = 1  # an unexpected exception: probably a bug (PADIM_DEBUG=1 shows its traceback)
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a Unix tool's reader sees when it stops reading early
DEBUG_ENV = "PADIM_DEBUG"
MAX_UPLOAD_MB = 4096  # serve --max-upload-mb: an upload is held in memory whole


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block), still exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        """Print one line naming the problem and where to look, and exit 2."""
        self.exit(EXIT_BAD_INPUT, f"padim: error: {message} (see {self.prog} --help)\n")


def _size(text: str) -> int | tuple[int, int] | None:
    """Parse '224', '256x320' (height x width) or 'none'."""
    if text.lower() == "none":
        return None
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or HxW, got {text!r}") from None
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        return parts[0], parts[1]
    raise argparse.ArgumentTypeError(f"expected N or HxW, got {text!r}")


def _n_features(text: str) -> int | str:
    """Parse an int or 'all'."""
    if text == "all":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'all', got {text!r}") from None


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _positive_seconds(text: str) -> float:
    """argparse type: a finite number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def _add_max_pixels(parser: argparse.ArgumentParser) -> None:
    """The --max-pixels option of the commands that decode images."""
    from padim.images import DEFAULT_MAX_PIXELS

    parser.add_argument("--max-pixels", type=_positive_int, default=DEFAULT_MAX_PIXELS,
                        help=f"largest image decoded, in pixels, checked from its header (default: {DEFAULT_MAX_PIXELS})")


def _allow_pixels(max_pixels: int) -> None:
    """Let Pillow's own decompression-bomb limit (this process's) admit what --max-pixels admits."""
    from PIL import Image

    if Image.MAX_IMAGE_PIXELS is not None and max_pixels > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = max_pixels


def engine_here(device: str = "cpu") -> str:
    """What engine='auto' picks on this machine, with its version and thread count (nothing is built)."""
    from importlib.metadata import PackageNotFoundError, version

    from padim.utils.cpus import available_cpus
    from padim.engine import default_engine

    name = default_engine(device)
    try:
        ver = version("torch" if name.startswith("torch") else name)
    except PackageNotFoundError:
        ver = "?"
    return f"{name} {ver} on {device}, {available_cpus()} threads"


PRESETS = ("paper", "full-frame")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every sub-command."""
    from padim._version import __version__
    from padim.backbone import BACKBONES, DEFAULT_BACKBONE
    from padim.engine import AUTO, ENGINES

    parser = _Parser(prog="padim", description="PaDiM anomaly detection and localization.")
    parser.add_argument("--version", action="version", version=f"torch-padim {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    common.add_argument("--batch-size", type=int, default=32)
    common.add_argument("--weights", help="backbone weights file (.pth/.safetensors), or 'random' (tests only)")
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    common.add_argument("--engine", default=AUTO, choices=(AUTO, *ENGINES),
                        help="runtime of the backbone (default: auto, the fastest exact one installed)")
    common.add_argument("--threads", type=_positive_int, help="CPU threads (default: the CPUs this process may use)")

    fit = sub.add_parser("fit", parents=[common], help="fit a model on a folder of good images")
    fit.add_argument("train_dir", help="folder of images of good parts")
    fit.add_argument("-o", "--output", help="model file to write (.safetensors; required unless --plan)")
    fit.add_argument("--plan", action="store_true",
                     help="print the fit's and predict's peak memory, file sizes and time per image, then stop")
    fit.add_argument("--backbone", default=DEFAULT_BACKBONE,
                     help=f"{', '.join(BACKBONES)} or any timm model with --layers (default: {DEFAULT_BACKBONE})")
    fit.add_argument("--layers", type=lambda s: tuple(s.split(",")), help="comma-separated module names to tap")
    fit.add_argument("--n-features", type=_n_features, help="Rd: number of random channels kept, or 'all'")
    fit.add_argument("--reduction", choices=["random", "pca"], default="random",
                     help="keep n-features random channels (Rd, default) or principal components (pca)")
    fit.add_argument("--preset", choices=PRESETS, default="paper",
                     help="paper: resize 256, centre crop 224 (the paper's MVTec AD protocol: the outer band of every "
                          "image is not inspected); full-frame: the whole image, aspect ratio kept, about 224x224 "
                          "pixels, no crop (for production)")
    fit.add_argument("--image-size", type=_size, default=None,
                     help=f"resize to N or HxW (default: the preset's; paper: {paper.MVTEC_RESIZE})")
    fit.add_argument("--crop-size", type=_size, default=paper.MVTEC_CROP,
                     help=f"center crop N or HxW, or 'none' (default: the preset's; paper: {paper.MVTEC_CROP})")
    fit.add_argument("--eps", type=float, default=paper.EPSILON, help=f"covariance regulariser (default: {paper.EPSILON})")
    fit.add_argument("--seed", type=int, default=0, help="seed of the Rd channel draw")
    fit.add_argument("--holdout", type=float, default=0.0,
                     help="fraction of the good images kept out of the fit to set thresholds (e.g. 0.1)")
    fit.add_argument("--fpr", type=float, default=0.01, help="target false-positive rate of the thresholds (default 0.01)")
    fit.add_argument("--distributed", action="store_true",
                     help="under torchrun: each process fits its shard, rank 0 merges and writes the model")
    fit.add_argument("--half", action="store_true", help="store the inverse covariance factors in float16 (half size)")
    fit.add_argument("--resumable", action="store_true",
                     help="also store the statistics, so the model can be updated or merged later")

    predict = sub.add_parser("predict", parents=[common], help="score images and write heat maps")
    predict.add_argument("model", help="model file")
    predict.add_argument("inputs", nargs="+", help="image files or folders")
    predict.add_argument("-o", "--output", required=True, help="output folder")
    predict.add_argument("--no-overlays", action="store_true", help="write scores only")
    predict.add_argument("--image-threshold", type=float, help="override the model's image threshold")
    predict.add_argument("--pixel-threshold", type=float, help="override the model's pixel threshold")
    predict.add_argument("--report", action="store_true", help="also write OUTPUT/report.html (one self-contained file)")
    predict.add_argument("--distributed", action="store_true",
                         help="under torchrun: each process scores its share of the images, rank 0 writes the tables")

    calibrate = sub.add_parser("calibrate", parents=[common], help="set thresholds on a separate set of good images")
    calibrate.add_argument("model", help="model file")
    calibrate.add_argument("good_dir", help="folder of good images the model was not fitted on")
    calibrate.add_argument("-o", "--output", help="model file to write (default: overwrite MODEL atomically)")
    calibrate.add_argument("--fpr", type=float, default=0.01, help="target false-positive rate (default 0.01)")

    info = sub.add_parser("info", help="show what a model file holds")
    info.add_argument("model")
    info.add_argument("--json", action="store_true", help="print the raw metadata")

    evaluate = sub.add_parser("evaluate", parents=[common], help="image AUROC, pixel AUROC and AU-PRO on test sets")
    evaluate.add_argument("model", help="model file")
    evaluate.add_argument("datasets", nargs="+", help="MVTec-layout category folders (or STC roots with --stc)")
    evaluate.add_argument("--stc", action="store_true", help="the datasets are ShanghaiTech Campus roots")
    evaluate.add_argument("--test-stride", type=_positive_int, default=1, help="STC: use every Nth test frame")
    evaluate.add_argument("-o", "--output", default="padim-evaluation", help="folder for evaluation.json / .md")

    bench = sub.add_parser("benchmark", parents=[common], help="reproduce the paper's tables")
    bench.add_argument("dataset", choices=["mvtec", "stc"])
    bench.add_argument("--root", required=True, help="dataset root (official layout)")
    bench.add_argument("--config", default="r18-rd100", help="PaDiM's paper configuration (default: r18-rd100)")
    bench.add_argument("--method", type=_methods, default=("padim",),
                       help="padim, spade, vae or a comma-separated list: one table each, then a combined one")
    bench.add_argument("--vae-epochs", type=_positive_int, default=paper.VAE_EPOCHS,
                       help=f"VAE training epochs (paper: {paper.VAE_EPOCHS})")
    bench.add_argument("--vae-images", type=_positive_int, default=paper.VAE_TRAIN_IMAGES,
                       help=f"augmented VAE training images per epoch (paper: {paper.VAE_TRAIN_IMAGES})")
    bench.add_argument("--checkpoints", help="folder for VAE checkpoints: an interrupted run resumes from them")
    bench.add_argument("--categories", type=lambda s: s.split(","), help="MVTec categories (default: all present)")
    bench.add_argument("--seeds", type=_positive_int, default=1, help="average Rd over this many seeds (the paper: 10)")
    bench.add_argument("--non-aligned", action="store_true", help="Section V-C: random rotation and crop")
    bench.add_argument("--table", help="paper table to compare with (default: the config's first)")
    bench.add_argument("--train-stride", type=_positive_int, default=1, help="STC: use every Nth training frame")
    bench.add_argument("--test-stride", type=_positive_int, default=1, help="STC: use every Nth test frame")
    bench.add_argument("-o", "--output", default="padim-benchmark", help="folder for results (JSON + Markdown)")

    report = sub.add_parser("report", parents=[common], help="one self-contained HTML report of images, heat maps and metrics")
    report.add_argument("model", help="model file")
    report.add_argument("inputs", nargs="+",
                        help="image files or folders; an MVTec-layout category folder (test/, ground_truth/) brings its labels and masks")
    report.add_argument("-o", "--output", default="report.html", help="HTML file to write (default: report.html)")
    report.add_argument("--masks-dir", help="ground-truth masks <stem>_mask.png for plain inputs (no mask or an empty one: good)")
    report.add_argument("--image-threshold", type=float, help="override the model's image threshold")
    report.add_argument("--pixel-threshold", type=float, help="override the model's pixel threshold")
    report.add_argument("--title", default="PaDiM inspection report", help="report title")

    demo = sub.add_parser("demo", help="offline demo on real textures with synthetic defects")
    demo.add_argument("-o", "--output", default="padim-demo", help="output folder (default: padim-demo)")
    demo.add_argument("-q", "--quiet", action="store_true", help="no progress bars")

    serve = sub.add_parser("serve", parents=[common], help="HTTP API and web page (needs the 'serve' extra)")
    serve.add_argument("model", help="model file")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    serve.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0 picks a free one)")
    serve.add_argument("--max-upload-mb", type=float, default=20, help="largest accepted upload in MiB (default: 20)")
    serve.add_argument("--max-batch", type=int, default=8, help="most requests scored in one forward pass (default: 8)")
    serve.add_argument("--body-timeout", type=_positive_seconds, default=30.0, metavar="SECONDS",
                       help="an upload not received within this is answered 408 and its connection closed (default: 30)")
    serve.add_argument("--max-uploads-per-client", type=_positive_int, default=8, metavar="N",
                       help="uploads received at once from one client address; more are answered 429 (default: 8)")
    serve.add_argument("--api-docs", action="store_true", help="serve FastAPI's /docs, /redoc and /openapi.json (default: off)")

    for decoding in (fit, predict, calibrate, evaluate, report, serve):
        _add_max_pixels(decoding)

    export = sub.add_parser("export", help="write an inference bundle folder for padim-runtime, or one ONNX graph (.onnx)")
    export.add_argument("model", help="model file")
    export.add_argument("-o", "--output", required=True,
                        help="bundle folder to write (padim-run runs it without torch), or FILE.onnx for the whole "
                             "pipeline as one ONNX graph (metadata also in FILE.onnx.json)")
    export.add_argument("--half", action="store_true", help="bundle: store the factor in float16 (about half the size)")
    export.add_argument("--opset", type=int, default=17, help="ONNX opset, 11 to 20 (default: 17)")
    export.add_argument("--weights", help="backbone weights file the model was fitted with (.pth/.safetensors)")
    return parser


def cmd_fit(args: argparse.Namespace) -> None:
    """padim fit."""
    from padim.utils.atomic import check_writable
    from padim.model import PaDiM

    if args.output is None and not args.plan:
        raise PadimError("fit needs -o MODEL_FILE (or --plan to only print the plan)")
    out = Path(args.output or ".")
    t0 = time.perf_counter()
    image_size, crop_size = preset_sizes(args)
    model = _as_options(lambda: PaDiM(
        backbone=args.backbone, layers=args.layers, n_features=args.n_features, reduction=args.reduction, eps=args.eps,
        image_size=image_size, crop_size=crop_size, seed=args.seed, device=args.device,
        batch_size=args.batch_size, weights=args.weights, verbose=not args.quiet,
        holdout=args.holdout, fpr=args.fpr, engine=args.engine, threads=args.threads, max_pixels=args.max_pixels))
    _as_options(model._check_params)  # every parameter, and the output location, before a long fit
    if args.plan:
        from padim.data import as_items

        print("\n".join(model.plan(len(as_items(args.train_dir))).lines()))
        return
    check_writable(out)
    if args.distributed:
        from padim.distributed import fit_distributed, init_from_env

        rank, world = init_from_env(args.device)
        fit_distributed(model, args.train_dir)
        if rank != 0:
            return
        print(f"merged the statistics of {world} processes")
    else:
        model.fit(args.train_dir)
    model.save(out, statistics=args.resumable, half=args.half)
    print(f"fitted {model.backbone_.name} ({model.embedding_dim_} features, "
          f"{model.feature_shape_[0]}x{model.feature_shape_[1]} positions) on {model.n_samples_seen_} images "
          f"in {time.perf_counter() - t0:.1f} s with {model.engine_for_device().describe()} -> {out} "
          f"({out.stat().st_size / 1e6:.1f} MB)")
    if model.calibration_ is not None:
        print(model.calibration_.describe())


def preset_sizes(args: argparse.Namespace) -> tuple[Any, Any]:
    """(image size, crop size) of the preset, explicit --image-size / --crop-size taking precedence.

    full-frame reads the first training image's header (not its pixels) for the upright frame's aspect ratio.
    """
    if args.preset == "paper":
        return args.image_size or paper.MVTEC_RESIZE, args.crop_size
    if args.image_size is not None:
        return args.image_size, None
    from padim.data import as_items, full_frame_size
    from padim.images import image_shape

    return full_frame_size(*image_shape(as_items(args.train_dir)[0].source)), None


def _as_options(call: Any) -> Any:
    """call(), with parameter errors naming the command-line option (--image-size) instead of image_size."""
    from padim.utils.constraints import PADIM_CONSTRAINTS

    try:
        return call()
    except PadimError as exc:
        name, _, rest = str(exc).partition(" ")
        if name in PADIM_CONSTRAINTS:
            raise PadimError(f"--{name.replace('_', '-')} {rest}") from None
        raise


def cmd_calibrate(args: argparse.Namespace) -> None:
    """padim calibrate."""
    from padim.utils.atomic import check_writable
    from padim.utils.constraints import PADIM_CONSTRAINTS, check_value
    from padim.model import PaDiM

    check_value("--fpr", args.fpr, PADIM_CONSTRAINTS["fpr"])
    check_writable(args.output or args.model)
    model = PaDiM.load(args.model, weights=args.weights, device=args.device, engine=args.engine, threads=args.threads,
                       batch_size=args.batch_size, verbose=not args.quiet, max_pixels=args.max_pixels)
    model.calibrate(args.good_dir, fpr=args.fpr, source=f"good images in {args.good_dir}")
    model.save(args.output or args.model, statistics=model.stats_ is not None)
    print(model.calibration_.describe())


def _expand_inputs(inputs: list[str]) -> list[Path]:
    """Folders become their images; files stay."""
    from padim.images import list_images

    paths: list[Path] = []
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            paths += list_images(path)
        elif path.exists():
            paths.append(path)
        else:
            raise PadimError(f"{path}: no such file or folder")
    return paths


def _write_text(path: Path, text: str) -> None:
    """Write a text file atomically."""
    from padim.utils.atomic import atomic_write

    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def cmd_predict(args: argparse.Namespace) -> None:
    """padim predict (under torchrun with --distributed: each process scores its shard, rank 0 writes the tables)."""
    from padim.model import PaDiM
    from padim.reporting.results import write_results

    if args.distributed and args.report:
        raise PadimError("--report needs every heat map in one process: run it without --distributed")
    _check_thresholds(args)
    if args.distributed:
        from padim.distributed import init_from_env

        init_from_env(args.device)
    model = PaDiM.load(args.model, weights=args.weights, device=args.device, engine=args.engine, threads=args.threads,
                       batch_size=args.batch_size, verbose=not args.quiet, max_pixels=args.max_pixels)
    given = args.image_threshold is not None or args.pixel_threshold is not None
    rows = write_results(model, _expand_inputs(args.inputs), args.output, overlays=not args.no_overlays,
                         image_threshold=args.image_threshold, pixel_threshold=args.pixel_threshold, report=args.report,
                         model_name=str(args.model), thresholds_how="given on the command line" if given else None)
    if rows is None:  # not rank 0: rank 0 wrote the tables
        return
    out = Path(args.output)
    n_overlays = sum("overlay" in r for r in rows)
    print(f"scored {len(rows)} images -> {out}/scores.csv, scores.json" + (", report.html" if args.report else "")
          + (f", {n_overlays} overlays" if n_overlays else "") + (" (sharded over processes)" if args.distributed else ""))


def cmd_report(args: argparse.Namespace) -> None:
    """padim report."""
    from padim.model import PaDiM
    from padim.reporting.report import report_from_files

    _check_thresholds(args)
    model = PaDiM.load(args.model, weights=args.weights, device=args.device, engine=args.engine, threads=args.threads,
                       batch_size=args.batch_size, verbose=not args.quiet, max_pixels=args.max_pixels)
    pred = report_from_files(args.output, model, args.inputs, args.masks_dir, args.title,
                             args.image_threshold, args.pixel_threshold)
    print(f"report of {len(pred.scores)} images -> {args.output}")


def _check_thresholds(args: argparse.Namespace) -> None:
    """Refuse NaN, infinite or negative --image-threshold / --pixel-threshold before any image is scored."""
    from padim.utils.constraints import check_threshold

    check_threshold("--image-threshold", args.image_threshold)
    check_threshold("--pixel-threshold", args.pixel_threshold)


def cmd_info(args: argparse.Namespace) -> None:
    """padim info: metadata only, the backbone is not loaded."""
    from padim.modelfile import read_model

    tensors, meta = read_model(args.model)
    try:
        text = json.dumps(meta, indent=2) if args.json else _info_lines(args.model, meta)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise PadimError(f"{args.model}: model metadata malformed ({type(exc).__name__}: {exc})") from None
    print(text)


def _info_lines(path: str, meta: dict[str, Any]) -> str:
    """The human-readable summary `padim info` prints."""
    bb, pre = meta.get("backbone", {}), meta.get("preprocessing", {})
    weights = bb.get("weights", {})
    crop = pre.get("crop_size")
    lines = [
        f"model file      {path} ({os.path.getsize(path) / 1e6:.1f} MB, format v{meta['format_version']}, "
        f"torch-padim {meta.get('library_version')})",
        f"backbone        {bb.get('name')} taps {','.join(bb.get('layers', []))} "
        f"(channels {bb.get('channels')}, strides {bb.get('strides')})",
        f"weights         {weights.get('kind')} {weights.get('path') or ''} sha256 {str(weights.get('sha256'))[:16]}..."
        + ("  [RANDOM WEIGHTS: not for real use]" if weights.get("kind") == "random" else ""),
        f"features        {meta.get('n_features')} of {meta.get('n_features_total')} (seed {meta.get('seed')})",
        f"positions       {'x'.join(map(str, meta.get('feature_shape', [])))}",
        f"preprocessing   resize {'x'.join(map(str, pre.get('image_size', [])))} bicubic, "
        + (f"center crop {'x'.join(map(str, crop))}" if crop else "no crop"),
        f"inspected       {_coverage(pre)}",
        f"eps, sigma      {meta.get('eps')}, {meta.get('sigma')}",
        f"training images {meta.get('n_samples_seen')}",
        f"statistics      {'stored (resumable)' if meta.get('statistics') else 'not stored'}",
        "frame check     " + _frame_line(meta),
        "thresholds      " + (f"image {cal['image_threshold']:.4g}, pixel {cal['pixel_threshold']:.4g} at FPR {cal['fpr']:.2%} "
                              f"on {cal['n_images']} good images ({cal['source']})" if (cal := meta.get("calibration"))
                              else "none (not calibrated: padim calibrate MODEL GOOD_DIR, or fit --holdout 0.1)"),
        f"created         {meta.get('created')}",
        f"engine here     {engine_here()} (model files are engine-independent; --engine to choose)",
    ]
    return "\n".join(lines)


def _coverage(pre: dict[str, Any]) -> str:
    """What share of every image the model sees, for padim info."""
    from padim.data import Preprocess

    fh, fw = Preprocess.from_dict(pre).inspected_fraction()
    if fh == fw == 1.0:
        return "the whole image (no crop)"
    return (f"centre {fh:.1%} x {fw:.1%} of every image ({fh * fw:.1%} of its area); the rest is NOT inspected "
            f"(NaN in original-size maps, hatched in overlays)")


def _frame_line(meta: dict[str, Any]) -> str:
    """`padim info`'s description of the frame check (padim.frame)."""
    frame, cal = meta.get("frame"), meta.get("calibration") or {}
    if not isinstance(frame, dict):
        return "off (saved before the frame check: blank and foreign frames pass; refit to enable it)"
    threshold = (f"frame threshold {cal['frame_threshold']:.4g}" if "frame_threshold" in cal
                 else "blank frames only until calibrated")
    contrast = frame.get("contrast_min")
    contrast = f"{contrast:.3g}" if isinstance(contrast, (int, float)) else repr(contrast)
    return (f"on: pooled-feature Gaussian of {frame.get('n_images')} images ({frame.get('dim')} dims), "
            f"training contrast minimum {contrast}, {threshold}")


def cmd_demo(args: argparse.Namespace) -> None:
    """padim demo."""
    from padim.evaluation.demo import HEADER, format_row, run_demo

    t0 = time.perf_counter()
    print("padim demo: efficientnet_lite0 with real ImageNet weights (offline), 3 texture photos from "
          "scikit-image with synthetic scratches, stains, holes and foreign patches")
    print(HEADER)
    results = []
    for result in run_demo(args.output, progress=not args.quiet):
        results.append(result)
        print(format_row(result), flush=True)
    mean_img = sum(r.image_auroc for r in results) / len(results)
    mean_pix = sum(r.pixel_auroc for r in results) / len(results)
    print(f"{'mean':<8} {'':>5} {'':>4} {'':>6} {mean_img:>11.3f} {mean_pix:>11.3f}")
    print(f"overlays in {args.output}/overlays/, figures in {args.output}/results.json "
          f"({time.perf_counter() - t0:.0f} s)")


def _save_report(folder: str, stem: str, data: Any, markdown: str) -> None:
    """Write NAME.json and NAME.md into a folder, atomically."""
    out = Path(folder)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PadimError(f"{out}: cannot create output folder ({exc.strerror})") from None
    _write_text(out / f"{stem}.json", json.dumps(data, indent=2))
    _write_text(out / f"{stem}.md", markdown)


def cmd_evaluate(args: argparse.Namespace) -> None:
    """padim evaluate."""
    from padim.evaluation.paper_tables import evaluate
    from padim.evaluation.datasets import mvtec_category, stc
    from padim.model import PaDiM

    model = PaDiM.load(args.model, weights=args.weights, device=args.device, engine=args.engine, threads=args.threads,
                       batch_size=args.batch_size, verbose=not args.quiet, max_pixels=args.max_pixels)
    rows = []
    for dataset in args.datasets:
        path = Path(dataset)
        split = stc(path, test_stride=args.test_stride) if args.stc else mvtec_category(path.parent, path.name)
        rows.append({"dataset": str(path), **evaluate(model, split)})
    lines = ["| dataset | test images | image AUROC | pixel AUROC | AU-PRO |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['dataset']} | {int(r['n_test'])} | " + " | ".join(
            f"{100 * r[k]:.1f}" if k in r else "-" for k in ("image_auroc", "pixel_auroc", "au_pro")) + " |")
    markdown = "\n".join(lines) + "\n"
    print(markdown, end="")
    _save_report(args.output, "evaluation", {"model": str(args.model), "results": rows}, markdown)


def cmd_benchmark(args: argparse.Namespace) -> None:
    """padim benchmark."""
    from padim.evaluation.paper_report import combined_table, markdown_table, paper_table, results_json
    from padim.evaluation.paper_tables import CONFIGS, Options, config_for, run_benchmark
    from padim.evaluation.datasets import mvtec, stc

    configs = [config_for(args.config) if m == "padim" else CONFIGS[m] for m in args.method]
    options = Options(device=args.device, batch_size=args.batch_size, seeds=args.seeds, non_aligned=args.non_aligned,
                      weights=args.weights, verbose=not args.quiet, vae_epochs=args.vae_epochs,
                      vae_images=args.vae_images, checkpoints=args.checkpoints)
    if args.dataset == "stc":
        options.image_size, options.crop_size = paper.STC_RESIZE, None
        splits = [stc(args.root, train_stride=args.train_stride, test_stride=args.test_stride)]
    else:
        splits = mvtec(args.root, args.categories)
    table = args.table or ("table_IV" if args.dataset == "stc" else None)
    runs = []
    for config in configs:
        print(f"benchmark {args.dataset} {config.name}: {len(splits)} categor{'y' if len(splits) == 1 else 'ies'}, "
              f"{options.seeds} seed(s){', non-aligned' if options.non_aligned else ''}", flush=True)
        results = run_benchmark(config, splits, options, on_result=_print_progress)
        markdown = markdown_table(config, results, table, options)
        print(markdown, end="")
        _save_report(args.output, f"{args.dataset}-{config.name}", results_json(config, results, options, table), markdown)
        runs.append((config, results))
    if len(runs) > 1:
        markdown = combined_table(runs, table, options)
        print(markdown, end="")
        combined = {"methods": [results_json(c, r, options, table) for c, r in runs]}
        _save_report(args.output, f"{args.dataset}-combined", combined, markdown)
    if args.dataset == "mvtec" and table in (None, "table_III"):
        markdown = paper_table(runs, "table_III", options)
        print(markdown, end="")
        _save_report(args.output, "mvtec-table-iii", {"methods": [results_json(c, r, options, "table_III") for c, r in runs]},
                     markdown)


def _print_progress(result: Any) -> None:
    """One line per finished category."""
    m = result.metrics
    print(f"  {result.category}: " + ", ".join(f"{k} {100 * m[k]:.1f}" for k in ("image_auroc", "pixel_auroc", "au_pro")
                                               if k in m) + f" (fit {result.fit_seconds:.1f} s)", flush=True)


def _methods(text: str) -> tuple[str, ...]:
    """Parse --method: known names, comma-separated, each once."""
    from padim.evaluation.paper_tables import METHODS

    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in METHODS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown method {unknown[0] if unknown else text!r}: choose from {', '.join(METHODS)}")
    return names


def cmd_serve(args: argparse.Namespace) -> None:
    """padim serve: FastAPI + uvicorn until Ctrl-C."""
    try:
        from padim.deployment.service import serve
    except ImportError as exc:
        raise PadimError(str(exc)) from None
    from padim.model import PaDiM

    if not 0 < args.max_upload_mb <= MAX_UPLOAD_MB or args.max_pixels < 1 or args.max_batch < 1:
        raise PadimError(f"--max-upload-mb must be a number in (0, {MAX_UPLOAD_MB}], --max-pixels and --max-batch "
                         f"positive; got {args.max_upload_mb}, {args.max_pixels}, {args.max_batch}")
    model = PaDiM.load(args.model, weights=args.weights, device=args.device, engine=args.engine, threads=args.threads,
                       batch_size=args.batch_size, max_pixels=args.max_pixels)
    serve(model, host=args.host, port=args.port, access_log=not args.quiet,
          max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), max_pixels=args.max_pixels, max_batch=args.max_batch,
          body_timeout_s=args.body_timeout, max_uploads_per_client=args.max_uploads_per_client, api_docs=args.api_docs)


COMMANDS = {"fit": cmd_fit, "predict": cmd_predict, "calibrate": cmd_calibrate, "info": cmd_info, "evaluate": cmd_evaluate,
            "benchmark": cmd_benchmark, "demo": cmd_demo, "serve": cmd_serve,
            "report": cmd_report}


def cmd_export(args: argparse.Namespace) -> None:
    """padim export: ONNX graph + metadata, then a check against PyTorch on a random batch."""
    from padim.deployment.export import export_onnx, external_data_path, read_metadata, sidecar_path, verify_onnx
    from padim.model import PaDiM

    from padim.utils.atomic import check_writable

    out = Path(args.output)
    check_writable(out)
    model = PaDiM.load(args.model, weights=args.weights)
    if out.suffix.lower() != ".onnx":
        from padim.deployment.bundle import bundle_size, export_bundle

        export_bundle(model, out, half=args.half)
        print(f"exported {args.model} -> bundle {out}/ ({bundle_size(out) / 1e6:.1f} MB"
              f"{', factor in float16' if args.half else ''}): run it with padim-run predict {out} IMAGES -o OUT")
        return
    export_onnx(model, out, opset=args.opset)
    data = external_data_path(out) if read_metadata(out)["onnx"]["external_data"] else None
    size = out.stat().st_size + (data.stat().st_size if data else 0)
    check = verify_onnx(model, out)
    h, w = model.preprocessing.output_size
    print(f"exported {args.model} -> {out} ({size / 1e6:.1f} MB, opset {args.opset}, input image [batch, 3, {h}, {w}]); "
          f"metadata also in {sidecar_path(out)}")
    print(f"max |diff| vs PyTorch on a random batch of {check['batch_size']}: anomaly map {check['map_max_abs_diff']:.3g} "
          f"(relative to the map's range {check['map_relative_diff']:.3g}), score {check['score_max_abs_diff']:.3g}")
    cal = getattr(model, "calibration_", None)
    print("thresholds in the metadata: " + (f"image {cal.image_threshold:.4g}, pixel {cal.pixel_threshold:.4g}"
                                           if cal is not None else "none (model not calibrated)"))


COMMANDS["export"] = cmd_export

def _one_line_warning(message: Any, category: Any, *_args: Any, **_kwargs: Any) -> None:
    """Warnings as one line on stderr, without source lines."""
    print(f"padim: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Entry point: every failure is one line on stderr; exit 2 for bad input or environment, 1 for a bug.

    PADIM_DEBUG=1 in the environment lets any exception propagate with its traceback.
    """
    args = build_parser().parse_args(argv)
    warnings.showwarning = _one_line_warning
    if getattr(args, "max_pixels", None):
        _allow_pixels(args.max_pixels)
    try:
        COMMANDS[args.command](args)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        print("padim: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the CLI boundary: one line, never a traceback
        if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            raise
        message, code = describe_failure(exc)
        print(f"padim: error: {message}", file=sys.stderr)
        return code
    return 0


def describe_failure(exc: BaseException) -> tuple[str, int]:
    """One line for an exception that reached the CLI, and the exit code it gets."""
    from PIL import Image

    text = _first_line(exc)
    if isinstance(exc, PadimError):
        return text, EXIT_BAD_INPUT
    if isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and _is_out_of_memory(text)):
        return (f"out of memory ({text if isinstance(exc, RuntimeError) else 'MemoryError'}): "
                f"use a smaller --batch-size, --image-size or --n-features"), EXIT_BAD_INPUT
    if isinstance(exc, Image.DecompressionBombError):
        return f"image too large to decode safely: {text}", EXIT_BAD_INPUT
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        return f"{where}{exc.strerror or text}", EXIT_BAD_INPUT
    if isinstance(exc, (RuntimeError, AssertionError)) and _is_device_error(text):
        return f"device error ({text}): check --device, or use --device cpu", EXIT_BAD_INPUT
    return (f"unexpected {type(exc).__name__}: {text} (probably a bug: rerun with {DEBUG_ENV}=1 for the traceback "
            f"and report it)"), EXIT_INTERNAL


def _first_line(exc: BaseException) -> str:
    """An exception's first non-empty line, shortened, or its type's name."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _is_out_of_memory(text: str) -> bool:
    """torch's CPU and GPU allocation failures."""
    lowered = text.lower()
    return "out of memory" in lowered or "can't allocate memory" in lowered or "not enough memory" in lowered


def _is_device_error(text: str) -> bool:
    """An accelerator or driver failure (CUDA, MPS, a torch built without them)."""
    lowered = text.lower()
    return any(word in lowered for word in ("cuda", "cudnn", "cublas", "mps", "nvidia", "hip", "device-side"))


def _silence_stdout() -> None:
    """After a reader closed our pipe: send what is left to /dev/null, so that exit prints nothing."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):
        pass


if __name__ == "__main__":
    sys.exit(main())
