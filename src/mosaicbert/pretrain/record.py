"""The run record: the resolved config of a run, kept in its folder (config.yaml), so that a command resumes only
the run it describes.

Autoresume continues the run in the save folder. A command whose data, tokenizer or model differ from the recorded
run's would otherwise resume that run's checkpoint (and report "already finished") or mix two runs in one folder;
such a command is refused, naming the keys that differ.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List

from omegaconf import OmegaConf

from mosaicbert.core.config import ConfigError, to_yaml
from mosaicbert.pretrain.config import PretrainConfig

RECORD = "config.yaml"
# What makes a run the same run: the data it reads, the tokenizer, and the model it trains.
IDENTITY = ("tokenizer", "model.name", "model.config_overrides", "data.local", "data.remote", "data.streams",
            "data.train_split", "data.max_seq_len", "data.packing")


def _flat(tree: Any, prefix: str = "") -> Dict[str, Any]:
    if isinstance(tree, dict):
        out: Dict[str, Any] = {}
        for k, v in tree.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out or {prefix[:-1]: {}}
    return {prefix[:-1]: tree}


def identity(config: Dict[str, Any]) -> Dict[str, Any]:
    flat = _flat(config)
    return {k: v for k, v in flat.items() if any(k == key or k.startswith(key + ".") for key in IDENTITY)}


def differences(recorded: Dict[str, Any], current: Dict[str, Any]) -> List[str]:
    """`key: recorded -> current` for every identity key whose value differs."""
    a, b = identity(recorded), identity(current)
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def _has_checkpoints(folder: str) -> bool:
    return os.path.isdir(folder) and any(n.endswith(".pt") for n in os.listdir(folder))


def check_run_folder(cfg: PretrainConfig, folder: str) -> None:
    """Refuse, before anything in `folder` is touched, a command that would resume or overwrite another run."""
    if "://" in folder:  # object-store folders: Composer's autoresume applies as is
        return
    record = os.path.join(folder, RECORD)
    current = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    if cfg.autoresume and os.path.isfile(record):
        recorded = OmegaConf.to_container(OmegaConf.load(record), resolve=True)
        changed = differences(recorded, current)
        if changed:
            raise ConfigError(f"save folder {folder!r} holds run {recorded.get('run_name')!r} with other "
                              f"{', '.join(changed)} (recorded in {record} -> this command). Autoresume continues "
                              f"only the same run: for a new run give it another run_name (its folder is "
                              f"runs/<run_name>) or save_folder")
    if not cfg.autoresume and _has_checkpoints(folder) and not cfg.save_overwrite:
        raise ConfigError(f"save folder {folder!r} holds checkpoints of an earlier run and autoresume is false: "
                          f"autoresume=true continues that run, another run_name (or save_folder) starts a new one, "
                          f"save_overwrite=true replaces it")


def write_record(cfg: PretrainConfig, folder: str) -> str:
    """Write the resolved config to <folder>/config.yaml (atomically; rank 0 only)."""
    path = os.path.join(folder, RECORD)
    os.makedirs(folder, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(to_yaml(cfg))
    os.replace(tmp, path)
    return path
