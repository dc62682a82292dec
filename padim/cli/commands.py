"""What each `padim` sub-command does: parse nothing, decide nothing, call the library and say what it wrote."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Callable

from padim import paper
from padim.errors import InputError, PadimEnvironmentError, PadimError

MAX_UPLOAD_MB = 4096  # serve --max-upload-mb: an upload is held in memory whole


def _load(args: argparse.Namespace, *, progress: bool = True) -> Any:
    """The model file args.model, loaded with the common options."""
    from padim.model import PaDiM

    options = {"verbose": not args.quiet} if progress else {}
    return PaDiM.load(args.model, weights=args.weights, device=args.device, engine=args.engine, threads=args.threads,
                      batch_size=args.batch_size, max_pixels=args.max_pixels, **options)


def _echo(text: str) -> None:
    """Print text that ends in its own newline, at once."""
    print(text, end="", flush=True)


def cmd_fit(args: argparse.Namespace) -> None:
    """padim fit."""
    from padim.model import PaDiM
    from padim.utils.atomic import check_writable

    if args.output is None and not args.plan:
        raise InputError("fit needs -o MODEL_FILE (or --plan to only print the plan)")
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
    if not _fit(model, args):
        return
    model.save(out, statistics=args.resumable, half=args.half)
    print(f"fitted {model.backbone_.name} ({model.embedding_dim_} features, "
          f"{model.feature_shape_[0]}x{model.feature_shape_[1]} positions) on {model.n_samples_seen_} images "
          f"in {time.perf_counter() - t0:.1f} s with {model.engine_for_device().describe()} -> {out} "
          f"({out.stat().st_size / 1e6:.1f} MB)")
    if model.calibration_ is not None:
        print(model.calibration_.describe())


def _fit(model: Any, args: argparse.Namespace) -> bool:
    """Fit in this process, or this process's shard under torchrun; False where another rank saves."""
    if not args.distributed:
        model.fit(args.train_dir)
        return True
    from padim.distributed import fit_distributed, init_from_env

    rank, world = init_from_env(args.device)
    fit_distributed(model, args.train_dir)
    if rank == 0:
        print(f"merged the statistics of {world} processes")
    return rank == 0


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


def _as_options(call: Callable[[], Any]) -> Any:
    """call(), with parameter errors naming the command-line option (--image-size) instead of image_size."""
    from padim.utils.constraints import PADIM_CONSTRAINTS

    try:
        return call()
    except PadimError as exc:
        name, _, rest = str(exc).partition(" ")
        if name in PADIM_CONSTRAINTS:
            raise type(exc)(f"--{name.replace('_', '-')} {rest}") from None
        raise


def cmd_calibrate(args: argparse.Namespace) -> None:
    """padim calibrate."""
    from padim.utils.atomic import check_writable
    from padim.utils.constraints import PADIM_CONSTRAINTS, check_value

    check_value("--fpr", args.fpr, PADIM_CONSTRAINTS["fpr"])
    check_writable(args.output or args.model)
    model = _load(args)
    model.calibrate(args.good_dir, fpr=args.fpr, source=f"good images in {args.good_dir}")
    model.save(args.output or args.model, statistics=model.stats_ is not None)
    print(model.calibration_.describe())


def _check_thresholds(args: argparse.Namespace) -> None:
    """Refuse NaN, infinite or negative --image-threshold / --pixel-threshold before any image is scored."""
    from padim.utils.constraints import check_threshold

    check_threshold("--image-threshold", args.image_threshold)
    check_threshold("--pixel-threshold", args.pixel_threshold)


def cmd_predict(args: argparse.Namespace) -> None:
    """padim predict (under torchrun with --distributed: each process scores its shard, rank 0 writes the tables)."""
    from padim.reporting.results import write_results

    if args.distributed and args.report:
        raise InputError("--report needs every heat map in one process: run it without --distributed")
    _check_thresholds(args)
    if args.distributed:
        from padim.distributed import init_from_env

        init_from_env(args.device)
    model = _load(args)
    given = args.image_threshold is not None or args.pixel_threshold is not None
    rows = write_results(model, args.inputs, args.output, overlays=not args.no_overlays,
                         image_threshold=args.image_threshold, pixel_threshold=args.pixel_threshold, report=args.report,
                         model_name=str(args.model), thresholds_how="given on the command line" if given else None)
    if rows is None:  # not rank 0: rank 0 wrote the tables
        return
    n_overlays = sum("overlay" in r for r in rows)
    print(f"scored {len(rows)} images -> {Path(args.output)}/scores.csv, scores.json"
          + (", report.html" if args.report else "") + (f", {n_overlays} overlays" if n_overlays else "")
          + (" (sharded over processes)" if args.distributed else ""))


