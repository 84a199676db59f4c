"""GLUE results: per-task means over seeds, the GLUE average, results.json and results.md.

Scores (the rule written into results.md)
    A job's score is its task's primary metric, or the mean of the task's metrics when it has two:
    MNLI (matched acc + mismatched acc)/2, MRPC and QQP (F1 + accuracy)/2, STS-B (Pearson + Spearman)/2,
    CoLA Matthews correlation, QNLI / RTE / SST-2 accuracy. A task's score is the mean of its job scores over
    seeds; the GLUE average is the mean of the task scores over the tasks that ran (skipped or failed tasks are
    left out and listed).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Dict, List, Optional

from mosaicbert.glue.config import GlueConfig
from mosaicbert.glue.plan import JobResult, glue_folder
from mosaicbert.glue.tasks import TASK_NAMES, TASKS

SCORE_RULE = (
    "A job's score is its task's primary metric, or the mean of its metrics for tasks with two: "
    "MNLI (matched + mismatched accuracy)/2, MRPC and QQP (F1 + accuracy)/2, STS-B (Pearson + Spearman)/2; "
    "CoLA Matthews correlation; QNLI, RTE, SST-2 accuracy. A task's score is the mean over its seeds; the GLUE "
    "average is the mean of the task scores over the tasks that ran (skipped and failed tasks are left out)."
)


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
    folder = glue_folder(cfg)
    os.makedirs(folder, exist_ok=True)
    json_path, md_path = os.path.join(folder, "results.json"), os.path.join(folder, "results.md")
    with open(json_path, "w") as f:
        json.dump(summary, f, indent=2, default=str)
    with open(md_path, "w") as f:
        f.write(results_markdown(summary))
    return json_path, md_path
