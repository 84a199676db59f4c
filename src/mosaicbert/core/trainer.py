"""The pieces every command's Composer Trainer is built from: model config, optimizer, scheduler, loggers, device,
compilation and interval rules."""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
import shutil
from typing import Any, Optional

import torch
from composer.loggers import FileLogger, LoggerDestination, TensorboardLogger, WandBLogger
from composer.optim import (
    ConstantWithWarmupScheduler,
    CosineAnnealingWithWarmupScheduler,
    DecoupledAdamW,
    LinearWithWarmupScheduler,
)
from composer.utils import dist

from mosaicbert.core.callbacks import WallClockLinearSchedule, every_seconds
from mosaicbert.core.config import (
    ConfigError,
    ModelConfig,
    OptimizerConfig,
    SchedulerConfig,
    TrackersConfig,
    check_keys,
    parse_seconds,
)
from mosaicbert.model import MosaicBertConfig

log = logging.getLogger("mosaicbert")


def build_hf_config(model_cfg: ModelConfig, **extra: Any):
    """MosaicBertConfig or transformers.BertConfig from the config's overrides (unknown fields are errors)."""
    from transformers import BertConfig

    if model_cfg.name == "mosaic_bert":
        config_cls, defaults = MosaicBertConfig, {}
    elif model_cfg.name == "hf_bert":
        # The baseline: transformers' BERT, padded to the same 30528 vocab, with BERT's attention dropout.
        config_cls, defaults = BertConfig, {"vocab_size": 30528, "attention_probs_dropout_prob": 0.1}
    else:
        raise ConfigError(f"config key 'model.name' = {model_cfg.name!r} is not one of ['mosaic_bert', 'hf_bert']")
    check_keys(model_cfg.config_overrides, list(config_cls().to_dict()), "model.config_overrides")
    try:
        return config_cls(**{**defaults, **dict(model_cfg.config_overrides), **extra})
    except ValueError as e:
        raise ConfigError(f"model.config_overrides: {e}") from e


def vocab_size_for(model_cfg: ModelConfig, tokenizer) -> dict[str, int]:
    """{"vocab_size": the tokenizer's size rounded up to a multiple of 64 (fast matmuls)} unless the config sets
    model.config_overrides.vocab_size; bert-base-uncased's 30522 tokens give MosaicBERT's 30528."""
    if "vocab_size" in model_cfg.config_overrides:
        return {}
    return {"vocab_size": (len(tokenizer) + 63) // 64 * 64}


class FusedDecoupledAdamW(torch.optim.AdamW):
    """Composer's DecoupledAdamW update rule on torch's fused AdamW kernel.

    DecoupledAdamW decays weights by (lr_t / lr_0) * weight_decay; torch's AdamW by lr_t * weight_decay'. With
    weight_decay' = weight_decay / lr_0 the updates are the same (tested), but one fused kernel replaces
    DecoupledAdamW's per-parameter Python loop, which also synchronises with the GPU for every parameter.
    """

    def __init__(self, params, lr: float, betas, eps: float, weight_decay: float):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay / lr, fused=True)


