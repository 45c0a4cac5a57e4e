"""Scale-out on Ray: ``anti-i2v protect PATHS --out DIR ... --ray local|ADDRESS [--workers N]``.

The same command as the single-process CLI, spread over every GPU of a Ray cluster (or CPU slots):

* one long-lived worker (a Ray actor) per GPU (``num_gpus=1``; on a cluster without GPUs, ``--workers N`` CPU
  slots) loads the surrogate once and protects photo after photo with :func:`anti_i2v.cli.protect_photo`, the very
  function the single-process run calls, so the same seed gives byte-identical outputs;
* the driver hands photos out one at a time (a slow photo holds no batch), keeps one progress bar for the whole job
  and writes ``manifest.json`` (every photo: status, reason, worker, node, attempts, seconds, figures) atomically
  as photos finish;
* inputs and outputs must live on a path every node sees at the same place (a shared mount); workers write each
  output atomically (temp file + ``os.replace`` in the same folder), never over an original;
* a worker that dies mid-photo (SIGKILL, out of memory, a lost node) costs that photo's retry on another worker:
  the dead worker is replaced, the photo's leftover temp files are removed and the photo is queued again, up to
  ``--max-retries`` times, after which it is named as failed with its reason. A photo already complete is never
  redone (unless ``--overwrite``), so a rerun after an interrupted driver resumes.

Ray is an optional extra (``pip install "comfyui-anti-i2v[ray]"``) imported only when ``--ray`` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections import deque
from pathlib import Path
from typing import Callable

__all__ = ["add_arguments", "check_arguments", "run_on_ray", "ProtectWorker", "MANIFEST_NAME"]

MANIFEST_NAME = "manifest.json"
INSTALL_HINT = "pip install 'comfyui-anti-i2v[ray]'"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the scale-out options to the ``protect`` sub-command (no Ray import)."""
    g = parser.add_argument_group("scale-out on Ray (optional extra: " + INSTALL_HINT + ")")
    g.add_argument("--ray", metavar="ADDRESS",
                   help="run on Ray: 'local' starts Ray on this machine; an address (e.g. 10.0.0.1:6379 or 'auto') "
                        "joins a cluster started with 'ray start --head'. Inputs and --out must be on a path every "
                        "node sees")
    g.add_argument("--workers", type=int, metavar="N",
                   help="with --ray: number of workers, each loading the model once (default: one per GPU of the "
                        "cluster; 1 on a cluster without GPUs)")
    g.add_argument("--cpus-per-worker", type=int, metavar="N",
                   help="with --ray on CPU: cores (torch threads) per worker (default: the cluster's cores shared "
                        "among the workers, at most one node's)")
    g.add_argument("--max-retries", type=int, default=2, metavar="N",
                   help="with --ray: times a photo is retried on another worker after its worker died (default 2)")
    g.add_argument("--manifest", metavar="PATH",
                   help="with --ray: where the JSON manifest of every photo goes (default: <out>/manifest.json)")
    # test-only: every iteration waits this long (lets a test kill a worker mid-photo); changes no number
    g.add_argument("--test-step-delay", type=float, default=0.0, help=argparse.SUPPRESS)


def check_arguments(args) -> None:
    """UsageError when a scale-out option is given without ``--ray`` (it would be silently ignored)."""
    from .cli import UsageError

    if getattr(args, "ray", None):
        return
    for opt, given in (("--workers", args.workers is not None), ("--cpus-per-worker", args.cpus_per_worker is not None),
                       ("--manifest", args.manifest is not None), ("--max-retries", args.max_retries != 2)):
        if given:
            raise UsageError(f"{opt} needs --ray (local or a cluster address)")


def _import_ray():
    from .cli import UsageError

    try:
        import ray
    except ImportError:
        raise UsageError(f"--ray needs Ray, an optional extra: {INSTALL_HINT}") from None
    return ray


