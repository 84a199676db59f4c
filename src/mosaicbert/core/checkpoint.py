"""Model weights from wherever they live, loaded into a model with one report of what did not load.

Sources
    - a Composer checkpoint file (main.py's `*.pt`, a GLUE job's `final-rank0.pt`): the `state.model` dict, whose
      keys carry Composer's `model.` prefix;
    - a Hugging Face folder (`mosaicbert.export` output or a published model): `model.safetensors` (or a sharded
      `model.safetensors.index.json`) or `pytorch_model.bin`;
    - a hub model id (`bert-base-uncased`, `org/name`): downloaded once with `huggingface_hub.snapshot_download`,
      then read as a folder (taken from the local HF cache at once when the Hub cannot be reached).

Every file is checked before it is used: a torch.save zip archive (Composer checkpoint, pytorch_model.bin) member by
member against its CRC-32, so that a damaged checkpoint is refused naming the file and the damaged tensor instead
of loading garbage weights; missing, truncated, non-checkpoint files and folders given for files raise
`CheckpointError` naming the file and the fix.

Keys are normalised on reading: the `model.` prefix is removed and the `gamma` / `beta` LayerNorm names of old
TF-converted BERT checkpoints are renamed. `load_weights` loads MosaicBERT models through
`load_mosaic_state_dict` and every other model through `load_state_dict`, and returns a `LoadReport` (also
logged) listing every key that did not load and why.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import zipfile
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Iterator, List, Mapping, Sequence, Tuple, Union

import torch

from mosaicbert.core.hub import hub_local_only, hub_unreachable

log = logging.getLogger("mosaicbert")

HUB_PATTERNS = ["*.safetensors", "*.safetensors.index.json", "pytorch_model.bin", "*.json"]
# Vocabulary-indexed tensors (dim 0 = vocab): a 30522-row checkpoint fits a model padded to 30528 rows.
VOCAB_KEYS = ("word_embeddings.weight", "predictions.bias", "predictions.decoder.bias")
# Buffers that never carry information (recomputed at init), not reported when absent.
_DERIVED = ("position_ids", "token_type_ids", ".alibi")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (missing, truncated, damaged, of another kind), naming the file and the fix."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """No file or folder (or hub model) of that name."""


_UNREADABLE = ("the file is truncated or damaged (an interrupted save or copy?) or is not a torch checkpoint: copy it "
               "again or use another checkpoint")


class _Storage:
    """A storage record of the archive, standing in for its tensor(s) while mapping names to records."""

    def __init__(self, key: str):
        self.key = key


class _RecordNames(pickle.Unpickler):
    """Unpickles a torch.save archive's data.pkl without reading any storage: tensors become their `_Storage`."""

    _TENSOR = {("torch._utils", "_rebuild_tensor"), ("torch._utils", "_rebuild_tensor_v2"),
               ("torch._utils", "_rebuild_tensor_v3")}
    _WRAPPER = {("torch._utils", "_rebuild_parameter"), ("torch._utils", "_rebuild_parameter_with_state")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._TENSOR:
            return lambda storage, *args, **kwargs: storage
        if (module, name) in self._WRAPPER:
            return lambda data, *args, **kwargs: data
        if (module, name) == ("torch._tensor", "_rebuild_from_type_v2"):
            return lambda func, new_type, args, state: func(*args)
        return super().find_class(module, name)

    def persistent_load(self, pid: Any) -> _Storage:
        return _Storage(str(pid[2]))  # ('storage', storage type, key, location, numel)


def _walk(obj: Any, path: Tuple[str, ...] = ()) -> Iterator[Tuple[str, _Storage]]:
    if isinstance(obj, _Storage):
        yield "/".join(path), obj
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            yield from _walk(v, (*path, str(k)))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _walk(v, (*path, str(i)))


def _tensor_names(zf: zipfile.ZipFile, pkl: str, keys: Sequence[str]) -> Dict[str, List[str]]:
    """{storage key: names of the tensors stored in it} for `keys` (empty where the names cannot be worked out)."""
    try:
        with zf.open(pkl) as f:
            obj = _RecordNames(f).load()
    except Exception:  # a damaged data.pkl, or a class that will not take a stand-in: name the records only
        return {}
    names: Dict[str, List[str]] = {}
    for name, storage in _walk(obj):
        if storage.key in keys:
            names.setdefault(storage.key, []).append(name)
    return names


def verify_checkpoint(path: str) -> None:
    """Check every member of a torch.save zip archive against its CRC-32; raise CheckpointError naming the file and
    the damaged tensors (or archive members). Files of torch's legacy (non-zip) format are left to torch.load."""
    if not zipfile.is_zipfile(path):
        return
    bad: List[str] = []
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            for info in infos:
                try:
                    with zf.open(info) as f:
                        while f.read(1 << 24):
                            pass
                except (zipfile.BadZipFile, EOFError, OSError, ValueError):  # "Bad CRC-32 for file ...", truncation
                    bad.append(info.filename)
            if not bad:
                return
            pkl = next((i.filename for i in infos if i.filename.endswith("/data.pkl")), None)
            prefix = pkl[: -len("data.pkl")] if pkl else ""
            keys = [b[len(prefix) + len("data/"):] for b in bad if pkl and b.startswith(prefix + "data/")]
            names = _tensor_names(zf, pkl, keys) if keys and pkl not in bad else {}
    except (zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(f"checkpoint {path} cannot be read ({e}): {_UNREADABLE}") from None
    damaged = []
    for member in bad:
        key = member[len(prefix) + len("data/"):] if pkl and member.startswith(prefix + "data/") else None
        if key is not None and names.get(key):
            damaged.append(f"tensor {' = '.join(names[key])} (archive record {member})")
        else:
            damaged.append(f"archive record {member}" + (" (the pickled structure)" if member == pkl else ""))
    raise CheckpointError(f"checkpoint {path} is damaged: {'; '.join(damaged)}: the stored bytes no longer match "
                          f"their CRC-32 (changed after writing: a bad disk, copy or download); copy it again from a "
                          f"good source or use an earlier checkpoint")


def _torch_load(path: str, weights_only: bool) -> Any:
    verify_checkpoint(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {path} cannot be read ({first}): {_UNREADABLE}") from None


def read_composer_checkpoint(path: str) -> dict:
    """The `state` dict of a Composer checkpoint file (state["model"] holds the weights), verified (see
    `verify_checkpoint`)."""
    if os.path.isdir(path):
        raise CheckpointError(f"{path} is a folder, not a Composer checkpoint file: give the .pt file main.py wrote "
                              f"(e.g. runs/<run>/latest-rank0.pt); a Hugging Face folder (an export) is already "
                              f"loadable with from_pretrained")
    if not os.path.isfile(path):
        raise CheckpointNotFoundError(f"checkpoint not found: {path}: give the path of a .pt file main.py wrote "
                                      f"(e.g. runs/<run>/latest-rank0.pt)")
    ckpt = _torch_load(path, weights_only=False)  # Composer pickles more than tensors
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state"), dict) or "model" not in ckpt["state"]:
        raise CheckpointError(f"{path} is not a Composer checkpoint (no state.model inside): give a .pt file main.py "
                              f"wrote (e.g. runs/<run>/latest-rank0.pt), or a Hugging Face folder where a folder is "
                              f"accepted")
    return ckpt["state"]


def _load_safetensors(path: str) -> Dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except Exception as e:
        raise CheckpointError(f"weights file {path} cannot be read ({type(e).__name__}: {e}): {_UNREADABLE}") from None


def _read_folder(path: str) -> Dict[str, torch.Tensor]:
    load_file = _load_safetensors
    single = os.path.join(path, "model.safetensors")
    if os.path.isfile(single):
        return load_file(single)
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        state: Dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(load_file(os.path.join(path, shard)))
        return state
    binary = os.path.join(path, "pytorch_model.bin")
    if os.path.isfile(binary):
        return _torch_load(binary, weights_only=True)
    raise CheckpointNotFoundError(f"{path} holds neither model.safetensors (or its index) nor pytorch_model.bin: give "
                                  f"a Hugging Face model folder or a Composer .pt file")


def looks_like_hub_id(name: str) -> bool:
    """'bert-base-uncased' or 'org/name' that is not a local path."""
    return (not name.startswith((".", "/", "~")) and name.count("/") <= 1 and not name.endswith((".pt", ".pth"))
            and not os.path.exists(name))


def resolve_source(source: str) -> str:
    """A local file or folder for `source`; a hub id is downloaded (or taken from the local hub cache)."""
    path = os.path.expanduser(source)
    if os.path.exists(path):
        return path
    if not looks_like_hub_id(source):
        raise CheckpointNotFoundError(f"checkpoint not found: {source}: no such file or folder")
    local_only = hub_local_only(source)
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(source, allow_patterns=HUB_PATTERNS, local_files_only=local_only)
    except Exception as e:
        if local_only:
            raise CheckpointNotFoundError(f"{source!r} is not a local file or folder, and not in the local Hugging "
                                          f"Face cache ({hub_unreachable()}): {e}") from e
        raise CheckpointNotFoundError(f"{source!r} is not a local file or folder, and downloading it from the Hugging "
                                f"Face hub failed: {e}") from e


def normalize_keys(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Drop Composer's `model.` prefix; rename old TF-converted BERT LayerNorm `gamma` / `beta` (bert-base-uncased)."""
    out = {}
    for k, v in state.items():
        k = k.removeprefix("model.")
        if "LayerNorm" in k and k.endswith(".gamma"):
            k = k[: -len("gamma")] + "weight"
        elif "LayerNorm" in k and k.endswith(".beta"):
            k = k[: -len("beta")] + "bias"
        out[k] = v
    return out


def read_weights(source: str) -> Dict[str, torch.Tensor]:
    """Weights of a Composer checkpoint, a Hugging Face folder or a hub model id, with normalised keys."""
    path = resolve_source(source)
    state = _read_folder(path) if os.path.isdir(path) else read_composer_checkpoint(path)["model"]
    return normalize_keys(state)


@dataclass
class LoadReport:
    """What `load_weights` did with every key. results.json stores it as a dict (`as_dict`)."""

    source: str
    loaded: int = 0  # tensors loaded
    head_not_loaded: List[str] = field(default_factory=list)  # source keys left out on purpose (head_prefixes)
    new_head: List[str] = field(default_factory=list)  # model keys expected to be absent (new_head_prefixes)
    missing: List[str] = field(default_factory=list)  # model keys not in the source: newly initialised
    unexpected: List[str] = field(default_factory=list)  # source keys the model has no place for
    shape_mismatch: List[str] = field(default_factory=list)  # same key, different shape: not loaded
    resized: List[str] = field(default_factory=list)  # vocab rows padded (fresh init for the extra rows)

    @property
    def complete(self) -> bool:
        return not (self.missing or self.unexpected or self.shape_mismatch)

    def as_dict(self) -> Dict[str, Any]:
        out = asdict(self)
        out.pop("source")
        return out

    def log(self, logger: logging.Logger = log) -> None:
        src = self.source
        logger.info("%s: loaded %d tensors; intentionally not loaded (head of the source): %s; newly initialised "
                    "head: %s", src, self.loaded, self.head_not_loaded or "none", self.new_head or "none")
        if self.resized:
            logger.warning("%s: resized %s", src, self.resized)
        if self.shape_mismatch:
            logger.warning("%s: %d weights with a different shape NOT loaded: %s", src, len(self.shape_mismatch),
                           self.shape_mismatch)
        if self.missing:
            logger.warning("%s: %d model weights not in the checkpoint, newly initialised: %s", src,
                           len(self.missing), self.missing)
        if self.unexpected:
            logger.warning("%s: %d checkpoint weights not used by this model: %s", src, len(self.unexpected),
                           self.unexpected)


def _fit_shapes(state: Dict[str, torch.Tensor], model_sd: Mapping[str, torch.Tensor], report: LoadReport) -> None:
    """Pad vocab-indexed tensors that are shorter than the model's; drop (and report) other shape mismatches."""
    for k, v in list(state.items()):
        target = model_sd.get(k)
        if target is None or target.shape == v.shape:
            continue
        if k.endswith(VOCAB_KEYS) and v.shape[1:] == target.shape[1:] and v.shape[0] < target.shape[0]:
            padded = target.detach().clone()
            padded[: v.shape[0]] = v.to(padded.dtype)
            state[k] = padded
            report.resized.append(f"{k}: {tuple(v.shape)} -> {tuple(target.shape)}")
        else:
            report.shape_mismatch.append(f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(target.shape)}")
            del state[k]


def _tied(missing: Sequence[str], loaded: Sequence[str], model_sd: Mapping[str, torch.Tensor]) -> set:
    """Missing keys that share storage with a loaded key (tied decoder / word embeddings): loaded after all."""
    loaded_ptrs = {model_sd[k].data_ptr() for k in loaded if model_sd[k].numel()}
    return {k for k in missing if k in model_sd and model_sd[k].numel() and model_sd[k].data_ptr() in loaded_ptrs}


def load_weights(
    model: torch.nn.Module,
    source: Union[str, Mapping[str, torch.Tensor]],
    head_prefixes: Sequence[str] = (),
    new_head_prefixes: Sequence[str] = (),
    name: str | None = None,
) -> LoadReport:
    """Load `source` (a path / hub id as in the module docstring, or a state dict) into `model`; log and return
    the report. Source keys under `head_prefixes` are left out on purpose (e.g. an MLM head when finetuning);
    model keys under `new_head_prefixes` are expected to be missing (a new classification head). Raises when not
    a single tensor loads (wrong model.name or config)."""
    from mosaicbert.model import MosaicBertPreTrainedModel, load_mosaic_state_dict

    label = name or (source if isinstance(source, str) else "state dict")
    state = read_weights(source) if isinstance(source, str) else normalize_keys(source)
    report = LoadReport(source=label)
    head_prefixes, new_head_prefixes = tuple(head_prefixes), tuple(new_head_prefixes)
    report.head_not_loaded = sorted(k for k in state if head_prefixes and k.startswith(head_prefixes))
    state = {k: v for k, v in state.items() if not (head_prefixes and k.startswith(head_prefixes))}
    held = sorted(state)
    model_sd = model.state_dict()
    _fit_shapes(state, model_sd, report)

    if isinstance(model, MosaicBertPreTrainedModel):
        missing, unexpected = load_mosaic_state_dict(model, state)
    else:
        result = model.load_state_dict(state, strict=False)
        missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    not_loaded = set(missing)
    loaded = [k for k in model_sd if k not in not_loaded]
    tied = _tied(missing, loaded, model_sd)
    mismatched = {entry.split(":")[0] for entry in report.shape_mismatch}  # reported there, once
    missing = [k for k in missing if k not in tied and k not in mismatched and not k.endswith(_DERIVED)]
    report.new_head = sorted(k for k in missing if new_head_prefixes and k.startswith(new_head_prefixes))
    report.missing = [k for k in missing if not (new_head_prefixes and k.startswith(new_head_prefixes))]
    report.unexpected = [k for k in unexpected if not k.endswith(_DERIVED)]
    report.loaded = len(loaded)
    if not loaded:
        shapes = f"; different shapes: {report.shape_mismatch[:3]}" if report.shape_mismatch else ""
        raise RuntimeError(f"{label}: none of its {len(held)} weights match this model (wrong model.name or "
                           f"model.config_overrides?); checkpoint keys look like {held[:5]}{shapes}")
    report.log()
    return report
