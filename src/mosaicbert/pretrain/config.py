"""The pretraining schema (main.py): data, callbacks, data parallelism and the run, with its validation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Sequence

from mosaicbert.core.config import (
    NON_NEGATIVE,
    POSITIVE,
    POSITIVE_FINITE,
    PROBABILITY,
    TRAINING_RANGES,
    ClippingType,
    CompileMode,
    ConfigError,
    DDPSyncStrategy,
    Device,
    LoggersConfig,
    ModelConfig,
    OptimizerConfig,
    Precision,
    Rule,
    SchedulerConfig,
    check_interval,
    check_microbatch,
    check_ranges,
    load_config,
    parse_seconds,
)


@dataclass
class StreamConfig:
    """One corpus of a mixture (data.streams.<name>): streaming's Stream."""

    local: Optional[str] = None  # a folder of MDS splits, as data.local
    remote: Optional[str] = None  # as data.remote
    # How much of each training epoch comes from this stream: a share of all streams (proportions add up to 1), or
    # how many times its own samples (repeat: 2 = every sample twice, 0.5 = half of them). Not both kinds at once.
    proportion: Optional[float] = None
    repeat: Optional[float] = None
    split: Optional[str] = None  # this stream's training split (default data.train_split); evaluation reads
    # data.eval_split of every stream once, without proportions


@dataclass
class DataConfig:
    # Folder holding <split>/index.json MDS shards (python -m mosaicbert.pretrain.convert writes them),
    # or builtin://python-docs (the offline corpus used by the quickstart).
    local: Optional[str] = None
    # s3://, gs:// or https:// location of the shards; they are cached in `local`.
    remote: Optional[str] = None
    train_split: str = "train"
    eval_split: str = "val"
    max_seq_len: int = 128
    mlm_probability: float = 0.30  # training masking rate (MosaicBERT recipe)
    eval_mlm_probability: float = 0.15  # eval always at BERT's rate so numbers compare across recipes
    shuffle: bool = True
    num_workers: int = 4  # DataLoader worker processes per rank
    pad_to_max_length: bool = False
    # Pack several documents (whole samples, each truncated to max_seq_len) into each row of max_seq_len tokens,
    # with `sequence_id` saying which document each token belongs to: less padding when documents are shorter than
    # max_seq_len (e.g. --mode documents shards at 2048). Train and eval. mosaic_bert only.
    packing: bool = False
    prefetch_factor: int = 2
    shuffle_block_size: Optional[int] = None
    num_canonical_nodes: Optional[int] = None
    # Several corpora mixed (name -> StreamConfig), instead of local/remote (which are the one-stream shorthand).
    streams: Dict[str, StreamConfig] = field(default_factory=dict)


def check_data_config(data: DataConfig) -> None:
    """The data section's rules between fields (folders are checked when the loaders are built)."""
    if data.num_workers < 0:
        raise ConfigError(f"config key 'data.num_workers' = {data.num_workers} must be >= 0 (0 reads in the "
                          "training process)")
    if not data.streams:
        if data.local is None and data.remote is None:
            raise ConfigError("config key 'data.local' is not set: give a folder of MDS shards "
                              "(python -m mosaicbert.pretrain.convert writes them) or builtin://python-docs")
        return
    if data.local is not None or data.remote is not None:
        raise ConfigError("config keys 'data.streams' and 'data.local'/'data.remote' both set: data.local/remote is "
                          "the one-stream shorthand; put that folder into data.streams as one more stream")
    with_proportion = [n for n, st in data.streams.items() if st.proportion is not None]
    for name, st in data.streams.items():
        key = f"data.streams.{name}"
        if st.local is None and st.remote is None:
            raise ConfigError(f"config key '{key}.local' is not set: give the stream's folder of MDS shards")
        if st.proportion is not None and st.repeat is not None:
            raise ConfigError(f"config keys '{key}.proportion' and '{key}.repeat' both set: give one")
        for field_name in ("proportion", "repeat"):
            value = getattr(st, field_name)
            if value is not None and not value > 0:
                raise ConfigError(f"config key '{key}.{field_name}' = {value} must be > 0")
    if with_proportion and len(with_proportion) != len(data.streams):
        missing = sorted(set(data.streams) - set(with_proportion))
        raise ConfigError(f"config key 'data.streams.{missing[0]}.proportion' is not set: with proportions, every "
                          f"stream needs one (streams without: {missing})")
    if with_proportion:
        total = sum(float(data.streams[n].proportion) for n in with_proportion)
        if abs(total - 1.0) > 1e-6:
            shares = ", ".join(f"{n}={data.streams[n].proportion}" for n in with_proportion)
            raise ConfigError(f"config keys 'data.streams.*.proportion' add up to {total:g}, not 1 ({shares})")


