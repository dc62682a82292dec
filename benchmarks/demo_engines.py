"""The demo's image and pixel AUROC with every engine, beside an older checkout's ("before").

    python benchmarks/demo_engines.py --before /tmp/padim-before

Each run is `padim.evaluation.demo.run_demo` (brick, grass, gravel; 60 good training crops, 20 good + 40 defective
test images each, Lite0 with its real weights) in its own process, with PaDiM's engine set through
padim.model.PaDiM's default; "before" runs the same function from the checkout given. Prints every
figure and the largest difference to "before", and writes results/demo_engines.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ENGINES = ("torch", "torch-fast", "onnxruntime", "openvino")


def worker(engine: str | None) -> list[dict]:
    """Run the demo in this process (engine None: whatever PaDiM does by default in this checkout)."""
    import functools

    import padim.evaluation.demo
    from padim.model import PaDiM

    if engine is not None:
        padim.evaluation.demo.PaDiM = functools.partial(PaDiM, engine=engine)  # type: ignore[attr-defined]
    with tempfile.TemporaryDirectory() as tmp:
        return [{"texture": r.texture, "image_auroc": r.image_auroc, "pixel_auroc": r.pixel_auroc}
                for r in padim.evaluation.demo.run_demo(tmp)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", help="repository root of an older torch-padim")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        print(json.dumps(worker(None if args.worker == "default" else args.worker)))
        return
    runs = {}
    jobs = [(e, e, {}) for e in ENGINES]
    if args.before:
        jobs.insert(0, ("before", "default", {"PYTHONPATH": str(Path(args.before).resolve())}))
    for label, engine, env in jobs:
        proc = subprocess.run([sys.executable, __file__, "--worker", engine], capture_output=True, text=True,
                              env={**os.environ, "TQDM_DISABLE": "1", **env})
        if proc.returncode != 0:
            print(f"{label} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        runs[label] = json.loads(proc.stdout.strip().splitlines()[-1])
    print("| run | " + " | ".join(f"{r['texture']} image / pixel AUROC" for r in next(iter(runs.values()))) +
          " | max diff to before |")
    print("|---" * (len(next(iter(runs.values()))) + 2) + "|")
    base = runs.get("before")
    for label, rows in runs.items():
        diff = max(max(abs(r["image_auroc"] - b["image_auroc"]), abs(r["pixel_auroc"] - b["pixel_auroc"]))
                   for r, b in zip(rows, base)) if base else None
        cells = " | ".join(f"{r['image_auroc']:.6f} / {r['pixel_auroc']:.6f}" for r in rows)
        print(f"| {label} | {cells} | {'-' if diff is None else f'{diff:.1e}'} |")
    out = HERE / "results" / "demo_engines.json"
    out.write_text(json.dumps(runs, indent=2))


if __name__ == "__main__":
    main()