class ProtectWorker:
    """One long-lived worker (made a Ray actor by :func:`run_on_ray`): loads the surrogate once, protects photos.

    Never raises from a method: a model that cannot be loaded is reported by :meth:`info`, a photo that fails for
    any reason comes back as a failed record naming the reason (the worker stays up for the next photo).
    """

    def __init__(self, args: argparse.Namespace, originals: set):
        from .cli import UsageError, prepare_job

        self.originals = originals
        self.delay = float(getattr(args, "test_step_delay", 0.0) or 0.0)
        self.error = None
        self.job = None
        try:
            self.job = prepare_job(args, announce=False)
        except UsageError as exc:
            self.error = str(exc)
        except Exception as exc:  # noqa: BLE001 - reported to the driver, which stops the run with it
            self.error = f"{type(exc).__name__}: {exc}"

    def info(self) -> dict:
        """Where this worker runs (pid, node, GPUs) and the model-loading error, if any."""
        import socket

        try:
            import ray

            node = ray.util.get_node_ip_address()
            gpus = [str(g) for g in ray.get_gpu_ids()]
        except Exception:  # noqa: BLE001 - also usable outside Ray
            node, gpus = "local", []
        import torch

        return {"pid": os.getpid(), "node": node, "host": socket.gethostname(), "gpus": gpus,
                "threads": torch.get_num_threads(), "error": self.error}

    def protect(self, path: str, rel: str, out: str) -> dict:
        """Protect one photo (outputs written atomically into ``out``); a record as :func:`protect_photo` gives."""
        from .cli import protect_photo

        if self.job is None:
            return {"input": path, "status": "failed", "reason": self.error, "seconds": 0.0, "figures": None}
        if self.delay:
            import anti_i2v.protect as protect_mod

            real = protect_mod.protect

            def slow(*a, callback=None, **k):
                def cb(p):
                    time.sleep(self.delay)
                    return callback(p) if callback is not None else None

                return real(*a, callback=cb, **k)

            protect_mod.protect = slow
        t0 = time.perf_counter()
        try:
            return protect_photo(self.job, Path(path), Path(rel), Path(out), self.originals)
        except Exception as exc:  # noqa: BLE001 - e.g. GradientVanished, CUDA out of memory: name it, keep serving
            return {"input": path, "status": "failed", "reason": f"{type(exc).__name__}: {exc}",
                    "seconds": round(time.perf_counter() - t0, 3), "figures": None}
        finally:
            if self.delay:
                protect_mod.protect = real


class _Photo:
    __slots__ = ("index", "path", "rel", "attempts", "record")

    def __init__(self, index: int, path: Path, rel: Path, out: Path):
        from .cli import output_paths

        self.index, self.path, self.rel, self.attempts = index, path, rel, 0
        self.record: dict = {"name": str(rel), "input": str(path), "output": str(output_paths(out, rel)[0]),
                             "status": "pending", "reason": None,
                             "worker": None, "node": None, "pid": None, "attempts": 0, "seconds": None,
                             "started": None, "finished": None, "figures": None}


class _Slot:
    """A worker position: its current actor (replaced when it dies) and what it has done."""

    def __init__(self, wid: str):
        self.wid, self.actor, self.info, self.state, self.ready = wid, None, {}, "starting", None
        self.done = self.failed = self.deaths = 0
        self.seconds: list[float] = []


def _clean_partials(out: Path, rels, extra: tuple[Path, ...] = ()) -> int:
    """Remove leftover temp files of these photos' outputs (and of ``extra`` files): a worker or driver killed in
    the middle of an atomic write leaves ``.<name>.<random>.partial`` beside the output. One folder listing per
    output folder, so a sweep over thousands of photos stays cheap on a network file system. Returns the count.
    """
    from .cli import output_paths

    wanted: dict[Path, set[str]] = {}
    for rel in rels:
        for final in output_paths(out, rel):
            wanted.setdefault(final.parent, set()).add(final.name)
    for f in extra:
        wanted.setdefault(f.parent, set()).add(f.name)
    removed = 0
    for folder, names in wanted.items():
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for e in entries:
            if e.name.startswith(".") and e.name.endswith(".partial"):
                final = e.name[1:-len(".partial")].rsplit(".", 1)[0]  # mkstemp's random part has no dot
                if final in names:
                    try:
                        os.unlink(e.path)
                        removed += 1
                    except OSError:
                        pass
    return removed


def _figures_from_report(out: Path, rel: Path) -> tuple[dict | None, float | None]:
    from .cli import output_paths

    try:
        rep = json.loads(output_paths(out, rel)[1].read_text())
        return {k: v[0] for k, v in rep.get("saved_png", {}).items()}, rep.get("seconds_total")
    except (OSError, ValueError, TypeError, AttributeError, IndexError, KeyError):
        return None, None


def _settings(args) -> dict:
    keys = ("demo", "model", "surrogate", "preset", "eps", "steps", "step_size", "seed", "method", "ira_blocks",
            "vae_layers", "irc_pairs", "target", "frames", "space", "dct_block", "chroma_downsample",
            "restore_luminance", "robust_jpeg", "dtype", "device", "overwrite")
    return {k: getattr(args, k, None) for k in keys}


