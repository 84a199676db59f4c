"""Typed, self-validating run configuration: YAML file + `key=value` command-line overrides.

The schema is a tree of dataclasses. The YAML file and then the overrides are merged into
`OmegaConf.structured(schema)`, which rejects unknown keys (naming the nearest valid one), values of the wrong
type and names outside the closed sets (the `Enum` fields, listing the valid ones); its exceptions become a
ConfigError naming the source (file or command line) and the full key. What types cannot say is checked after
the merge: value ranges (one table per schema) and rules between fields (code). Free-form sections
(`Dict[str, Any]`, e.g. model config overrides) are checked by the code that consumes them (see `check_keys`).
"""

from __future__ import annotations

import difflib
import math
import operator
import os
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Type, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException
from omegaconf.nodes import EnumNode

T = TypeVar("T")


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|min|h)\s*$")
_SECONDS = {"s": 1.0, "sec": 1.0, "min": 60.0, "h": 3600.0}


_COMPOSER_TIME = re.compile(r"^\s*\d+(\.\d+)?\s*(ep|ba|sp|tok|dur)\s*$")


def check_interval(value: Any, key: str, wall_clock: bool = True, nonzero: bool = False) -> None:
    """A Composer time string ('100ba', '1ep', '0.06dur', ...) or, where allowed, wall-clock time ('60s').
    `nonzero`: an interval of zero is an error (an eval or save interval of 0 would never fire)."""
    kinds = "'100ba', '1ep', '50000sp', '0.5dur'" + (" or wall-clock '60s' / '5min'" if wall_clock else "")
    if not (_COMPOSER_TIME.match(str(value)) or (wall_clock and parse_seconds(value) is not None)):
        raise ConfigError(f"config key '{key}' = {value!r} is not a duration: use {kinds}")
    if nonzero and float(re.match(r"^\s*(\d+(?:\.\d+)?)", str(value)).group(1)) == 0:
        raise ConfigError(f"config key '{key}' = {value!r} is zero: it would never fire; give a positive interval "
                          f"such as {kinds}")


def parse_seconds(text: Optional[str]) -> Optional[float]:
    """'90s' -> 90.0, '10min' -> 600.0, '1.5h' -> 5400.0; None for anything else (e.g. Composer's '100ba')."""
    if text is None:
        return None
    m = _DURATION.match(str(text))
    return float(m.group(1)) * _SECONDS[m.group(2)] if m else None


class ConfigError(ValueError):
    """A configuration problem, with a message that names the offending key."""


# --------------------------------------------------------------------------------------------------------------
# Closed sets. StrEnum members are also plain strings: `cfg.precision == "amp_bf16"` holds, and they print,
# hash and serialise (json, Composer) as their value. OmegaConf accepts the member names, which equal the values.
# --------------------------------------------------------------------------------------------------------------

ModelName = StrEnum("ModelName", ["mosaic_bert", "hf_bert"], module=__name__)
OptimizerName = StrEnum("OptimizerName", ["decoupled_adamw", "adamw"], module=__name__)
SchedulerName = StrEnum("SchedulerName", ["linear_decay_with_warmup", "constant_with_warmup", "cosine_with_warmup"],
                        module=__name__)
ClippingType = StrEnum("ClippingType", ["norm", "value", "adaptive"], module=__name__)
Precision = StrEnum("Precision", ["fp32", "amp_bf16", "amp_fp16"], module=__name__)
Device = StrEnum("Device", ["cpu", "gpu"], module=__name__)
DDPSyncStrategy = StrEnum("DDPSyncStrategy", ["single_auto_sync", "multi_auto_sync", "forced_sync"], module=__name__)
# torch.compile modes (null = torch's default).
CompileMode = StrEnum("CompileMode", ["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"],
                      module=__name__)


# --------------------------------------------------------------------------------------------------------------
# Shared schema: the model, optimizer, scheduler and loggers of every command
# --------------------------------------------------------------------------------------------------------------


@dataclass
class ModelConfig:
    name: ModelName = ModelName.mosaic_bert
    # Fields of MosaicBertConfig (mosaic_bert) or transformers.BertConfig (hf_bert) that differ from the defaults.
    config_overrides: Dict[str, Any] = field(default_factory=dict)
    # Start from these weights: a Composer checkpoint written by main.py or a Hugging Face folder.
    pretrained_checkpoint: Optional[str] = None


