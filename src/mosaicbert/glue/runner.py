"""GLUE finetuning runner: one Composer Trainer per (task, seed) job, results table and GLUE average.

Jobs
    One job per task and seed (`tasks.<task>.seeds`). MNLI is queued first. Tasks in `mnli_start_tasks` (default
    RTE, MRPC, STS-B) start from the finetuned checkpoint of the first MNLI seed when MNLI runs in this run (or
    `mnli_checkpoint` names one); otherwise they start from `model.pretrained_checkpoint`, with a warning.
    Every start loads the encoder and pooler only: the source's head (MLM `cls.*` or MNLI's 3-way `classifier.*`) is
    reported as intentionally not loaded, the new classification head as newly initialised, and any other key
    that fails to load is reported as a warning. `model.pretrained_checkpoint: null` trains from random init (loud
    warning; for a "random init" comparison only).

Parallelism
    On GPUs, jobs run in a `multiprocessing` spawn process pool, one worker per GPU (`parallel_jobs`, default the
    number of visible GPUs), each worker pinned to its GPU through CUDA_VISIBLE_DEVICES. MNLI-start jobs are
    queued when the first MNLI seed finishes. On CPU jobs run one after the other in this process.

Scores (the rule written into results.md)
    A job's score is its task's primary metric, or the mean of the task's metrics when it has two:
    MNLI (matched acc + mismatched acc)/2, MRPC and QQP (F1 + accuracy)/2, STS-B (Pearson + Spearman)/2,
    CoLA Matthews correlation, QNLI / RTE / SST-2 accuracy. A task's score is the mean of its job scores over
    seeds; the GLUE average is the mean of the task scores over the tasks that ran (skipped or failed tasks are
    left out and listed).
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import json
import logging
import multiprocessing
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

from mosaicbert.checkpoint import load_weights, resolve_source
from mosaicbert.glue.config import GlueConfig, TaskConfig
from mosaicbert.glue.tasks import TASK_NAMES, TASKS, GlueTask, task_score

log = logging.getLogger("mosaicbert.glue")

SCORE_RULE = (
    "A job's score is its task's primary metric, or the mean of its metrics for tasks with two: "
    "MNLI (matched + mismatched accuracy)/2, MRPC and QQP (F1 + accuracy)/2, STS-B (Pearson + Spearman)/2; "
    "CoLA Matthews correlation; QNLI, RTE, SST-2 accuracy. A task's score is the mean over its seeds; the GLUE "
    "average is the mean of the task scores over the tasks that ran (skipped and failed tasks are left out)."
)
HEAD_PREFIXES = ("classifier.", "cls.")


@dataclass
class Job:
    index: int  # 1-based, for progress lines
    total: int
    task: str
    seed: int
    init_from: Optional[str]  # checkpoint to start from; None = random init
    init_kind: str  # "pretrained" | "mnli" | "random"
    save_checkpoint: bool = False  # final weights kept for MNLI-start
    waits_for_mnli: bool = False


@dataclass
class JobResult:
    task: str
    seed: int
    status: str  # ok | failed
    metrics: Dict[str, float] = field(default_factory=dict)
    score: Optional[float] = None
    init_from: Optional[str] = None
    init_kind: str = "random"
    init_report: Dict[str, Any] = field(default_factory=dict)
    checkpoint: Optional[str] = None
    duration_s: float = 0.0
    device: str = "cpu"
    error: Optional[str] = None


def _setup_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Composer logs a dozen INFO lines per Trainer; keep the per-job start/end lines readable.
    logging.getLogger("composer").setLevel(logging.WARNING)


def _progress(msg: str) -> None:
    print(msg, flush=True)


def run_folder(cfg: GlueConfig) -> str:
    return cfg.save_folder or os.path.join("runs", "glue", cfg.run_name or "glue")


def task_duration(cfg: GlueConfig, tcfg: TaskConfig) -> str:
    return cfg.max_duration or tcfg.max_duration or f"{tcfg.epochs}ep"


# ---------------------------------------------------------------------------------------------------------------
# Models and start weights
# ---------------------------------------------------------------------------------------------------------------


def load_start_weights(model, source: str) -> Dict[str, Any]:
    """Load the encoder (and pooler) of `source` into a sequence classification model; returns the report.

    The source's heads (`cls.*` of MLM, `classifier.*` of another task) are never loaded; the model's new
    `classifier.*` is newly initialised. Every other key that does not load is reported in the log and the report.
    """
    return load_weights(model, source, head_prefixes=HEAD_PREFIXES, new_head_prefixes=("classifier.",)).as_dict()


_TOKENIZERS: Dict[str, Any] = {}


def get_tokenizer(name: str):
    if name not in _TOKENIZERS:
        from mosaicbert.data.tokenizer import load_tokenizer

        _TOKENIZERS[name] = load_tokenizer(name)
    return _TOKENIZERS[name]


def build_classifier(cfg: GlueConfig, task: GlueTask, tokenizer):
    from mosaicbert.builders import build_hf_config
    from mosaicbert.config import ConfigError

    config = build_hf_config(cfg.model, num_labels=task.num_labels, pad_token_id=tokenizer.pad_token_id)
    if len(tokenizer) > config.vocab_size:
        raise ConfigError(f"tokenizer has {len(tokenizer)} tokens but the model's vocab_size is {config.vocab_size}")
    if cfg.model.name == "mosaic_bert":
        from mosaicbert.model import MosaicBertForSequenceClassification

        return MosaicBertForSequenceClassification(config)
    from transformers import BertForSequenceClassification

    return BertForSequenceClassification(config)


# ---------------------------------------------------------------------------------------------------------------
# One job
# ---------------------------------------------------------------------------------------------------------------


def _eval_label(task: GlueTask, eval_name: str) -> str:
    return task.name if len(task.evals) == 1 else f"{task.name}_{eval_name}"


def train_job(cfg: GlueConfig, job: Job) -> JobResult:
    """Finetune one (task, seed); raises on errors (run_job turns them into a failed result)."""
    from composer import Evaluator, Trainer
    from composer.utils import reproducibility

    from mosaicbert.builders import build_optimizer, build_scheduler, resolve_device
    from mosaicbert.composer_models import SequenceClassificationModel
    from mosaicbert.glue.data import build_dataloader, load_tokenized
    from mosaicbert.glue.tasks import build_metric

    t0 = time.time()
    task = TASKS[job.task]
    tcfg: TaskConfig = getattr(cfg.tasks, job.task)
    device = resolve_device(cfg.device)
    precision = cfg.precision if device == "gpu" else "fp32"
    tokenizer = get_tokenizer(cfg.tokenizer)

    data_kw = dict(data_dir=cfg.data_dir, hub_dataset=cfg.hub_dataset, skip_malformed=cfg.skip_malformed_rows)
    train_ds = load_tokenized(task, "train", tokenizer, tcfg.max_seq_len, max_samples=cfg.max_train_samples,
                              **data_kw)
    eval_sets = {ev: load_tokenized(task, ev, tokenizer, tcfg.max_seq_len, max_samples=cfg.max_eval_samples,
                                    **data_kw) for ev in task.evals}
    loader_kw = dict(seed=job.seed, regression=task.is_regression, num_workers=cfg.dataloader_workers,
                     pin_memory=device == "gpu")
    train_loader = build_dataloader(train_ds, tokenizer, tcfg.batch_size, train=True, **loader_kw)

    reproducibility.seed_all(job.seed)  # the new head's init depends on the seed
    model = build_classifier(cfg, task, tokenizer)
    report: Dict[str, Any] = {}
    if job.init_from:
        report = load_start_weights(model, job.init_from)
    metrics = [build_metric(m, task.num_labels) for m in task.metrics]
    metric_class = {m: type(obj).__name__ for m, obj in zip(task.metrics, metrics)}
    composer_model = SequenceClassificationModel(model, tokenizer=tokenizer, eval_metrics=metrics)
    evaluators = [
        Evaluator(label=_eval_label(task, ev), metric_names=list(metric_class.values()),
                  dataloader=build_dataloader(ds, tokenizer, cfg.eval_batch_size, train=False, **loader_kw))
        for ev, ds in eval_sets.items()
    ]
    optimizer = build_optimizer(cfg.optimizer.for_task(tcfg.lr, tcfg.weight_decay), composer_model)
    microbatch: Any = cfg.device_train_microbatch_size
    if microbatch is None or (microbatch == "auto" and device == "cpu"):
        microbatch = tcfg.batch_size
    ckpt_folder = os.path.join(run_folder(cfg), "checkpoints", f"{job.task}-seed{job.seed}")
    save_kw: Dict[str, Any] = {}
    if job.save_checkpoint:
        save_kw = dict(save_folder=ckpt_folder, save_interval="1dur", save_weights_only=True, save_overwrite=True,
                       save_num_checkpoints_to_keep=1, save_filename="final-rank{rank}.pt")

    trainer = Trainer(
        run_name=f"{cfg.run_name}-{job.task}-seed{job.seed}",
        model=composer_model,
        train_dataloader=train_loader,
        eval_dataloader=evaluators,
        eval_interval=tcfg.eval_interval or "1dur",
        max_duration=task_duration(cfg, tcfg),
        optimizers=optimizer,
        schedulers=build_scheduler(cfg.scheduler),
        device=device,
        precision=precision,
        device_train_microbatch_size=microbatch,
        seed=job.seed,
        progress_bar=cfg.progress_bar,
        log_to_console=False,
        loggers=[],
        **save_kw,
    )
    try:
        trainer.fit()
        results: Dict[str, float] = {}
        for ev in task.evals:
            label = _eval_label(task, ev)
            for m, cls_name in metric_class.items():
                key = m if len(task.evals) == 1 else f"{ev}_{m}"
                results[key] = float(trainer.state.eval_metrics[label][cls_name].compute())
    finally:
        trainer.close()
    checkpoint = None
    if job.save_checkpoint:
        checkpoint = os.path.join(ckpt_folder, "final-rank0.pt")
        if not os.path.isfile(checkpoint):
            raise RuntimeError(f"the final checkpoint {checkpoint} was not written")
    return JobResult(task=job.task, seed=job.seed, status="ok", metrics=results, score=task_score(task, results),
                     init_from=job.init_from, init_kind=job.init_kind, init_report=report, checkpoint=checkpoint,
                     duration_s=time.time() - t0, device=device)


def run_job(cfg: GlueConfig, job: Job) -> JobResult:
    """train_job with a start line; exceptions become a failed result (the other jobs go on)."""
    _setup_logging()
    gpu = os.environ.get("CUDA_VISIBLE_DEVICES") if os.environ.get("MOSAICBERT_GLUE_WORKER") else None
    where = f" on GPU {gpu}" if gpu is not None else ""
    init = {"random": "random init", "mnli": f"MNLI checkpoint {job.init_from}",
            "pretrained": f"{job.init_from}"}[job.init_kind]
    _progress(f"[job {job.index}/{job.total}] start {job.task} seed={job.seed}{where} from {init}")
    t0 = time.time()
    try:
        return train_job(cfg, job)
    except Exception as e:  # noqa: BLE001 - reported in the results, the run goes on
        log.error("job %s seed=%d failed:\n%s", job.task, job.seed, traceback.format_exc())
        return JobResult(task=job.task, seed=job.seed, status="failed", init_from=job.init_from,
                         init_kind=job.init_kind, duration_s=time.time() - t0, error=f"{type(e).__name__}: {e}")


def _worker_init(gpu_queue, n_parallel: int) -> None:
    """Pin this pool worker to one GPU before CUDA is initialised."""
    gpu = gpu_queue.get()
    os.environ["MOSAICBERT_GLUE_WORKER"] = "1"
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    else:  # CPU workers share the cores
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // n_parallel))
    _setup_logging()


# ---------------------------------------------------------------------------------------------------------------
# Planning and scheduling
# ---------------------------------------------------------------------------------------------------------------


def plan_jobs(cfg: GlueConfig) -> tuple[List[Job], Dict[str, str]]:
    """The jobs to run (MNLI first) and {task: reason} for the tasks skipped because their data is missing."""
    from mosaicbert.glue.data import missing_files

    skipped: Dict[str, str] = {}
    runnable = []
    for name in TASK_NAMES:
        if name not in cfg.tasks_to_run:
            continue
        if cfg.data_dir is not None:
            missing = missing_files(cfg.data_dir, TASKS[name])
            if missing:
                skipped[name] = f"data files missing: {', '.join(missing)}"
                log.warning("skipping %s: %s", name, skipped[name])
                _progress(f"skip {name}: {skipped[name]}")
                continue
        runnable.append(name)

    pretrained = cfg.model.pretrained_checkpoint
    if not pretrained:
        log.warning("!" * 100)
        log.warning("model.pretrained_checkpoint is null: finetuning from RANDOM INIT. Scores mean nothing except "
                    "as a random-init baseline; set model.pretrained_checkpoint=<main.py checkpoint or HF folder>.")
        log.warning("!" * 100)
    base_kind = "pretrained" if pretrained else "random"
    mnli_runs = "mnli" in runnable
    mnli_start = [t for t in cfg.mnli_start_tasks if t in runnable]
    if mnli_start and not mnli_runs and not cfg.mnli_checkpoint:
        why = "is not in tasks_to_run" if "mnli" not in cfg.tasks_to_run else "was skipped (data missing)"
        log.warning("MNLI %s: %s start from %s instead of an MNLI checkpoint (set mnli_checkpoint=<path> to reuse "
                    "one, or mnli_start_tasks=[] to silence this)", why, ", ".join(mnli_start),
                    pretrained or "random init")

    jobs: List[Job] = []
    for name in runnable:
        tcfg: TaskConfig = getattr(cfg.tasks, name)
        for i, seed in enumerate(tcfg.seeds):
            job = Job(index=0, total=0, task=name, seed=seed, init_from=pretrained, init_kind=base_kind)
            if name == "mnli" and i == 0 and mnli_start and not cfg.mnli_checkpoint:
                job.save_checkpoint = True
            if name in mnli_start:
                if cfg.mnli_checkpoint:
                    job.init_from, job.init_kind = cfg.mnli_checkpoint, "mnli"
                elif mnli_runs:
                    job.waits_for_mnli = True
            jobs.append(job)
    for i, job in enumerate(jobs, 1):
        job.index, job.total = i, len(jobs)
    return jobs, skipped


def _resolve_mnli(job: Job, mnli_result: Optional[JobResult], cfg: GlueConfig) -> Job:
    if mnli_result is not None and mnli_result.status == "ok" and mnli_result.checkpoint:
        return dataclasses.replace(job, init_from=mnli_result.checkpoint, init_kind="mnli", waits_for_mnli=False)
    log.warning("%s seed=%d: the MNLI job failed, starting from %s instead", job.task, job.seed,
                cfg.model.pretrained_checkpoint or "random init")
    return dataclasses.replace(job, waits_for_mnli=False)


def _end_line(job: Job, r: JobResult) -> str:
    if r.status != "ok":
        return f"[job {job.index}/{job.total}] FAILED {job.task} seed={job.seed}: {r.error}"
    ms = " ".join(f"{k}={100 * v:.2f}" for k, v in r.metrics.items())
    return f"[job {job.index}/{job.total}] done {job.task} seed={job.seed}: {ms} ({r.duration_s:.0f}s)"


def visible_gpu_ids(n: int) -> List[str]:
    """The CUDA_VISIBLE_DEVICES values that pin n workers to this process's first n GPUs: the parent's own
    list when it has one (with CUDA_VISIBLE_DEVICES=2,3 the workers get 2 and 3, not 0 and 1)."""
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    return visible[:n] if len(visible) >= n else [str(i) for i in range(n)]


def _num_parallel(cfg: GlueConfig) -> tuple[int, List[Optional[str]]]:
    import torch

    from mosaicbert.builders import resolve_device

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
                job = _resolve_mnli(job, mnli_result, cfg)
            r = job_fn(cfg, job)
            if mnli_first is not None and job.index == mnli_first.index:
                mnli_result = r
            results[job.index] = r
            _progress(_end_line(job, r))
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
                _progress(_end_line(job, r))
                if mnli_first is not None and job.index == mnli_first.index:
                    for w in waiting:
                        w2 = _resolve_mnli(w, r, cfg)
                        futures[pool.submit(job_fn, cfg, w2)] = w2
                    waiting = []
    return [results[j.index] for j in jobs]


# ---------------------------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------------------------


def summarize(cfg: GlueConfig, job_results: List[JobResult], skipped: Dict[str, str]) -> Dict[str, Any]:
    tasks: Dict[str, Any] = {}
    for name in TASK_NAMES:
        if name not in cfg.tasks_to_run:
            continue
        if name in skipped:
            tasks[name] = {"status": "skipped", "reason": skipped[name]}
            continue
        mine = [r for r in job_results if r.task == name]
        ok = [r for r in mine if r.status == "ok"]
        entry: Dict[str, Any] = {"status": "ok" if ok else "failed", "seeds": [r.seed for r in ok],
                                 "failed_seeds": [r.seed for r in mine if r.status != "ok"]}
        if ok:
            keys = TASKS[name].metric_keys()
            entry["metrics_mean"] = {k: sum(r.metrics[k] for r in ok) / len(ok) for k in keys}
            entry["score"] = sum(r.score for r in ok) / len(ok)  # type: ignore[misc]
        else:
            entry["reason"] = "; ".join(sorted({r.error or "failed" for r in mine}))
        tasks[name] = entry
    scored = [n for n, t in tasks.items() if t["status"] == "ok"]
    average = sum(tasks[n]["score"] for n in scored) / len(scored) if scored else None
    return {
        "run_name": cfg.run_name,
        "score_rule": SCORE_RULE,
        "metric_scale": "fractions (0-1); results.md shows them x100",
        "glue_average": average,
        "glue_average_tasks": scored,
        "tasks": tasks,
        "jobs": [dataclasses.asdict(r) for r in job_results],
        "config": dataclasses.asdict(cfg),
    }


def _pct(v: Optional[float]) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def results_markdown(summary: Dict[str, Any]) -> str:
    lines = [f"# GLUE results: {summary['run_name']}", ""]
    avg = summary["glue_average"]
    tasks_ran = summary["glue_average_tasks"]
    lines.append(f"**GLUE average: {_pct(avg)}** over {len(tasks_ran)} task(s): {', '.join(tasks_ran) or 'none'}")
    lines += ["", f"Score rule: {summary['score_rule']}", "", "## Per task (mean over seeds)", "",
              "| task | status | seeds | metrics | score |", "|---|---|---|---|---|"]
    for name, t in summary["tasks"].items():
        if t["status"] == "skipped":
            lines.append(f"| {name} | skipped: {t['reason']} | | | |")
            continue
        metrics = ", ".join(f"{k} {_pct(v)}" for k, v in t.get("metrics_mean", {}).items())
        status = t["status"] if not t.get("failed_seeds") else f"{t['status']} (failed seeds {t['failed_seeds']})"
        lines.append(f"| {name} | {status} | {len(t['seeds'])} | {metrics} | {_pct(t.get('score'))} |")
    lines += ["", "## Per job", "", "| task | seed | status | metrics | score | started from | time |",
              "|---|---|---|---|---|---|---|"]
    for j in summary["jobs"]:
        metrics = ", ".join(f"{k} {_pct(v)}" for k, v in j["metrics"].items()) or (j["error"] or "")
        start = {"random": "random init", "mnli": f"MNLI: {j['init_from']}"}.get(j["init_kind"], j["init_from"])
        lines.append(f"| {j['task']} | {j['seed']} | {j['status']} | {metrics} | {_pct(j['score'])} | {start} | "
                     f"{j['duration_s']:.0f}s |")
    return "\n".join(lines) + "\n"


def write_results(cfg: GlueConfig, summary: Dict[str, Any]) -> tuple[str, str]:
    folder = run_folder(cfg)
    os.makedirs(folder, exist_ok=True)
    json_path, md_path = os.path.join(folder, "results.json"), os.path.join(folder, "results.md")
    with open(json_path, "w") as f:
        json.dump(summary, f, indent=2, default=str)
    with open(md_path, "w") as f:
        f.write(results_markdown(summary))
    return json_path, md_path


def preflight(cfg: GlueConfig) -> None:
    """Fail before any job on problems every job would hit: model config, tokenizer, start checkpoint."""
    from mosaicbert.builders import build_hf_config
    from mosaicbert.config import ConfigError

    build_hf_config(cfg.model, num_labels=2)
    try:
        get_tokenizer(cfg.tokenizer)
    except Exception as e:
        raise ConfigError(f"config key 'tokenizer' = {cfg.tokenizer!r}: cannot load it: {e}") from e
    for key, path in (("model.pretrained_checkpoint", cfg.model.pretrained_checkpoint),
                      ("mnli_checkpoint", cfg.mnli_checkpoint)):
        if not path:
            continue
        if key == "mnli_checkpoint" and not os.path.exists(os.path.expanduser(path)):
            raise ConfigError(f"config key '{key}' = {path!r}: no such file or folder")
        try:  # a hub id is downloaded here, once; the jobs then read the local cache
            resolve_source(path)
        except FileNotFoundError as e:
            raise ConfigError(f"config key '{key}' = {path!r}: {e}") from e
    if cfg.data_dir is not None and not os.path.isdir(cfg.data_dir):
        raise ConfigError(f"config key 'data_dir' = {cfg.data_dir!r}: no such folder (null loads from the hub)")


def run_glue(cfg: GlueConfig, job_fn: Callable[[GlueConfig, Job], JobResult] = run_job) -> Dict[str, Any]:
    """Plan, run, summarise and write results.json / results.md into the run folder; returns the summary."""
    _setup_logging()
    preflight(cfg)
    jobs, skipped = plan_jobs(cfg)
    names = ", ".join(sorted({j.task for j in jobs}, key=TASK_NAMES.index)) or "no task"
    _progress(f"GLUE {cfg.run_name}: {len(jobs)} job(s) for {names}" + (f"; skipped {', '.join(skipped)}" if skipped else ""))
    job_results = run_jobs(cfg, jobs, job_fn)
    summary = summarize(cfg, job_results, skipped)
    json_path, md_path = write_results(cfg, summary)
    print(results_markdown(summary), flush=True)
    _progress(f"wrote {json_path} and {md_path}")
    sys.stdout.flush()
    return summary
