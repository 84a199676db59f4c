"""Pretrain MosaicBERT (or the Hugging Face BERT baseline) with Composer.

    composer main.py yamls/base.yaml [key=value ...]          # all GPUs of this machine
    composer -n 2 main.py yamls/quickstart.yaml               # two processes (gloo on CPU, NCCL on GPUs)

The YAML file and overrides are validated against mosaicbert.pretrain.config.PretrainConfig;
mosaicbert.pretrain.trainer turns it into a composer.Trainer.
"""

import contextlib
import logging
import os
import sys

from mosaicbert.core.cli import report_error, run_script
from mosaicbert.core.config import ConfigError
from mosaicbert.pretrain.config import PretrainConfig, load_pretrain_config
from mosaicbert.pretrain.runlock import RunLock, RunLockedError, exit_with_parent

log = logging.getLogger("mosaicbert")


def load_config(yaml_path: str, overrides: list[str]):
    cfg = load_pretrain_config(yaml_path, overrides)
    if cfg.run_name is None:
        cfg.run_name = os.path.splitext(os.path.basename(yaml_path))[0]
    if cfg.save_folder is None:  # the run's folder follows its name: a new run_name is a new run
        cfg.save_folder = os.path.join("runs", cfg.run_name)
    return cfg


def pretrain(cfg) -> int:
    # heavy imports after the config is known to be good
    from mosaicbert.pretrain.mlm import DatasetMismatchError, ShardReadError
    from mosaicbert.pretrain.record import check_run_folder, write_record
    from mosaicbert.pretrain.resume import disk_full_message
    from mosaicbert.pretrain.trainer import build_pretrain_trainer, run_folder

    folder = run_folder(cfg)
    trainer = None
    rank = int(os.environ.get("RANK", "0"))
    try:
        # One run per folder: a second run (or a rerun while this one still trains) is refused, not interleaved.
        lock = RunLock(folder, rank=rank) if "://" not in folder else contextlib.nullcontext()
        with lock:
            check_run_folder(cfg, folder)  # before anything in the folder is touched
            trainer = build_pretrain_trainer(cfg)
            if rank == 0 and "://" not in folder:
                write_record(cfg, folder)
            resumed_at = int(trainer.state.timestamp.batch)
            if resumed_at and rank == 0:
                print(f"autoresume: run {cfg.run_name!r} continues from batch {resumed_at} ({cfg.save_folder})",
                      flush=True)
            done = finished(trainer, cfg)
            if done and rank == 0:
                print(f"run {cfg.run_name!r} in {folder!r} is already finished ({done}): nothing to train. Use another "
                      f"save_folder (or raise max_duration) to train further.", flush=True)
            if not done:
                if cfg.eval_at_start and int(trainer.state.timestamp.batch) == 0:
                    trainer.eval()  # logged as eval metrics at batch 0
                trainer.fit()
                if rank == 0:
                    print(summary(trainer, cfg, folder), flush=True)
            trainer.close()
    except ConfigError:
        raise  # run_script reports it (exit status 2)
    except (RunLockedError, ShardReadError, DatasetMismatchError, FileNotFoundError) as e:
        if report_error(e) is None:  # the project's message, also when a DataLoader worker raised it
            print(f"error: {e}", file=sys.stderr)
        return 1
    except Exception as e:
        full = disk_full_message(e, cfg.save_folder, trainer.state if trainer is not None else None)
        if full is None and report_error(e) is not None:  # the project's own error, or a DataLoader worker's
            return 1
        if full is None:
            log.exception("training failed")
        # the last line says what happened, not the innermost frame of a traceback
        print(f"error: {full or f'{type(e).__name__}: {e}'}", file=sys.stderr)
        return 1
    return 0


def summary(trainer, cfg, folder: str) -> str:
    """The end-of-run lines: final metrics, where the checkpoints are, and what to run next."""
    from mosaicbert.core.runs import human_duration

    state = trainer.state
    lines = [f"run {cfg.run_name!r} finished: {int(state.timestamp.batch)} batches, {int(state.timestamp.sample)} "
             f"samples in {human_duration(state.timestamp.total_wct.total_seconds())}"]
    for label, metrics in state.eval_metrics.items():
        shown = ", ".join(f"{name} {float(m.compute()):.4f}" for name, m in metrics.items())
        lines.append(f"  last evaluation ({label}): {shown}")
    latest = os.path.join(folder, "latest-rank0.pt")
    lines.append(f"  checkpoints: {folder} (latest: {latest}); config: {os.path.join(folder, 'config.yaml')}")
    if "://" not in folder:
        lines.append(f"  metrics: {os.path.join(folder, 'metrics.jsonl')} "
                     f"(plot: python -m mosaicbert.plot {folder})")
    lines.append(f"  export: python -m mosaicbert.export {latest} exported/{cfg.run_name}")
    return "\n".join(lines)


def finished(trainer, cfg) -> str:
    """'' when the (resumed) run still has training to do, else where it stopped."""
    from mosaicbert.core.config import parse_seconds

    state = trainer.state
    max_duration, budget_s = state.max_duration, parse_seconds(cfg.max_train_time)
    if budget_s is not None and state.timestamp.total_wct.total_seconds() >= budget_s:
        return f"{state.timestamp.total_wct.total_seconds():.0f} s of the {cfg.max_train_time} budget trained"
    if max_duration is not None and int(state.timestamp.get(max_duration.unit)) >= int(max_duration.value):
        return f"{int(state.timestamp.get(max_duration.unit))} of max_duration={cfg.max_duration} trained"
    return ""


def main(argv: list[str]) -> int:
    return run_script(argv, __doc__, load_config, pretrain, show_config=int(os.environ.get("RANK", "0")) == 0,
                      schema=PretrainConfig)


if __name__ == "__main__":
    if "LOCAL_RANK" in os.environ:  # started by a launcher (composer -n N, torchrun): die with it, never orphaned
        exit_with_parent()
    sys.exit(main(sys.argv[1:]))
