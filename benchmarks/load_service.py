"""Load test of `padim serve`, on 127.0.0.1 only, bounded in requests and time.

Starts `padim serve MODEL` in a subprocess on a free port of 127.0.0.1, sends REQUESTS uploads from
CONCURRENCY client threads (after a short warm-up), and prints latency percentiles, throughput, the
batch sizes the server formed, errors (must be 0) and the server's resident memory before and after.
Exits 1 when any request failed or the time budget ran out.

    python benchmarks/load_service.py                      # fits a demo model (efficientnet_lite0) first
    python benchmarks/load_service.py model.safetensors --images good_parts/ --requests 200 --concurrency 16
    python benchmarks/load_service.py --tiny               # random-weight ResNet18 at 64x64: seconds
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

HOST = "127.0.0.1"  # never anything else: this script only talks to the machine it runs on


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    """Resident memory of a process from /proc, in MiB (VmRSS now, VmHWM peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def demo_model(folder: Path, tiny: bool) -> tuple[Path, list[Path]]:
    """Fit a small calibrated model on brick textures; return it with the test images to send."""
    from padim import PaDiM
    from padim.evaluation.synthetic import make_inspection_set

    root = make_inspection_set(folder, "brick", n_train=40, n_test_good=10, n_test_defect=20, size=192, seed=0)
    if tiny:
        params = dict(backbone="resnet18", weights="random", image_size=64, crop_size=None, n_features=32)
    else:
        params = {}  # the defaults: efficientnet_lite0 with its ImageNet weights, resize 256, crop 224
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few hold-out images for a 1% FPR: fine for a load test
        model = PaDiM(**params, holdout=0.2).fit(root / "train" / "good")
    path = folder / "model.safetensors"
    model.save(path)
    return path, sorted((root / "test").glob("*/*.png"))


def start_server(model: Path, log: Path, max_batch: int, timeout: float) -> tuple[subprocess.Popen, str]:
    """`padim serve` on a free port of 127.0.0.1; returns the process and its base URL."""
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "padim.cli", "serve", str(model), "--host", HOST, "--port", "0", "-q",
             "--max-batch", str(max_batch), "--max-uploads-per-client", "256"],  # all its clients are 127.0.0.1
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        for line in log.read_text().splitlines():
            if f"listening on http://{HOST}:" in line:
                url = line.split("listening on ")[1].split("/ ")[0]
                with httpx.Client(base_url=url, timeout=10) as c:
                    for _ in range(100):
                        try:
                            if c.get("/health").status_code == 200:
                                return proc, url
                        except httpx.TransportError:
                            time.sleep(0.05)
        time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"the server did not start within {timeout:.0f} s:\n{log.read_text()[-2000:]}")


