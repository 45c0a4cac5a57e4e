"""Throughput of ``anti-i2v protect --ray``: photos per minute with 1 and 2 workers (or any list), in one run.

Each round protects the same photos once per worker count (interleaved, ``--overwrite``), through the real CLI on
Ray, and reads the run's manifest: throughput = photos of work done between the moment the last worker was up and
the last photo finished, per minute, so worker start-up (model loading, once per worker) is excluded; start-up is
reported separately. Prints JSON with the
median over rounds per worker count and the ratio of each to the first.

Usage (this machine, tiny random models, a local Ray cluster):
    python bench/scale.py [--photos 8] [--size 64] [--steps 6] [--rounds 3] [--workers 1,2] [--cpus-per-worker 1]
On a real cluster (every node sees --work at the same path; `ray start --head` / `ray start --address` done):
    python bench/scale.py --ray auto --model /shared/models/CogVideoX-5b-I2V --work /shared/bench \
        --photos 64 --size 720 --steps 200 --workers 1,8 --rounds 1   (GPU workers: one GPU each)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path


def _photos(folder: Path, n: int, size: int) -> None:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        h, w = size, size * 4 // 3
        # smooth random photo-like content (a few low-frequency blobs), not white noise
        y, x = np.mgrid[0:h, 0:w] / max(h, w)
        img = np.zeros((h, w, 3))
        for _ in range(6):
            cy, cx, s = rng.random(3)
            img += rng.random(3) * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (0.05 + 0.2 * s))[..., None]
        img = (255 * img / img.max()).astype(np.uint8)
        Image.fromarray(img).save(folder / f"photo{i:03d}.png")


def _one_run(src: Path, out: Path, workers: int, a) -> dict:
    from anti_i2v.cli import main

    argv = ["protect", str(src), "--out", str(out), "--steps", str(a.steps), "--quiet", "--overwrite",
            "--ray", a.ray, "--workers", str(workers)]
    if a.cpus_per_worker:
        argv += ["--cpus-per-worker", str(a.cpus_per_worker)]
    argv += ["--model", a.model] if a.model else ["--demo"]
    t0 = time.time()
    rc = main(argv)
    wall = time.time() - t0
    m = json.loads((out / "manifest.json").read_text())
    done = [p for p in m["photos"] if p["status"] == "done"]
    if rc != 0 or len(done) != a.photos:
        raise SystemExit(f"run with {workers} worker(s) failed (exit {rc}): {m['counts']}")
    # the window where every worker is up: photos of work done in it (a photo straddling its start counts
    # for the part inside), per minute
    t0 = max(w["ready"] for w in m["workers"])
    last = max(p["finished"] for p in done)
    if last - t0 < 1e-3:
        raise SystemExit(f"every photo finished before all {workers} workers were up: raise --photos")
    work = sum(max(0.0, p["finished"] - max(p["started"], t0)) / max(1e-6, p["finished"] - p["started"])
               for p in done)
    return {
        "photos_per_min": round(work / (last - t0) * 60.0, 2),
        "photos_in_window": round(work, 2),
        "startup_s": round(t0 - m["started"], 2),
        "wall_s": round(wall, 2),
        "median_s_per_photo": round(statistics.median(p["seconds"] for p in done), 3),
        # the driver's cost per photo: dispatch to result, less the worker's own time for the photo
        "overhead_ms_median": round(1000 * statistics.median(p["finished"] - p["started"] - p["seconds"]
                                                              for p in done), 1),
        "per_worker": {w["id"]: w["done"] for w in m["workers"]},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=8)
    ap.add_argument("--size", type=int, default=64, help="photo height in pixels (width 4/3 of it)")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", default="1,2", help="comma-separated worker counts (default 1,2)")
    ap.add_argument("--ray", default="local", help="'local' (default) or a cluster address ('auto')")
    ap.add_argument("--cpus-per-worker", type=int, default=1,
                    help="cores per worker on CPU (default 1: each worker has the same resources, so the ratio "
                         "shows how throughput scales with workers; 0 = the CLI's default)")
    ap.add_argument("--model", help="real model folder on the shared path (default: tiny demo models)")
    ap.add_argument("--work", help="folder for photos and outputs (on a cluster: a shared path)")
    ap.add_argument("--out", help="also write the JSON here")
    a = ap.parse_args()
    counts = [int(c) for c in a.workers.split(",")]

    import ray

    if a.ray == "local":
        ray.init(num_cpus=max(max(counts), os.cpu_count() or 1), include_dashboard=False,
                 logging_level=logging.WARNING)
    else:
        ray.init(address=a.ray, logging_level=logging.WARNING)
    res = ray.cluster_resources()
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="anti-i2v-scale-"))
    src = work / "photos"
    _photos(src, a.photos, a.size)
    runs: dict[int, list[dict]] = {c: [] for c in counts}
    for r in range(a.rounds):
        for c in counts:
            runs[c].append(_one_run(src, work / f"out-{c}", c, a))
            print(f"round {r + 1}/{a.rounds}, {c} worker(s): {runs[c][-1]}", flush=True)
    ray.shutdown()
    med = {c: statistics.median(x["photos_per_min"] for x in runs[c]) for c in counts}
    result = {
        "machine": {"cpus": os.cpu_count(), "cluster_cpus": res.get("CPU"), "cluster_gpus": res.get("GPU", 0),
                    "platform": platform.platform(), "python": platform.python_version()},
        "setup": {"cpus_per_worker": a.cpus_per_worker, "photos": a.photos, "size": [a.size, a.size * 4 // 3],
                  "steps": a.steps, "rounds": a.rounds,
                  "model": a.model or "tiny demo (cogvideox, random weights)", "ray": a.ray},
        "photos_per_min_median": {str(c): round(v, 2) for c, v in med.items()},
        "ratio_to_first": {str(c): round(med[c] / med[counts[0]], 3) for c in counts},
        "startup_s_median": {str(c): statistics.median(x["startup_s"] for x in runs[c]) for c in counts},
        "overhead_ms_median": {str(c): statistics.median(x["overhead_ms_median"] for x in runs[c]) for c in counts},
        "runs": {str(c): runs[c] for c in counts},
    }
    text = json.dumps(result, indent=2)
    print(text)
    if a.out:
        Path(a.out).write_text(text)


if __name__ == "__main__":
    main()