def run_on_ray(args, images: list[tuple[Path, Path]], out: Path, *,
               on_dispatch: Callable[[str, dict], None] | None = None) -> int:
    """Protect ``images`` ((path, relative name) pairs from the CLI) on Ray workers; the CLI exit status.

    ``on_dispatch(name, worker_info)`` is called each time a photo is handed to a worker (monitoring; the tests
    use it to kill a worker mid-photo). Uses Ray as already initialised in this process, else starts it
    (``--ray local``) or joins ``--ray ADDRESS``, and shuts down only what it started.
    """
    from .cli import UsageError, _atomic_write, is_complete

    ray = _import_ray()
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers must be at least 1, got {args.workers}")
    if args.cpus_per_worker is not None and args.cpus_per_worker < 1:
        raise UsageError(f"--cpus-per-worker must be at least 1, got {args.cpus_per_worker}")
    if args.max_retries < 0:
        raise UsageError(f"--max-retries must be 0 or more, got {args.max_retries}")
    if args.device.startswith("cuda:"):
        raise UsageError(f"--device {args.device}: with --ray each worker gets its own GPU; use --device auto or cuda")
    out = out.resolve()
    manifest_path = Path(args.manifest).resolve() if args.manifest else out / MANIFEST_NAME
    photos = [_Photo(i, p.resolve(), rel, out) for i, (p, rel) in enumerate(images)]
    originals = {p.path for p in photos}
    if manifest_path in originals:
        raise UsageError(f"--manifest {args.manifest}: that is an input file")

    started_ray = False
    if not ray.is_initialized():
        import logging

        kw = {"include_dashboard": False, "logging_level": logging.WARNING, "log_to_driver": True}
        try:
            if args.ray == "local":
                ray.init(num_cpus=max(os.cpu_count() or 1, args.workers or 1), **kw)
            else:
                ray.init(address=args.ray, **kw)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise UsageError(f"--ray {args.ray}: cannot start or join Ray ({exc})") from None
        started_ray = True
    try:
        return _schedule(ray, args, photos, originals, out, manifest_path, on_dispatch, _atomic_write, is_complete)
    finally:
        if started_ray:
            ray.shutdown()