def run_load(url: str, payloads: list[tuple[str, bytes]], n_requests: int, concurrency: int, overlay_every: int,
             deadline: float) -> list[dict]:
    """N requests from `concurrency` threads, each with its own connection; stops at the deadline."""
    results: list[dict] = []
    lock = threading.Lock()
    counter = itertools.count()

    def client() -> None:
        with httpx.Client(base_url=url, timeout=60) as c:
            while True:
                with lock:
                    i = next(counter)
                if i >= n_requests or time.monotonic() > deadline:
                    return
                name, data = payloads[i % len(payloads)]
                overlay = overlay_every > 0 and i % overlay_every == 0
                t0 = time.perf_counter()
                record = {"i": i, "overlay": overlay}
                try:
                    r = c.post("/predict", params={"overlay": "true"} if overlay else None,
                               files={"file": (name, data, "image/png")},
                               timeout=max(0.1, min(60.0, deadline - time.monotonic())))
                    record["status"] = r.status_code
                    if r.status_code == 200:
                        body = r.json()
                        record.update(batch_size=body["batch_size"], queue_ms=body["timing_ms"]["queue"],
                                      inference_ms=body["timing_ms"]["inference"])
                        if overlay and not body.get("overlay_png_base64"):
                            record["status"] = "no overlay"
                    else:
                        record["error"] = r.text[:200]
                except httpx.HTTPError as exc:
                    record["status"], record["error"] = type(exc).__name__, str(exc)[:200]
                record["latency_ms"] = (time.perf_counter() - t0) * 1000
                with lock:
                    results.append(record)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()) + 65)
    return sorted(results, key=lambda r: r["i"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", help="model file (default: fit a demo model first)")
    parser.add_argument("--images", help="folder of images to send (default: the demo test images)")
    parser.add_argument("--tiny", action="store_true", help="demo model: random ResNet18 at 64x64 instead of Lite0")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=16, help="requests sent first, not counted")
    parser.add_argument("--overlay-every", type=int, default=4, help="every Nth request asks for the overlay (0: none)")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=300, help="time budget for the whole load, in seconds")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if not (1 <= args.requests <= 100_000 and 1 <= args.concurrency <= 256 and 0 < args.timeout <= 3600):
        parser.error("--requests 1..100000, --concurrency 1..256 and --timeout up to 3600 s")

    with tempfile.TemporaryDirectory(prefix="padim-load-") as tmp:
        work = Path(tmp)
        if args.model:
            from padim.images import list_images

            if not args.images:
                parser.error("give --images DIR with a model file")
            model, images = Path(args.model), list_images(args.images)
        else:
            t0 = time.perf_counter()
            model, images = demo_model(work, args.tiny)
            print(f"fitted the demo model in {time.perf_counter() - t0:.1f} s", flush=True)
        if args.images and not args.model:
            from padim.images import list_images

            images = list_images(args.images)
        payloads = [(p.name, p.read_bytes()) for p in images]

        proc, url = start_server(model, work / "server.log", args.max_batch, timeout=120)
        try:
            health = httpx.get(f"{url}/health", timeout=10).json()
            pid = proc.pid
            rss_start = rss_mib(pid)
            warm = run_load(url, payloads, args.warmup, min(args.concurrency, args.warmup), args.overlay_every,
                            time.monotonic() + 120) if args.warmup else []
            rss_before = rss_mib(pid)
            t0 = time.perf_counter()
            results = run_load(url, payloads, args.requests, args.concurrency, args.overlay_every,
                               time.monotonic() + args.timeout)
            elapsed = time.perf_counter() - t0
            rss_after, rss_peak = rss_mib(pid), rss_mib(pid, "VmHWM")
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()

    ok = [r for r in results if r["status"] == 200]
    errors = [r for r in results if r["status"] != 200] + [r for r in warm if r["status"] != 200]
    missing = args.requests - len(results)
    lat = np.array([r["latency_ms"] for r in ok]) if ok else np.array([float("nan")])
    batches = Counter(r["batch_size"] for r in ok)
    figures = {
        "server": {k: health.get(k) for k in ("model", "n_features", "image_size", "crop_size", "calibrated")},
        "requests": args.requests, "concurrency": args.concurrency, "overlay_every": args.overlay_every,
        "max_batch": args.max_batch, "completed": len(results), "ok": len(ok), "errors": len(errors),
        "not_sent": missing, "seconds": round(elapsed, 3), "throughput_rps": round(len(ok) / elapsed, 2),
        "latency_ms": {f"p{q}": round(float(np.percentile(lat, q)), 1) for q in (50, 90, 99)}
        | {"mean": round(float(lat.mean()), 1), "max": round(float(lat.max()), 1)},
        "server_ms_median": {k: round(statistics.median(r[k] for r in ok), 1) if ok else None
                             for k in ("queue_ms", "inference_ms")},
        "batch_sizes": dict(sorted(batches.items())),
        "mean_batch_size": round(sum(k * v for k, v in batches.items()) / max(1, len(ok)), 2),
        "rss_mib": {"start": round(rss_start, 1), "after_warmup": round(rss_before, 1),
                    "after_load": round(rss_after, 1), "growth": round(rss_after - rss_before, 1),
                    "peak": round(rss_peak, 1)},
        "cpus": os.cpu_count(),
    }
    s = figures["server"]
    print(f"server    {s['model']}, {s['n_features']} features, input {s['crop_size'] or s['image_size']}, "
          f"calibrated {s['calibrated']}, {url} (pid {pid}), {figures['cpus']} CPUs")
    print(f"load      {args.requests} requests, {args.concurrency} concurrent clients, "
          f"{len(payloads)} distinct images, overlay on every {args.overlay_every}th, max batch {args.max_batch}")
    print(f"result    {len(ok)} ok, {len(errors)} errors, {missing} not sent, in {elapsed:.2f} s "
          f"-> {figures['throughput_rps']} requests/s")
    L = figures["latency_ms"]
    print(f"latency   p50 {L['p50']} ms, p90 {L['p90']} ms, p99 {L['p99']} ms (mean {L['mean']}, max {L['max']})")
    print(f"server    median queue {figures['server_ms_median']['queue_ms']} ms, median batch inference "
          f"{figures['server_ms_median']['inference_ms']} ms; batch sizes {figures['batch_sizes']} "
          f"(mean {figures['mean_batch_size']})")
    R = figures["rss_mib"]
    print(f"memory    server RSS {R['start']} MiB at start, {R['after_warmup']} after warm-up, "
          f"{R['after_load']} after the load (growth {R['growth']:+} MiB), peak {R['peak']} MiB")
    for r in errors[:5]:
        print(f"error     request {r['i']}: {r['status']} {r.get('error', '')}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 1 if errors or missing else 0


if __name__ == "__main__":
    sys.exit(main())