@dataclass
class OptimizerConfig:
    name: OptimizerName = OptimizerName.decoupled_adamw
    lr: float = 5.0e-4
    betas: List[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1.0e-6
    weight_decay: float = 1.0e-5
    # decoupled_adamw on torch's fused AdamW kernel (same update rule, much faster than Composer's Python loop).
    fused: bool = True


@dataclass
class SchedulerConfig:
    name: SchedulerName = SchedulerName.linear_decay_with_warmup
    t_warmup: str = "0.06dur"
    alpha_f: float = 0.02


@dataclass
class WandbConfig:
    """Weights & Biases (Composer's WandBLogger). Credentials, offline mode and the run folder come from W&B's own
    environment variables (WANDB_API_KEY, WANDB_MODE=offline, WANDB_DIR)."""

    project: Optional[str] = None
    entity: Optional[str] = None
    tags: List[str] = field(default_factory=list)


@dataclass
class MlflowConfig:
    """MLflow (Composer's MLFlowLogger): one MLflow run per training run, named by the run."""

    # null: $MLFLOW_TRACKING_URI, else MLflow's default; e.g. file:/path/mlruns, http://mlflow:5000, databricks
    tracking_uri: Optional[str] = None
    # null: $MLFLOW_EXPERIMENT_NAME, else the command's name (mosaicbert-pretrain, -glue, -finetune)
    experiment_name: Optional[str] = None
    tags: Dict[str, str] = field(default_factory=dict)
    log_system_metrics: bool = False  # CPU/GPU/memory usage every 30 s


@dataclass
class TensorboardConfig:
    log_dir: str = "runs/tensorboard"  # each run writes <log_dir>/<run_name>/


@dataclass
class FileLoggerConfig:
    filename: str = "{run_name}/log.txt"


@dataclass
class TrackersConfig:
    """Experiment trackers, the same keys in every command (`loggers:` of main.py, glue.py, finetune.py)."""

    wandb: Optional[WandbConfig] = None
    mlflow: Optional[MlflowConfig] = None
    tensorboard: Optional[TensorboardConfig] = None
    file: Optional[FileLoggerConfig] = None


@dataclass
class LoggersConfig(TrackersConfig):
    """Pretraining's loggers: the trackers plus the console."""

    console: bool = True  # one line every console_log_interval and per evaluation (when no progress bar)
    console_log_interval: str = "10ba"
    progress_bar: Optional[bool] = None  # null: on when the output is a terminal
    # Eval points and training metrics as CSV/JSON lines, easy to plot: {save_folder or run dir}/metrics.jsonl
    metrics_jsonl: bool = True


# --------------------------------------------------------------------------------------------------------------
# Loading: OmegaConf merges and type-checks; its exceptions become ConfigErrors naming source and key
# --------------------------------------------------------------------------------------------------------------


def suggest(key: str, valid: Sequence[str]) -> str:
    """'did you mean ...?' for the closest valid names, or the list of valid names."""
    close = difflib.get_close_matches(key, list(valid), n=3, cutoff=0.5)
    if close:
        return f"did you mean {' or '.join(repr(c) for c in close)}?"
    return f"valid keys: {', '.join(sorted(valid))}"


def check_keys(given: Any, valid: Sequence[str], where: str) -> None:
    """For free-form sections (Dict[str, Any]): raise ConfigError for the first key of `given` not in `valid`."""
    for key in given:
        if key not in valid:
            name = f"{where}.{key}" if where else str(key)
            raise ConfigError(f"unknown config key '{name}': {suggest(str(key), valid)}")


def _load_yaml(path: str) -> dict:
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = OmegaConf.load(path)
    except Exception as e:  # yaml syntax errors come with line numbers; keep them
        raise ConfigError(f"cannot parse config file {path}: {e}") from e
    if not isinstance(raw, DictConfig):
        raise ConfigError(f"config file {path} must contain a mapping at top level")
    return OmegaConf.to_container(raw, resolve=False)  # type: ignore[return-value]


def _parse_overrides(overrides: Sequence[str]) -> dict:
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"command-line override {item!r} must look like key=value (e.g. optimizer.lr=1e-4)")
    for item in overrides:  # one at a time, so that an error names the override (yaml's own errors included)
        try:
            OmegaConf.from_dotlist([item])
        except Exception as e:
            what = " ".join(str(e).split("\n")[:2])
            raise ConfigError(f"command-line override {item!r} does not parse ({what}): write lists as "
                              f"key=[a,b] and maps as key={{k: v}}, with the whole override in quotes in the shell"
                              ) from None
    try:
        return OmegaConf.to_container(OmegaConf.from_dotlist(list(overrides)), resolve=False)  # type: ignore
    except OmegaConfBaseException as e:
        raise ConfigError(f"cannot parse command-line overrides {list(overrides)}: {e}") from e


