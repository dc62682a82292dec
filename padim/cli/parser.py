"""The `padim` command line: one argument parser for every sub-command, with one-line errors."""

from __future__ import annotations

import argparse
from typing import Any

from padim_runtime.argtypes import positive_int, positive_seconds

from padim import paper

EXIT_BAD_INPUT = 2  # bad input, a bad model file or an environment problem (disk, memory, device)


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


def _add_max_pixels(parser: argparse.ArgumentParser) -> None:
    """The --max-pixels option of the commands that decode images."""
    from padim.images import DEFAULT_MAX_PIXELS

    parser.add_argument("--max-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS,
                        help=f"largest image decoded, in pixels, checked from its header (default: {DEFAULT_MAX_PIXELS})")


def _add_thresholds(parser: argparse.ArgumentParser) -> None:
    """--image-threshold and --pixel-threshold, which override the model's calibration."""
    parser.add_argument("--image-threshold", type=float, help="override the model's image threshold")
    parser.add_argument("--pixel-threshold", type=float, help="override the model's pixel threshold")


def _add_distributed(parser: argparse.ArgumentParser, what: str) -> None:
    """--distributed: the work shared by the processes torchrun starts."""
    parser.add_argument("--distributed", action="store_true", help=f"under torchrun: {what}")


def _methods(text: str) -> tuple[str, ...]:
    """Parse --method: known names, comma-separated, each once."""
    from padim.evaluation.paper_tables import METHODS

    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in METHODS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown method {unknown[0] if unknown else text!r}: choose from {', '.join(METHODS)}")
    return names


PRESETS = ("paper", "full-frame")


def _common() -> argparse.ArgumentParser:
    """The options every model-running sub-command shares."""
    from padim.engine import AUTO, ENGINES

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    common.add_argument("--batch-size", type=int, default=32)
    common.add_argument("--weights", help="backbone weights file (.pth/.safetensors), or 'random' (tests only)")
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    common.add_argument("--engine", default=AUTO, choices=(AUTO, *ENGINES),
                        help="runtime of the backbone (default: auto, the fastest exact one installed)")
    common.add_argument("--threads", type=positive_int, help="CPU threads (default: the CPUs this process may use)")
    return common


