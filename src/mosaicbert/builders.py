"""The one place where config names become objects: model, data, optimizer, scheduler, callbacks, loggers.

main.py and glue.py only call these builders; nothing here is copied into scripts.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from typing import Any, Optional

import torch
from composer import Trainer
from composer.algorithms import GradientClipping
from composer.callbacks import LRMonitor, MemoryMonitor, RuntimeEstimator, SpeedMonitor
from composer.core import Callback, DataSpec
from composer.loggers import FileLogger, LoggerDestination, TensorboardLogger, WandBLogger
from composer.optim import (
    ConstantWithWarmupScheduler,
    CosineAnnealingWithWarmupScheduler,
    DecoupledAdamW,
    LinearWithWarmupScheduler,
)
from composer.utils import dist, reproducibility
from composer.utils.parallelism import FSDP2Config

from mosaicbert.callbacks import FiniteLossCheck, MetricsJsonl, StepSeededRNG
from mosaicbert.checkpoint import load_weights
from mosaicbert.composer_models import MaskedLMModel
from mosaicbert.config import (
    AlgorithmsConfig,
    CallbacksConfig,
    ConfigError,
    DDPConfig,
    LoggersConfig,
    ModelConfig,
    OptimizerConfig,
    PretrainConfig,
    SchedulerConfig,
    check_keys,
    parse_seconds,
)
from mosaicbert.data.mlm import build_mlm_dataloader, num_samples_in_batch, split_mlm_batch
from mosaicbert.data.tokenizer import load_tokenizer
from mosaicbert.model import MosaicBertConfig, MosaicBertForMaskedLM
from mosaicbert.resume import (
    check_checkpoint_matches_model,
    checkpoint_problem,
    latest_checkpoint,
    set_aside_unfinished_checkpoints,
)
from mosaicbert.timing import WallClockBudget, WallClockLinearSchedule, every_seconds

log = logging.getLogger("mosaicbert")

# ---------------------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------------------


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


def build_mlm_model(model_cfg: ModelConfig, tokenizer) -> MaskedLMModel:
    from transformers import BertForMaskedLM

    config = build_hf_config(model_cfg, pad_token_id=tokenizer.pad_token_id)
    if len(tokenizer) > config.vocab_size:
        raise ConfigError(
            f"tokenizer has {len(tokenizer)} tokens but model.config_overrides.vocab_size is {config.vocab_size}: "
            f"set model.config_overrides.vocab_size >= {len(tokenizer)} (a multiple of 64 is fastest)"
        )
    model = MosaicBertForMaskedLM(config) if model_cfg.name == "mosaic_bert" else BertForMaskedLM(config)
    if model_cfg.pretrained_checkpoint:
        load_weights(model, model_cfg.pretrained_checkpoint)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("model %s: %.1fM parameters", model_cfg.name, n_params / 1e6)
    return MaskedLMModel(model, tokenizer=tokenizer)


# ---------------------------------------------------------------------------------------------------------------
# Optimizer, scheduler, algorithms, callbacks, loggers
# ---------------------------------------------------------------------------------------------------------------


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


def build_algorithms(cfg: AlgorithmsConfig) -> list:
    algorithms = []
    if cfg.gradient_clipping is not None:
        gc = cfg.gradient_clipping
        algorithms.append(GradientClipping(clipping_type=gc.clipping_type, clipping_threshold=gc.clipping_threshold))
    return algorithms


def build_callbacks(
    cfg: CallbacksConfig, loggers: LoggersConfig, metrics_path: Optional[str], seed: int,
    budget_s: Optional[float] = None,
) -> list[Callback]:
    callbacks: list[Callback] = [FiniteLossCheck(), StepSeededRNG(seed)]
    if budget_s is not None:
        callbacks.append(WallClockBudget(budget_s))
    if cfg.speed_monitor is not None:
        callbacks.append(SpeedMonitor(window_size=cfg.speed_monitor.window_size))
    if cfg.lr_monitor:
        callbacks.append(LRMonitor())
    if cfg.memory_monitor:
        callbacks.append(MemoryMonitor())
    if cfg.runtime_estimator:
        callbacks.append(RuntimeEstimator())
    if loggers.metrics_jsonl and metrics_path:
        callbacks.append(MetricsJsonl(metrics_path))
    return callbacks


def build_loggers(cfg: LoggersConfig) -> list[LoggerDestination]:
    destinations: list[LoggerDestination] = []
    if cfg.wandb is not None:
        destinations.append(WandBLogger(project=cfg.wandb.project, entity=cfg.wandb.entity, tags=cfg.wandb.tags))
    if cfg.tensorboard is not None:
        destinations.append(TensorboardLogger(log_dir=cfg.tensorboard.log_dir, flush_interval=50))
    if cfg.file is not None:
        destinations.append(FileLogger(filename=cfg.file.filename))
    return destinations


# FSDP1 names for the one choice FSDP2 makes differently: re-gather the parameters for the backward (FULL_SHARD) or
# keep them gathered from the forward to the backward (SHARD_GRAD_OP, more memory, less communication).
SHARDING_STRATEGIES = {"FULL_SHARD": True, "SHARD_GRAD_OP": False}


def build_fsdp(fsdp: Optional[dict]) -> Optional[dict]:
    """Composer's parallelism_config for the `fsdp:` section: FSDP2 (torch's fully_shard), one unit per layer.

    Composer's FSDP1 path needs CUDA (composer/distributed/dist_strategy.py passes torch.cuda.current_device()),
    FSDP2 runs on every device, so one code path trains on GPUs and is tested on CPU. Checkpoints default to
    state_dict_type: full (one file gathered on rank 0), which autoresume, load_path and mosaicbert.export read.
    """
    if fsdp is None:
        return None
    options = dict(fsdp)
    check_keys(options, ["sharding_strategy", *sorted(FSDP2Config.settable_attrs() - {"device_mesh"})], "fsdp")
    strategy = options.pop("sharding_strategy", None)
    if strategy is not None:
        if str(strategy).upper() not in SHARDING_STRATEGIES:
            raise ConfigError(f"config key 'fsdp.sharding_strategy' = {strategy!r} is not one of "
                              f"{list(SHARDING_STRATEGIES)} (for unsharded data parallel remove the fsdp section)")
        if "reshard_after_forward" in options:
            raise ConfigError("config keys 'fsdp.sharding_strategy' and 'fsdp.reshard_after_forward' set the same "
                              "thing: keep one")
        options["reshard_after_forward"] = SHARDING_STRATEGIES[str(strategy).upper()]
    options.setdefault("state_dict_type", "full")
    return {"fsdp": FSDP2Config(**options)}


def shard_per_layer(model: MaskedLMModel) -> None:
    """Make each transformer layer its own FSDP unit (Composer reads `fsdp_wrap_fn` on the model's children).

    Only one layer's parameters are then gathered at a time. Embeddings and the MLM head share the word
    embedding matrix, so they stay together in the outer unit.
    """
    from transformers.models.bert.modeling_bert import BertLayer

    from mosaicbert.model.layers import MosaicBertLayer

    model.model.fsdp_wrap_fn = lambda module: isinstance(module, (MosaicBertLayer, BertLayer))


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


def apply_ddp_settings(ddp: DDPConfig) -> str:
    """Apply the `ddp:` section; returns Composer's ddp_sync_strategy.

    Composer wraps the model in DDP itself (composer/distributed/dist_strategy.py prepare_ddp_module) with only
    find_unused_parameters, and torch.compile's DDP graph splitting is a process-wide torch setting.
    """
    import torch._dynamo

    torch._dynamo.config.optimize_ddp = ddp.optimize_ddp
    return ddp.sync_strategy


# ---------------------------------------------------------------------------------------------------------------
# Trainer
# ---------------------------------------------------------------------------------------------------------------


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


def run_folder(cfg: PretrainConfig) -> str:
    """The folder a run owns (locked by main.py): its save_folder, or runs/<run_name> for metrics.jsonl."""
    return cfg.save_folder or os.path.join("runs", cfg.run_name or "mosaicbert")


def check_resume_matches_model(cfg: PretrainConfig, model: torch.nn.Module) -> None:
    """The checkpoint this run will resume from (autoresume's latest, else a full-state load_path) has the model's
    parameter names and shapes; a ConfigError naming the folder and the first mismatching parameter otherwise."""
    checkpoint, what = (latest_checkpoint(cfg.save_folder), f"save folder {cfg.save_folder!r}") if cfg.autoresume \
        else (None, "")
    if checkpoint is None and cfg.load_path and not cfg.load_weights_only and os.path.isfile(cfg.load_path):
        checkpoint, what = cfg.load_path, f"load_path {cfg.load_path!r}"
        problem = checkpoint_problem(checkpoint)  # (autoresume's latest was checked when the folder was tidied)
        if problem is not None:
            raise ConfigError(f"{what} is {problem}")
    if checkpoint is not None:
        try:
            check_checkpoint_matches_model(checkpoint, model, what)
        except ValueError as e:
            raise ConfigError(str(e)) from e


def build_pretrain_dataloaders(cfg: PretrainConfig, tokenizer, device_train_batch_size: int,
                               device: str) -> tuple[DataSpec, DataSpec]:
    """The train and eval MLM loaders of `cfg.data`, as Composer DataSpecs that count a batch's samples as its
    documents (with data.packing a batch has fewer rows than samples; see num_samples_in_batch)."""
    data = cfg.data
    common = dict(
        local=data.local,
        remote=data.remote,
        tokenizer=tokenizer,
        max_seq_len=data.max_seq_len,
        seed=cfg.seed,
        num_workers=data.num_workers,
        pad_to_max_length=data.pad_to_max_length,
        packing=data.packing,
        pin_memory=device == "gpu",
        prefetch_factor=data.prefetch_factor,
        shuffle_block_size=data.shuffle_block_size,
        num_canonical_nodes=data.num_canonical_nodes,
    )
    train_loader = build_mlm_dataloader(
        split=data.train_split, mlm_probability=data.mlm_probability, device_batch_size=device_train_batch_size,
        shuffle=data.shuffle, drop_last=True, **common,
    )
    eval_loader = build_mlm_dataloader(
        split=data.eval_split, mlm_probability=data.eval_mlm_probability, device_batch_size=cfg.device_eval_batch_size,
        shuffle=False, drop_last=False, same_masks_every_epoch=True, **common,
    )
    return (DataSpec(train_loader, get_num_samples_in_batch=num_samples_in_batch, split_batch=split_mlm_batch),
            DataSpec(eval_loader, get_num_samples_in_batch=num_samples_in_batch, split_batch=split_mlm_batch))


def build_pretrain_trainer(cfg: PretrainConfig) -> Trainer:
    """Everything main.py needs, from a validated PretrainConfig."""
    reproducibility.seed_all(cfg.seed)
    device = resolve_device(cfg.device)
    precision = cfg.precision
    if device == "cpu" and precision != "fp32":
        log.warning("precision=%s is not supported on CPU; using fp32", precision)
        precision = "fp32"
    # Composer's distributed setup must exist before the data loaders partition samples across ranks.
    if dist.get_world_size() > 1 and not dist.is_initialized():
        dist.initialize_dist(device, timeout=cfg.dist_timeout)

    if cfg.autoresume and dist.get_local_rank() == 0:  # (main.py holds the folder's lock)
        set_aside_unfinished_checkpoints(cfg.save_folder)
    dist.barrier() if dist.is_initialized() else None

    tokenizer = load_tokenizer(cfg.tokenizer)
    per_device_batch = device_batch_size(cfg.global_train_batch_size)
    microbatch: Any = cfg.device_train_microbatch_size
    if microbatch == "auto" and device == "cpu":
        microbatch = per_device_batch  # automatic microbatching needs a GPU to probe memory
    elif isinstance(microbatch, int):
        microbatch = min(microbatch, per_device_batch)

    train_loader, eval_loader = build_pretrain_dataloaders(cfg, tokenizer, per_device_batch, device)

    model = build_mlm_model(cfg.model, tokenizer)
    check_resume_matches_model(cfg, model)
    if cfg.fsdp is not None:
        shard_per_layer(model)
    optimizer = build_optimizer(cfg.optimizer, model)
    run_name = cfg.run_name or "mosaicbert"
    metrics_path = os.path.join(run_folder(cfg), "metrics.jsonl")

    return Trainer(
        run_name=run_name,
        model=model,
        train_dataloader=train_loader,
        eval_dataloader=eval_loader,
        eval_interval=time_or_composer_interval(cfg.eval_interval),
        eval_subset_num_batches=cfg.eval_subset_num_batches,
        max_duration=cfg.max_duration,
        optimizers=optimizer,
        schedulers=build_scheduler(cfg.scheduler, cfg.max_train_time),
        algorithms=build_algorithms(cfg.algorithms),
        callbacks=build_callbacks(cfg.callbacks, cfg.loggers, metrics_path, cfg.seed, parse_seconds(cfg.max_train_time)),
        loggers=build_loggers(cfg.loggers),
        progress_bar=cfg.loggers.progress_bar,
        log_to_console=cfg.loggers.console,
        console_log_interval=cfg.loggers.console_log_interval,
        device=device,
        precision=precision,
        device_train_microbatch_size=microbatch,
        parallelism_config=build_fsdp(cfg.fsdp),
        ddp_sync_strategy=apply_ddp_settings(cfg.ddp),
        compile_config=resolve_compile(cfg.compile, cfg.compile_mode, device),
        seed=cfg.seed,
        save_folder=cfg.save_folder,
        save_interval=time_or_composer_interval(cfg.save_interval),
        save_num_checkpoints_to_keep=cfg.save_num_checkpoints_to_keep,
        save_overwrite=cfg.save_overwrite,
        load_path=cfg.load_path,
        load_weights_only=cfg.load_weights_only,
        autoresume=cfg.autoresume,
        dist_timeout=cfg.dist_timeout,
        python_log_level="info",
    )