@dataclass
class GradientClippingConfig:
    clipping_type: ClippingType = ClippingType.norm
    clipping_threshold: float = 1.0


@dataclass
class AlgorithmsConfig:
    gradient_clipping: Optional[GradientClippingConfig] = None


@dataclass
class SpeedMonitorConfig:
    window_size: int = 100


@dataclass
class CallbacksConfig:
    speed_monitor: Optional[SpeedMonitorConfig] = field(default_factory=SpeedMonitorConfig)
    lr_monitor: bool = True
    memory_monitor: bool = False
    runtime_estimator: bool = True


@dataclass
class DDPConfig:
    """Data-parallel settings (several processes, no `fsdp:` section)."""

    # torch._dynamo.config.optimize_ddp: when compiling, true splits the compiled model into one graph per DDP
    # gradient bucket so that each bucket's all-reduce overlaps the rest of the backward; false compiles one
    # graph and all-reduces after the backward. False is faster: the split graphs cost more than the overlap
    # saves, also on the microbatches under no_sync that do not reduce at all (benchmarks/README.md).
    optimize_ddp: bool = False
    # Composer's ddp_sync_strategy: single_auto_sync all-reduces on the last microbatch of a batch only,
    # multi_auto_sync on every microbatch, forced_sync after the last one with one all-reduce per parameter.
    sync_strategy: DDPSyncStrategy = DDPSyncStrategy.single_auto_sync


@dataclass
class PretrainConfig:
    run_name: Optional[str] = None
    seed: int = 17
    model: ModelConfig = field(default_factory=ModelConfig)
    tokenizer: str = "bert-base-uncased"  # hub name, local folder, vocab.txt path, or builtin://python-docs
    data: DataConfig = field(default_factory=DataConfig)

    global_train_batch_size: int = 4096
    # An int, or "auto" to let Composer pick the largest microbatch that fits on the GPU.
    device_train_microbatch_size: Any = "auto"
    device_eval_batch_size: int = 128
    max_duration: str = "286720000sp"
    # Wall-clock training budget ("30min", "600s", "2h"; eval time excluded). Training stops when it is spent,
    # and the learning-rate schedule (linear_decay_with_warmup, t_warmup in "dur") runs over the budget.
    max_train_time: Optional[str] = None
    # Composer time ("2000ba", "1ep") or wall-clock training time ("60s", "5min"); the same for save_interval.
    eval_interval: str = "2000ba"
    eval_subset_num_batches: int = -1
    # Evaluate once before the first batch (not on resume): the starting point of a run that continues from
    # model.pretrained_checkpoint, e.g. the held-out loss of a 128-token checkpoint at 1024 tokens.
    eval_at_start: bool = False

    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    precision: Precision = Precision.amp_bf16
    device: Optional[Device] = None  # None picks gpu when available
    # torch.compile the model through Composer: auto compiles on GPUs and runs eagerly on CPU (logged once);
    # true compiles on any device and stops with an error if no compiler backend is installed; false never.
    compile: Any = "auto"
    # torch.compile mode (when compiling): null = torch's default, reduce-overhead (CUDA graphs), max-autotune,
    # max-autotune-no-cudagraphs. CUDA graphs record one graph per shape: for mosaic_bert also set
    # model.config_overrides.packed_length_multiple (e.g. 1024), so the unpadded shapes repeat.
    compile_mode: Optional[CompileMode] = None
    # Composer's FSDP config (e.g. {sharding_strategy: FULL_SHARD}); null means plain data parallel (DDP).
    fsdp: Optional[Dict[str, Any]] = None
    ddp: DDPConfig = field(default_factory=DDPConfig)
    algorithms: AlgorithmsConfig = field(default_factory=AlgorithmsConfig)
    callbacks: CallbacksConfig = field(default_factory=CallbacksConfig)
    loggers: LoggersConfig = field(default_factory=LoggersConfig)

    save_folder: Optional[str] = None
    save_interval: str = "1000ba"
    save_num_checkpoints_to_keep: int = -1
    save_overwrite: bool = False
    load_path: Optional[str] = None
    load_weights_only: bool = False
    autoresume: bool = False
    dist_timeout: float = 600.0


