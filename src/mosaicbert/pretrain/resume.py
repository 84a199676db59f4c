"""Checkpoint folder hygiene for autoresume: unfinished and corrupt checkpoints, model mismatches, full disks.

Composer writes ``ep{epoch}-ba{batch}-rank{rank}.pt`` in place, then points ``latest-rank{rank}.pt`` at it. A process
killed while saving leaves a truncated file under the final name; Composer then refuses to train past it
(``FileExistsError ... may conflict with a future checkpoint``), or autoresumes from garbage. Before autoresume,
:func:`set_aside_unfinished_checkpoints` renames such files ``*.unfinished`` / ``*.corrupt`` (never deletes them)
and points ``latest`` at the newest intact checkpoint.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import zipfile
from typing import Any, Optional

import torch

log = logging.getLogger("mosaicbert")

__all__ = [
    "checkpoint_problem",
    "set_aside_unfinished_checkpoints",
    "check_checkpoint_matches_model",
    "disk_full_message",
    "latest_checkpoint",
]

_CHECKPOINT = re.compile(r"ep(\d+)-ba(\d+)-rank(\d+)\.pt")
_LATEST = re.compile(r"latest-rank(\d+)\.pt")


def checkpoint_problem(path: str) -> Optional[str]:
    """None if `path` is a complete torch zip archive whose every record matches its CRC, else what is wrong.

    A save cut short lacks the zip's central directory (written last); bytes damaged later fail a CRC. torch.load
    notices neither reliably (damaged tensor bytes load silently), so this reads the whole file once.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, EOFError, OSError) as e:
        return f"not a complete checkpoint ({type(e).__name__}: {e}; the save was interrupted or the file truncated)"
    if bad is not None:
        return f"damaged: record {bad!r} fails its CRC check"
    return None


def _set_aside(path: str, suffix: str, why: str) -> None:
    target, n = f"{path}.{suffix}", 1
    while os.path.exists(target):
        n += 1
        target = f"{path}.{suffix}{n}"
    log.warning("%s is %s: renaming it to %s", path, why, target)
    os.replace(path, target)


def set_aside_unfinished_checkpoints(save_folder: Optional[str]) -> dict[int, Optional[str]]:
    """Before autoresume: leave `latest-rank*.pt` pointing at the newest complete, intact checkpoint of each rank.

    * checkpoints newer than the one `latest` points to (or every checkpoint, when a kill during the first save left
      no `latest`) are unfinished saves: renamed ``*.unfinished``;
    * a checkpoint `latest` points to that is truncated or damaged is renamed ``*.corrupt`` with a warning, and
      `latest` falls back to the previous intact checkpoint (or is removed, so the run starts afresh).

    Returns {rank: checkpoint file resumed from, or None}. Local folders only (remote ones are left to Composer).
    """
    if not save_folder or "://" in save_folder or not os.path.isdir(save_folder):
        return {}
    by_rank: dict[int, list[tuple[int, str]]] = {}
    latest: dict[int, Optional[str]] = {}
    for name in os.listdir(save_folder):
        path = os.path.join(save_folder, name)
        if (m := _CHECKPOINT.fullmatch(name)) and os.path.isfile(path) and not os.path.islink(path):
            by_rank.setdefault(int(m.group(3)), []).append((int(m.group(2)), name))
        elif (m := _LATEST.fullmatch(name)) and os.path.islink(path):
            latest[int(m.group(1))] = os.path.basename(os.readlink(path))
    chosen: dict[int, Optional[str]] = {}
    for rank in sorted(set(by_rank) | set(latest)):
        ckpts = sorted(by_rank.get(rank, []))
        link = os.path.join(save_folder, f"latest-rank{rank}.pt")
        target = latest.get(rank)
        target_batch = next((b for b, n in ckpts if n == target), None)
        keep = ckpts
        if target_batch is not None or target is None:
            for batch, name in ckpts:
                if target_batch is None or batch > target_batch:
                    why = ("newer than the checkpoint latest-rank*.pt points to (its save was interrupted)"
                           if target_batch is not None
                           else "a checkpoint whose save never completed (no latest-rank*.pt)")
                    if target_batch is None and checkpoint_problem(os.path.join(save_folder, name)) is None:
                        continue  # complete (killed between the save and the link): usable
                    _set_aside(os.path.join(save_folder, name), "unfinished", why)
            keep = [(b, n) for b, n in ckpts if os.path.exists(os.path.join(save_folder, n))]
        resume = None
        for batch, name in reversed(keep):
            path = os.path.join(save_folder, name)
            problem = checkpoint_problem(path)
            if problem is None:
                resume = name
                break
            _set_aside(path, "corrupt", problem)
        if resume != target:
            if os.path.lexists(link):
                os.remove(link)
            if resume is not None:
                os.symlink(resume, link)
                if target is not None:
                    log.warning("%s: resuming from %s instead of %s (see above)", save_folder, resume, target)
            elif target is not None:
                log.warning("%s: no intact checkpoint is left; the run starts from the beginning", save_folder)
        chosen[rank] = None if resume is None else os.path.join(save_folder, resume)
    return chosen


