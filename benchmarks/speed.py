"""Speed, memory and model size of torch-padim: backbone-only floor, fit, predict, peak RSS, file sizes.

    python benchmarks/speed.py                                  # r18-rd100, wr50-rd550, lite0 at N=100
    python benchmarks/speed.py --configs r18-rd100 --n 100,1000
    python benchmarks/speed.py --half-check                     # float16 model file vs float32 on the demo data
    python benchmarks/speed.py --anomalib-python /work/anomalib-venv/bin/python   # + anomalib side by side

With --anomalib-python (an environment where anomalib 2.7.0 is importable; see anomalib_side.py), the
ResNet configurations also run anomalib's PaDiM torch model on the same weights, Rd channels and
images (anomalib_side.measure: fresh processes, peak memory per run) and print its fit time, predict
time and peak memory beside torch-padim's, with ratios.

Every (config, N) runs in a fresh process so peak resident memory (VmHWM) is its own. Images are
synthetic 224x224 crops of scikit-image textures written to disk once (fit reads them from files,
so the inputs do not sit in memory). ResNet weights are random here (no ImageNet download on this
machine): labelled as such; speed and memory do not depend on the weights' values.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIGS = {
    "r18-rd100": dict(backbone="resnet18", n_features=100, weights="random"),
    "wr50-rd550": dict(backbone="wide_resnet50_2", n_features=550, weights="random"),
    "lite0": dict(backbone="efficientnet_lite0", n_features="all", weights=None),
}
N_PREDICT = 100
SIZE = 224


def make_images(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """n synthetic 224x224 RGB texture crops with noise, written once and reused."""
    import numpy as np
    from PIL import Image
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{i:05d}.png" for i in range(n)]
    if all(p.exists() for p in paths):
        return paths
    rng = np.random.default_rng(seed)
    textures = [data.brick(), data.grass(), data.gravel()]
    for i, path in enumerate(paths):
        tex = textures[i % 3]
        y, x = rng.integers(0, tex.shape[0] - SIZE, size=2)
        crop = tex[y : y + SIZE, x : x + SIZE].astype(np.float32)
        rgb = np.stack([crop * rng.uniform(0.9, 1.1) for _ in range(3)], axis=2) + rng.normal(0, 4, (SIZE, SIZE, 3))
        Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(path, compress_level=1)
    return paths


def worker(config: str, n: int, cache: Path) -> dict:
    """Measure one configuration at one N (run in its own process)."""
    import torch

    from padim import PaDiM
    from padim.benchmark import peak_rss_mb as peak_mb
    from padim.benchmark import reset_peak_rss as peak_reset

    params = CONFIGS[config]
    train = make_images(cache / "train", n)
    test = make_images(cache / "test", N_PREDICT, seed=1)
    model = PaDiM(**params, image_size=SIZE, crop_size=None, batch_size=32)
    model._init_network()
    batch = torch.randn(32, 3, SIZE, SIZE)
    with torch.no_grad():
        model.net_.extractor(batch)  # warm-up
        t0 = time.perf_counter()
        for _ in range(max(1, n // 32)):
            model.net_.extractor(batch)
        backbone_ips = 32 * max(1, n // 32) / (time.perf_counter() - t0)
    peak_reset()
    t0 = time.perf_counter()
    model.fit(train)
    fit_s = time.perf_counter() - t0
    fit_peak = peak_mb()
    peak_reset()
    t0 = time.perf_counter()
    model.predict(test)
    predict_s = time.perf_counter() - t0
    predict_peak = peak_mb()
    out = cache / f"{config}.safetensors"
    model.save(out)
    size_mb = out.stat().st_size / 1e6
    model.save(out, half=True)
    half_mb = out.stat().st_size / 1e6
    out.unlink()
    return {
        "config": config, "n": n, "weights": "random" if params["weights"] == "random" else "imagenet",
        "d": model.embedding_dim_, "positions": model.feature_shape_[0] * model.feature_shape_[1],
        "backbone_ips": backbone_ips, "fit_ips": n / fit_s, "predict_ips": N_PREDICT / predict_s,
        "fit_s": fit_s, "predict_s": predict_s, "fit_peak_mb": fit_peak, "predict_peak_mb": predict_peak,
        "model_mb": size_mb, "half_model_mb": half_mb, "threads": torch.get_num_threads(),
    }


def half_check() -> dict:
    """Image and pixel AUROC of the demo data with the float32 and the float16 model file."""
    import tempfile

    import numpy as np
    from PIL import Image

    from padim import PaDiM
    from padim.metrics import image_auroc, pixel_auroc
    from padim.synthetic import TEXTURES, load_split, make_inspection_set

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for texture in TEXTURES:
            train, test, masks = load_split(make_inspection_set(tmp, texture, 60, 20, 40, seed=0))
            model = PaDiM().fit(train)
            gt = [model.preprocess_.mask(np.asarray(Image.open(m))) if m else np.zeros((224, 224), bool) for m in masks]
            labels = [m is not None for m in masks]
            row = {"texture": texture}
            for name, half in (("float32", False), ("float16", True)):
                path = Path(tmp) / f"{texture}-{name}.safetensors"
                model.save(path, half=half)
                pred = PaDiM.load(path).predict(test)
                row[name] = {"image_auroc": image_auroc(labels, pred.scores), "pixel_auroc": pixel_auroc(gt, pred.maps),
                             "mb": path.stat().st_size / 1e6}
            rows.append(row)
    return {"half_check": rows}


def anomalib_rows(configs: list[str], sizes: list[int], python: str, cache: Path) -> list[dict]:
    """anomalib_side.measure for every ResNet configuration and N (torch-padim and anomalib, same inputs)."""
    sys.path.insert(0, str(HERE))
    import anomalib_side

    if not anomalib_side.has_anomalib(python):
        print(f"anomalib is not importable from {python}: no side-by-side columns", file=sys.stderr)
        return []
    rows = []
    for config in [c for c in configs if c in anomalib_side.CONFIGS]:
        for n in sizes:
            rows.append(anomalib_side.measure(config, n, cache / "anomalib-side", python, repeat=1))
            print(anomalib_side.table(rows[-1:]).splitlines()[-1], flush=True)
    print(anomalib_side.table(rows))
    return rows


def targets(rows: list[dict], side: list[dict]) -> str:
    """The issue's targets, met or not, from the measured rows."""
    lines = ["| target | measured | met |", "|---|---|---|"]

    def add(name: str, value: float | None, ok: bool | None, fmt: str = ".2f") -> None:
        lines.append(f"| {name} | {'-' if value is None else format(value, fmt)} | {'-' if ok is None else ('yes' if ok else 'no')} |")

    for r in rows:
        tag = f"{r['config']} N={r['n']}"
        pred = r["predict_ips"] / r["backbone_ips"]
        floor = {"r18-rd100": 0.90, "wr50-rd550": 0.75}.get(r["config"])
        if floor:
            add(f"{tag}: predict >= {floor}x backbone-only", pred, pred >= floor)
        if r["config"] == "r18-rd100":
            fit = r["fit_ips"] / r["backbone_ips"]
            add(f"{tag}: fit >= 0.85x backbone-only", fit, fit >= 0.85)
        if r["config"] == "wr50-rd550":
            add(f"{tag}: model <= 2 GB (MB)", r["model_mb"], r["model_mb"] <= 2000, ".0f")
            add(f"{tag}: float16 model <= 1 GB (MB)", r["half_model_mb"], r["half_model_mb"] <= 1000, ".0f")
    by_config: dict[str, dict[int, dict]] = {}
    for r in rows:
        by_config.setdefault(r["config"], {})[r["n"]] = r
    for config, sizes in by_config.items():
        if 100 in sizes and 1000 in sizes:
            growth = sizes[1000]["fit_peak_mb"] / sizes[100]["fit_peak_mb"] - 1
            add(f"{config}: fit peak N=1000 within 10% of N=100 (growth)", growth, growth <= 0.10, "+.1%")
    for row in side:
        p, a = row.get("padim") or {}, row.get("anomalib") or {}
        if p.get("fit_s") and a.get("fit_s"):
            add(f"{row['config']} N={row['n']}: fit >= 3x faster than anomalib", a["fit_s"] / p["fit_s"], a["fit_s"] >= 3 * p["fit_s"])
            ratio = p["fit_peak_mb"] / a["fit_peak_mb"]
            add(f"{row['config']} N={row['n']}: fit peak <= 1/3 of anomalib's", ratio, ratio <= 1 / 3)
    return "\n".join(lines)


