"""GLUE job scheduling: one job per GPU in a spawn process pool, or one after the other in this process.

On GPUs, jobs run in a `multiprocessing` spawn process pool, one worker per GPU (`parallel_jobs`, default the
number of visible GPUs), each worker pinned to its GPU through CUDA_VISIBLE_DEVICES before CUDA starts. Jobs that
start from the MNLI checkpoint are queued when the first MNLI seed finishes. On CPU jobs run one after the other
in this process (or `parallel_jobs` CPU workers sharing the cores).
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import multiprocessing
import os
from typing import Callable, Dict, List, Optional

from mosaicbert.core.runs import progress, setup_logging
from mosaicbert.glue.config import GlueConfig
from mosaicbert.glue.plan import Job, JobResult, resolve_mnli_start
from mosaicbert.glue.train import run_job

log = logging.getLogger("mosaicbert.glue")


def _end_line(job: Job, r: JobResult) -> str:
    if r.status != "ok":
        return f"[job {job.index}/{job.total}] FAILED {job.task} seed={job.seed}: {r.error}"
    ms = " ".join(f"{k}={100 * v:.2f}" for k, v in r.metrics.items())
    return f"[job {job.index}/{job.total}] done {job.task} seed={job.seed}: {ms} ({r.duration_s:.0f}s)"


def _worker_init(gpu_queue, n_parallel: int) -> None:
    """Pin this pool worker to one GPU before CUDA is initialised."""
    gpu = gpu_queue.get()
    os.environ["MOSAICBERT_GLUE_WORKER"] = "1"
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    else:  # CPU workers share the cores
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // n_parallel))
    setup_logging()


def visible_gpu_ids(n: int) -> List[str]:
    """The CUDA_VISIBLE_DEVICES values that pin n workers to this process's first n GPUs: the parent's own
    list when it has one (with CUDA_VISIBLE_DEVICES=2,3 the workers get 2 and 3, not 0 and 1)."""
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    return visible[:n] if len(visible) >= n else [str(i) for i in range(n)]


def _num_parallel(cfg: GlueConfig) -> tuple[int, List[Optional[str]]]:
    import torch

    from mosaicbert.core.trainer import resolve_device

    device = resolve_device(cfg.device)
    if device == "gpu":
        n_gpus = torch.cuda.device_count()
        n = min(cfg.parallel_jobs or n_gpus, n_gpus)
        return n, visible_gpu_ids(n)
    n = cfg.parallel_jobs or 1
    return n, [None] * n


def run_jobs(cfg: GlueConfig, jobs: List[Job],
             job_fn: Callable[[GlueConfig, Job], JobResult] = run_job) -> List[JobResult]:
    """Run the jobs, sequentially in this process or in a spawn pool; results in job order."""
    if not jobs:
        return []
    n_parallel, gpus = _num_parallel(cfg)
    results: Dict[int, JobResult] = {}
    mnli_first = next((j for j in jobs if j.save_checkpoint), None)

    if n_parallel <= 1 or len(jobs) == 1:
        mnli_result = None
        for job in jobs:
            if job.waits_for_mnli:
                job = resolve_mnli_start(job, mnli_result, cfg)
            r = job_fn(cfg, job)
            if mnli_first is not None and job.index == mnli_first.index:
                mnli_result = r
            results[job.index] = r
            progress(_end_line(job, r))
        return [results[j.index] for j in jobs]

    ctx = multiprocessing.get_context("spawn")
    gpu_queue = ctx.Queue()
    for g in gpus:
        gpu_queue.put(g)
    log.info("running %d jobs on %d parallel workers (%s)", len(jobs), n_parallel,
             "GPUs " + ",".join(map(str, gpus)) if gpus[0] is not None else "CPU")
    waiting = [j for j in jobs if j.waits_for_mnli]
    futures: Dict[cf.Future, Job] = {}
    with cf.ProcessPoolExecutor(max_workers=n_parallel, mp_context=ctx, initializer=_worker_init,
                                initargs=(gpu_queue, n_parallel)) as pool:
        for job in jobs:  # MNLI is first in the list, so first in the pool's queue
            if not job.waits_for_mnli:
                futures[pool.submit(job_fn, cfg, job)] = job
        while futures:
            done, _ = cf.wait(list(futures), return_when=cf.FIRST_COMPLETED)
            for fut in done:
                job = futures.pop(fut)
                try:
                    r = fut.result()
                except Exception as e:  # noqa: BLE001 - a worker died (e.g. killed for memory)
                    r = JobResult(task=job.task, seed=job.seed, status="failed", init_from=job.init_from,
                                  init_kind=job.init_kind, error=f"worker died: {type(e).__name__}: {e}")
                results[job.index] = r
                progress(_end_line(job, r))
                if mnli_first is not None and job.index == mnli_first.index:
                    for w in waiting:
                        w2 = resolve_mnli_start(w, r, cfg)
                        futures[pool.submit(job_fn, cfg, w2)] = w2
                    waiting = []
    return [results[j.index] for j in jobs]
