"""finetune.py end to end on CPU: one short run per task type on synthetic data the test writes, whose main
metric must beat the untrained model; export and reload of the best model; the example YAMLs.

The synthetic tasks are learnable from token identity (a keyword decides the label, an entity word is its own tag,
the answer is the one name in the context), so a tiny model (hidden 64, 2 layers) learns them in a few dozen steps.
"""

from __future__ import annotations

import csv
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

import mosaicbert.model
from mosaicbert.finetune.config import load_finetune_config
from mosaicbert.finetune.tasks import TASK_MODEL_CLASSES

ROOT = Path(__file__).resolve().parents[1]

FILLER = ["the", "a", "of", "and", "to", "in", "is", "was", "for", "on", "with", "as", "by", "at", "from", "this",
          "that", "it", "be", "are", "or", "an", "not", "but", "we", "can", "all", "one", "has", "more"]
POS = ["good", "great", "fine", "nice", "happy", "clean"]
NEG = ["bad", "poor", "sad", "ugly", "dirty", "wrong"]
PER = ["alice", "bob", "carol", "dave", "erin", "frank"]
SURNAME = ["smith", "jones", "brown"]
LOC = ["paris", "rome", "oslo", "lima", "cairo", "delhi"]
WORDS = sorted(set(FILLER + POS + NEG + PER + SURNAME + LOC + ["who", "what", "did", "find", "?", "."]))


def write_vocab(folder: Path) -> str:
    """A WordPiece vocab.txt holding every word of the synthetic data (and letters, so nothing is [UNK])."""
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS + letters + [f"##{c}" for c in letters] + \
        list("0123456789,;:!'\"()-")
    path = folder / "vocab.txt"
    path.write_text("\n".join(dict.fromkeys(tokens)) + "\n")
    return str(path)


def _words(r: random.Random, n: int) -> list[str]:
    return [r.choice(FILLER) for _ in range(n)]


def _insert(r: random.Random, words: list[str], word: str) -> list[str]:
    k = r.randint(0, len(words))
    return words[:k] + [word] + words[k:]


def make_rows(task: str, n: int, seed: int) -> list[dict]:
    r = random.Random(seed)
    rows = []
    for i in range(n):
        if task == "classification":
            pos = r.random() < 0.5
            rows.append({"text": " ".join(_insert(r, _words(r, 5), r.choice(POS if pos else NEG))),
                         "pair": " ".join(_words(r, 3)), "label": "pos" if pos else "neg"})
        elif task == "regression":
            k = r.randint(0, 3)
            words = _words(r, 3)
            for w in [r.choice(POS) for _ in range(k)] + [r.choice(NEG) for _ in range(3 - k)]:
                words = _insert(r, words, w)
            rows.append({"text": " ".join(words), "label": k / 3})
        elif task == "token_classification":
            words, tags = _words(r, 6), ["O"] * 6
            for entity in r.sample(["per", "loc", "per2"], 2):
                k = r.randint(0, len(words))
                ent = {"per": [r.choice(PER)], "per2": [r.choice(PER), r.choice(SURNAME)], "loc": [r.choice(LOC)]}
                tag = {"per": ["B-PER"], "per2": ["B-PER", "I-PER"], "loc": ["B-LOC"]}
                words[k:k] = ent[entity]
                tags[k:k] = tag[entity]
            rows.append({"tokens": words, "tags": tags})
        elif task == "question_answering":
            # ~30-word contexts in 24-token windows: most examples span several windows.
            name = r.choice(PER)
            before, after = " ".join(_words(r, r.randint(2, 26))), " ".join(_words(r, r.randint(2, 8)))
            context = f"{before} {name} {after}."
            rows.append({"id": f"q{i}", "context": context, "question": "who was it?",
                         "answers": {"text": [name], "answer_start": [len(before) + 1]}})
        elif task == "multiple_choice":
            label = r.randint(0, 3)
            choices = [f"it is {r.choice(POS if k == label else NEG)}" for k in range(4)]
            rows.append({"context": " ".join(_words(r, 4)), "question": "what did we find?",
                         **{f"choice{k}": c for k, c in enumerate(choices)}, "label": label})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def write_csv(path: Path, rows: list[dict]) -> str:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return str(path)


