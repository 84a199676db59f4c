"""finetune.py end to end on CPU: one short run per task type on synthetic data the test writes, whose main
metric must beat the untrained model; export and reload of the best model; the example YAMLs.

The synthetic tasks are learnable from token identity (a keyword decides the label, an entity word is its own tag,
the answer is the one name in the context), so a tiny model (hidden 64, 2 layers) learns them in a few dozen steps.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest

import mosaicbert.model
from mosaicbert.finetune.config import load_finetune_config
from mosaicbert.finetune.tasks import TASK_MODEL_CLASSES

ROOT = Path(__file__).resolve().parents[2]

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


MODELS = ["hf_bert", "mosaic_bert"]


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


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and on a busy machine thread spin-waits cost more than the math."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _reload_accuracy(folder: Path, rows: list[dict], model_name: str) -> float:
    """Accuracy of the exported folder on rows, loaded with plain transformers Auto classes."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=model_name == "mosaic_bert")
    model.eval()
    enc = tok([r["text"] for r in rows], [r["pair"] for r in rows], padding=True, return_tensors="pt")
    with torch.no_grad():
        pred = model(**enc).logits.argmax(-1).tolist()
    return sum(model.config.id2label[p] == r["label"] for p, r in zip(pred, rows)) / len(rows)


@pytest.mark.parametrize("model_name", MODELS)
def test_classification_best_model_reloads_with_transformers(tmp_path, model_name):
    results = run(tmp_path, "classification", model_name)
    check_learned(results, floor=0.9, gain=0.25)
    assert results["labels"] == ["neg", "pos"]
    assert set(results["best"]["metrics"]) == {"accuracy", "f1", "matthews"}
    folder = Path(results["best_model"])
    reloaded = _reload_accuracy(folder, make_rows("classification", 48, seed=2), model_name)
    assert reloaded == pytest.approx(results["best"]["metrics"]["accuracy"])
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["best"] == results["best"]


def test_regression_learns(tmp_path):
    results = run(tmp_path, "regression", "mosaic_bert")
    check_learned(results, floor=0.8, gain=0.3)


@pytest.mark.parametrize("model_name", MODELS)
def test_token_classification_learns(tmp_path, model_name):
    results = run(tmp_path, "token_classification", model_name)
    check_learned(results, floor=0.8, gain=0.3)
    assert results["labels"] == ["O", "B-LOC", "B-PER", "I-PER"]
    config = json.loads((Path(results["best_model"]) / "config.json").read_text())
    assert config["id2label"] == {"0": "O", "1": "B-LOC", "2": "B-PER", "3": "I-PER"}


@pytest.mark.parametrize("model_name", MODELS)
def test_question_answering_learns_over_strided_windows(tmp_path, model_name):
    results = run(tmp_path, "question_answering", model_name)
    check_learned(results, floor=0.8, gain=0.3)
    assert results["best"]["metrics"]["exact_match"] >= 0.8


@pytest.mark.parametrize("model_name", MODELS)
def test_multiple_choice_learns(tmp_path, model_name):
    results = run(tmp_path, "multiple_choice", model_name)
    check_learned(results, floor=0.8, gain=0.3)


def test_hub_dataset_path_with_class_labels(tmp_path):
    """A dataset read through datasets.load_dataset (here the packaged parquet builder on local files): ClassLabel
    ids become the label set, in the dataset's order."""
    import datasets

    features = datasets.Features({"text": datasets.Value("string"), "pair": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["pos", "neg"])})
    files = {}
    for split, seed, n in (("train", 1, 96), ("validation", 2, 48)):
        rows = make_rows("classification", n, seed)
        ds = datasets.Dataset.from_dict({"text": [r["text"] for r in rows], "pair": [r["pair"] for r in rows],
                                         "label": [["pos", "neg"].index(r["label"]) for r in rows]}, features=features)
        files[split] = str(tmp_path / f"{split}.parquet")
        ds.to_parquet(files[split])
    overrides = [o for o in finetune_overrides(tmp_path, "classification", "hf_bert")
                 if not o.startswith(("data.train_file", "data.eval_file", "data.labels"))]
    from mosaicbert.finetune.runner import run_finetune

    cfg = load_finetune_config(None, overrides + ["data.hub_dataset=parquet", "data.train_file=null",
                                                  f"data.hub_data_files={{train: {files['train']}, "
                                                  f"validation: {files['validation']}}}"])
    results = run_finetune(cfg)
    assert results["labels"] == ["pos", "neg"]
    check_learned(results, floor=0.9, gain=0.25)