def _schedule(ray, args, photos, originals, out, manifest_path, on_dispatch, atomic_write, is_complete) -> int:
    from ray.exceptions import RayActorError

    from .cli import DEMO_BANNER, UsageError

    res = ray.cluster_resources()
    gpus, cpus = int(res.get("GPU", 0)), int(res.get("CPU", 0))
    use_gpu = args.device != "cpu" and gpus > 0
    if args.device == "cuda" and gpus == 0:
        raise UsageError("--device cuda: the Ray cluster has no GPU")
    n = args.workers or (gpus if use_gpu else 1)
    if use_gpu and n > gpus:
        raise UsageError(f"--workers {n}: the cluster has {gpus} GPU(s), one worker per GPU")
    if not use_gpu and n > cpus:
        raise UsageError(f"--workers {n}: the cluster has {cpus} CPU(s), one worker needs at least one")
    # CPU workers share the cores, but one worker must fit on one node
    node_cpus = max([int(nd.get("Resources", {}).get("CPU", 0)) for nd in ray.nodes() if nd.get("Alive")] or [1])
    per = args.cpus_per_worker or max(1, min(cpus // n, node_cpus))
    if not use_gpu and (per > node_cpus or per * n > cpus):
        raise UsageError(f"--workers {n} x --cpus-per-worker {per}: the cluster has {cpus} CPU(s), "
                         f"at most {node_cpus} on one node")
    opts = {"num_gpus": 1, "num_cpus": 1} if use_gpu else {"num_gpus": 0, "num_cpus": per}
    Actor = ray.remote(max_restarts=0, max_task_retries=0, **opts)(ProtectWorker)
    if args.demo:
        print(DEMO_BANNER, file=sys.stderr)

    t_start = time.time()
    todo: deque = deque()
    for ph in photos:
        if not args.overwrite and is_complete(out, ph.rel):
            figs, secs = _figures_from_report(out, ph.rel)
            ph.record.update(status="skipped", figures=figs, seconds=secs)
        else:
            todo.append(ph)
    _clean_partials(out, [ph.rel for ph in todo], (manifest_path,))  # left by a killed earlier run
    originals_ref = ray.put(originals)
    args_ref = ray.put(args)
    slots = [_Slot(f"w{i}") for i in range(n)]
    starting: dict = {}  # info ObjectRef -> slot
    running: dict = {}  # protect ObjectRef -> (slot, photo)
    idle: list[_Slot] = []
    deaths_left = n * (args.max_retries + 1)  # replacements allowed before the run gives up on a worker position
    counter = {"done": 0, "failed": 0}

    def start(slot: _Slot) -> None:
        slot.actor = Actor.remote(args_ref, originals_ref)
        slot.state = "starting"
        starting[slot.actor.info.remote()] = slot

    def finish(ph: _Photo, status: str, reason: str | None = None) -> None:
        ph.record.update(status=status, reason=reason, finished=round(time.time(), 3))
        counter["done" if status == "done" else "failed"] += 1

    def manifest(final: bool) -> None:
        counts = {s: sum(p.record["status"] == s for p in photos)
                  for s in ("done", "skipped", "failed", "pending", "running")}
        data = {
            "format": "anti-i2v-manifest/1",
            "finished": final,
            "updated": round(time.time(), 3),
            "started": round(t_start, 3),
            "out": str(out),
            "ray": args.ray,
            "settings": _settings(args),
            "counts": counts,
            "workers": [{"id": s.wid, "state": s.state,
                         **{k: s.info.get(k) for k in ("node", "host", "pid", "gpus", "threads")},
                         "ready": s.ready, "done": s.done, "failed": s.failed, "deaths": s.deaths} for s in slots],
            "photos": [p.record for p in photos],
        }
        text = json.dumps(data, indent=1)
        try:
            atomic_write(manifest_path, lambda t: t.write_text(text))
        except OSError as exc:  # the outputs are what matters: say so once per write, go on
            print(f"anti-i2v: warning: cannot write the manifest {manifest_path} ({exc.strerror or exc})",
                  file=sys.stderr)

    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        tqdm = None
    skipped = len(photos) - len(todo)
    bar = tqdm(total=len(photos), initial=skipped, desc="photos", unit="photo",
               disable=args.quiet or tqdm is None) if tqdm is not None else None

    def progress() -> None:
        if bar is not None:
            alive = sum(s.state == "ready" or s.state == "busy" for s in slots)
            bar.set_postfix(done=counter["done"], failed=counter["failed"], workers=alive, refresh=False)
            bar.update(1)

    last_write = 0.0
    waited_note = False
    for s in slots:
        if todo:
            start(s)
    try:
        while todo or running:
            while idle and todo:
                slot, ph = idle.pop(), todo.popleft()
                if not args.overwrite and is_complete(out, ph.rel):  # done by an attempt whose worker then died
                    figs, secs = _figures_from_report(out, ph.rel)
                    ph.record.update(figures=figs, seconds=secs)
                    finish(ph, "done")
                    progress()
                    idle.append(slot)
                    continue
                ph.attempts += 1
                ph.record.update(status="running", worker=slot.wid, node=slot.info.get("node"),
                                 pid=slot.info.get("pid"), attempts=ph.attempts, started=round(time.time(), 3))
                slot.state = "busy"
                running[slot.actor.protect.remote(str(ph.path), str(ph.rel), str(out))] = (slot, ph)
                if on_dispatch is not None:
                    on_dispatch(str(ph.rel), dict(slot.info, worker=slot.wid))
            if not running and not starting:
                break  # photos left but no worker: named below
            ready, _ = ray.wait(list(running) + list(starting), num_returns=1, timeout=1.0)
            if not ready and not running and not waited_note and time.time() - t_start > 120:
                waited_note = True  # e.g. every GPU is held by another job: Ray queues the workers
                print(f"anti-i2v: note: no worker has started after 2 minutes; each needs {opts} and the cluster "
                      f"has {ray.available_resources()} free. Still waiting (Ctrl-C stops)", file=sys.stderr)
            for ref in ready:
                if ref in starting:
                    slot = starting.pop(ref)
                    try:
                        slot.info = ray.get(ref)
                    except RayActorError as exc:
                        slot.state, slot.deaths = "died", slot.deaths + 1
                        if deaths_left > 0 and todo:
                            deaths_left -= 1
                            start(slot)
                        else:
                            print(f"anti-i2v: warning: worker {slot.wid} died while starting ({_why(exc)})",
                                  file=sys.stderr)
                        continue
                    if slot.info.get("error"):
                        if not any(s.info and not s.info.get("error") for s in slots):
                            raise UsageError(slot.info["error"])
                        slot.state = "failed to start"
                        print(f"anti-i2v: warning: worker {slot.wid} on {slot.info.get('node')} cannot load the "
                              f"model: {slot.info['error']}", file=sys.stderr)
                        ray.kill(slot.actor)
                        continue
                    slot.state, slot.ready = "ready", round(time.time(), 3)
                    idle.append(slot)
                    continue
                slot, ph = running.pop(ref)
                try:
                    rec = ray.get(ref)
                except RayActorError as exc:  # the worker process died mid-photo (SIGKILL, OOM, node lost)
                    why = _why(exc)
                    slot.state, slot.deaths = "died", slot.deaths + 1
                    _clean_partials(out, [ph.rel])
                    if ph.attempts > args.max_retries:
                        finish(ph, "failed", f"its worker died on each of {ph.attempts} attempts (last: {why})")
                        slot.failed += 1
                        progress()
                    else:
                        ph.record["status"] = "pending"
                        todo.appendleft(ph)
                    try:
                        ray.kill(slot.actor)
                    except Exception:  # noqa: BLE001 - already gone
                        pass
                    if deaths_left > 0 and (todo or running):
                        deaths_left -= 1
                        start(slot)
                    continue
                except Exception as exc:  # noqa: BLE001 - anything else Ray raises: that photo fails, named
                    rec = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}", "seconds": None}
                slot.state = "ready"
                idle.append(slot)
                ph.record.update(seconds=rec.get("seconds"), figures=rec.get("figures"))
                if rec["status"] == "failed":
                    slot.failed += 1
                    finish(ph, "failed", rec.get("reason"))
                else:  # "skipped" here: an earlier attempt finished it before its worker died
                    slot.done += 1
                    if rec.get("seconds") is not None and rec["status"] == "done":
                        slot.seconds.append(rec["seconds"])
                    if ph.record["figures"] is None:
                        ph.record["figures"] = _figures_from_report(out, ph.rel)[0]
                    finish(ph, "done")
                progress()
            if time.time() - last_write > 2.0:
                manifest(False)
                last_write = time.time()
        for ph in todo:  # every worker position died more often than allowed
            finish(ph, "failed", "no worker left: every worker died or could not start")
            progress()
    except KeyboardInterrupt:
        for s in slots:
            if s.actor is not None:
                try:
                    ray.kill(s.actor)
                except Exception:  # noqa: BLE001
                    pass
        # once the killed workers are gone, remove what they were writing (a second Ctrl-C skips the wait)
        if running:
            ray.wait(list(running), num_returns=len(running), timeout=10.0)
            _clean_partials(out, [ph.rel for _, ph in running.values()])
        for ph in photos:
            if ph.record["status"] == "running":
                ph.record["status"] = "pending"
        if bar is not None:
            bar.close()
        manifest(False)
        print(f"\ninterrupted: {counter['done']} protected this run; run the same command again to resume "
              f"(manifest: {manifest_path})", file=sys.stderr)
        return 130
    finally:
        if bar is not None:
            bar.close()
    for s in slots:  # done: free the GPUs (a worker still starting, e.g. one that fits no node, goes too)
        if s.actor is not None and s.state in ("ready", "busy", "starting"):
            try:
                ray.kill(s.actor)
            except Exception:  # noqa: BLE001
                pass
            s.state = "finished"
    manifest(True)
    _summary(slots, photos, out, manifest_path, time.time() - t_start)
    if args.demo:
        print("(demo mode: tiny random models, nothing real is protected)", file=sys.stderr)
    return 1 if any(p.record["status"] == "failed" for p in photos) else 0


def _why(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {msg[0] if msg else ''}"[:300]


def _summary(slots, photos, out, manifest_path, seconds: float) -> None:
    """The final table: one row per worker position, then the totals and every failed photo with its reason."""
    rows = [("worker", "node", "pid", "done", "failed", "died", "median s/photo")]
    for s in slots:
        med = f"{statistics.median(s.seconds):.2f}" if s.seconds else "-"
        rows.append((s.wid, str(s.info.get("node") or "-"), str(s.info.get("pid") or "-"), str(s.done),
                     str(s.failed), str(s.deaths), med))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)), file=sys.stderr)
    c = {s: sum(p.record["status"] == s for p in photos) for s in ("done", "skipped", "failed")}
    rate = c["done"] / seconds * 60.0 if seconds > 0 else 0.0
    print(f"protected {c['done']}, skipped {c['skipped']} already done, failed {c['failed']} -> {out} "
          f"({seconds:.1f} s, {rate:.1f} photos/min; manifest: {manifest_path})", file=sys.stderr)
    for p in photos:
        if p.record["status"] == "failed":
            print(f"error: {p.path}: {p.record['reason']}", file=sys.stderr)
