"""Time-to-quality: MosaicBERT vs Hugging Face BERT for the same wall-clock budget on one GPU.

Three steps, each resumable (run a step again after an interruption and it continues):

    python benchmarks/time_to_quality.py train  --data DATA_MDS --tokenizer VOCAB --budget 10min --eval_every 30s
    python benchmarks/time_to_quality.py glue   --glue_data GLUE_TSV_DIR --tokenizer VOCAB
    python benchmarks/time_to_quality.py report --dest runs/ttq/report

`train` pretrains each model with main.py and its own recipe (yamls/base.yaml: 30% masking; yamls/hf-bert-base.yaml:
15% masking), at the same size, batch, learning rate, schedule shape (warmup then linear decay over the wall-clock
budget) and budget, evaluating both on the same held-out split with the same fixed 15% masks every --eval_every of
training time. Runs autoresume from their checkpoints, so a budget longer than one job is split over several
calls (use --segment_timeout to stop cleanly before a machine's limit). `glue` finetunes both final checkpoints with
glue.py on the given tasks. `report` writes loss_vs_time.png, loss_vs_time.csv and time_to_quality.md.

Several GPUs: `train --gpus 0,1` trains the two models at the same time, each on its own GPU; `pick` chooses, per
model, the best of several `train` runs (e.g. one --out per learning rate) by final eval loss; `glue
--concurrent_glue` runs the GLUE runs at once; `--random_init_baseline mosaic_bert` adds a random-init GLUE run.
`benchmarks/time_to_quality.sh` chains all of it for one 4-GPU machine.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"mosaic_bert": "yamls/base.yaml", "hf_bert": "yamls/hf-bert-base.yaml"}
GLUE_YAMLS = {"mosaic_bert": "yamls/glue/base.yaml", "hf_bert": "yamls/glue/hf-bert-base.yaml"}
LABELS = {"mosaic_bert": "MosaicBERT", "hf_bert": "HF BERT"}
SIZES = {
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "small": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128),
}


def size_overrides(size: str) -> list[str]:
    return [f"model.config_overrides.{k}={v}" for k, v in SIZES[size].items()]


def run_all(cmds: list[list[str]], gpus: list[str] | None, concurrent: bool, timeout: float | None) -> int:
    """Run the commands one after another, or all at once (command i on GPU gpus[i % len(gpus)] when given).

    Returns 0 when every command succeeded, 3 when one was stopped at `timeout` (resume by running the step again),
    else 1.
    """
    def env_for(i: int) -> dict:
        env = dict(os.environ)
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = gpus[i % len(gpus)]
        return env

    codes, timed_out = [], False
    deadline = None if timeout is None else time.monotonic() + timeout
    batches = [list(enumerate(cmds))] if concurrent else [[ic] for ic in enumerate(cmds)]
    for batch in batches:
        procs = []
        for i, cmd in batch:
            where = f" (CUDA_VISIBLE_DEVICES={gpus[i % len(gpus)]})" if gpus else ""
            print("+" + where, " ".join(cmd), flush=True)
            procs.append((cmd, subprocess.Popen(cmd, cwd=ROOT, env=env_for(i))))
        for cmd, proc in procs:
            try:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                codes.append(proc.wait(timeout=left))
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                print(f"segment time limit reached for `{' '.join(cmd[:6])} ...`; run the step again to resume "
                      "from the last checkpoint", flush=True)
                timed_out = True
    return 3 if timed_out else (1 if any(codes) else 0)


def train(args) -> int:
    cmds = []
    for model in args.models.split(","):
        folder = Path(args.out) / model
        cmds.append([
            sys.executable, "-m", "composer.cli.launcher", "-n", "1", "main.py", MODELS[model],
            f"data.local={args.data}", f"tokenizer={args.tokenizer}", f"run_name=ttq-{model}",
            f"save_folder={folder}", "autoresume=true", "max_duration=100000000ba",
            f"max_train_time={args.budget}", f"eval_interval={args.eval_every}", f"save_interval={args.eval_every}",
            "save_num_checkpoints_to_keep=2", f"global_train_batch_size={args.batch}",
            f"device_train_microbatch_size={args.batch}", f"optimizer.lr={args.lr}",
            f"scheduler.t_warmup={args.warmup}dur", f"eval_subset_num_batches={args.eval_batches}",
            f"compile={str(args.compile).lower()}", f"data.num_workers={args.num_workers}",
            "algorithms.gradient_clipping.clipping_type=norm",
            f"algorithms.gradient_clipping.clipping_threshold={args.clip}",
            *size_overrides(args.size), *args.extra])
    gpus = args.gpus.split(",") if args.gpus else None
    if gpus and 1 < len(gpus) < len(cmds):
        print(f"--gpus {args.gpus}: {len(cmds)} models need as many GPUs to train at once, one per GPU",
              file=sys.stderr)
        return 2
    return run_all(cmds, gpus, concurrent=bool(gpus and len(gpus) > 1), timeout=args.segment_timeout)


def final_eval_loss(folder: Path) -> float | None:
    metrics = folder / "metrics.jsonl"
    points = read_eval_points(metrics) if metrics.exists() else []
    return points[-1]["eval/LanguageCrossEntropy"] if points else None


def pick(args) -> int:
    """Per model, link the `train` run (one --out folder per setting) with the lowest final eval loss into --out."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for model in args.models.split(","):
        losses = {Path(f): final_eval_loss(Path(f) / model) for f in args.candidates}
        finished = {f: v for f, v in losses.items() if v is not None}
        if not finished:
            print(f"{model}: no eval results in any of {args.candidates}", file=sys.stderr)
            return 2
        best = min(finished, key=finished.get)
        link = out / model
        if link.is_symlink():
            link.unlink()
        elif link.exists():
            print(f"{link} exists and is not a link made by `pick`; choose another --out", file=sys.stderr)
            return 2
        link.symlink_to((best / model).resolve(), target_is_directory=True)
        tried = ", ".join(f"{f}: {v:.3f}" if v is not None else f"{f}: no result" for f, v in losses.items())
        lines.append(f"{model}: picked {best} (final eval loss; {tried})")
    (out / "picked.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def glue_variants(args) -> list[tuple[str, str, str | None]]:
    """(model, folder name under --out, starting checkpoint) per GLUE run; None = random init."""
    variants = []
    random_init = set(filter(None, (args.random_init_baseline or "").split(",")))
    for model in args.models.split(","):
        variants.append((model, f"glue-{model}", str(Path(args.out) / model / "latest-rank0.pt")))
        if model in random_init:
            variants.append((model, f"glue-{model}-random-init", None))
    return variants


def glue(args) -> int:
    cmds = []
    for model, name, ckpt in glue_variants(args):
        if ckpt is not None and not Path(ckpt).exists():
            print(f"{model}: no checkpoint at {ckpt}; run `train` first", file=sys.stderr)
            return 2
        cmds.append([sys.executable, "glue.py", GLUE_YAMLS[model], f"model.pretrained_checkpoint={ckpt or 'null'}",
                     f"tokenizer={args.tokenizer}", f"data_dir={args.glue_data or 'null'}",
                     f"tasks_to_run=[{args.tasks}]", "mnli_start_tasks=[]", f"save_folder={Path(args.out) / name}",
                     f"run_name=ttq-{name}",
                     *size_overrides(args.size), *args.glue_extra, *args.extra])
    # Concurrent runs each spread their jobs over every visible GPU (small models leave a GPU mostly idle).
    return run_all(cmds, None, concurrent=args.concurrent_glue, timeout=None)


def read_eval_points(metrics: Path) -> list[dict]:
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    points, seen = [], set()
    for r in rows:
        if "eval/LanguageCrossEntropy" in r and r["batch"] not in seen:
            seen.add(r["batch"])
            points.append(r)
    return sorted(points, key=lambda r: r["train_seconds"])


def time_to_reach(points: list[dict], target: float) -> float | None:
    """Training seconds at which the eval loss first reaches `target` (linear between eval points)."""
    prev = None
    for p in points:
        loss = p["eval/LanguageCrossEntropy"]
        if loss <= target:
            if prev is None:
                return p["train_seconds"]
            l0, t0 = prev["eval/LanguageCrossEntropy"], prev["train_seconds"]
            return t0 + (l0 - target) / (l0 - loss) * (p["train_seconds"] - t0)
        prev = p
    return None


def glue_scores(folder: Path) -> dict | None:
    path = folder / "results.json"
    return json.loads(path.read_text()) if path.exists() else None


def read_curve(path: Path) -> list[dict]:
    """Eval points from a run folder or metrics.jsonl, or from `report`'s CSV as FILE.csv:MODEL (an earlier run)."""
    if ".csv" in path.name:
        stem, _, model = str(path).rpartition(".csv")
        file, model = stem + ".csv", model.removeprefix(":")
        with open(file, newline="") as f:
            rows = [r for r in csv.DictReader(f) if not model or r["model"] == model]
        if not rows:
            raise ValueError(f"no rows for model {model!r} in {file}")
        return [{"train_seconds": float(r["train_seconds"]), "batch": int(r["batch"]), "samples": int(r["samples"]),
                 "eval/LanguageCrossEntropy": float(r["eval_mlm_loss"]),
                 "eval/MaskedAccuracy": float(r["eval_masked_accuracy"])} for r in rows]
    metrics = path / "metrics.jsonl" if path.is_dir() else path
    points = read_eval_points(metrics)
    if not points:
        raise ValueError(f"no eval points in {metrics}")
    return points


def report(args) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dest = Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True)
    curves = {}
    for model in args.models.split(","):
        metrics = Path(args.out) / model / "metrics.jsonl"
        if not metrics.exists():
            print(f"{model}: {metrics} not found; run `train` first", file=sys.stderr)
            return 2
        curves[model] = read_eval_points(metrics)
    extra = {}
    for item in args.extra_curve:
        label, _, path = item.partition("=")
        try:
            extra[label] = read_curve(Path(path))
        except (OSError, ValueError) as e:
            print(f"--extra_curve {item!r}: {e}", file=sys.stderr)
            return 2

    with open(dest / "loss_vs_time.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model", "train_seconds", "batch", "samples", "eval_mlm_loss", "eval_masked_accuracy"])
        for model, pts in [*curves.items(), *extra.items()]:
            for p in pts:
                w.writerow([model, f"{p['train_seconds']:.1f}", p["batch"], p["samples"],
                            f"{p['eval/LanguageCrossEntropy']:.4f}",
                            f"{p.get('eval/MaskedAccuracy', float('nan')):.4f}"])

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for model, pts in curves.items():
        ax.plot([p["train_seconds"] / 60 for p in pts], [p["eval/LanguageCrossEntropy"] for p in pts], marker="o",
                markersize=3, label=LABELS.get(model, model))
    for label, pts in extra.items():
        ax.plot([p["train_seconds"] / 60 for p in pts], [p["eval/LanguageCrossEntropy"] for p in pts],
                linestyle="--", marker=".", markersize=3, alpha=0.7, label=label)
    ax.set_xlabel("training wall-clock (minutes, eval excluded)")
    ax.set_ylabel("held-out MLM loss (15% masking)")
    ax.set_title(args.title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(dest / "loss_vs_time.png", dpi=120)

    lines = [f"# {args.title}", "", "| model | final eval loss | training seconds | steps |", "|---|---:|---:|---:|"]
    for model, pts in [*curves.items(), *extra.items()]:
        last = pts[-1]
        lines.append(f"| {LABELS.get(model, model)} | {last['eval/LanguageCrossEntropy']:.3f} | "
                     f"{last['train_seconds']:.0f} | {last['batch']} |")
    if "mosaic_bert" in curves and "hf_bert" in curves:
        target = curves["hf_bert"][-1]["eval/LanguageCrossEntropy"]
        budget = curves["hf_bert"][-1]["train_seconds"]
        t = time_to_reach(curves["mosaic_bert"], target)
        reach = (f"{t:.0f} s = {t / budget:.2f} of HF BERT's {budget:.0f} s" if t is not None
                 else "not reached within the budget")
        lines += ["", f"MosaicBERT reaches HF BERT's final eval loss ({target:.3f}): {reach}."]

    glue_rows = {}
    for model in curves:
        glue_rows[LABELS.get(model, model)] = glue_scores(Path(args.out) / f"glue-{model}")
        random_init = glue_scores(Path(args.out) / f"glue-{model}-random-init")
        if random_init:
            glue_rows[f"{LABELS.get(model, model)}, random init (no pretraining)"] = random_init
    if any(glue_rows.values()):
        tasks = sorted({t for r in glue_rows.values() if r for t, e in r["tasks"].items() if "score" in e})
        lines += ["", "GLUE (dev, x100; task score = mean over seeds, two-metric tasks averaged):", "",
                  "| model | " + " | ".join(tasks) + " | average |", "|---|" + "---:|" * (len(tasks) + 1)]
        for model, r in glue_rows.items():
            if not r:
                continue
            cells = [f"{100 * r['tasks'][t]['score']:.1f}" if "score" in r["tasks"].get(t, {}) else "—" for t in tasks]
            avg = "—" if r["glue_average"] is None else f"{100 * r['glue_average']:.1f}"
            lines.append(f"| {model} | " + " | ".join(cells) + f" | {avg} |")
    (dest / "time_to_quality.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("step", choices=["train", "pick", "glue", "report"])
    p.add_argument("--out", default="runs/ttq", help="folder for checkpoints, metrics and GLUE runs")
    p.add_argument("--models", default="mosaic_bert,hf_bert")
    p.add_argument("--size", default="small", choices=sorted(SIZES), help="the same shape for both models")
    p.add_argument("--data", help="MDS folder (train/ and val/) for `train`")
    p.add_argument("--tokenizer", default="bert-base-uncased")
    p.add_argument("--budget", default="10min", help="training wall-clock per model")
    p.add_argument("--eval_every", default="30s")
    p.add_argument("--eval_batches", type=int, default=20)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=float, default=0.06, help="fraction of the budget")
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--num_workers", type=int, default=8)
    p.add_argument("--segment_timeout", type=float, default=None, help="stop `train` after this many seconds")
    p.add_argument("--gpus", default=None,
                   help="train: comma-separated GPU ids; with several, the models train at the same time, "
                        "model i on GPU i (each still on one GPU)")
    p.add_argument("--random_init_baseline", default="", metavar="MODELS",
                   help="glue: also finetune these models (comma-separated) from random init: what pretraining adds")
    p.add_argument("--candidates", nargs="+", default=[], metavar="DIR",
                   help="pick: `train` --out folders of different settings (e.g. learning rates) to choose from")
    p.add_argument("--concurrent_glue", action="store_true",
                   help="glue: run the GLUE runs at the same time, each spreading its jobs over all visible GPUs")
    p.add_argument("--glue_extra", action="append", default=[], metavar="KEY=VALUE",
                   help="an override for glue.py only, e.g. tasks.sst2.seeds=[19] (repeatable)")
    p.add_argument("--glue_data", default=None, help="a folder of GLUE TSVs (default: the Hugging Face Hub)")
    p.add_argument("--tasks", default="cola,sst2,mrpc,stsb,rte")
    p.add_argument("--dest", default="runs/ttq/report",
                   help="report: the folder for loss_vs_time.png/csv and time_to_quality.md")
    p.add_argument("--extra_curve", action="append", default=[], metavar="LABEL=PATH",
                   help="report: one more dashed curve, from a run folder, a metrics.jsonl, or an earlier report's "
                        "loss_vs_time.csv as FILE.csv:MODEL (repeatable); it joins the CSV and the table")
    p.add_argument("--title", default="MosaicBERT vs HF BERT: held-out MLM loss against training time")
    p.add_argument("extra", nargs="*", help="more key=value overrides for main.py / glue.py")
    args = p.parse_intermixed_args(argv)
    if args.step == "train" and not args.data:
        p.error("train needs --data (an MDS folder written by python -m mosaicbert.pretrain.convert)")
    return {"train": train, "pick": pick, "glue": glue, "report": report}[args.step](args)


if __name__ == "__main__":
    sys.exit(main())