def _tiny_source(model_name: str):
    """A small MLM model (hidden 48, unlike TINY_MODEL) to start from."""
    from transformers import BertConfig, BertForMaskedLM

    from mosaicbert.model import MosaicBertConfig, MosaicBertForMaskedLM

    shape = dict(vocab_size=192, hidden_size=48, num_hidden_layers=1, num_attention_heads=4, intermediate_size=96)
    if model_name == "mosaic_bert":
        return MosaicBertForMaskedLM(MosaicBertConfig(**shape))
    return BertForMaskedLM(BertConfig(**shape))


@pytest.mark.parametrize("source_kind", ["hf_folder", "composer"])
@pytest.mark.parametrize("model_name", MODELS)
def test_start_from_checkpoint_takes_its_shape_and_reports_keys(tmp_path, model_name, source_kind):
    import torch

    from mosaicbert.core.tokenizer import load_tokenizer
    from mosaicbert.finetune.models import build_task_model

    source = _tiny_source(model_name)
    if source_kind == "hf_folder":
        path = tmp_path / "exported"
        source.save_pretrained(path)
        load_tokenizer(write_vocab(tmp_path)).save_pretrained(path)
        tokenizer_override = "tokenizer=null"  # the folder's own tokenizer
    else:  # what main.py writes: Composer's state with the model under `model.` and the HF config as metadata
        path = tmp_path / "ckpt.pt"
        torch.save({"state": {"model": {f"model.{k}": v for k, v in source.state_dict().items()},
                              "integrations": {"huggingface": {"model": {"config": {
                                  "content": source.config.to_dict()}}}}}}, path)
        tokenizer_override = f"tokenizer={write_vocab(tmp_path)}"
    overrides = finetune_overrides(tmp_path, "classification", model_name, n_train=16, n_eval=16)
    # TINY_MODEL's shape (hidden 64) gives way to the checkpoint's (48); its dropout (0.0) applies
    overrides = [o for o in overrides if not o.startswith("tokenizer=")]
    cfg = load_finetune_config(None, overrides + [f"model.pretrained_checkpoint={path}", tokenizer_override])
    from mosaicbert.finetune.runner import load_task_tokenizer

    tokenizer = load_task_tokenizer(cfg.tokenizer, cfg.model.pretrained_checkpoint)
    model, report = build_task_model(cfg.model, cfg.task, tokenizer, ["neg", "pos"])
    assert model.config.hidden_size == 48 and model.config.num_hidden_layers == 1
    assert model.config.hidden_dropout_prob == 0.0 and model.config.id2label == {0: "neg", 1: "pos"}
    # an MLM model has no pooler: it starts fresh with the task head
    assert report["loaded"] > 0 and not report["unexpected"] and not report["missing"]
    assert report["head_not_loaded"] and all(k.startswith("cls.") for k in report["head_not_loaded"])
    assert report["new_head"] == ["bert.pooler.dense.bias", "bert.pooler.dense.weight", "classifier.bias",
                                  "classifier.weight"]
    src = source.state_dict()
    for k, v in model.state_dict().items():
        if k in src and not k.startswith("cls."):
            assert torch.equal(v, src[k]), k


@pytest.mark.parametrize("task", sorted(TASK_MODEL_CLASSES))
def test_model_class_per_task(task):
    from mosaicbert.finetune.tasks import model_class

    hf_name, mosaic_name = TASK_MODEL_CLASSES[task]
    assert model_class("hf_bert", task).__name__ == hf_name
    assert model_class("mosaic_bert", task) is getattr(mosaicbert.model, mosaic_name)