PRETRAIN_RANGES: Dict[str, Rule] = {
    **TRAINING_RANGES,
    "optimizer.lr": POSITIVE_FINITE,
    "optimizer.weight_decay": NON_NEGATIVE,
    "data.mlm_probability": PROBABILITY,
    "data.eval_mlm_probability": PROBABILITY,
    "data.max_seq_len": (lambda v: v >= 3, ">= 3 ([CLS] x [SEP])"),
    "seed": NON_NEGATIVE,
    "global_train_batch_size": POSITIVE,
    "device_eval_batch_size": POSITIVE,
    "dist_timeout": POSITIVE,
    "callbacks.speed_monitor.window_size": POSITIVE,
    "algorithms.gradient_clipping.clipping_threshold": POSITIVE_FINITE,
}


# --------------------------------------------------------------------------------------------------------------
# Rules between fields
# --------------------------------------------------------------------------------------------------------------


def load_pretrain_config(yaml_path: str, overrides: Sequence[str] = ()) -> PretrainConfig:
    cfg = load_config(PretrainConfig, yaml_path, overrides)
    validate_pretrain_config(cfg)
    return cfg


def validate_pretrain_config(cfg: PretrainConfig) -> None:
    """Checks that need more than types: durations, ranges, combinations of fields."""
    check_interval(cfg.max_duration, "max_duration", wall_clock=False)
    check_interval(cfg.eval_interval, "eval_interval", nonzero=True)
    check_interval(cfg.save_interval, "save_interval", nonzero=True)
    check_interval(cfg.scheduler.t_warmup, "scheduler.t_warmup", wall_clock=False)
    check_ranges(cfg, PRETRAIN_RANGES)
    if cfg.data.num_workers < 0:  # torch's own error would not name the key
        raise ConfigError(f"config key 'data.num_workers' must be >= 0 (0 reads in the training process), "
                          f"got {cfg.data.num_workers}")
    if cfg.autoresume and cfg.save_num_checkpoints_to_keep == 0:
        raise ConfigError("config key 'save_num_checkpoints_to_keep' = 0 keeps no checkpoint, so autoresume=true "
                          "has nothing to resume from: keep at least one (e.g. 1, or -1 for all) or set "
                          "autoresume=false")
    check_microbatch(cfg.device_train_microbatch_size, "device_train_microbatch_size")
    if cfg.compile_mode is not None:
        if not cfg.compile:
            raise ConfigError(f"config key 'compile_mode' = {cfg.compile_mode!r} needs compile: true or auto")
        if cfg.compile_mode == "reduce-overhead" and cfg.model.name == "mosaic_bert" \
                and int(cfg.model.config_overrides.get("packed_length_multiple", 0)) <= 1:
            raise ConfigError("config key 'compile_mode' = 'reduce-overhead' records a CUDA graph per shape, and "
                              "MosaicBERT's unpadded shapes change with every batch: set "
                              "model.config_overrides.packed_length_multiple (e.g. 1024) so that they repeat")
    if cfg.max_train_time is not None:
        if parse_seconds(cfg.max_train_time) is None:
            raise ConfigError(f"config key 'max_train_time' = {cfg.max_train_time!r}: use seconds, minutes or hours "
                              f"such as '600s', '10min' or '1.5h'")
        if cfg.scheduler.name != "linear_decay_with_warmup" or not cfg.scheduler.t_warmup.endswith("dur"):
            raise ConfigError("config key 'max_train_time' needs scheduler.name=linear_decay_with_warmup with "
                              "scheduler.t_warmup as a fraction of the budget, e.g. 0.06dur")
    if not (isinstance(cfg.compile, bool) or cfg.compile == "auto"):
        raise ConfigError(f"config key 'compile' = {cfg.compile!r} must be true, false or auto")
    if cfg.fsdp is not None and cfg.device_train_microbatch_size == "auto":
        raise ConfigError("config key 'device_train_microbatch_size' = 'auto' does not work with fsdp (Composer "
                          "cannot probe memory across shards): give a number, e.g. 64")
    if cfg.data.packing and cfg.model.name != "mosaic_bert":
        raise ConfigError(f"config key 'data.packing' = true needs model.name=mosaic_bert: {cfg.model.name} cannot "
                          "restrict attention to each document of a packed row (set data.packing=false)")
    check_data_config(cfg.data)