def table(rows: list[dict]) -> str:
    head = ("| config | weights | N | d | backbone img/s | fit img/s | fit/backbone | predict img/s | predict/backbone "
            "| fit peak MB | predict peak MB | model MB | float16 MB |")
    lines = [head, "|" + "---|" * 13]
    for r in rows:
        lines.append(
            f"| {r['config']} | {r['weights']} | {r['n']} | {r['d']} | {r['backbone_ips']:.1f} | {r['fit_ips']:.1f} | "
            f"{r['fit_ips'] / r['backbone_ips']:.2f} | {r['predict_ips']:.1f} | {r['predict_ips'] / r['backbone_ips']:.2f} | "
            f"{r['fit_peak_mb']:.0f} | {r['predict_peak_mb']:.0f} | {r['model_mb']:.0f} | {r['half_model_mb']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="r18-rd100,wr50-rd550,lite0")
    parser.add_argument("--n", default="100", help="comma-separated training set sizes")
    parser.add_argument("--cache", default="/tmp/padim-speed-images")
    parser.add_argument("--out", default=str(HERE / "results" / "speed.json"))
    parser.add_argument("--half-check", action="store_true")
    parser.add_argument("--anomalib-python", help="python of an environment with anomalib: side-by-side columns")
    parser.add_argument("--worker", nargs=2, metavar=("CONFIG", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), Path(args.cache))))
        return
    if args.half_check:
        result = half_check()
        print(json.dumps(result, indent=2))
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).with_name("half_check.json").write_text(json.dumps(result, indent=2))
        return
    rows = []
    for config in args.configs.split(","):
        for n in [int(v) for v in args.n.split(",")]:
            run = subprocess.run([sys.executable, __file__, "--worker", config, str(n), "--cache", args.cache],
                                 capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
            if run.returncode != 0:
                print(f"{config} N={n} failed:\n{run.stderr[-3000:]}", file=sys.stderr)
                continue
            rows.append(json.loads(run.stdout.strip().splitlines()[-1]))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    print(table(rows))
    side = anomalib_rows(args.configs.split(","), [int(v) for v in args.n.split(",")], args.anomalib_python,
                         Path(args.cache)) if args.anomalib_python else []
    print(targets(rows, side))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"rows": rows, "anomalib_side": side}, indent=2))


if __name__ == "__main__":
    main()
