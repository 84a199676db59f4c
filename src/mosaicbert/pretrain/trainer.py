"""The pretraining Trainer (main.py): the MLM model, its data loaders, data parallelism or FSDP, callbacks and
checkpoint resume, from a validated PretrainConfig."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Optional

import torch
from composer import Trainer
from composer.algorithms import GradientClipping
from composer.callbacks import LRMonitor, MemoryMonitor, RuntimeEstimator, SpeedMonitor
from composer.core import Callback, DataSpec
from composer.utils import dist, reproducibility
from composer.utils.parallelism import FSDP2Config

from mosaicbert.core.callbacks import ConsoleProgress, FiniteLossCheck, MetricsJsonl, StepSeededRNG, WallClockBudget
from mosaicbert.core.checkpoint import load_weights
from mosaicbert.core.config import ConfigError, LoggersConfig, ModelConfig, check_keys, parse_seconds
from mosaicbert.core.models import MaskedLMModel
from mosaicbert.core.runs import run_folder as _run_folder
from mosaicbert.core.storage import check_remote_folder, is_remote
from mosaicbert.core.tokenizer import load_tokenizer
from mosaicbert.core.trainer import (
    build_hf_config,
    build_loggers,
    build_optimizer,
    build_scheduler,
    device_batch_size,
    flat_hparams,
    resolve_compile,
    resolve_device,
    time_or_composer_interval,
    vocab_size_for,
)
from mosaicbert.model import MosaicBertForMaskedLM
from mosaicbert.pretrain.config import AlgorithmsConfig, CallbacksConfig, DDPConfig, PretrainConfig
from mosaicbert.pretrain.mlm import build_mlm_dataloader, num_samples_in_batch, split_mlm_batch
from mosaicbert.pretrain.resume import (
    check_checkpoint_matches_model,
    checkpoint_problem,
    latest_checkpoint,
    set_aside_unfinished_checkpoints,
)

log = logging.getLogger("mosaicbert")


def build_mlm_model(model_cfg: ModelConfig, tokenizer) -> MaskedLMModel:
    from transformers import BertForMaskedLM

    config = build_hf_config(model_cfg, pad_token_id=tokenizer.pad_token_id, **vocab_size_for(model_cfg, tokenizer))
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


def console_progress(loggers: LoggersConfig, budget_s: Optional[float]) -> Optional[ConsoleProgress]:
    interval = str(loggers.console_log_interval)
    if not loggers.console or not interval.endswith("ba"):
        return None
    return ConsoleProgress(int(interval[:-2]), budget_s)


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


def apply_ddp_settings(ddp: DDPConfig) -> str:
    """Apply the `ddp:` section; returns Composer's ddp_sync_strategy.

    Composer wraps the model in DDP itself (composer/distributed/dist_strategy.py prepare_ddp_module) with only
    find_unused_parameters, and torch.compile's DDP graph splitting is a process-wide torch setting.
    """
    import torch._dynamo

    torch._dynamo.config.optimize_ddp = ddp.optimize_ddp
    return ddp.sync_strategy


def run_folder(cfg: PretrainConfig) -> str:
    """The local folder a run owns (locked by main.py; metrics.jsonl): its save_folder, else runs/<run_name>, also
    when save_folder is remote (s3://...: object stores have no locks, and Composer uploads the checkpoints)."""
    return _run_folder(None if is_remote(cfg.save_folder) else cfg.save_folder, cfg.run_name)


def check_remote_folders(cfg: PretrainConfig) -> None:
    """Before anything is downloaded or trained: every node can list data.remote and write to a remote
    save_folder, with its own endpoint and credentials. Local rank 0 of each node checks; all ranks stop together,
    with the same error naming the URL and the node's rank, instead of one rank failing at its first download
    while the others wait for it in a collective."""
    problem = None
    if dist.get_local_rank() == 0:
        try:
            check_remote_folder(cfg.data.remote, "data.remote")
            check_remote_folder(cfg.save_folder, "save_folder", write=True)
        except ConfigError as e:
            problem = f"{e} (on node {dist.get_node_rank()}, rank {dist.get_global_rank()})"
    if dist.is_initialized() and dist.get_world_size() > 1:
        problem = next((p for p in dist.all_gather_object(problem) if p is not None), None)
    if problem is not None:
        raise ConfigError(problem)


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
    train_loader = build_mlm_dataloader(cfg.data, tokenizer, train=True, batch_size=device_train_batch_size,
                                        seed=cfg.seed, pin_memory=device == "gpu")
    eval_loader = build_mlm_dataloader(cfg.data, tokenizer, train=False, batch_size=cfg.device_eval_batch_size,
                                       seed=cfg.seed, pin_memory=device == "gpu")
    return (DataSpec(train_loader, get_num_samples_in_batch=num_samples_in_batch, split_batch=split_mlm_batch),
            DataSpec(eval_loader, get_num_samples_in_batch=num_samples_in_batch, split_batch=split_mlm_batch))


def resolve_autoresume(cfg: PretrainConfig) -> tuple[Optional[str], bool, bool]:
    """Composer's (load_path, load_weights_only, autoresume) for this run.

    A local save folder is resumed from here: rank 0 picks the checkpoint `latest-rank0.pt` points to (after the
    folder was tidied) and every rank loads that file. Composer's own autoresume has every node's local rank 0
    write and then delete one signal file in the save folder, so with a folder shared by several nodes one of them
    fails to delete it and the run stops. Remote save folders are left to Composer, which downloads the latest
    checkpoint on every node.
    """
    if not cfg.autoresume or is_remote(cfg.save_folder):
        return cfg.load_path, cfg.load_weights_only, cfg.autoresume
    latest = [latest_checkpoint(cfg.save_folder) if dist.get_global_rank() == 0 else None]
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast_object_list(latest, src=0)
        blind = [r for r, seen in enumerate(dist.all_gather_object(latest[0] is None or os.path.isfile(latest[0])))
                 if not seen]
        if blind:
            raise ConfigError(
                f"config key 'save_folder' = {cfg.save_folder!r}: rank {blind[0]} cannot read {latest[0]}, the "
                f"checkpoint to resume from: every node must see the save folder (a shared file system, or "
                f"save_folder=s3://...)")
    if latest[0] is None:
        return cfg.load_path, cfg.load_weights_only, False  # nothing to resume: the run starts (from load_path)
    if dist.get_global_rank() == 0:
        log.info("autoresume: resuming from %s", latest[0])
    return latest[0], False, False


def initialize_dist(device: str, timeout: float) -> None:
    """Composer's process group, or an error saying which processes did not join within `timeout` seconds (a node
    that was never started, or started with another --world_size, --master_addr or --master_port)."""
    try:
        dist.initialize_dist(device, timeout=timeout)
    except Exception as e:  # torch raises DistStoreError / RuntimeError / TimeoutError, depending on the side
        where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
        raise RuntimeError(
            f"rank {dist.get_global_rank()} of {dist.get_world_size()} (node {dist.get_node_rank()}): some "
            f"processes did not join within dist_timeout={timeout:g} s at {where} ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}). Start every node with the same --world_size, "
            f"--master_addr and --master_port, and its own --node_rank.") from e


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
        initialize_dist(device, cfg.dist_timeout)

    check_remote_folders(cfg)
    # One process tidies a save folder before autoresume (remote folders are left to Composer: an object is
    # uploaded whole, and `latest` is updated after it). With a folder shared by several nodes, one rank per node
    # would rename the same files at once.
    if cfg.autoresume and dist.get_global_rank() == 0:  # (main.py holds the folder's lock)
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
    load_path, load_weights_only, autoresume = resolve_autoresume(cfg)
    metrics_path = os.path.join(run_folder(cfg), "metrics.jsonl")
    callbacks = build_callbacks(cfg.callbacks, cfg.loggers, metrics_path, cfg.seed, parse_seconds(cfg.max_train_time))
    progress_bar = sys.stdout.isatty() if cfg.loggers.progress_bar is None else cfg.loggers.progress_bar
    # One readable line per interval instead of Composer's multi-line metrics block (batch intervals only).
    console_lines = console_progress(cfg.loggers, parse_seconds(cfg.max_train_time)) if not progress_bar else None
    if console_lines is not None:
        callbacks.append(console_lines)

    trainer = Trainer(
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
        callbacks=callbacks,
        loggers=build_loggers(cfg.loggers, "pretrain", resume=cfg.autoresume),
        progress_bar=progress_bar,
        log_to_console=console_lines is None and cfg.loggers.console and not progress_bar,
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
        # On an object store the checkpoint upload and the `latest` symlink upload are separate: a run killed
        # between the two leaves a checkpoint newer than `latest`, which the resumed run writes again.
        save_overwrite=cfg.save_overwrite or (autoresume and is_remote(cfg.save_folder)),
        load_path=load_path,
        load_weights_only=load_weights_only,
        autoresume=autoresume,
        dist_timeout=cfg.dist_timeout,
        python_log_level="warning",  # Composer's INFO lines (per checkpoint, per logger) are noise on a console
    )
    if int(trainer.state.timestamp.batch) == 0:  # a resumed run keeps its first config in the trackers
        trainer.logger.log_hyperparameters(flat_hparams(cfg))
    return trainer