def latest_checkpoint(save_folder: Optional[str], rank: int = 0) -> Optional[str]:
    """The file `latest-rank{rank}.pt` points to in a local save folder, if any."""
    if not save_folder or "://" in save_folder:
        return None
    link = os.path.join(save_folder, f"latest-rank{rank}.pt")
    return os.path.realpath(link) if os.path.isfile(link) else None


def check_checkpoint_matches_model(checkpoint: str, model: torch.nn.Module, what: str) -> None:
    """Raise ValueError naming `what` (the folder) and the first parameter whose name or shape differs between the
    checkpoint and `model` (a ComposerModel), instead of Composer's load error deep in the trainer."""
    state = torch.load(checkpoint, map_location="cpu", mmap=True, weights_only=False)
    saved: dict[str, Any] = state.get("state", {}).get("model", {}) if isinstance(state, dict) else {}
    if not saved:
        return  # not a Composer training checkpoint: Composer's own error applies
    ours = model.state_dict()
    for name, tensor in ours.items():
        if name not in saved:
            raise ValueError(
                f"{what} holds checkpoints of a different model: parameter {name} {tuple(tensor.shape)} of this "
                f"model is not in {checkpoint}. Use another save_folder, or the model config those checkpoints "
                f"were trained with.")
        if tuple(saved[name].shape) != tuple(tensor.shape):
            raise ValueError(
                f"{what} holds checkpoints of a different model: parameter {name} has shape "
                f"{tuple(saved[name].shape)} in {checkpoint} but {tuple(tensor.shape)} in this model. Use another "
                f"save_folder, or the model config those checkpoints were trained with.")
    extra = [k for k in saved if k not in ours]
    if extra:
        raise ValueError(
            f"{what} holds checkpoints of a different model: {checkpoint} has parameter {extra[0]} "
            f"{tuple(saved[extra[0]].shape)} (and {len(extra) - 1} more) that this model lacks. Use another "
            f"save_folder, or the model config those checkpoints were trained with.")


def _is_disk_full(err: BaseException) -> bool:
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return True
    # torch's own zip writer (torch.save to a path) reports a short write as "... inline_container.cc ...
    # unexpected pos N vs M"
    return isinstance(err, RuntimeError) and "unexpected pos" in str(err)


def _tensor_bytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def disk_full_message(err: BaseException, save_folder: Optional[str], state: Any = None) -> Optional[str]:
    """A message for a write that failed because the disk (or quota) is full, or None for other errors.

    Names the folder, the size one checkpoint needs (model + optimizer state) and the free space; removes the
    partial checkpoint the failed save left behind (it is unusable and takes the space needed to resume)."""
    chain, e = [], err
    while e is not None and len(chain) < 10:
        chain.append(e)
        e = e.__cause__ or e.__context__
    full = next((e for e in chain if _is_disk_full(e)), None)
    if full is None:
        return None
    folder = save_folder or "."
    target = next((getattr(e, "filename", None) for e in chain if getattr(e, "filename", None)), None)
    need = ""
    if state is not None:
        try:
            nbytes = _tensor_bytes(state.model.state_dict())
            nbytes += sum(_tensor_bytes(o.state_dict()) for o in state.optimizers)
            need = f" A checkpoint needs about {nbytes / 2**20:.1f} MiB;"
        except Exception:  # best effort: the message matters more than the estimate
            need = ""
        if save_folder and "://" not in save_folder and target is None:
            ts = state.timestamp  # the save in progress: Composer's default name, written by rank 0
            target = os.path.join(save_folder, f"ep{int(ts.epoch)}-ba{int(ts.batch)}-rank0.pt")
            if os.path.isfile(target) and not os.path.islink(target) and checkpoint_problem(target) is not None:
                os.remove(target)
                need += f" the partial file {target} was removed;"
    try:
        free = f" {shutil.disk_usage(folder if os.path.isdir(folder) else '.').free / 2**20:.1f} MiB are free there."
    except OSError:
        free = ""
    what = f" writing {target}" if target else ""
    return (
        f"the disk is full ({type(full).__name__}: {str(full).splitlines()[0] if str(full) else ''})"
        f"{what} in save folder {folder!r}.{need}{free} Free space on that disk, lower save_num_checkpoints_to_keep, "
        f"or set save_folder to a larger disk, then rerun the same command: with autoresume=true it continues from "
        f"the last complete checkpoint."
    )
