"""Faults a careful user meets: two runs in one save folder, a killed launcher, damaged or mismatched shards, several
jobs reading one dataset, interrupted checkpoint saves, a full disk, bad converter input. Each ends in a recovery or
in an error that names the cause, never silently and never with a raw traceback as the last line."""

from __future__ import annotations

import errno
import gzip
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import WORDS, write_documents, write_vocab

from mosaicbert.core.tokenizer import load_tokenizer
from mosaicbert.pretrain.config import DataConfig
from mosaicbert.pretrain.convert import convert
from mosaicbert.pretrain.convert import main as convert_main
from mosaicbert.pretrain.mlm import (
    CorruptShardError,
    DatasetMismatchError,
    ShardReadError,
    build_mlm_dataloader,
)
from mosaicbert.pretrain.resume import (
    check_checkpoint_matches_model,
    disk_full_message,
    set_aside_unfinished_checkpoints,
)
from mosaicbert.pretrain.runlock import RunLock, RunLockedError

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
MAX_LEN = 32


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("MOSAICBERT_CACHE", str(ROOT / ".cache" / "mosaicbert"))
    return env


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A 305-token WordPiece vocab (each word one token), 150 documents, and that vocab's tokenizer."""
    root = tmp_path_factory.mktemp("faults")
    write_documents(root / "docs.jsonl", num_docs=150, min_words=5, max_words=60)
    return root, load_tokenizer(str(write_vocab(root / "vocab.txt")))


def _convert(toy, out: Path, compression=None, tokenizer=None, splits=("train",)) -> Path:
    root, tok = toy
    convert(out_root=out, source="local", train_files=str(root / "docs.jsonl"), val_files=str(root / "docs.jsonl"),
            mode="split", tokenize=True, max_seq_len=MAX_LEN, tokenizer=tokenizer or str(root / "vocab.txt"),
            progress=False, compression=compression, splits=list(splits))
    return out