def _finetune_main():
    """main() of the repo's finetune.py script."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("finetune_script", ROOT / "finetune.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_cli_reports_bad_data_and_bad_config_with_exit_status_2(tmp_path, capsys):
    main = _finetune_main()
    overrides = finetune_overrides(tmp_path, "classification", "hf_bert", n_train=8, n_eval=8)
    bad = tmp_path / "bad.csv"
    bad.write_text("text,pair,label\nthe good,a,pos\nthe bad,a,awful\n")
    yaml = str(ROOT / "yamls" / "finetune" / "classification.yaml")
    assert main([yaml, *overrides, f"data.train_file={bad}"]) == 2
    assert f"error: {bad}:3: label 'awful' in column 'label' is not in the label set" in capsys.readouterr().err
    assert main([yaml, *overrides, "data.max_seq_len=4"]) == 2
    assert "config error: config key 'data.max_seq_len' must be >= 8" in capsys.readouterr().err


def test_diverged_run_stops_with_a_clear_error(tmp_path):
    """The shared trainer (mosaicbert.finetune.runner.fit_and_evaluate) stops at the first non-finite training loss."""
    with pytest.raises(RuntimeError, match="training loss is not finite at batch"):
        run(tmp_path, "regression", "mosaic_bert", "optimizer.lr=1e30", "scheduler.t_warmup=0ba",
            "eval_before_training=false")
    assert not (tmp_path / "run" / "results.json").exists()


def test_the_tokenizer_travels_with_a_composer_checkpoint(tmp_path):
    """tokenizer=null takes the tokenizer stored in main.py's checkpoint; another vocabulary is refused."""
    import torch

    from mosaicbert.core.config import ConfigError
    from mosaicbert.core.models import MaskedLMModel
    from mosaicbert.core.tokenizer import load_tokenizer, same_vocabulary
    from mosaicbert.finetune.runner import load_task_tokenizer

    source = _tiny_source("mosaic_bert")
    tokenizer = load_tokenizer(write_vocab(tmp_path))
    meta = MaskedLMModel(source, tokenizer).get_metadata()  # what Composer stores in every checkpoint
    path = tmp_path / "ckpt.pt"
    torch.save({"state": {"model": {f"model.{k}": v for k, v in source.state_dict().items()},
                          "integrations": {"huggingface": meta}}}, path)
    assert same_vocabulary(load_task_tokenizer(None, str(path)), tokenizer)
    assert same_vocabulary(load_task_tokenizer(str(write_vocab(tmp_path)), str(path)), tokenizer)
    other = tmp_path / "other.txt"
    other.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"x{i}" for i in range(200)]))
    with pytest.raises(ConfigError, match=rf"'tokenizer' = .*\(205 tokens\) is not the tokenizer .*ckpt\.pt.*"
                                          rf"\({len(tokenizer)} tokens.*tokenizer=null"):
        load_task_tokenizer(str(other), str(path))
    assert len(load_task_tokenizer(str(other), str(path), allow_tokenizer_mismatch=True)) == 205


def test_an_encoder_that_does_not_load_is_an_error(tmp_path):
    """Without the checkpoint's config the model is built from the YAML: every encoder weight that does not fit is
    named with both shapes, never trained from random init under the checkpoint's name."""
    from mosaicbert.core.config import ConfigError
    from mosaicbert.core.tokenizer import load_tokenizer
    from mosaicbert.finetune.models import build_task_model

    source = _tiny_source("mosaic_bert")  # hidden 48
    source.save_pretrained(tmp_path / "exported")
    (tmp_path / "exported" / "config.json").unlink()
    overrides = finetune_overrides(tmp_path, "classification", "mosaic_bert", n_train=8, n_eval=8)
    cfg = load_finetune_config(None, overrides + [f"model.pretrained_checkpoint={tmp_path / 'exported'}"])
    tokenizer = load_tokenizer(write_vocab(tmp_path))
    with pytest.raises(ConfigError, match=r"pretrained_checkpoint.*exported.*15 weights.*48,\) vs model \(64,\)"):
        build_task_model(cfg.model, "classification", tokenizer, ["neg", "pos"])


def test_a_run_that_never_improves_says_so(tmp_path, caplog):
    """lr 1e-12 changes nothing: the untrained model stays the best, and the run warns that best_model holds it."""
    import logging

    with caplog.at_level(logging.WARNING, logger="mosaicbert.finetune"):
        results = run(tmp_path, "classification", "mosaic_bert", "optimizer.lr=1e-12", "max_duration=8ba",
                      "eval_interval=4ba")
    assert results["best"]["batch"] == 0 and len(results["evaluations"]) == 3
    assert any("the best evaluation is the untrained model (batch 0)" in r.getMessage() for r in caplog.records)
