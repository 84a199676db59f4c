"""Faults in finetuning: a rerun into a folder holding an earlier run is refused (its best_model / results.json
untouched) unless overwrite=true, and a rerun killed after its first evaluation leaves a best_model and results.json
that describe the same model; damaged or missing start checkpoints, CoNLL files with mixed columns, non-UTF-8 files
and meaningless settings end in one clear error."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mosaicbert.core.config import ConfigError
from mosaicbert.finetune.config import ColumnsConfig, load_finetune_config
from mosaicbert.finetune.data import FinetuneDataError, read_file

ROOT = Path(__file__).resolve().parents[2]
WORDS = ["the", "a", "of", "and", "to", "in", "is", "good", "great", "nice", "bad", "poor", "sad"]
TINY = ("model.config_overrides={hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, "
        "intermediate_size: 37, max_position_embeddings: 64}")


def write_vocab(folder: Path) -> str:
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS + letters + [f"##{c}" for c in letters] + \
        [f"w{i}" for i in range(40)]  # (a tokenizer needs > 100 tokens)
    (folder / "vocab.txt").write_text("\n".join(dict.fromkeys(tokens)) + "\n")
    return str(folder / "vocab.txt")


def rows(n: int, seed: int) -> list[dict]:
    r = random.Random(seed)
    out = []
    for _ in range(n):
        pos = r.random() < 0.5
        words = [r.choice(WORDS[:7]) for _ in range(4)] + [r.choice(WORDS[7:10] if pos else WORDS[10:])]
        r.shuffle(words)
        out.append({"text": " ".join(words), "label": "pos" if pos else "neg"})
    return out


def write_csv(path: Path, data: list[dict]) -> str:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(data[0]))
        w.writeheader()
        w.writerows(data)
    return str(path)


def overrides(tmp_path: Path, *extra: str) -> list[str]:
    return ["task=classification", "model.name=hf_bert", "model.pretrained_checkpoint=null", TINY,
            f"tokenizer={write_vocab(tmp_path)}", f"data.train_file={write_csv(tmp_path / 'train.csv', rows(32, 1))}",
            f"data.eval_file={write_csv(tmp_path / 'dev.csv', rows(32, 2))}", "data.labels=[neg, pos]",
            "batch_size=8", "max_duration=4ba", "eval_interval=2ba", "optimizer.lr=3e-3", "device=cpu",
            "scheduler.name=constant_with_warmup", "scheduler.t_warmup=0ba", "console_log_interval=100ba",
            f"save_folder={tmp_path / 'run'}", *extra]


def finetune_main():
    spec = importlib.util.spec_from_file_location("finetune_script", ROOT / "finetune.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(autouse=True)
def one_thread():
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_rerun_into_a_folder_with_results_is_refused_untouched(tmp_path, capsys):
    run = tmp_path / "run"  # what a finished (or killed after an evaluation) run leaves
    (run / "best_model").mkdir(parents=True)
    (run / "best_model" / "model.safetensors").write_bytes(b"the earlier best model")
    (run / "results.json").write_text('{"best": {"metrics": {"accuracy": 0.469}}}')
    before = snapshot(run)
    main = finetune_main()
    yaml = str(ROOT / "yamls" / "finetune" / "classification.yaml")
    assert main([yaml, *overrides(tmp_path, "optimizer.lr=1e-4")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"config error: save_folder {str(run)!r} holds the results of an earlier run") \
        and "overwrite=true" in err[-1]
    assert snapshot(run) == before  # nothing touched
    assert sorted(os.listdir(run)) == ["best_model", "results.json"]


def _reload_accuracy(folder: Path, data: list[dict]) -> float:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    enc = tok([r["text"] for r in data], padding=True, return_tensors="pt")
    with torch.no_grad():
        pred = model(**enc).logits.argmax(-1).tolist()
    return sum(model.config.id2label[p] == r["label"] for p, r in zip(pred, data)) / len(data)


@pytest.mark.slow
def test_rerun_with_overwrite_killed_after_its_first_evaluation_leaves_a_consistent_pair(tmp_path):
    from mosaicbert.finetune.runner import run_finetune

    first = run_finetune(load_finetune_config(None, overrides(tmp_path)))
    run = tmp_path / "run"
    assert first["finished"] and [e["batch"] for e in first["evaluations"]] == [2, 4]
    assert json.loads((run / "results.json").read_text())["best"] == first["best"]
    with pytest.raises(ConfigError, match="overwrite=true"):  # the rerun without overwrite
        run_finetune(load_finetune_config(None, overrides(tmp_path, "optimizer.lr=1e-2")))
    old_best = (run / "best_model" / "model.safetensors").read_bytes()
    # the rerun: another lr, many evaluations; SIGKILL as soon as its own first results.json is in place
    argv = [sys.executable, "finetune.py", str(ROOT / "yamls" / "finetune" / "classification.yaml"),
            *overrides(tmp_path, "optimizer.lr=1e-2", "max_duration=4000ba", "eval_interval=1ba", "overwrite=true")]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            try:
                if json.loads((run / "results.json").read_text())["config"]["optimizer"]["lr"] == 1e-2:
                    break
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.02)
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    results = json.loads((run / "results.json").read_text())
    assert results["config"]["optimizer"]["lr"] == 1e-2 and results["finished"] is False
    assert results["best"] in results["evaluations"]
    assert (run / "best_model" / "model.safetensors").read_bytes() != old_best  # replaced together with results
    accuracy = _reload_accuracy(run / "best_model", rows(32, 2))
    assert accuracy == pytest.approx(results["best"]["metrics"]["accuracy"])


def test_damaged_or_missing_start_checkpoint_is_one_error_line(tmp_path, capsys):
    import struct
    import zipfile

    import torch
    from transformers import BertConfig, BertForMaskedLM

    vocab = len(Path(write_vocab(tmp_path)).read_text().split())
    model = BertForMaskedLM(BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=37, max_position_embeddings=64))
    ckpt = tmp_path / "ep0-ba10-rank0.pt"
    torch.save({"state": {"model": {f"model.{k}": v for k, v in model.state_dict().items()},
                          "integrations": {"huggingface": {"model": {"config": {
                              "content": model.config.to_dict()}}}}}}, ckpt)
    with zipfile.ZipFile(ckpt) as zf:  # the word-embedding storage: the only one of vocab x hidden floats
        (info,) = [i for i in zf.infolist() if i.file_size == vocab * 32 * 4]
    with open(ckpt, "r+b") as f:
        f.seek(info.header_offset + 26)
        start = info.header_offset + 30 + sum(struct.unpack("<HH", f.read(4))) + 256
        f.seek(start)
        data = f.read(64)
        f.seek(start)
        f.write(bytes(b ^ 0xFF for b in data))
    main = finetune_main()
    yaml = str(ROOT / "yamls" / "finetune" / "classification.yaml")
    assert main([yaml, *overrides(tmp_path, f"model.pretrained_checkpoint={ckpt}")]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"error: checkpoint {ckpt} is damaged: tensor ") and "word_embeddings.weight" in last
    assert not (tmp_path / "run" / "results.json").exists()
    assert main([yaml, *overrides(tmp_path, f"model.pretrained_checkpoint={tmp_path / 'nope.pt'}")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        f"error: checkpoint not found: {tmp_path / 'nope.pt'}")


def test_conll_line_with_other_columns_names_its_line(tmp_path):
    path = tmp_path / "train.conll"
    path.write_text("-DOCSTART- -X- -X- O\n\nalice B-PER\nsaw O\n\nbob NN B-PER\n")
    with pytest.raises(FinetuneDataError, match=rf"{path}:6: 3 whitespace-separated columns \('bob NN B-PER'\), "
                                                rf"but the file's first data line \({path}:3\) has 2"):
        read_file(str(path), None, "token_classification", ColumnsConfig())


@pytest.mark.parametrize("ext, content, line", [
    ("csv", "text,label\nthe good,pos\ncaf\xe9 bad,neg\n", 3),
    ("jsonl", '{"text": "good", "label": "pos"}\n{"text": "caf\xe9", "label": "neg"}\n', 2),
    ("conll", "alice B-PER\ncaf\xe9 O\n", 2),
])
def test_latin1_file_names_file_line_and_encoding(tmp_path, ext, content, line):
    path = tmp_path / f"data.{ext}"
    path.write_bytes(content.encode("latin-1"))
    task = "token_classification" if ext == "conll" else "classification"
    with pytest.raises(FinetuneDataError, match=rf"{path}:{line}: not UTF-8 text \(byte 0xe9 at column \d+: invalid "
                                                r"continuation byte\); convert the file to UTF-8"):
        read_file(str(path), None, task, ColumnsConfig())


@pytest.mark.parametrize("override, message", [
    ("eval_interval=0ba", "'eval_interval' = '0ba' is zero"),
    ("eval_interval=0ep", "'eval_interval' = '0ep' is zero"),
    ("data.num_workers=-1", "'data.num_workers' must be >= 0"),
])
def test_meaningless_settings_are_config_errors(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        load_finetune_config(None, overrides(tmp_path, override))