def _loader(local, tok, *, split="train", remote=None, seed=7, device_batch_size=8, drop_last=False,
            same_masks_every_epoch=False, mlm_probability=0.3, **data):
    """A loader of `split` (an evaluation loader, i.e. unshuffled with fixed masks, with `same_masks_every_epoch`)."""
    data = {"shuffle": False, "num_workers": 0, "max_seq_len": MAX_LEN, **data}
    cfg = DataConfig(local=str(local), remote=remote, train_split=split, eval_split=split,
                     mlm_probability=mlm_probability, eval_mlm_probability=mlm_probability, **data)
    return build_mlm_dataloader(cfg, tok, train=not same_masks_every_epoch, batch_size=device_batch_size, seed=seed,
                                drop_last=drop_last)


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def _gone(pid: int) -> bool:
    """The process has exited (a zombie nobody reaps counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return True


# ---------------------------------------------------------------------------------------------------------------
# One run per save folder; no trainer outlives its launcher
# ---------------------------------------------------------------------------------------------------------------


def test_run_lock_refuses_a_live_holder_and_takes_over_a_dead_ones(tmp_path, caplog):
    folder = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom mosaicbert.pretrain.runlock import RunLock\n"
         "RunLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(120)", str(folder)],
        stdout=subprocess.PIPE, text=True, env=_env())
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError, match=rf"{folder}.* in use by another run \(pid {holder.pid} on host "
                                                 rf"{socket.gethostname()}"):
            RunLock(str(folder)).acquire()
        RunLock(str(folder), rank=1).acquire().release()  # every rank has its own lock
    finally:
        holder.kill()  # SIGKILL: no chance to release, the file still names it
        holder.wait()
    with caplog.at_level("WARNING", logger="mosaicbert"):
        lock = RunLock(str(folder)).acquire()
    assert f"taking over the stale lock of pid {holder.pid}" in caplog.text and "no longer running" in caplog.text
    assert f"pid={os.getpid()}" in (folder / ".run-rank0.lock").read_text()
    lock.release()
    assert (folder / ".run-rank0.lock").read_text() == ""  # a clean release is not stale
    caplog.clear()
    with caplog.at_level("WARNING", logger="mosaicbert"), RunLock(str(folder)):
        pass
    assert "stale" not in caplog.text


def test_child_dies_with_its_parent(tmp_path):
    """exit_with_parent (what main.py does under a launcher): SIGKILL the parent, the child gets SIGTERM."""
    child_code = ("from mosaicbert.pretrain.runlock import exit_with_parent\nimport time\nassert exit_with_parent()\n"
                  "print('ready', flush=True)\ntime.sleep(120)")
    parent_code = ("import subprocess, sys, time\n"
                   f"c = subprocess.Popen([sys.executable, '-c', {child_code!r}], stdout=open(sys.argv[1], 'w'))\n"
                   "print(c.pid, flush=True)\ntime.sleep(120)")
    ready = tmp_path / "ready"
    parent = subprocess.Popen([sys.executable, "-c", parent_code, str(ready)], stdout=subprocess.PIPE, text=True,
                              env=_env())
    child = int(parent.stdout.readline())
    deadline = time.time() + 60
    while "ready" not in (ready.read_text() if ready.exists() else "") and time.time() < deadline:
        time.sleep(0.1)
    assert not _gone(child)
    parent.kill()
    parent.wait()
    deadline = time.time() + 20
    while not _gone(child) and time.time() < deadline:
        time.sleep(0.1)
    if not _gone(child):
        os.kill(child, signal.SIGKILL)
        pytest.fail("the child outlived its killed parent")


# ---------------------------------------------------------------------------------------------------------------
# Converter input errors and leftovers
# ---------------------------------------------------------------------------------------------------------------


def test_converter_names_file_and_line_of_bad_input(tmp_path, toy, capsys):
    vocab = str(toy[0] / "vocab.txt")
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes(json.dumps({"text": "w1 w2"}).encode() + b"\n" + '{"text": "caf\xe9 w3"}\n'.encode("latin-1"))
    with pytest.raises(ValueError, match=rf"{latin1}:2: not UTF-8 text \(byte 0xe9 at column 14\)"):
        convert(out_root=tmp_path / "o", source="local", train_files=str(latin1), val_files=str(latin1),
                tokenizer=vocab, progress=False)
    plain = tmp_path / "plain.json.gz"
    plain.write_text(json.dumps({"text": "w1"}) + "\n")
    with pytest.raises(ValueError, match=rf"{plain}: not a gzip file"):
        convert(out_root=tmp_path / "o", source="local", train_files=str(plain), val_files=str(plain),
                tokenizer=vocab, progress=False)
    cut = tmp_path / "cut.json.gz"
    data = gzip.compress(("\n".join(json.dumps({"text": f"w{i % 300} w1"}) for i in range(3000)) + "\n").encode())
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=rf"{cut}:\d+: a damaged or truncated gzip file"):
        convert(out_root=tmp_path / "o", source="local", train_files=str(cut), val_files=str(cut),
                tokenizer=vocab, progress=False)
    # The CLI prints it as one line and exits 2.
    rc = convert_main(["--source", "local", "--train_files", str(latin1), "--val_files", str(latin1), "--tokenizer",
                       vocab, "--out_root", str(tmp_path / "o"), "--no_progress"])
    assert rc == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(f"error: {latin1}:2: not UTF-8")
    assert not (tmp_path / "o" / "train").exists()


def test_converter_removes_temporaries_of_dead_conversions(tmp_path, toy):
    out = tmp_path / "mds"
    out.mkdir()
    host = socket.gethostname()
    dead, old_format = out / f".train.tmp-{_dead_pid()}-{host}-0123abcd", out / f".val.tmp-{_dead_pid()}-89abcdef"
    live = out / f".train.tmp-{os.getpid()}-{host}-fedcba98"
    other_host = out / f".train.tmp-{_dead_pid()}-elsewhere-0badc0de"
    for d in (dead, old_format, live, other_host):
        d.mkdir()
        (d / "shard.00000.mds").write_bytes(b"partial")
    _convert(toy, out, splits=("train", "val"))
    assert not dead.exists() and not old_format.exists()
    assert live.exists() and other_host.exists()  # a conversion still running here, or one on another host
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["train", "val"]


# ---------------------------------------------------------------------------------------------------------------
# Damaged or mismatched shards
# ---------------------------------------------------------------------------------------------------------------


def test_converter_records_hashes_and_tokenizer(tmp_path, toy):
    out = _convert(toy, tmp_path / "mds", compression="zstd")
    shard = json.loads((out / "train" / "index.json").read_text())["shards"][0]
    assert set(shard["raw_data"]["hashes"]) == {"xxh3_64"} and set(shard["zip_data"]["hashes"]) == {"xxh3_64"}
    info = json.loads((out / "train" / "mosaicbert.json").read_text())
    assert info["tokenizer"]["name"] == str(toy[0] / "vocab.txt")
    assert info["tokenizer"]["vocab_size"] == 305 and len(info["tokenizer"]["vocab_sha256"]) == 64
    assert info["columns"] == {"input_ids": "ndarray:int32"} and info["samples"] > 0


def test_truncated_shard_is_refused_before_training(tmp_path, toy):
    out = _convert(toy, tmp_path / "mds")
    shard = out / "train" / "shard.00000.mds"
    size = shard.stat().st_size
    with open(shard, "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(CorruptShardError, match=rf"{shard} has {size // 2} bytes but index.json says {size} "
                                                r"\(truncated\).*re-run"):
        _loader(out, toy[1])


@pytest.mark.parametrize("compression", [None, "zstd"])
def test_overwritten_shard_bytes_are_caught_before_any_batch(tmp_path, toy, compression):
    out = _convert(toy, tmp_path / "mds", compression=compression)
    shard = next((out / "train").glob("shard.00000.mds*"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2: len(data) // 2 + 8] = bytes(8)  # same size; decodes fine, but not the data written
    shard.write_bytes(bytes(data))
    loader = _loader(out, toy[1])
    got = []
    with pytest.raises(CorruptShardError, match=rf"{shard} does not match its xxh3_64 hash in index.json"):
        for batch in loader:
            got.append(batch)
    assert got == []


@pytest.mark.parametrize("compression", [None, "zstd"])
def test_damaged_shard_downloaded_from_a_remote_is_caught(tmp_path, toy, compression):
    remote = _convert(toy, tmp_path / "remote", compression=compression)
    shard = next((remote / "train").glob("shard.00000.mds*"))
    data = bytearray(shard.read_bytes())
    data[-8:] = bytes(8)
    shard.write_bytes(bytes(data))
    with pytest.raises(CorruptShardError, match=r"cache/train/shard\.00000\.mds.* (hash|does not match)"):
        list(_loader(tmp_path / "cache", toy[1], remote=str(remote)))


def test_shards_of_another_tokenizer_are_refused(tmp_path, toy):
    other = tmp_path / "other" / "vocab.txt"
    other.parent.mkdir()
    write_vocab(other, WORDS[::-1])  # same size: every id fits the model's vocabulary
    out = _convert(toy, tmp_path / "mds", tokenizer=str(other))
    with pytest.raises(DatasetMismatchError, match=rf"tokenized with tokenizer '{other}' .* but this run uses "
                                                   rf"tokenizer '{toy[0] / 'vocab.txt'}'"):
        _loader(out, toy[1])
    _loader(out, load_tokenizer(str(other)))  # the right tokenizer is accepted


# ---------------------------------------------------------------------------------------------------------------
# Several jobs reading one dataset folder
# ---------------------------------------------------------------------------------------------------------------


# One reading job: builds its loader, says it is ready, waits for the go file, prints the first 20 batch sums.
_READER = """
import json, sys, time
from pathlib import Path
from mosaicbert.core.tokenizer import load_tokenizer
from mosaicbert.pretrain.config import DataConfig
from mosaicbert.pretrain.mlm import build_mlm_dataloader
local, vocab, ready, go = sys.argv[1:]
cfg = DataConfig(local=local, train_split="train", eval_split="train", shuffle=False, num_workers=0,
                 max_seq_len=%d, mlm_probability=0.3, eval_mlm_probability=0.3)
