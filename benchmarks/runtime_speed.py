"""Throughput of padim-runtime against the full package: the same bundle's model, the same images, one machine.

Fits Lite0 (real weights) on good brick crops of 192 px (paper preprocessing 256 -> 224), saves the model and
exports its bundle, then times, in fresh processes one after the other and alternating, `PaDiM.predict`
(original-size maps) and `padim_runtime.load(bundle).predict` on the same N decoded images held in memory
(decoding excluded from both). Prints img/s per repeat, the medians, their ratio and the largest score
difference; writes benchmarks/results/runtime_speed.json.

    PYTHONPATH=runtime python benchmarks/runtime_speed.py                  # N = 96, 3 repeats: ~3 min on 2 CPUs
    python benchmarks/runtime_speed.py --runtime-python /path/to/torch-free/venv/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent


def build(work: Path, n: int, train: int, seed: int) -> None:
    """Fit, save and export; the test images' paths in work/images.json."""
    from padim import PaDiM
    from padim.deployment.bundle import export_bundle
    from padim.evaluation.synthetic import load_split, make_inspection_set

    root = make_inspection_set(work / "data", "brick", n_train=train, n_test_good=n, n_test_defect=0, size=192,
                               seed=seed)
    files, test, _ = load_split(root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few hold-out images for a 1% FPR: irrelevant to speed
        model = PaDiM(holdout=0.25, seed=seed).fit(files)
    model.save(work / "model.safetensors")
    export_bundle(model, work / "bundle")
    (work / "images.json").write_text(json.dumps([str(p) for p in test]))


def worker(kind: str, work: Path) -> None:
    """Time one predict over the images and print {"ips": ..., "scores": [...]} as JSON."""
    import numpy as np
    from PIL import Image

    images = [np.asarray(Image.open(p).convert("RGB")) for p in json.loads((work / "images.json").read_text())]
    if kind == "full":
        from padim import PaDiM
        model = PaDiM.load(work / "model.safetensors")
        model.predict(images[:8], original_size=True)  # warm-up: engine compiled, threads started
        start = time.perf_counter()
        scores = model.predict(images, original_size=True).scores.tolist()
    else:
        import padim_runtime
        predictor = padim_runtime.load(work / "bundle")
        predictor.predict(images[:8])
        start = time.perf_counter()
        scores = [r.score for r in predictor.predict(images)]
    print(json.dumps({"ips": len(images) / (time.perf_counter() - start), "scores": scores}))


def measure(kind: str, python: str, work: Path) -> dict:
    """One fresh worker process's figures."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent / "runtime"), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([python, __file__, "--worker", kind, "--work", str(work)], capture_output=True, text=True,
                         env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    """Build once, then alternate the two workers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=96, help="test images (default 96)")
    parser.add_argument("--train", type=int, default=100, help="training images (default 100)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runtime-python", default=sys.executable, help="python of the runtime's environment")
    parser.add_argument("--worker", choices=["full", "runtime"], help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.work)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        build(work, args.n, args.train, args.seed)
        rows: dict[str, list[float]] = {"full": [], "runtime": []}
        scores: dict[str, list[float]] = {}
        for r in range(args.repeats):
            for kind, python in (("full", sys.executable), ("runtime", args.runtime_python)):
                got = measure(kind, python, work)
                rows[kind].append(got["ips"])
                scores[kind] = got["scores"]
                print(f"repeat {r + 1}: {kind:8s} {got['ips']:6.1f} img/s", flush=True)
    full, runtime = statistics.median(rows["full"]), statistics.median(rows["runtime"])
    worst = max(abs(a - b) / abs(b) for a, b in zip(scores["runtime"], scores["full"]))
    print(f"median: full package {full:.1f} img/s, padim-runtime {runtime:.1f} img/s, ratio {runtime / full:.2f}; "
          f"largest relative score difference {worst:.1e} over {len(scores['full'])} images")
    result = {"n": args.n, "train": args.train, "full_ips": rows["full"], "runtime_ips": rows["runtime"],
              "ratio": runtime / full, "max_relative_score_difference": worst, "cpus": os.cpu_count()}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "runtime_speed.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
