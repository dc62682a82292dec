"""Speed and memory per engine, side by side in one run: backbone floor, fit, predict, files, batch-1, contention.

    python benchmarks/speed.py                                    # lite0 and r18-rd100, every engine
    python benchmarks/speed.py --configs lite0 --anomalib-python /work/anomalib-venv/bin/python
    python benchmarks/speed.py --before /tmp/padim-before         # + a checkout of an older torch-padim
    python benchmarks/speed.py --configs lite0 --repeat 3          # 3 interleaved rounds (every other one in
                                                                  # reverse order), medians
    python benchmarks/speed.py --configs wr50-rd550 --n 100 --n-test 50 --engines torch,openvino

Images: real photos (scikit-image's brick, grass and gravel textures), random 256x256 crops; N for
fit, n-test others for predict; paper preprocessing (256, centre crop 224). Every measurement runs in a
fresh process on the same decoded uint8 arrays (PNG and JPEG copies on disk for file-to-score), so
peak memory (VmHWM after a reset) is the process's own and every ratio compares figures of one run.

Per (config, engine): floor = the tapped backbone alone (taps only, no embedding) on that engine,
preprocessed batches of 32, the median batch's speed in the fastest way to run it (OpenVINO: one
inference, sub-batches of 8, or two 1-thread halves one image an inference; JSON floor_way), measured
right before predict and again at the end, the higher kept (the higher whole-run speed, which counts
slow batches as predict does, is in the JSON as floor_sustained_ips); fit and predict from in-memory images (decoding and preprocessing
included); file-to-score = predict from PNG and from JPEG files; batch-1 = median latency of one image
through predict; contention = fit, predict and batch-1 again while a 2-thread CPU job (OpenBLAS matrix
products) runs beside them, as a ratio of the quiet speed (batch-1: quiet latency / loaded latency);
warm predict = the same predict called again (the first call of a process compiles the tail batch's
size; the floor's batches are warm ones). ResNet weights are random (no ImageNet
download here; speed does not depend on the values); Lite0 has its real weights. With
--anomalib-python, anomalib 2.7.0's PadimModel runs on the same weights, channels and normalised
tensors; with --before, an older checkout runs the same fit and predict.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIGS = {
    "lite0": dict(backbone="efficientnet_lite0", n_features="all", weights=None),
    "r18-rd100": dict(backbone="resnet18", n_features=100, weights="random"),
    "wr50-rd550": dict(backbone="wide_resnet50_2", n_features=550, weights="random"),
}
ENGINES = ("torch", "torch-fast", "onnxruntime", "openvino")
BATCH = 32
CROP = 256


# ------------------------------------------------------------------------------ shared inputs
def make_images(cache: Path, n: int, n_test: int) -> dict[str, Path]:
    """uint8 (N, 256, 256, 3) train and test arrays, and the test images as PNG and JPEG files, made once."""
    import numpy as np
    from PIL import Image
    from skimage import data

    cache.mkdir(parents=True, exist_ok=True)
    paths = {"train": cache / f"train-{n}.npy", "test": cache / f"test-{n_test}.npy",
             "png": cache / f"png-{n_test}", "jpeg": cache / f"jpeg-{n_test}"}
    if all(p.exists() for p in paths.values()):
        return paths
    textures = [data.brick(), data.grass(), data.gravel()]

    def crops(count: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        out = np.empty((count, CROP, CROP, 3), np.uint8)
        for i in range(count):
            tex = textures[i % 3]
            y, x = rng.integers(0, tex.shape[0] - CROP, size=2)
            gray = tex[y : y + CROP, x : x + CROP].astype(np.float32)
            rgb = np.stack([gray * rng.uniform(0.9, 1.1) for _ in range(3)], axis=2)
            out[i] = np.clip(rgb, 0, 255).astype(np.uint8)
        return out

    np.save(paths["train"], crops(n, 0))
    test = crops(n_test, 1)
    np.save(paths["test"], test)
    for kind in ("png", "jpeg"):
        paths[kind].mkdir(exist_ok=True)
        for i, img in enumerate(test):
            Image.fromarray(img).save(paths[kind] / f"{i:04d}.{'png' if kind == 'png' else 'jpg'}", quality=95)
    return paths


class Load:
    """A 2-thread CPU job beside the measurement: OpenBLAS matrix products in another process."""

    CODE = "import numpy as np\na = np.random.rand(1500, 1500)\nwhile True:\n    a @ a\n"

    def __enter__(self) -> "Load":
        env = {**os.environ, "OPENBLAS_NUM_THREADS": "2", "OMP_NUM_THREADS": "2"}
        self.proc = subprocess.Popen([sys.executable, "-c", self.CODE], env=env)
        time.sleep(1.0)
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.kill()
        self.proc.wait()


# ------------------------------------------------------------------------------ torch-padim worker
def taps_floor(model, engine: str, images: int = 4 * BATCH) -> tuple[float, float, str]:
    """Throughput (img/s) of the tapped backbone alone on an engine, on batches of 32 preprocessed tensors:
    the median batch's, and the whole run's over about `images` images (at least 4 batches), for the
    fastest of the ways to run it, which is named.

    OpenVINO runs the batch as one inference on every thread, as sub-batches of 8, and as two halves side
    by side on one thread each, one image an inference (how padim.lanes runs it): the floor is the best
    of them, so that a faster way of running the same graph raises the floor too. The graph is built
    afresh on every call: one held through predict would count in predict's peak.
    """
    import io
    import warnings

    import torch

    from padim.torch_fast import optimised

    size = model.preprocessing.output_size
    x = torch.randn(BATCH, 3, *size, generator=torch.Generator().manual_seed(0))

    class Taps(torch.nn.Module):
        def __init__(self, extractor):
            super().__init__()
            self.extractor = extractor

        def forward(self, x):
            return tuple(self.extractor(x))

    module = model.net_.features
    ways = {}
    if engine == "torch":
        ways["batch 32"] = lambda: Taps(module.extractor)(x)
    else:
        fast = Taps(optimised(module, size).extractor).eval()
        if engine == "torch-fast":
            fast = fast.to(memory_format=torch.channels_last)
            xc = x.contiguous(memory_format=torch.channels_last)
            ways["batch 32"] = lambda: fast(xc)
        else:
            buf = io.BytesIO()
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                torch.onnx.export(fast, (x,), buf, dynamo=False, opset_version=17, input_names=["image"],
                                  dynamic_axes={"image": {0: "batch"}})
            xn = x.numpy()
            if engine == "onnxruntime":
                import onnxruntime as ort

                opts = ort.SessionOptions()
                opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
                sess = ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])
                ways["batch 32"] = lambda: sess.run(None, {"image": xn})
            else:
                ways.update(_openvino_ways(buf.getvalue(), xn))
    best = (0.0, 0.0, "")
    with torch.no_grad():
        for name, run in ways.items():
            run()
            times = []
            for _ in range(max(4, -(-images // BATCH))):
                t0 = time.perf_counter()
                run()
                times.append(time.perf_counter() - t0)
            best = max(best, (BATCH / statistics.median(times), BATCH * len(times) / sum(times), name))
    return best


def _openvino_ways(graph: bytes, xn) -> dict:
    """Runs of a batch of the taps under OpenVINO: whole, in sub-batches of 8, two 1-thread halves image by image."""
    import threading

    import openvino as ov

    from padim.utils.cpus import available_cpus

    core = ov.Core()
    threads = available_cpus()

    def request(batch: int, n_threads: int):
        m = core.read_model(graph, b"")
        m.reshape({m.inputs[0]: [batch, *xn.shape[1:]]})
        config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY",
                  "INFERENCE_NUM_THREADS": n_threads, "ENABLE_CPU_PINNING": False}
        return core.compile_model(m, "CPU", config).create_infer_request()

    def in_steps(req, part, step):
        for s in range(0, len(part), step):
            req.infer({0: part[s : s + step]}, share_inputs=True)

    whole, eights = request(len(xn), threads), request(8, threads)
    ways = {"batch 32": lambda: whole.infer({0: xn}, share_inputs=True),
            "sub-batches of 8": lambda: in_steps(eights, xn, 8)}
    if threads >= 2:
        lanes = [request(1, threads // 2) for _ in range(2)]
        half = len(xn) // 2

        def side_by_side() -> None:
            workers = [threading.Thread(target=in_steps, args=(lanes[i], xn[i * half : (i + 1) * half], 1))
                       for i in range(2)]
            for w in workers:
                w.start()
            for w in workers:
                w.join()

        ways["two 1-thread halves, 1 an inference"] = side_by_side
    return ways


def _preimport(engine: str) -> None:
    """Import what a fit loads lazily (timm pulls in torchvision: ~4 s; the ONNX export imports onnx: ~0.7 s)
    outside the clock, as anomalib's worker imports anomalib before its clock starts.

    Only the engine's own runtime: importing the other one would add its memory to this engine's peak.
    """
    import importlib

    runtimes = [engine, "onnx"] if engine in ("openvino", "onnxruntime") else []
    for name in ("timm", "torchvision", "safetensors.torch", "tqdm.auto", *runtimes):
        try:
            importlib.import_module(name)
        except ImportError:
            pass


def batch1_ms(model, test) -> float:
    """Median latency (ms) of one image through predict, over 15 images."""
    lat = []
    for i in range(15):
        t0 = time.perf_counter()
        model.predict(test[i : i + 1])
        lat.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(lat)


def padim_worker(config: str, engine: str, paths: dict[str, Path], contention: bool) -> dict:
    """Fit, predict, file-to-score, batch-1 latency and contention ratios of one engine (own process)."""
    import numpy as np
    import torch

    from padim import PaDiM
    from padim.plan import peak_rss_mb, reset_peak_rss

    train, test = np.load(paths["train"]), np.load(paths["test"])
    params = CONFIGS[config]
    row: dict = {"config": config, "engine": engine, "n": len(train), "n_test": len(test)}
    _preimport(engine)

    def fit() -> tuple[PaDiM, float]:
        t0 = time.perf_counter()
        model = PaDiM(**params, engine=engine, batch_size=BATCH).fit(train)
        return model, len(train) / (time.perf_counter() - t0)

    def predict(model: PaDiM, images) -> float:
        t0 = time.perf_counter()
        model.predict(images)
        return len(images) / (time.perf_counter() - t0)

    reset_peak_rss()
    model, row["fit_ips"] = fit()
    row["fit_peak_mb"] = peak_rss_mb()
    row["engine_used"] = model.engine_for_device().describe()
    tmp = tempfile.TemporaryDirectory()
    saved = Path(tmp.name) / "m.safetensors"
    model.save(saved)
    row["model_mb"] = saved.stat().st_size / 1e6
    del model
    gc.collect()
    model = PaDiM.load(saved, engine=engine, batch_size=BATCH)  # predict as deployed: from the file
    model.predict(test[:BATCH])  # warm: compiled shapes
    floors = [taps_floor(model, engine, len(test))]  # right before predict, and again after batch-1
    reset_peak_rss()
    row["predict_ips"] = predict(model, test)
    row["predict_peak_mb"] = peak_rss_mb()
    row["predict_warm_ips"] = predict(model, test)  # again: the tail batch's size is compiled now
    for kind in ("png", "jpeg"):
        files = sorted(paths[kind].iterdir())
        row[f"{kind}_ips"] = predict(model, files)
    model.predict(test[:1])
    row["batch1_ms"] = batch1_ms(model, test)
    floors.append(taps_floor(model, engine, len(test)))
    # The higher of the two medians (the floor as before, never lower for a drift between them); the
    # whole-run figures, which count every slow batch as predict's total time does, for comparison.
    row["floor_ips"] = max(f[0] for f in floors)
    row["floor_sustained_ips"] = max(f[1] for f in floors)
    row["floor_way"] = max(floors)[2]
    row["d"], row["threads"] = model.embedding_dim_, torch.get_num_threads()
    tmp.cleanup()
    if contention:
        with Load():
            _, fit_loaded = fit()
            model.predict(test[:BATCH])
            predict_loaded = predict(model, test)
            batch1_loaded = batch1_ms(model, test)
        row["fit_contention"] = fit_loaded / row["fit_ips"]
        row["predict_contention"] = predict_loaded / row["predict_ips"]
        row["batch1_contention"] = row["batch1_ms"] / batch1_loaded  # a speed ratio, as the others
    return row


def before_worker(config: str, paths: dict[str, Path]) -> dict:
    """The same fit and predict with whatever torch-padim PYTHONPATH points at (an older checkout)."""
    import numpy as np

    import padim
    from padim import PaDiM
    from padim.plan import peak_rss_mb, reset_peak_rss

    train, test = np.load(paths["train"]), np.load(paths["test"])
    params = CONFIGS[config]
    _preimport("torch")
    reset_peak_rss()
    t0 = time.perf_counter()
    model = PaDiM(**params, batch_size=BATCH).fit(train)
    fit_ips = len(train) / (time.perf_counter() - t0)
    fit_peak = peak_rss_mb()
    tmp = tempfile.TemporaryDirectory()
    model.save(Path(tmp.name) / "m.safetensors")
    del model
    gc.collect()
    model = PaDiM.load(Path(tmp.name) / "m.safetensors", batch_size=BATCH)  # predict as deployed: from the file
    model.predict(test[:BATCH])
    reset_peak_rss()
    t0 = time.perf_counter()
    model.predict(test)
    predict_ips = len(test) / (time.perf_counter() - t0)
    predict_peak = peak_rss_mb()
    t0 = time.perf_counter()
    model.predict(test)
    return {"config": config, "engine": f"before ({Path(padim.__file__).parent.parent})", "fit_ips": fit_ips,
            "predict_ips": predict_ips, "fit_peak_mb": fit_peak, "predict_peak_mb": predict_peak,
            "predict_warm_ips": len(test) / (time.perf_counter() - t0)}


# ------------------------------------------------------------------------------ anomalib worker
def anomalib_worker(config: str, paths: dict[str, Path], weights: Path) -> dict:
    """anomalib 2.7.0's PadimModel on the same weights, channels and normalised tensors (anomalib's venv)."""
    import warnings

    import numpy as np
    import torch
    from safetensors.torch import load_file

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from anomalib.models.image.padim.torch_model import PadimModel

    from padim.plan import peak_rss_mb, reset_peak_rss
    from padim.data import Preprocess

    spec = json.loads((weights.with_suffix(".json")).read_text())
    pre = Preprocess()
    mean = torch.tensor(pre.mean).view(1, 3, 1, 1)
    std = torch.tensor(pre.std).view(1, 3, 1, 1)
    top, left, ch, cw = pre.crop_box()

    def normalised(u8: np.ndarray) -> torch.Tensor:  # 256x256 input: the resize is the identity
        x = torch.from_numpy(u8[:, top : top + ch, left : left + cw]).permute(0, 3, 1, 2).float().div_(255)
        return (x - mean) / std

    train, test = np.load(paths["train"]), np.load(paths["test"])
    reset_peak_rss()
    t0 = time.perf_counter()
    model = PadimModel(backbone=spec["timm_name"], layers=spec["layers"], pre_trained=False, n_features=len(spec["indices"]))
    extractor = model.feature_extractor.feature_extractor
    ours = load_file(str(weights))
    extractor.load_state_dict({k: ours[k] for k in extractor.state_dict()}, strict=True)
    model.idx = torch.tensor(spec["indices"], dtype=model.idx.dtype)
    model.train()
    for i in range(0, len(train), BATCH):
        model(normalised(train[i : i + BATCH]))
    model.fit()
    fit_s = time.perf_counter() - t0
    fit_peak = peak_rss_mb()
    model.eval()
    n_train = len(train)
    del train
    model.memory_bank = []  # whatever anomalib keeps after fit: predict is measured without it
    gc.collect()
    with torch.no_grad():
        model(normalised(test[:BATCH]))
        reset_peak_rss()
        t0 = time.perf_counter()
        scores = [model(normalised(test[i : i + BATCH])).pred_score.reshape(-1) for i in range(0, len(test), BATCH)]
        predict_s = time.perf_counter() - t0
    np.save(weights.with_name(f"anomalib-scores-{config}.npy"), torch.cat(scores).numpy())
    return {"config": config, "engine": "anomalib 2.7.0", "fit_ips": n_train / fit_s,
            "predict_ips": len(test) / predict_s, "fit_peak_mb": fit_peak, "predict_peak_mb": peak_rss_mb(),
            "threads": torch.get_num_threads()}


def shared_weights(config: str, cache: Path) -> Path:
    """The backbone weights and Rd channels of a config, written once for anomalib to load."""
    from safetensors.torch import save_file

    from padim import PaDiM

    path = cache / f"{config}-weights.safetensors"
    if not path.exists():
        model = PaDiM(**CONFIGS[config])
        model._init_network()
        bb = model.backbone_
        save_file({k: v.contiguous() for k, v in bb.extractor.model.state_dict().items()}, str(path))
        from padim.backbone import spec_for

        path.with_suffix(".json").write_text(json.dumps({
            "timm_name": spec_for(bb.name).timm_name, "layers": list(bb.layers),
            "indices": model.channel_indices_.tolist()}))
    return path


# ------------------------------------------------------------------------------ driver
def run(cmd: list[str], env: dict | None = None) -> dict | None:
    """Run a worker process; its last stdout line is JSON."""
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1", **(env or {})})
    if proc.returncode != 0:
        print(f"failed: {' '.join(cmd[-4:])}\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    """Markdown table of every row, with ratios to the fastest floor and to anomalib."""
    fastest = {}
    anomalib = {r["config"]: r for r in rows if r["engine"].startswith("anomalib")}
    for r in rows:
        if "floor_ips" in r:
            fastest[r["config"]] = max(fastest.get(r["config"], 0), r["floor_ips"])
    head = ("| config | engine | floor img/s | fit img/s | fit / fastest floor | predict img/s | predict / fastest floor "
            "| warm predict img/s | warm / fastest floor "
            "| PNG img/s | JPEG img/s | files / tensors | batch-1 ms | fit under load | predict under load "
            "| batch-1 under load "
            "| fit x anomalib | predict x anomalib | fit peak MB | predict peak MB |")
    lines = [head, "|" + "---|" * 20]

    def f(v, fmt=".1f"):
        return "-" if v is None else format(v, fmt)

    for r in rows:
        a, top = anomalib.get(r["config"]), fastest.get(r["config"])
        files = min(r["png_ips"], r["jpeg_ips"]) / r["predict_ips"] if "png_ips" in r else None
        lines.append(" | ".join([
            f"| {r['config']}", r["engine"], f(r.get("floor_ips")), f(r["fit_ips"]),
            f(r["fit_ips"] / top if top else None, ".2f"), f(r["predict_ips"]),
            f(r["predict_ips"] / top if top else None, ".2f"), f(r.get("predict_warm_ips")),
            f(r["predict_warm_ips"] / top if top and "predict_warm_ips" in r else None, ".2f"),
            f(r.get("png_ips")), f(r.get("jpeg_ips")),
            f(files, ".2f"), f(r.get("batch1_ms")), f(r.get("fit_contention"), ".2f"), f(r.get("predict_contention"), ".2f"),
            f(r.get("batch1_contention"), ".2f"),
            f(r["fit_ips"] / a["fit_ips"] if a and a is not r else None, ".1f"),
            f(r["predict_ips"] / a["predict_ips"] if a and a is not r else None, ".1f"),
            f(r.get("fit_peak_mb"), ".0f"), f(r.get("predict_peak_mb"), ".0f") + " |"]))
    return "\n".join(lines)


def targets(rows: list[dict]) -> str:
    """Issue 11's targets, met or not, from the rows of this run (auto's engine: openvino on the CPU)."""
    lines = ["| target | measured | met |", "|---|---|---|"]

    def add(name: str, value: float | None, ok: bool | None) -> None:
        lines.append(f"| {name} | {'-' if value is None else f'{value:.2f}'} | {'-' if ok is None else ('yes' if ok else 'no')} |")

    def row(config: str, engine: str) -> dict | None:
        return next((r for r in rows if r["config"] == config and r["engine"].startswith(engine)), None)

    for config in sorted({r["config"] for r in rows}):
        auto, anomalib, before = row(config, "openvino"), row(config, "anomalib"), row(config, "before")
        floors = [r["floor_ips"] for r in rows if r["config"] == config and "floor_ips" in r]
        if auto is None or not floors:
            continue
        top = max(floors)
        predict, fit = auto["predict_ips"] / top, auto["fit_ips"] / top
        warm = auto.get("predict_warm_ips", 0) / top
        if config == "lite0":
            add("lite0 predict >= 0.8x fastest floor", predict, predict >= 0.8)
            add("lite0 predict >= 0.8x fastest floor, second call (tail batch compiled)", warm, warm >= 0.8)
            add("lite0 fit >= 0.6x fastest floor", fit, fit >= 0.6)
            if anomalib:
                add("lite0 predict >= 5x anomalib", auto["predict_ips"] / anomalib["predict_ips"],
                    auto["predict_ips"] >= 5 * anomalib["predict_ips"])
                add("lite0 fit >= 3x anomalib", auto["fit_ips"] / anomalib["fit_ips"], auto["fit_ips"] >= 3 * anomalib["fit_ips"])
                for kind in ("fit", "predict"):
                    ratio = auto[f"{kind}_peak_mb"] / anomalib[f"{kind}_peak_mb"]
                    add(f"lite0 {kind} peak <= anomalib's (ratio)", ratio, ratio <= 1)
        if config == "r18-rd100":
            add("r18 predict >= 0.8x fastest floor", predict, predict >= 0.8)
            add("r18 predict >= 0.8x fastest floor, second call (tail batch compiled)", warm, warm >= 0.8)
            if anomalib:
                ratio = auto["predict_ips"] / anomalib["predict_ips"]
                add("r18 predict >= 2x anomalib", ratio, ratio >= 2)
        if config == "wr50-rd550" and before:
            for r in [x for x in rows if x["config"] == config and "floor_ips" in x]:
                for kind in ("fit", "predict"):
                    speed = r[f"{kind}_ips"] / before[f"{kind}_ips"]
                    size = r[f"{kind}_peak_mb"] / before[f"{kind}_peak_mb"]
                    add(f"wr50 {r['engine']} {kind} no slower than before (speed ratio)", speed, speed >= 1)
                    add(f"wr50 {r['engine']} {kind} no larger than before (peak ratio)", size, size <= 1)
        for kind in ("png", "jpeg"):
            if f"{kind}_ips" in auto:
                ratio = auto[f"{kind}_ips"] / auto["predict_ips"]
                add(f"{config} {kind.upper()} files >= 0.6x tensors", ratio, ratio >= 0.6)
        for kind in ("fit", "predict", "batch1"):
            if f"{kind}_contention" in auto:
                add(f"{config} {kind} under load >= 0.35x quiet", auto[f"{kind}_contention"], auto[f"{kind}_contention"] >= 0.35)
    return "\n".join(lines)


def config_round(config: str, paths: dict[str, Path], cache: Path, args: argparse.Namespace,
                 reverse: bool = False) -> list[dict]:
    """One round of a config: every engine's worker, the older checkout's and anomalib's (fresh processes),
    in that order or, with `reverse`, the other way round (whichever runs second was often faster)."""
    job = {"config": config, "paths": {k: str(v) for k, v in paths.items()}, "contention": not args.no_contention}
    workers = [([sys.executable, __file__, "--cache", str(cache), "--worker",
                 json.dumps({**job, "kind": "padim", "engine": engine})], None) for engine in args.engines.split(",")]
    if args.before:
        workers.append(([sys.executable, __file__, "--worker", json.dumps({**job, "kind": "before"})],
                        {"PYTHONPATH": str(Path(args.before).resolve())}))
    if args.anomalib_python:
        weights = shared_weights(config, cache)
        workers.append(([args.anomalib_python, __file__, "--worker",
                         json.dumps({**job, "kind": "anomalib", "weights": str(weights)})], None))
    rows = []
    for cmd, env in reversed(workers) if reverse else workers:
        row = run(cmd, env=env)
        if row:
            rows.append(row)
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    return rows


def medians(rounds: list[list[dict]]) -> list[dict]:
    """One row per (config, engine): each number the median over the rounds, with fit/predict's range kept."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for rows in rounds:
        for row in rows:
            groups.setdefault((row["config"], row["engine"]), []).append(row)
    out = []
    for runs in groups.values():
        row = dict(runs[0])
        for key, value in runs[0].items():
            values = [r[key] for r in runs if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)]
            if isinstance(value, (int, float)) and not isinstance(value, bool) and values:
                row[key] = statistics.median(values)
        row["rounds"] = len(runs)
        for key in ("fit_ips", "predict_ips"):
            if all(isinstance(r.get(key), (int, float)) for r in runs):
                row[f"{key}_range"] = [min(r[key] for r in runs), max(r[key] for r in runs)]
        out.append(row)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="lite0,r18-rd100")
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--n", type=int, default=400, help="training images")
    parser.add_argument("--n-test", type=int, default=200, help="test images")
    parser.add_argument("--cache", default="/tmp/padim-speed")
    parser.add_argument("--out", default=str(HERE / "results" / "engines.json"))
    parser.add_argument("--no-contention", action="store_true")
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds of every worker, interleaved; each figure is then the median of the rounds")
    parser.add_argument("--anomalib-python", help="python of an environment with anomalib 2.7.0 (+ torch-padim)")
    parser.add_argument("--before", help="a checkout of an older torch-padim to run beside (its repository root)")
    parser.add_argument("--report", action="store_true", help="print the table and targets of the saved results only")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    cache = Path(args.cache)
    if args.report:
        saved = json.loads(Path(args.out).read_text())["rows"]
        print(table(saved))
        print(targets(saved))
        return
    if args.worker:
        job = json.loads(args.worker)
        paths = {k: Path(v) for k, v in job["paths"].items()}
        if job["kind"] == "padim":
            print(json.dumps(padim_worker(job["config"], job["engine"], paths, job["contention"])))
        elif job["kind"] == "before":
            print(json.dumps(before_worker(job["config"], paths)))
        else:
            print(json.dumps(anomalib_worker(job["config"], paths, Path(job["weights"]))))
        return
    paths = make_images(cache, args.n, args.n_test)
    rounds: list[list[dict]] = [[] for _ in range(args.repeat)]
    for config in args.configs.split(","):
        for i, rows in enumerate(rounds):  # round by round, so that a drift of the machine's speed reaches every worker alike
            rows += config_round(config, paths, cache, args, reverse=i % 2 == 1)
    rows = medians(rounds) if args.repeat > 1 else rounds[0]
    print(table(rows))
    print(targets(rows))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(out.read_text()) if out.exists() else {}
    previous = previous if isinstance(previous.get("rows", [None])[0], dict) and "engine" in previous["rows"][0] else {}
    merged = {f"{r['config']}|{r['engine']}": r for r in previous.get("rows", [])}
    merged.update({f"{r['config']}|{r['engine']}": r for r in rows})
    out.write_text(json.dumps({"rows": list(merged.values())}, indent=2))


if __name__ == "__main__":
    main()
