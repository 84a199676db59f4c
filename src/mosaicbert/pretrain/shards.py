"""Shard integrity and repair for MDS datasets read with streaming.

* :func:`check_mds_split` checks a split folder before training (index.json readable, every shard file present at its
  recorded size).
* :class:`VerifiedStreamingDataset` is a :class:`streaming.StreamingDataset` that checks each shard's files against the
  sizes and hashes in index.json before its first sample is read, re-makes a damaged decompressed copy from an intact
  zstd file (atomically, safe with many readers), and turns read failures into :class:`CorruptShardError` (the files are
  bad: re-convert) or :class:`ShardReadError` (the files are intact: do not delete them), raised in the caller also when
  the failure happened in streaming's background download thread.

It overrides streaming's ``prepare_shard`` and uses its private ``_ShardState`` (streaming 0.13): a shard whose
preparation failed is put back to ``REMOTE`` so that threads waiting on it retry instead of waiting forever.
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import struct
import threading
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from streaming import StreamingDataset
from streaming.base.dataset import _ShardState
from streaming.base.format.mds import MDSReader

from mosaicbert.pretrain.convert import remove_stale_temporaries, temporary_name

log = logging.getLogger("mosaicbert")

__all__ = ["CONVERT_HINT", "CorruptShardError", "ShardReadError", "VerifiedStreamingDataset", "check_mds_split",
           "file_problem"]

CONVERT_HINT = (
    "Create it with `python -m mosaicbert.pretrain.convert --out_root <folder> ...` (e.g. --source local "
    "--train_files '<glob>' --val_files '<glob>', or --source builtin), or use local=builtin://python-docs."
)

class ShardReadError(RuntimeError):
    """Reading a shard failed although its files match index.json (sizes and hashes): the data is fine."""


class CorruptShardError(ShardReadError):
    """A shard file is missing, truncated or damaged: its size or hash differs from index.json."""


_HASH_PREFERENCE = ("xxh3_64", "xxh64", "xxh3_128", "xxh128", "sha1", "md5", "sha256")


def file_problem(path: str, nbytes: int, hashes: dict[str, str] | None, check_hash: bool = True) -> str | None:
    """None when the shard file `path` has the size (and, with `check_hash`, a hash) index.json records for it,
    else what is wrong with it."""
    from streaming.base.hashing import get_hash

    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        return "is missing"
    if size != nbytes:
        return f"has {size} bytes but index.json says {nbytes} ({'truncated' if size < nbytes else 'damaged'})"
    if check_hash and hashes:
        algo = next((a for a in _HASH_PREFERENCE if a in hashes), next(iter(hashes)))
        with open(path, "rb") as f:
            if get_hash(algo, f.read()) != hashes[algo]:
                return f"does not match its {algo} hash in index.json (its bytes were overwritten or damaged)"
    return None


def _reconvert(what: str) -> str:
    return (f"{what} The split must be made again: re-run `python -m mosaicbert.pretrain.convert` (or download it "
            "again).")


def check_mds_split(local: str | os.PathLike, split: str | None) -> Path:
    """Check that ``<local>/<split>`` is an MDS dataset folder; return it. Raises FileNotFoundError otherwise."""
    root = Path(local).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"Data folder {str(root)!r} does not exist. {CONVERT_HINT}")
    folder = root / split if split else root
    if not folder.is_dir():
        have = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        raise FileNotFoundError(
            f"Split folder {str(folder)!r} does not exist (subfolders of {str(root)!r}: {have}). {CONVERT_HINT}"
        )
    index = folder / "index.json"
    if not index.is_file():
        what = "is empty" if not any(folder.iterdir()) else "has no index.json (an interrupted conversion?)"
        raise FileNotFoundError(f"MDS split folder {str(folder)!r} {what}. {CONVERT_HINT}")
    try:
        obj = json.loads(index.read_text())
        shards = obj["shards"]
    except (ValueError, KeyError, TypeError) as e:
        raise CorruptShardError(f"MDS index {str(index)!r} is unreadable ({type(e).__name__}: {e}); re-run the "
                                "conversion.") from e
    if not shards:
        raise FileNotFoundError(f"MDS index {str(index)!r} lists no shards (empty dataset). {CONVERT_HINT}")
    # Sizes before training (cheap; hashes are checked as each shard is first read). A shard needs its raw
    # (decompressed) file or its compressed one intact; a bad raw copy next to a good zstd file is re-made.
    for shard in shards:
        raw, zipped = shard.get("raw_data") or {}, shard.get("zip_data") or {}
        problems = []
        for info in (raw, zipped):
            if info:
                problem = file_problem(str(folder / info["basename"]), int(info["bytes"]), None, check_hash=False)
                if problem is None:
                    break
                problems.append(f"{folder / info['basename']} {problem}")
        else:
            raise CorruptShardError(_reconvert(f"MDS shard files of {str(folder)!r} are damaged: "
                                               f"{'; '.join(problems)}."))
    return folder




class VerifiedStreamingDataset(StreamingDataset):
    """A StreamingDataset whose shard files are checked against index.json before they are read (see module
    docstring); ``_read(idx)`` returns the raw MDS sample."""

    # Memory maps of shard files kept open per process: streaming opens, seeks, reads and closes the file for every
    # sample, which costs more than everything else a loader worker does with a pre-tokenized sample.
    MAX_OPEN_MAPS = 64

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._mlm_shard_error: ShardReadError | None = None
        self._mlm_verified: set[int] = set()  # shards whose local files matched index.json in this process
        self._mlm_maps: OrderedDict[int, mmap.mmap] = OrderedDict()  # shard id -> map, least recently used first
        self._mlm_maps_pid = os.getpid()

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__
        state = dict(state)
        state["_mlm_maps"] = OrderedDict()  # (maps belong to one process; a copy opens its own)
        return state

    def _mapped_sample(self, shard_id: int, index: int) -> bytes | None:
        """The bytes of sample ``index`` of an MDS shard from a memory map of its file, or None when streaming must
        read it: a cache with a size limit (streaming evicts and re-downloads shards), a file not downloaded or
        decompressed yet, another format.

        An MDS file is ``[n: uint32][n + 1 offsets: uint32][samples]``; sample i is bytes ``offsets[i]:offsets[i+1]``.
        """
        if self._mlm_maps_pid != os.getpid():  # a forked DataLoader worker: its parent's maps are not its own
            self._mlm_maps, self._mlm_maps_pid = OrderedDict(), os.getpid()
        mapped = self._mlm_maps.get(shard_id)
        if mapped is None:
            shard = self.shards[shard_id]
            if self.cache_limit or not isinstance(shard, MDSReader):
                return None
            try:
                with open(self._shard_paths(shard_id)[0][0], "rb") as f:  # (an MDS shard is one raw file)
                    mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            except (FileNotFoundError, ValueError):  # (not there yet; an empty file cannot be mapped)
                return None
            if len(self._mlm_maps) >= self.MAX_OPEN_MAPS:
                self._mlm_maps.popitem(last=False)[1].close()
            self._mlm_maps[shard_id] = mapped
        else:
            self._mlm_maps.move_to_end(shard_id)
        begin, end = struct.unpack_from("<II", mapped, 4 + 4 * index)
        data = mapped[begin:end]
        if not data:
            raise IndexError(f"Relative sample index {index} is not present in shard {self._shard_files(shard_id)}.")
        return data

    def _shard_paths(self, shard_id: int) -> list[tuple[str, Any, str | None, Any]]:
        """[(raw path, raw info, zip path or None, zip info)] of a shard's files in the local folder."""
        stream = self.streams[self.stream_per_shard[shard_id]]
        base = os.path.join(stream.local, stream.split or "")
        return [(os.path.join(base, raw.basename), raw, os.path.join(base, z.basename) if z else None, z)
                for raw, z in self.shards[shard_id].file_pairs]

    def _shard_files(self, shard_id: int) -> str:
        try:
            return " / ".join(p for raw, _, zipped, _ in self._shard_paths(shard_id) for p in (raw, zipped) if p)
        except Exception:  # pragma: no cover - best effort description
            return f"shard #{shard_id}"

    def _decompress(self, zip_path: str, zip_info: Any, raw_path: str, raw_info: Any, compression: str) -> None:
        """Decompress next to the zstd file, atomically: a private temporary file renamed into place. Any number of
        processes may do this at once on one folder (the last rename wins, with the same bytes); streaming's own
        in-place decompression shares one `.tmp` name between them and fails."""
        from streaming.base.compression import decompress
        from streaming.base.hashing import get_hash

        problem = file_problem(zip_path, zip_info.bytes, zip_info.hashes)
        if problem is not None:
            raise CorruptShardError(_reconvert(f"MDS shard file {zip_path} {problem}."))
        with open(zip_path, "rb") as f:
            data = decompress(compression, f.read())
        algo = next((a for a in _HASH_PREFERENCE if a in (raw_info.hashes or {})), None)
        if len(data) != raw_info.bytes or (algo and get_hash(algo, data) != raw_info.hashes[algo]):
            raise CorruptShardError(_reconvert(f"MDS shard file {zip_path} decompresses to data that does not match "
                                               f"index.json."))
        remove_stale_temporaries(os.path.dirname(raw_path), os.path.basename(raw_path) + ".tmp-")
        tmp = temporary_name(raw_path + ".tmp-")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, raw_path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def _verify_shard(self, shard_id: int, repair: bool = True) -> None:
        """Check the shard's local files against index.json (size, hash) before they are read, once per process.

        A damaged decompressed copy next to an intact zstd file is re-made (with `repair`); a shard whose own files
        are bad raises CorruptShardError naming the file. Shards of a remote are left to streaming until it has
        downloaded (and decompressed) them, then checked like local ones (see prepare_shard)."""
        if shard_id in self._mlm_verified:
            return
        stream = self.streams[self.stream_per_shard[shard_id]]
        remote = stream.remote not in (None, "", stream.local)
        local = True
        for raw_path, raw_info, zip_path, zip_info in self._shard_paths(shard_id):
            zip_ok = zip_path is not None and os.path.isfile(zip_path)
            if os.path.isfile(raw_path):
                problem = file_problem(raw_path, raw_info.bytes, raw_info.hashes)
                if problem is None:
                    continue
                if not (zip_ok and repair and not remote):
                    raise CorruptShardError(_reconvert(f"MDS shard file {raw_path} {problem}."))
                log.warning("%s %s; decompressing it again from %s", raw_path, problem, zip_path)
            elif not zip_ok:
                local = False  # not downloaded yet: streaming downloads it
                continue
            elif remote or not repair:
                problem = file_problem(zip_path, zip_info.bytes, zip_info.hashes)
                if problem == "is missing":  # (streaming removed a downloaded zstd file once decompressed)
                    local = False
                elif problem is not None:
                    raise CorruptShardError(_reconvert(f"MDS shard file {zip_path} {problem}."))
                local = local and not remote  # streaming decompresses downloaded shards itself
                continue
            self._decompress(zip_path, zip_info, raw_path, raw_info, self.shards[shard_id].compression)
        if local:
            self._mlm_verified.add(shard_id)

    def _read_failed(self, shard_id: int, err: BaseException) -> ShardReadError:
        """Blame the shard only when its files are actually bad; otherwise say the data is intact."""
        self._mlm_verified.discard(shard_id)
        mapped = self._mlm_maps.pop(shard_id, None)
        if mapped is not None:
            mapped.close()
        try:
            self._verify_shard(shard_id, repair=False)
        except CorruptShardError as bad:
            return CorruptShardError(f"{bad} (reading it failed with {type(err).__name__}: {err})")
        except OSError as unreadable:  # cannot even read the files to check them
            return ShardReadError(f"reading MDS shard {self._shard_files(shard_id)} failed ({type(err).__name__}: "
                                  f"{err}) and checking its files failed too ({unreadable}). Check the disk and the "
                                  "folder's permissions before deleting anything.")
        return ShardReadError(
            f"reading MDS shard {self._shard_files(shard_id)} failed ({type(err).__name__}: {err}), but its files "
            "match index.json (sizes and hashes): the data is intact, do not delete it. Check the disk, free "
            "memory/shared memory, and that no other program is modifying the folder, then retry."
        )

    def prepare_shard(self, shard_id: int, blocking: bool = True) -> None:
        try:
            self._verify_shard(shard_id)
            super().prepare_shard(shard_id, blocking)
            self._verify_shard(shard_id)  # just downloaded from a remote: checked before its first sample is read
        except Exception as e:
            remote = self.streams[self.stream_per_shard[shard_id]].remote
            if isinstance(e, FileNotFoundError) and remote not in (None, ""):
                raise  # a remote download problem: streaming's own message is the useful one
            err = e if isinstance(e, ShardReadError) else self._read_failed(shard_id, e)
            # streaming left the shard in PREPARING state; a thread blocked in prepare_shard(blocking=True)
            # would wait for it forever. Put it back so that waiters retry (and hit this same error).
            try:
                self._shard_states[shard_id] = _ShardState.REMOTE
            except Exception:  # pragma: no cover
                pass
            # This may run in streaming's background download thread, whose exceptions only stop the
            # iteration; remember it so that __iter__/__getitem__ can raise it in the caller.
            self._mlm_shard_error = err
            if threading.current_thread() is not threading.main_thread():
                # A background thread that raises never reports its exit, and streaming's __iter__ then waits for
                # it forever. Stop the threads the way streaming does after a crash, without raising here.
                event = getattr(self, "_event", None)
                if event is not None:
                    event.set()
                return
            if err is e:
                raise
            raise err from e

    def _read(self, idx: int, retry: int = 7) -> dict[str, Any]:
        if self._mlm_shard_error is not None:
            raise self._mlm_shard_error
        shard_id, index = self.spanner[idx]
        try:
            self._verify_shard(shard_id)  # (once per shard and process)
            data = self._mapped_sample(shard_id, index)
            if data is not None:
                return self.shards[shard_id].decode_sample(data)
            return super().get_item(idx, retry)
        except ShardReadError:
            raise
        except RuntimeError as e:
            if self._mlm_shard_error is not None:
                raise self._mlm_shard_error from e
            raise self._read_failed(shard_id, e) from e
        except Exception as e:  # decoding garbage: struct.error, UnicodeDecodeError, ValueError, zstd errors ...
            raise self._read_failed(shard_id, e) from e

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self._mlm_shard_error = None
        yield from super().__iter__()
        if self._mlm_shard_error is not None:
            raise self._mlm_shard_error