loader = build_mlm_dataloader(cfg, load_tokenizer(vocab), train=True, batch_size=8, seed=7, drop_last=False)
Path(ready).touch()
while not Path(go).exists():  # every reader meets the still-compressed shard at the same moment
    time.sleep(0.01)
sums = []
for batch in loader:  # the shard is decompressed before the first batch
    sums.append(int(batch["input_ids"].sum()))
    if len(sums) == 20:
        break
print(json.dumps(sums))
""" % MAX_LEN


@pytest.mark.slow
def test_jobs_read_one_compressed_folder_at_once(tmp_path, toy):
    """Four jobs start on one zstd folder together. Streaming's in-place decompression made all but one of them fail
    (`shard.00000.mds.tmp -> shard.00000.mds` gone) in most such starts with a shard of this size."""
    rng = np.random.default_rng(1)
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": " ".join(WORDS[w] for w in rng.integers(0, 300, 500))}) + "\n"
                            for _ in range(1000)))
    first = tmp_path / "mds"
    convert(out_root=first, source="local", train_files=str(docs), val_files=str(docs), mode="split", tokenize=True,
            max_seq_len=MAX_LEN, tokenizer=toy[1], progress=False, compression="zstd", splits=["train"])
    for trial in range(3):
        out, sync = tmp_path / f"copy{trial}", tmp_path / f"sync{trial}"
        shutil.copytree(first, out)
        sync.mkdir()
        go = sync / "go"
        jobs = [subprocess.Popen([sys.executable, "-c", _READER, str(out), str(toy[0] / "vocab.txt"),
                                  str(sync / f"ready{i}"), str(go)], env=_env(), stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for i in range(4)]
        try:
            deadline = time.time() + 300
            while len(list(sync.glob("ready*"))) < 4:
                failed = [j for j in jobs if j.poll() is not None]
                assert not failed, failed[0].communicate()[1][-3000:]
                assert time.time() < deadline, "the readers did not start"
                time.sleep(0.05)
            go.touch()
            outputs = [j.communicate(timeout=300) for j in jobs]
        finally:
            for j in jobs:
                j.kill()
        assert all(j.returncode == 0 for j in jobs), [err[-3000:] for _, err in outputs]
        results = [json.loads(o.strip().splitlines()[-1]) for o, _ in outputs]
        assert len(results[0]) == 20 and all(r == results[0] for r in results)
        names = sorted(p.name for p in (out / "train").iterdir())
        assert names == ["index.json", "mosaicbert.json", "shard.00000.mds", "shard.00000.mds.zstd"]  # no temporaries


def test_read_error_of_an_intact_shard_does_not_blame_the_data(tmp_path, toy):
    out = _convert(toy, tmp_path / "mds", compression="zstd")
    (out / "train" / "shard.00000.mds").mkdir()  # decompressing cannot write there: not the shard's fault
    with pytest.raises(ShardReadError, match="match index.json .*the data is intact, do not delete it") as info:
        list(_loader(out, toy[1]))
    assert not isinstance(info.value, CorruptShardError)
    assert (out / "train" / "shard.00000.mds.zstd").is_file()


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints: interrupted saves, corrupt files, model mismatch, full disk
# ---------------------------------------------------------------------------------------------------------------


def _checkpoints(folder: Path, batches, latest=None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for b in batches:
        torch.save({"state": {"model": {"w": torch.full((4, 3), float(b))}}}, folder / f"ep0-ba{b}-rank0.pt")
    if latest is not None:
        os.symlink(f"ep0-ba{latest}-rank0.pt", folder / "latest-rank0.pt")


def _truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


def test_killed_during_first_save_is_set_aside(tmp_path):
    _checkpoints(tmp_path, [2])  # the kill came before Composer could link latest-rank0.pt
    _truncate(tmp_path / "ep0-ba2-rank0.pt")
    assert set_aside_unfinished_checkpoints(str(tmp_path)) == {0: None}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ep0-ba2-rank0.pt.unfinished"]
    # killed after the save completed but before the link: that checkpoint is complete and used
    _checkpoints(tmp_path / "b", [2])
    assert set_aside_unfinished_checkpoints(str(tmp_path / "b")) == {0: str(tmp_path / "b" / "ep0-ba2-rank0.pt")}
    assert os.readlink(tmp_path / "b" / "latest-rank0.pt") == "ep0-ba2-rank0.pt"


def test_save_newer_than_latest_is_set_aside(tmp_path):
    _checkpoints(tmp_path, [2, 4], latest=2)
    assert set_aside_unfinished_checkpoints(str(tmp_path)) == {0: str(tmp_path / "ep0-ba2-rank0.pt")}
    assert (tmp_path / "ep0-ba4-rank0.pt.unfinished").exists() and not (tmp_path / "ep0-ba4-rank0.pt").exists()


@pytest.mark.parametrize("damage", ["truncated", "overwritten"])
def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog, damage):
    _checkpoints(tmp_path, [2, 4, 6], latest=6)
    newest = tmp_path / "ep0-ba6-rank0.pt"
    if damage == "truncated":
        _truncate(newest)
    else:
        values = torch.full((4, 3), 6.0).numpy().tobytes()
        data = newest.read_bytes()
        assert data.count(values) == 1
        newest.write_bytes(data.replace(values, bytes(len(values))))  # torch.load would read zeros silently
    with caplog.at_level("WARNING", logger="mosaicbert"):
        chosen = set_aside_unfinished_checkpoints(str(tmp_path))
    assert chosen == {0: str(tmp_path / "ep0-ba4-rank0.pt")}
    assert os.readlink(tmp_path / "latest-rank0.pt") == "ep0-ba4-rank0.pt"
    assert (tmp_path / "ep0-ba6-rank0.pt.corrupt").exists()  # set aside, never deleted
    assert "resuming from ep0-ba4-rank0.pt instead of ep0-ba6-rank0.pt" in caplog.text
    assert torch.load(tmp_path / "latest-rank0.pt")["state"]["model"]["w"][0, 0] == 4.0


def test_checkpoint_of_another_model_names_the_first_mismatching_parameter(tmp_path):
    trained = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 4))
    torch.save({"state": {"model": trained.state_dict()}}, tmp_path / "ep0-ba2-rank0.pt")
    check_checkpoint_matches_model(str(tmp_path / "ep0-ba2-rank0.pt"), trained, "save folder 'x'")
    wider = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Linear(32, 4))
    with pytest.raises(ValueError, match=r"save folder 'x' holds checkpoints of a different model: parameter 0.weight "
                                         r"has shape \(16, 8\) in .*ep0-ba2-rank0.pt but \(32, 8\) in this model"):
        check_checkpoint_matches_model(str(tmp_path / "ep0-ba2-rank0.pt"), wider, "save folder 'x'")


def test_disk_full_message(tmp_path):
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as e:
            raise RuntimeError("checkpoint save failed") from e
    except RuntimeError as wrapped:
        message = disk_full_message(wrapped, str(tmp_path))
    assert f"the disk is full (OSError: [Errno {errno.ENOSPC}] No space left on device)" in message
    assert repr(str(tmp_path)) in message and "MiB are free there" in message
    assert "save_num_checkpoints_to_keep" in message
    torch_error = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4096 vs 2048")
    assert "unexpected pos" in disk_full_message(torch_error, str(tmp_path))
    assert disk_full_message(ValueError("something else"), str(tmp_path)) is None


# ---------------------------------------------------------------------------------------------------------------
# End to end through main.py (tiny model, CPU)
# ---------------------------------------------------------------------------------------------------------------


def _tiny_args(toy, data: Path, folder: Path, *extra) -> list[str]:
    return [
        "yamls/quickstart.yaml", f"tokenizer={toy[0] / 'vocab.txt'}", f"data.local={data}",
        f"data.max_seq_len={MAX_LEN}",
        "data.num_workers=0", "model.config_overrides.vocab_size=320", "model.config_overrides.hidden_size=32",
        "model.config_overrides.num_hidden_layers=1", "model.config_overrides.num_attention_heads=2",
        "model.config_overrides.intermediate_size=64", "global_train_batch_size=8", "device_train_microbatch_size=8",
        "device_eval_batch_size=8", "max_duration=4ba", "eval_interval=4ba", "eval_subset_num_batches=1",
        "save_interval=2ba", "save_num_checkpoints_to_keep=-1", "precision=fp32", "device=cpu",
        "loggers.console_log_interval=2ba", "callbacks.runtime_estimator=false", f"save_folder={folder}", *extra,
    ]


def _main(toy, data, folder, *extra, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "main.py", *_tiny_args(toy, data, folder, *extra)], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


def _last_line(proc) -> str:
    return (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1]


@pytest.fixture(scope="module")
def tiny_data(toy, tmp_path_factory):
    return _convert(toy, tmp_path_factory.mktemp("tiny") / "mds", compression="zstd", splits=("train", "val"))


@pytest.mark.slow
def test_e2e_second_run_refused_killed_launcher_takes_its_trainer_along(toy, tiny_data, tmp_path):
    folder = tmp_path / "run"
    launcher = subprocess.Popen(
        [str(VENV_BIN / "composer"), "-n", "1", "--master_port", "29533", "main.py",
         *_tiny_args(toy, tiny_data, folder, "max_duration=100000ba", "save_interval=50000ba")],
        cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        lock, deadline = folder / ".run-rank0.lock", time.time() + 300
        while not (folder / "metrics.jsonl").exists() and time.time() < deadline:  # training has started
            assert launcher.poll() is None, "the first run ended early"
            time.sleep(0.5)
        trainer = int(dict(line.split("=", 1) for line in lock.read_text().splitlines())["pid"])

        second = _main(toy, tiny_data, folder)
        assert second.returncode == 1
        assert _last_line(second).startswith(f"error: save folder '{folder}' is in use by another run (pid {trainer} "
                                             f"on host {socket.gethostname()}")

        os.kill(launcher.pid, signal.SIGKILL)  # the launcher only: its trainer must not train on as an orphan
        launcher.wait()
        deadline = time.time() + 60
        while not _gone(trainer) and time.time() < deadline:
            time.sleep(0.2)
        assert _gone(trainer), "the trainer outlived its killed launcher"
    finally:
        os.killpg(launcher.pid, signal.SIGKILL) if launcher.poll() is None else None

    # Composer turns the SIGTERM into a clean exit, which released the lock; the folder is free again.
    assert (folder / ".run-rank0.lock").read_text() == ""
    third = _main(toy, tiny_data, folder, "max_duration=2ba")
    assert third.returncode == 0, third.stderr[-3000:]


@pytest.mark.slow
def test_e2e_checkpoint_faults(toy, tiny_data, tmp_path):
    folder = tmp_path / "run"
    first = _main(toy, tiny_data, folder)
    assert first.returncode == 0, first.stderr[-3000:]
    assert os.readlink(folder / "latest-rank0.pt") == "ep0-ba4-rank0.pt"

    # The same command again: finished, says so, exits 0, changes nothing.
    again = _main(toy, tiny_data, folder)
    assert again.returncode == 0 and "is already finished (4 of max_duration=4ba trained)" in again.stdout

    # Another model in the same folder: the run's record names the changed key ...
    wider = _main(toy, tiny_data, folder, "model.config_overrides.hidden_size=64")
    assert wider.returncode == 2
    assert _last_line(wider).startswith(f"config error: save folder '{folder}' holds run 'quickstart' with other "
                                        "model.config_overrides.hidden_size: 32 -> 64")
    # ... and without the record (checkpoints from elsewhere) the folder and the first mismatching shape are named
    (folder / "config.yaml").rename(tmp_path / "config.yaml")
    wider = _main(toy, tiny_data, folder, "model.config_overrides.hidden_size=64")
    assert wider.returncode == 2
    assert _last_line(wider).startswith(
        f"config error: save folder '{folder}' holds checkpoints of a different model: parameter "
        "model.bert.embeddings.word_embeddings.weight has shape (320, 32)")
    assert "(320, 64) in this model" in _last_line(wider)
    (tmp_path / "config.yaml").rename(folder / "config.yaml")

    # Killed during the first save of a new run: only a truncated ep0-ba2 and no latest link.
    killed = tmp_path / "killed"
    killed.mkdir()
    shutil.copy(folder / "ep0-ba2-rank0.pt", killed / "ep0-ba2-rank0.pt")
    _truncate(killed / "ep0-ba2-rank0.pt")
    # ... and in the first folder the newest checkpoint is truncated afterwards: resume from ba2, train to 6.
    _truncate(folder / "ep0-ba4-rank0.pt")
    for run_folder, extra in ((killed, ()), (folder, ("max_duration=6ba",))):
        resumed = _main(toy, tiny_data, run_folder, *extra)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (killed / "ep0-ba2-rank0.pt.unfinished").exists() and (killed / "ep0-ba4-rank0.pt").exists()
    assert "resuming from ep0-ba2-rank0.pt instead of ep0-ba4-rank0.pt" in resumed.stderr
    assert (folder / "ep0-ba4-rank0.pt.corrupt").exists() and (folder / "ep0-ba6-rank0.pt").exists()
    batches = [json.loads(line)["batch"] for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert batches == sorted(batches)  # rows past the resumed checkpoint were dropped and written again

    # Disk full while saving: the folder, the size needed and what to do, as the last line; nothing half-written.
    full = tmp_path / "full"
    full.mkdir()
    os.symlink("/dev/full", full / "ep0-ba2-rank0.pt")  # writes there fail with ENOSPC
    out = _main(toy, tiny_data, full, "autoresume=false", "save_overwrite=true")
    assert out.returncode == 1
    assert _last_line(out).startswith(f"error: the disk is full (OSError: [Errno {errno.ENOSPC}] No space left on "
                                      f"device) writing {full / 'ep0-ba2-rank0.pt'} in save folder '{full}'. A "
                                      "checkpoint needs about")