def cmd_report(args: argparse.Namespace) -> None:
    """padim report."""
    from padim.reporting.report import report_from_files

    _check_thresholds(args)
    pred = report_from_files(args.output, _load(args), args.inputs, masks_dir=args.masks_dir, title=args.title,
                             image_threshold=args.image_threshold, pixel_threshold=args.pixel_threshold)
    print(f"report of {len(pred.scores)} images -> {args.output}")


def cmd_info(args: argparse.Namespace) -> None:
    """padim info: metadata only, the backbone is not loaded."""
    from padim.reporting.model_info import model_file_info

    print(model_file_info(args.model, as_json=args.json))


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


def cmd_evaluate(args: argparse.Namespace) -> None:
    """padim evaluate."""
    from padim.evaluation.runs import write_evaluation

    write_evaluation(_load(args), args.datasets, args.output, model_name=str(args.model), stc=args.stc,
                     test_stride=args.test_stride, echo=_echo)


def cmd_benchmark(args: argparse.Namespace) -> None:
    """padim benchmark."""
    from padim.evaluation.paper_tables import CONFIGS, Options, config_for
    from padim.evaluation.runs import benchmark_inputs, write_benchmarks

    configs = [config_for(args.config) if m == "padim" else CONFIGS[m] for m in args.method]
    options = Options(device=args.device, batch_size=args.batch_size, seeds=args.seeds, non_aligned=args.non_aligned,
                      weights=args.weights, verbose=not args.quiet, vae_epochs=args.vae_epochs,
                      vae_images=args.vae_images, checkpoints=args.checkpoints)
    splits, options = benchmark_inputs(args.dataset, args.root, options, categories=args.categories,
                                       train_stride=args.train_stride, test_stride=args.test_stride)
    write_benchmarks(args.dataset, configs, splits, options, folder=args.output, table=args.table, echo=_echo)


def cmd_serve(args: argparse.Namespace) -> None:
    """padim serve: FastAPI + uvicorn until Ctrl-C."""
    try:
        from padim.deployment.service import serve
    except ImportError as exc:
        raise PadimEnvironmentError(str(exc)) from None

    if not 0 < args.max_upload_mb <= MAX_UPLOAD_MB or args.max_pixels < 1 or args.max_batch < 1:
        raise InputError(f"--max-upload-mb must be a number in (0, {MAX_UPLOAD_MB}], --max-pixels and --max-batch "
                         f"positive; got {args.max_upload_mb}, {args.max_pixels}, {args.max_batch}")
    serve(_load(args, progress=False), host=args.host, port=args.port, access_log=not args.quiet,
          max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), max_pixels=args.max_pixels, max_batch=args.max_batch,
          body_timeout_s=args.body_timeout, max_uploads_per_client=args.max_uploads_per_client, api_docs=args.api_docs)


def cmd_export(args: argparse.Namespace) -> None:
    """padim export: a bundle folder, or an ONNX graph + metadata checked against PyTorch on a random batch."""
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
    _export_onnx(model, args, out)


def _export_onnx(model: Any, args: argparse.Namespace, out: Path) -> None:
    """padim export to FILE.onnx: write, verify and describe the graph."""
    from padim.deployment.export import export_onnx, external_data_path, read_metadata, sidecar_path, verify_onnx

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


COMMANDS: dict[str, Callable[[argparse.Namespace], None]] = {
    "fit": cmd_fit, "predict": cmd_predict, "calibrate": cmd_calibrate, "info": cmd_info, "evaluate": cmd_evaluate,
    "benchmark": cmd_benchmark, "demo": cmd_demo, "serve": cmd_serve, "report": cmd_report, "export": cmd_export,
}
