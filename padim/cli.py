"""The `padim` command: a thin layer over the Python API."""

from __future__ import annotations

import argparse
import csv
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

EXIT_BAD_INPUT = 2


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
    return "all" if text == "all" else int(text)


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def engine_here(device: str = "cpu") -> str:
    """What engine='auto' picks on this machine, with its version and thread count (nothing is built)."""
    from importlib.metadata import PackageNotFoundError, version

    from padim.cpus import available_cpus
    from padim.engine import default_engine

    name = default_engine(device)
    try:
        ver = version("torch" if name.startswith("torch") else name)
    except PackageNotFoundError:
        ver = "?"
    return f"{name} {ver} on {device}, {available_cpus()} threads"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every sub-command."""
    from padim import __version__
    from padim.backbone import BACKBONES, DEFAULT_BACKBONE
    from padim.engine import AUTO, ENGINES

    parser = argparse.ArgumentParser(prog="padim", description="PaDiM anomaly detection and localization.")
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
    fit.add_argument("-o", "--output", required=True, help="model file to write (.safetensors)")
    fit.add_argument("--backbone", default=DEFAULT_BACKBONE,
                     help=f"{', '.join(BACKBONES)} or any timm model with --layers (default: {DEFAULT_BACKBONE})")
    fit.add_argument("--layers", type=lambda s: tuple(s.split(",")), help="comma-separated module names to tap")
    fit.add_argument("--n-features", type=_n_features, help="Rd: number of random channels kept, or 'all'")
    fit.add_argument("--reduction", choices=["random", "pca"], default="random",
                     help="keep n-features random channels (Rd, default) or principal components (pca)")
    fit.add_argument("--image-size", type=_size, default=paper.MVTEC_RESIZE,
                     help=f"resize to N or HxW (default: {paper.MVTEC_RESIZE})")
    fit.add_argument("--crop-size", type=_size, default=paper.MVTEC_CROP,
                     help=f"center crop N or HxW, or 'none' (default: {paper.MVTEC_CROP})")
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
    evaluate.add_argument("--test-stride", type=int, default=1, help="STC: use every Nth test frame")
    evaluate.add_argument("-o", "--output", default="padim-evaluation", help="folder for evaluation.json / .md")

    bench = sub.add_parser("benchmark", parents=[common], help="reproduce the paper's tables")
    bench.add_argument("dataset", choices=["mvtec", "stc"])
    bench.add_argument("--root", required=True, help="dataset root (official layout)")
    bench.add_argument("--config", default="r18-rd100", help="PaDiM's paper configuration (default: r18-rd100)")
    bench.add_argument("--method", type=_methods, default=("padim",),
                       help="padim, spade, vae or a comma-separated list: one table each, then a combined one")
    bench.add_argument("--vae-epochs", type=int, default=paper.VAE_EPOCHS,
                       help=f"VAE training epochs (paper: {paper.VAE_EPOCHS})")
    bench.add_argument("--vae-images", type=int, default=paper.VAE_TRAIN_IMAGES,
                       help=f"augmented VAE training images per epoch (paper: {paper.VAE_TRAIN_IMAGES})")
    bench.add_argument("--checkpoints", help="folder for VAE checkpoints: an interrupted run resumes from them")
    bench.add_argument("--categories", type=lambda s: s.split(","), help="MVTec categories (default: all present)")
    bench.add_argument("--seeds", type=int, default=1, help="average Rd over this many seeds (the paper: 10)")
    bench.add_argument("--non-aligned", action="store_true", help="Section V-C: random rotation and crop")
    bench.add_argument("--table", help="paper table to compare with (default: the config's first)")
    bench.add_argument("--train-stride", type=int, default=1, help="STC: use every Nth training frame")
    bench.add_argument("--test-stride", type=int, default=1, help="STC: use every Nth test frame")
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
    serve.add_argument("--max-pixels", type=int, default=40_000_000, help="largest accepted image in pixels (default: 40000000)")
    serve.add_argument("--max-batch", type=int, default=8, help="most requests scored in one forward pass (default: 8)")

    export = sub.add_parser("export", help="write the model as an ONNX graph (needs the 'export' extra)")
    export.add_argument("model", help="model file")
    export.add_argument("-o", "--output", required=True, help="ONNX file to write (metadata also in OUTPUT.json)")
    export.add_argument("--opset", type=int, default=17, help="ONNX opset, 11 to 20 (default: 17)")
    export.add_argument("--weights", help="backbone weights file the model was fitted with (.pth/.safetensors)")
    return parser


def cmd_fit(args: argparse.Namespace) -> None:
    """padim fit."""
    from padim.model import PaDiM

    out = Path(args.output)
    if not out.parent.is_dir():
        raise PadimError(f"{out}: output folder {out.parent} does not exist")
    t0 = time.perf_counter()
    model = PaDiM(backbone=args.backbone, layers=args.layers, n_features=args.n_features, reduction=args.reduction, eps=args.eps,
                  image_size=args.image_size, crop_size=args.crop_size, seed=args.seed, device=args.device,
                  batch_size=args.batch_size, weights=args.weights, verbose=not args.quiet,
                  holdout=args.holdout, fpr=args.fpr, engine=args.engine, threads=args.threads)
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


def cmd_calibrate(args: argparse.Namespace) -> None:
    """padim calibrate."""
    from padim.model import PaDiM

    model = PaDiM.load(args.model, weights=args.weights, device=args.device, engine=args.engine, threads=args.threads,
                       batch_size=args.batch_size, verbose=not args.quiet)
    model.calibrate(args.good_dir, fpr=args.fpr, source=f"good images in {args.good_dir}")
    model.save(args.output or args.model, statistics=model.stats_ is not None)
    print(model.calibration_.describe())


def _expand_inputs(inputs: list[str]) -> list[Path]:
    """Folders become their images; files stay."""
    from padim.data import list_images

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
    from padim.atomic import atomic_write

    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def cmd_predict(args: argparse.Namespace) -> None:
    """padim predict (under torchrun with --distributed: each process scores its shard, rank 0 writes the tables)."""
    import numpy as np

    from padim.data import read_image
    from padim.model import PaDiM
    from padim.overlay import heatmap_overlay, save_png, side_by_side

    if args.distributed and args.report:
        raise PadimError("--report needs every heat map in one process: run it without --distributed")
    from padim import distributed  # its helpers act for a single process outside torchrun

    if args.distributed:
        distributed.init_from_env(args.device)
    model = PaDiM.load(args.model, weights=args.weights, device=args.device, engine=args.engine, threads=args.threads,
                       batch_size=args.batch_size, verbose=not args.quiet)
    paths = _expand_inputs(args.inputs)
    indices = distributed.shard_indices(len(paths))
    out = Path(args.output)
    try:
        (out / "overlays").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PadimError(f"{out}: cannot create output folder ({exc.strerror})") from None
    rows: list[dict[str, Any]] = []
    pred = model.predict([paths[i] for i in indices], original_size=True, image_threshold=args.image_threshold,
                         pixel_threshold=args.pixel_threshold) if indices else None
    for k, i in enumerate(indices):
        row: dict[str, Any] = {"image": pred.names[k], "score": float(pred.scores[k])}
        if pred.normalized_scores is not None:
            row["normalized_score"] = float(pred.normalized_scores[k])
        if pred.decisions is not None:
            row["defective"] = bool(pred.decisions[k])
        if pred.frame_scores is not None:
            row["frame_score"] = float(pred.frame_scores[k])
        if pred.reasons is not None:
            row["reason"] = pred.reasons[k]
        rows.append(row)
    if not args.no_overlays:
        low = min((float(m.min()) for m in pred.maps), default=np.inf) if pred else np.inf
        high = max((float(m.max()) for m in pred.maps), default=-np.inf) if pred else -np.inf
        vmin, vmax = distributed.global_range(low, high)
        for k, i in enumerate(indices):
            name, amap = pred.names[k], pred.maps[k]
            rgb = (read_image(name).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            panel = side_by_side(rgb, heatmap_overlay(rgb, amap, vmin=vmin, vmax=vmax, threshold=pred.pixel_threshold))
            rows[k]["overlay"] = f"overlays/{i:04d}_{Path(name).stem}.png"
            save_png(out / rows[k]["overlay"], panel)
    if pred is not None and pred.masks is not None:
        (out / "masks").mkdir(exist_ok=True)
        for k, (i, mask) in enumerate(zip(indices, pred.masks)):
            rows[k]["mask"] = f"masks/{i:04d}_{Path(rows[k]['image']).stem}.png"
            save_png(out / rows[k]["mask"], np.repeat(mask[:, :, None].astype(np.uint8) * 255, 3, axis=2))
    all_rows = distributed.gather_rows(list(zip(indices, rows)))
    if all_rows is None:  # not rank 0: rank 0 writes the tables
        return
    rows = [row for _, row in sorted(all_rows, key=lambda pair: pair[0])]
    _write_scores(out, rows, args, model, pred)
    if args.report:
        from padim.report import given_note, write_report

        write_report(out / "report.html", pred.names, pred.names, pred, model=model,
                     threshold_note=given_note(model, args.image_threshold, args.pixel_threshold))
    n_overlays = sum("overlay" in r for r in rows)
    print(f"scored {len(rows)} images -> {out}/scores.csv, scores.json" + (", report.html" if args.report else "")
          + (f", {n_overlays} overlays" if n_overlays else "") + (" (sharded over processes)" if args.distributed else ""))


def _write_scores(out: Path, rows: list[dict[str, Any]], args: argparse.Namespace, model: Any, pred: Any) -> None:
    """scores.csv and scores.json, with how the thresholds were chosen."""
    buf = io.StringIO()
    fields = list(dict.fromkeys(k for row in rows for k in row)) or ["image", "score"]
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    _write_text(out / "scores.csv", buf.getvalue())
    given = args.image_threshold is not None or args.pixel_threshold is not None
    thresholds = {"image": pred.image_threshold, "pixel": pred.pixel_threshold,
                  "how": "given on the command line" if given
                  else (model.calibration_.describe() if model.calibration_ is not None else "none: model not calibrated")}
    _write_text(out / "scores.json", json.dumps({"model": str(args.model), "thresholds": thresholds, "images": rows}, indent=2))


def cmd_report(args: argparse.Namespace) -> None:
    """padim report."""
    from padim.model import PaDiM
    from padim.report import report_from_files

    model = PaDiM.load(args.model, weights=args.weights, device=args.device, engine=args.engine, threads=args.threads,
                       batch_size=args.batch_size, verbose=not args.quiet)
    pred = report_from_files(args.output, model, args.inputs, args.masks_dir, args.title,
                             args.image_threshold, args.pixel_threshold)
    print(f"report of {len(pred.scores)} images -> {args.output}")


def cmd_info(args: argparse.Namespace) -> None:
    """padim info: metadata only, the backbone is not loaded."""
    from padim.modelfile import read_model

    tensors, meta = read_model(args.model)
    if args.json:
        print(json.dumps(meta, indent=2))
        return
    bb, pre = meta.get("backbone", {}), meta.get("preprocessing", {})
    weights = bb.get("weights", {})
    crop = pre.get("crop_size")
    lines = [
        f"model file      {args.model} ({os.path.getsize(args.model) / 1e6:.1f} MB, format v{meta['format_version']}, "
        f"torch-padim {meta.get('library_version')})",
        f"backbone        {bb.get('name')} taps {','.join(bb.get('layers', []))} "
        f"(channels {bb.get('channels')}, strides {bb.get('strides')})",
        f"weights         {weights.get('kind')} {weights.get('path') or ''} sha256 {str(weights.get('sha256'))[:16]}..."
        + ("  [RANDOM WEIGHTS: not for real use]" if weights.get("kind") == "random" else ""),
        f"features        {meta.get('n_features')} of {meta.get('n_features_total')} (seed {meta.get('seed')})",
        f"positions       {'x'.join(map(str, meta.get('feature_shape', [])))}",
        f"preprocessing   resize {'x'.join(map(str, pre.get('image_size', [])))} bicubic, "
        + (f"center crop {'x'.join(map(str, crop))}" if crop else "no crop"),
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
    print("\n".join(lines))


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
    from padim.demo import HEADER, format_row, run_demo

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
    from padim.benchmark import evaluate
    from padim.datasets import mvtec_category, stc
    from padim.model import PaDiM

    model = PaDiM.load(args.model, weights=args.weights, device=args.device, engine=args.engine, threads=args.threads,
                       batch_size=args.batch_size, verbose=not args.quiet)
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
    from padim.benchmark import CONFIGS, Options, combined_table, config_for, markdown_table, results_json, run_benchmark
    from padim.datasets import mvtec, stc

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


def _print_progress(result: Any) -> None:
    """One line per finished category."""
    m = result.metrics
    print(f"  {result.category}: " + ", ".join(f"{k} {100 * m[k]:.1f}" for k in ("image_auroc", "pixel_auroc", "au_pro")
                                               if k in m) + f" (fit {result.fit_seconds:.1f} s)", flush=True)


def _methods(text: str) -> tuple[str, ...]:
    """Parse --method: known names, comma-separated, each once."""
    from padim.benchmark import METHODS

    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in METHODS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown method {unknown[0] if unknown else text!r}: choose from {', '.join(METHODS)}")
    return names


def cmd_serve(args: argparse.Namespace) -> None:
    """padim serve: FastAPI + uvicorn until Ctrl-C."""
    try:
        from padim.service import serve
    except ImportError as exc:
        raise PadimError(str(exc)) from None
    from padim.model import PaDiM

    if args.max_upload_mb <= 0 or args.max_pixels < 1 or args.max_batch < 1:
        raise PadimError("--max-upload-mb, --max-pixels and --max-batch must be positive")
    model = PaDiM.load(args.model, weights=args.weights, device=args.device, engine=args.engine, threads=args.threads, batch_size=args.batch_size)
    serve(model, host=args.host, port=args.port, access_log=not args.quiet,
          max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), max_pixels=args.max_pixels, max_batch=args.max_batch)


COMMANDS = {"fit": cmd_fit, "predict": cmd_predict, "calibrate": cmd_calibrate, "info": cmd_info, "evaluate": cmd_evaluate,
            "benchmark": cmd_benchmark, "demo": cmd_demo, "serve": cmd_serve,
            "report": cmd_report}


def cmd_export(args: argparse.Namespace) -> None:
    """padim export: ONNX graph + metadata, then a check against PyTorch on a random batch."""
    from padim.export import export_onnx, external_data_path, read_metadata, sidecar_path, verify_onnx
    from padim.model import PaDiM

    out = Path(args.output)
    if not out.parent.is_dir():
        raise PadimError(f"{out}: output folder {out.parent} does not exist")
    model = PaDiM.load(args.model, weights=args.weights)
    export_onnx(model, out, opset=args.opset)
    data = external_data_path(out) if read_metadata(out)["onnx"]["external_data"] else None
    size = out.stat().st_size + (data.stat().st_size if data else 0)
    check = verify_onnx(model, out)
    h, w = model.preprocess_.output_size
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
    """Entry point: one-line errors and exit code 2 for bad input, no traceback."""
    args = build_parser().parse_args(argv)
    warnings.showwarning = _one_line_warning
    try:
        COMMANDS[args.command](args)
    except PadimError as exc:
        print(f"padim: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("padim: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