def _rejected_key(base: DictConfig, user: Mapping, path: Tuple[str, ...] = ()) -> Optional[str]:
    """The key OmegaConf's merge rejected without naming it (a scalar or list given for a section): merge the
    user's entries one at a time, descending into the one that fails."""
    for key, value in user.items():
        sub = (*path, str(key))
        nested: Any = value
        for k in reversed(sub):
            nested = {k: nested}
        try:
            OmegaConf.merge(base, nested)
        except OmegaConfBaseException:
            deeper = _rejected_key(base, value, sub) if isinstance(value, Mapping) else None
            return deeper or ".".join(sub)
    return None


def _describe(e: OmegaConfBaseException, origin: str, key: Optional[str]) -> str:
    # OmegaConf's first line says what is wrong (with "Did you mean" for near misses); the rest repeats the key.
    what = str(e).splitlines()[0]
    if isinstance(e, (ConfigKeyError, ConfigAttributeError)):
        parent = getattr(e, "parent_node", None)
        if "Did you mean" not in what and isinstance(parent, DictConfig):
            what += f". Valid keys: {', '.join(str(k) for k in parent.keys())}"
        return f"{origin}: unknown config key '{key}': {what}"
    child = getattr(e, "child_node", None)
    if isinstance(child, EnumNode):
        close = difflib.get_close_matches(str(getattr(e, "value", "")), [m.name for m in child.enum_type], n=1)
        what += f". Did you mean: '{close[0]}'?" if close else ""
    return f"{origin}: bad value for config key '{key}': {what}"


def _merge(base: DictConfig, user: dict, origin: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, user)  # type: ignore[return-value]
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or _rejected_key(base, user) or "?"
        raise ConfigError(_describe(e, origin, key)) from None


def load_config(schema: Type[T], yaml_path: Optional[str], overrides: Sequence[str] = ()) -> T:
    """Load `yaml_path`, apply `key=value` overrides, validate types against `schema`, return a schema instance."""
    merged = OmegaConf.structured(schema)
    if yaml_path is not None:
        merged = _merge(merged, _load_yaml(yaml_path), yaml_path)
    if overrides:
        merged = _merge(merged, _parse_overrides(overrides), "command line")
    try:
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except OmegaConfBaseException as e:  # e.g. a bad ${interpolation}
        raise ConfigError(_describe(e, yaml_path or "command line", getattr(e, "full_key", None) or "?")) from None


def to_yaml(cfg: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


# --------------------------------------------------------------------------------------------------------------
# Ranges (what types cannot say): {dotted key: (predicate, requirement)}; keys under a null section are skipped
# --------------------------------------------------------------------------------------------------------------

Rule = Tuple[Callable[[Any], bool], str]

POSITIVE: Rule = (lambda v: v > 0, "> 0")
NON_NEGATIVE: Rule = (lambda v: v >= 0, ">= 0")
POSITIVE_FINITE: Rule = (lambda v: math.isfinite(v) and v > 0, "a finite number > 0")
PROBABILITY: Rule = (lambda v: 0.0 < v < 1.0, "between 0 and 1 (exclusive)")

# Shared by the pretraining and GLUE schemas (run after check_interval has accepted scheduler.t_warmup).
TRAINING_RANGES: Dict[str, Rule] = {
    "optimizer.betas": (lambda v: len(v) == 2 and all(0.0 <= b < 1.0 for b in v), "two values in [0, 1)"),
    "optimizer.eps": POSITIVE_FINITE,
    "scheduler.t_warmup": (lambda v: not v.strip().endswith("dur") or 0.0 <= float(v.strip()[:-3]) < 1.0,
                           "a fraction of training in [0, 1) when given in dur, e.g. 0.06dur"),
    "scheduler.alpha_f": (lambda v: 0.0 <= v <= 1.0, "in [0, 1]"),
}

def check_ranges(cfg: Any, rules: Mapping[str, Rule]) -> None:
    for key, (ok, requirement) in rules.items():
        try:
            value = operator.attrgetter(key)(cfg)
        except AttributeError:  # a null section on the way (e.g. callbacks.speed_monitor: null)
            continue
        if not ok(value):
            raise ConfigError(f"config key '{key}' must be {requirement}, got {value!r}")


def check_microbatch(value: Any, key: str, allow_null: bool = False) -> None:
    if (allow_null and value is None) or value == "auto" or (type(value) is int and value > 0):
        return
    raise ConfigError(f"config key '{key}' must be {'null, ' if allow_null else ''}a positive int or 'auto', "
                      f"got {value!r}")