def build_optimizer(cfg: OptimizerConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    kwargs = dict(lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)
    if cfg.name == "decoupled_adamw":
        return FusedDecoupledAdamW(model.parameters(), **kwargs) if cfg.fused else DecoupledAdamW(
            model.parameters(), **kwargs)
    if cfg.name == "adamw":
        return torch.optim.AdamW(model.parameters(), **kwargs)
    raise ConfigError(f"config key 'optimizer.name' = {cfg.name!r} is not one of ['decoupled_adamw', 'adamw']")


def build_scheduler(cfg: SchedulerConfig, max_train_time: Optional[str] = None):
    budget_s = parse_seconds(max_train_time)
    if budget_s is not None:  # the schedule runs over the wall-clock budget (validated: linear, t_warmup in dur)
        return WallClockLinearSchedule(budget_s, float(cfg.t_warmup.removesuffix("dur")), cfg.alpha_f)
    if cfg.name == "linear_decay_with_warmup":
        return LinearWithWarmupScheduler(t_warmup=cfg.t_warmup, alpha_f=cfg.alpha_f)
    if cfg.name == "constant_with_warmup":
        return ConstantWithWarmupScheduler(t_warmup=cfg.t_warmup)
    if cfg.name == "cosine_with_warmup":
        return CosineAnnealingWithWarmupScheduler(t_warmup=cfg.t_warmup, alpha_f=cfg.alpha_f)
    raise ConfigError(f"config key 'scheduler.name' = {cfg.name!r} is not a known scheduler")


# The package each tracker needs, and what to install.
_TRACKER_PACKAGES = {"wandb": ("wandb", "wandb"), "mlflow": ("mlflow", "mlflow-skinny"),
                     "tensorboard": ("tensorboard", "tensorboard")}


class WandBTracker(WandBLogger):
    """Composer's WandBLogger as a tracker only: this recipe keeps checkpoints in save_folder, never in W&B
    artifacts, so autoresume must not ask W&B for one (Composer tries every logger; W&B's API then needs an API
    key even in offline mode and fails instead of answering 'not found')."""

    def download_file(self, remote_file_name, destination, overwrite=False, progress_bar=True):
        raise NotImplementedError("checkpoints are not stored in W&B")


def build_loggers(cfg: TrackersConfig, command: str = "pretrain", group: Optional[str] = None,
                  resume: bool = False) -> list[LoggerDestination]:
    """Composer's logger destinations for the `loggers:` section (the same keys in every command).

    command names the default MLflow experiment (mosaicbert-<command>); group gathers related runs (a GLUE sweep's
    jobs: W&B group, MLflow run_group tag); resume continues the MLflow run of the same run name (autoresume).
    A tracker whose package is missing is a ConfigError naming the key and the package to install.
    """
    for key, (module, package) in _TRACKER_PACKAGES.items():
        if getattr(cfg, key) is not None and importlib.util.find_spec(module) is None:
            raise ConfigError(f"config key 'loggers.{key}' needs the {module} package: pip install {package}")
    destinations: list[LoggerDestination] = []
    if cfg.wandb is not None:
        destinations.append(WandBTracker(project=cfg.wandb.project, entity=cfg.wandb.entity,
                                         tags=list(cfg.wandb.tags), group=group))
    if cfg.mlflow is not None:
        from composer.loggers import MLFlowLogger

        m = cfg.mlflow
        experiment = m.experiment_name or os.environ.get("MLFLOW_EXPERIMENT_NAME") or f"mosaicbert-{command}"
        destinations.append(MLFlowLogger(experiment_name=experiment, tracking_uri=m.tracking_uri,
                                         tags={"command": command, **dict(m.tags)}, run_group=group,
                                         log_system_metrics=m.log_system_metrics, resume=resume))
    if cfg.tensorboard is not None:
        destinations.append(TensorboardLogger(log_dir=cfg.tensorboard.log_dir, flush_interval=50))
    if cfg.file is not None:
        destinations.append(FileLogger(filename=cfg.file.filename))
    return destinations


def flat_hparams(obj: Any, prefix: str = "") -> dict[str, Any]:
    """A config (dataclass or dict tree) as {'optimizer.lr': 5e-4, ...}: the hyperparameters a tracker shows and
    compares across runs. Lists become their string form (MLflow params are scalars)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for key, value in obj.items():
            out.update(flat_hparams(value, f"{prefix}{key}."))
        return out
    value = obj if obj is None or isinstance(obj, (bool, int, float)) else str(obj)
    return {prefix[:-1]: value}


def resolve_compile(compile: Any, compile_mode: Optional[str], device: str) -> Optional[dict]:
    """Composer's compile_config for `compile` (true | false | auto) on `device`; None runs the model eagerly.

    auto compiles on GPUs and runs eagerly on CPU, where compiling costs more than a short CPU run gains; true
    compiles on any device. When compiling cannot work, auto says so once and runs eagerly, true stops.
    """
    if compile is False:
        return None
    if compile == "auto" and device != "gpu":
        _log_once("compile: auto runs uncompiled on %s (set compile=true to compile there anyway)", device)
        return None
    missing = _missing_compiler(device)
    if missing and compile == "auto":
        _log_once("compile: auto runs uncompiled: %s", missing)
        return None
    if missing:
        raise ConfigError(f"config key 'compile' = true, but {missing}: install it or set compile=false")
    return {"mode": compile_mode} if compile_mode else {}


def _missing_compiler(device: str) -> Optional[str]:
    """Why torch.compile's default backend (Inductor) cannot generate code on `device`, or None if it can."""
    if device == "gpu":
        if importlib.util.find_spec("triton") is None:
            return "Inductor needs Triton for GPU kernels and this torch has no triton package"
        return None
    compiler = os.environ.get("CXX") or "g++"
    if shutil.which(compiler) is None:
        return f"Inductor needs a C++ compiler for CPU code and {compiler!r} is not on PATH (set CXX)"
    return None


def _log_once(msg: str, *args: Any) -> None:
    if dist.get_global_rank() == 0:
        log.warning(msg, *args)


def time_or_composer_interval(interval: str):
    """'60s'/'5min' -> a wall-clock interval callable; Composer time strings ('2000ba') pass through."""
    seconds = parse_seconds(interval)
    return every_seconds(seconds) if seconds is not None else interval


def device_batch_size(global_batch_size: int) -> int:
    world = dist.get_world_size()
    if global_batch_size % world != 0:
        raise ConfigError(
            f"config key 'global_train_batch_size' = {global_batch_size} is not divisible by the number of "
            f"processes ({world}): pick a multiple of {world}"
        )
    return global_batch_size // world


def resolve_device(device: Optional[str]) -> str:
    if device is None:
        return "gpu" if torch.cuda.is_available() else "cpu"
    if device == "gpu" and not torch.cuda.is_available():
        raise ConfigError("config key 'device' = 'gpu' but no CUDA GPU is visible: set device=cpu")
    return device