def _model_command(sub: Any, name: str, text: str, *parents: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """A sub-command whose first argument is a model file."""
    command = sub.add_parser(name, parents=list(parents), help=text)
    command.add_argument("model", help="model file")
    return command


def _add_fit(sub: Any, common: argparse.ArgumentParser) -> None:
    """padim fit: a model from a folder of good images."""
    from padim.backbone import BACKBONES, DEFAULT_BACKBONE

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
    _add_distributed(fit, "each process fits its shard, rank 0 merges and writes the model")
    fit.add_argument("--half", action="store_true", help="store the inverse covariance factors in float16 (half size)")
    fit.add_argument("--resumable", action="store_true",
                     help="also store the statistics, so the model can be updated or merged later")
    _add_max_pixels(fit)


def _add_predict(sub: Any, common: argparse.ArgumentParser) -> None:
    """padim predict: score images into a results folder."""
    predict = _model_command(sub, "predict", "score images and write heat maps", common)
    predict.add_argument("inputs", nargs="+", help="image files or folders")
    predict.add_argument("-o", "--output", required=True, help="output folder")
    predict.add_argument("--no-overlays", action="store_true", help="write scores only")
    _add_thresholds(predict)
    predict.add_argument("--report", action="store_true", help="also write OUTPUT/report.html (one self-contained file)")
    _add_distributed(predict, "each process scores its share of the images, rank 0 writes the tables")
    _add_max_pixels(predict)


def _add_calibrate(sub: Any, common: argparse.ArgumentParser) -> None:
    """padim calibrate: thresholds from separate good images."""
    calibrate = _model_command(sub, "calibrate", "set thresholds on a separate set of good images", common)
    calibrate.add_argument("good_dir", help="folder of good images the model was not fitted on")
    calibrate.add_argument("-o", "--output", help="model file to write (default: overwrite MODEL atomically)")
    calibrate.add_argument("--fpr", type=float, default=0.01, help="target false-positive rate (default 0.01)")
    _add_max_pixels(calibrate)


def _add_info(sub: Any, common: argparse.ArgumentParser) -> None:
    """padim info: what a model file holds."""
    info = _model_command(sub, "info", "show what a model file holds")
    info.add_argument("--json", action="store_true", help="print the raw metadata")


def _add_evaluate(sub: Any, common: argparse.ArgumentParser) -> None:
    """padim evaluate: metrics on test sets."""
    evaluate = _model_command(sub, "evaluate", "image AUROC, pixel AUROC and AU-PRO on test sets", common)
    evaluate.add_argument("datasets", nargs="+", help="MVTec-layout category folders (or STC roots with --stc)")
    evaluate.add_argument("--stc", action="store_true", help="the datasets are ShanghaiTech Campus roots")
    evaluate.add_argument("--test-stride", type=positive_int, default=1, help="STC: use every Nth test frame")
    evaluate.add_argument("-o", "--output", default="padim-evaluation", help="folder for evaluation.json / .md")
    _add_max_pixels(evaluate)


def _add_benchmark(sub: Any, common: argparse.ArgumentParser) -> None:
    """padim benchmark: the paper's tables."""
    bench = sub.add_parser("benchmark", parents=[common], help="reproduce the paper's tables")
    bench.add_argument("dataset", choices=["mvtec", "stc"])
    bench.add_argument("--root", required=True, help="dataset root (official layout)")
    bench.add_argument("--config", default="r18-rd100", help="PaDiM's paper configuration (default: r18-rd100)")
    bench.add_argument("--method", type=_methods, default=("padim",),
                       help="padim, spade, vae or a comma-separated list: one table each, then a combined one")
    bench.add_argument("--vae-epochs", type=positive_int, default=paper.VAE_EPOCHS,
                       help=f"VAE training epochs (paper: {paper.VAE_EPOCHS})")
    bench.add_argument("--vae-images", type=positive_int, default=paper.VAE_TRAIN_IMAGES,
                       help=f"augmented VAE training images per epoch (paper: {paper.VAE_TRAIN_IMAGES})")
    bench.add_argument("--checkpoints", help="folder for VAE checkpoints: an interrupted run resumes from them")
    bench.add_argument("--categories", type=lambda s: s.split(","), help="MVTec categories (default: all present)")
    bench.add_argument("--seeds", type=positive_int, default=1, help="average Rd over this many seeds (the paper: 10)")
    bench.add_argument("--non-aligned", action="store_true", help="Section V-C: random rotation and crop")
    bench.add_argument("--table", help="paper table to compare with (default: the config's first)")
    bench.add_argument("--train-stride", type=positive_int, default=1, help="STC: use every Nth training frame")
    bench.add_argument("--test-stride", type=positive_int, default=1, help="STC: use every Nth test frame")
    bench.add_argument("-o", "--output", default="padim-benchmark", help="folder for results (JSON + Markdown)")


def _add_report(sub: Any, common: argparse.ArgumentParser) -> None:
    """padim report: the HTML report."""
    report = _model_command(sub, "report", "one self-contained HTML report of images, heat maps and metrics", common)
    report.add_argument("inputs", nargs="+",
                        help="image files or folders; an MVTec-layout category folder (test/, ground_truth/) brings its labels and masks")
    report.add_argument("-o", "--output", default="report.html", help="HTML file to write (default: report.html)")
    report.add_argument("--masks-dir", help="ground-truth masks <stem>_mask.png for plain inputs (no mask or an empty one: good)")
    _add_thresholds(report)
    report.add_argument("--title", default="PaDiM inspection report", help="report title")
    _add_max_pixels(report)


def _add_demo(sub: Any, common: argparse.ArgumentParser) -> None:
    """padim demo: the offline demo."""
    demo = sub.add_parser("demo", help="offline demo on real textures with synthetic defects")
    demo.add_argument("-o", "--output", default="padim-demo", help="output folder (default: padim-demo)")
    demo.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def _add_serve(sub: Any, common: argparse.ArgumentParser) -> None:
    """padim serve: the HTTP service."""
    serve = _model_command(sub, "serve", "HTTP API and web page (needs the 'serve' extra)", common)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    serve.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0 picks a free one)")
    serve.add_argument("--max-upload-mb", type=float, default=20, help="largest accepted upload in MiB (default: 20)")
    serve.add_argument("--max-batch", type=int, default=8, help="most requests scored in one forward pass (default: 8)")
    serve.add_argument("--body-timeout", type=positive_seconds, default=30.0, metavar="SECONDS",
                       help="an upload not received within this is answered 408 and its connection closed (default: 30)")
    serve.add_argument("--max-uploads-per-client", type=positive_int, default=8, metavar="N",
                       help="uploads received at once from one client address; more are answered 429 (default: 8)")
    serve.add_argument("--api-docs", action="store_true", help="serve FastAPI's /docs, /redoc and /openapi.json (default: off)")
    _add_max_pixels(serve)


def _add_export(sub: Any, common: argparse.ArgumentParser) -> None:
    """padim export: a bundle or an ONNX graph."""
    export = _model_command(sub, "export", "write an inference bundle folder for padim-runtime, or one ONNX graph (.onnx)")
    export.add_argument("-o", "--output", required=True,
                        help="bundle folder to write (padim-run runs it without torch), or FILE.onnx for the whole "
                             "pipeline as one ONNX graph (metadata also in FILE.onnx.json)")
    export.add_argument("--half", action="store_true", help="bundle: store the factor in float16 (about half the size)")
    export.add_argument("--opset", type=int, default=17, help="ONNX opset, 11 to 20 (default: 17)")
    export.add_argument("--weights", help="backbone weights file the model was fitted with (.pth/.safetensors)")


SUBCOMMANDS = (_add_fit, _add_predict, _add_calibrate, _add_info, _add_evaluate, _add_benchmark, _add_report, _add_demo,
               _add_serve, _add_export)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every sub-command."""
    from padim._version import __version__

    parser = _Parser(prog="padim", description="PaDiM anomaly detection and localization.")
    parser.add_argument("--version", action="version", version=f"torch-padim {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    common = _common()
    for add in SUBCOMMANDS:
        add(sub, common)
    return parser