def write_squad(path: Path, rows: list[dict]) -> str:
    data = [{"title": r["id"], "paragraphs": [{"context": r["context"], "qas": [
        {"id": r["id"], "question": r["question"],
         "answers": [{"text": t, "answer_start": s} for t, s in zip(r["answers"]["text"],
                                                                    r["answers"]["answer_start"])]}]}]}
            for r in rows]
    path.write_text(json.dumps({"version": "1.1", "data": data}))
    return str(path)


def write_conll(path: Path, rows: list[dict]) -> str:
    path.write_text("-DOCSTART- O\n\n" + "".join(
        "".join(f"{w} NN {t}\n" for w, t in zip(r["tokens"], r["tags"])) + "\n" for r in rows))
    return str(path)


TINY_MODEL = ("model.config_overrides={vocab_size: 192, hidden_size: 64, num_hidden_layers: 2, "
              "num_attention_heads: 4, intermediate_size: 128, hidden_dropout_prob: 0.0}")

# task -> (data writer, file extension, overrides)
SETUPS = {
    "classification": (write_csv, "csv", ["data.columns.text_pair=pair", "data.labels=[neg, pos]"]),
    "regression": (write_jsonl, "jsonl", []),
    "token_classification": (write_conll, "conll", ["data.columns.label=tags"]),
    "question_answering": (write_squad, "json", ["data.max_seq_len=24", "data.doc_stride=8",
                                                 "data.max_answer_length=4"]),
    "multiple_choice": (write_jsonl, "jsonl", ["data.columns.choices=[choice0, choice1, choice2, choice3]",
                                               "data.max_seq_len=16"]),
}


def finetune_overrides(tmp_path: Path, task: str, model_name: str, n_train: int = 96, n_eval: int = 48) -> list[str]:
    writer, ext, extra = SETUPS[task]
    train = writer(tmp_path / f"train.{ext}", make_rows(task, n_train, seed=1))
    dev = writer(tmp_path / f"dev.{ext}", make_rows(task, n_eval, seed=2))
    return [f"task={task}", f"model.name={model_name}", "model.pretrained_checkpoint=null", TINY_MODEL,
            f"tokenizer={write_vocab(tmp_path)}", f"data.train_file={train}", f"data.eval_file={dev}",
            "batch_size=16", "max_duration=36ba", "eval_interval=36ba", "eval_before_training=true",
            "optimizer.lr=3e-3", "optimizer.weight_decay=0", "scheduler.name=constant_with_warmup",
            "scheduler.t_warmup=4ba", "device=cpu",
            "console_log_interval=100ba", f"save_folder={tmp_path / 'run'}", *extra]


def model_param(task: str):
    """mosaic_bert runs when mosaicbert.model has the task's class; otherwise it is skipped, naming the class."""
    name = TASK_MODEL_CLASSES[task][1]
    missing = not hasattr(mosaicbert.model, name)
    return [pytest.param("hf_bert"),
            pytest.param("mosaic_bert", marks=pytest.mark.skipif(missing, reason=f"mosaicbert.model.{name} "
                                                                                   f"does not exist yet"))]


def run(tmp_path: Path, task: str, model_name: str, *extra: str) -> dict:
    from mosaicbert.finetune.runner import run_finetune

    cfg = load_finetune_config(None, finetune_overrides(tmp_path, task, model_name) + list(extra))
    return run_finetune(cfg)


def check_learned(results: dict, floor: float, gain: float) -> None:
    main = results["main_metric"]
    before, after = results["evaluations"][0], results["evaluations"][-1]
    assert before["batch"] == 0 and after["batch"] == 36
    assert after["metrics"][main] >= floor, results["evaluations"]
    assert after["metrics"][main] >= before["metrics"][main] + gain, results["evaluations"]
    assert results["best"]["metrics"][main] == max(e["metrics"][main] for e in results["evaluations"])


@pytest.mark.parametrize("model_name", model_param("classification"))
def test_sentence_pair_classification_learns_and_exports(tmp_path, model_name):
    results = run(tmp_path, "classification", model_name)
    check_learned(results, floor=0.9, gain=0.25)
    assert results["labels"] == ["neg", "pos"]
    assert set(results["best"]["metrics"]) == {"accuracy", "f1", "matthews"}
