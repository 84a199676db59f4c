"""Finetuning data: readers, bad-input errors (each naming file and line or row), label alignment, QA windows,
span decoding and the metrics, and the config checks. No training here; every test takes well under a second
except the ones that load `datasets` (a few seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mosaicbert.core.config import ConfigError
from mosaicbert.finetune.config import FinetuneDataConfig, load_finetune_config
from mosaicbert.finetune.data import FinetuneDataError, read_file, read_hub
from mosaicbert.finetune.metrics import EntityF1, SpanExactMatch, SpanF1, bio_spans
from mosaicbert.finetune.tasks import PaddingCollator, best_spans, infer_labels, prepare

WORDS = ["the", "cat", "sat", "on", "mat", "alice", "smith", "paris", "who", "was", "it", "?", "."]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from mosaicbert.core.tokenizer import load_tokenizer

    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    folder = tmp_path_factory.mktemp("vocab")
    digits = list("0123456789")
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS + letters + [f"##{c}" for c in letters] + \
        digits + [f"##{d}" for d in digits] + [f"[unused{k}]" for k in range(20)]
    (folder / "vocab.txt").write_text("\n".join(tokens) + "\n")
    return load_tokenizer(str(folder / "vocab.txt"))


def data_cfg(**columns) -> FinetuneDataConfig:
    cfg = FinetuneDataConfig()
    for k, v in columns.items():
        setattr(cfg.columns, k, v)
    return cfg


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# ---------------------------------------------------------------------------------------------------------------
# Bad input: clear errors naming the file and the line / row
# ---------------------------------------------------------------------------------------------------------------


def test_csv_row_with_wrong_field_count_names_its_line(tmp_path):
    path = write(tmp_path, "t.csv", 'text,label\n"a, quoted",pos\n\nthe cat,pos,extra\n')
    with pytest.raises(FinetuneDataError, match=r"t\.csv:4: expected 2 comma-separated fields"):
        read_file(path, None, "classification", data_cfg().columns)


def test_csv_that_does_not_parse_names_its_line(tmp_path):
    path = write(tmp_path, "t.csv", 'text,label\nthe cat,pos\n"unterminated,neg\n')
    with pytest.raises(FinetuneDataError, match=r"t\.csv:\d+: cannot parse"):
        read_file(path, None, "classification", data_cfg().columns)


def test_jsonl_that_does_not_parse_names_its_line(tmp_path):
    path = write(tmp_path, "t.jsonl", '{"text": "a", "label": 1}\n\n{"text": "b", "label": }\n')
    with pytest.raises(FinetuneDataError, match=r"t\.jsonl:3: not valid JSON"):
        read_file(path, None, "classification", data_cfg().columns)


def test_squad_json_that_does_not_parse_names_its_line(tmp_path):
    path = write(tmp_path, "s.json", '{"data": [\n  {"paragraphs": [}\n]}')
    with pytest.raises(FinetuneDataError, match=r"s\.json:2: not valid JSON"):
        read_file(path, None, "question_answering", data_cfg().columns)


def test_conll_line_without_label_names_its_line(tmp_path):
    path = write(tmp_path, "t.conll", "the O\ncat O\n\nalice B-PER\nsmith\n")
    with pytest.raises(FinetuneDataError, match=r"t\.conll:5: expected a token and its label"):
        read_file(path, None, "token_classification", data_cfg().columns)


def test_missing_label_column_names_row_and_columns(tmp_path, tokenizer):
    path = write(tmp_path, "t.tsv", "text\tgold\nthe cat\tpos\n")
    rows = read_file(path, None, "classification", data_cfg().columns)
    with pytest.raises(FinetuneDataError, match=r"t\.tsv:2: no column 'label' \(columns: \['gold', 'text'\]\)"):
        prepare("classification", rows, tokenizer, data_cfg(), ["neg", "pos"], train=True)


def test_label_outside_declared_set_names_its_line(tmp_path, tokenizer):
    path = write(tmp_path, "t.csv", "text,label\nthe cat,pos\nthe mat,neutral\n")
    rows = read_file(path, None, "classification", data_cfg().columns)
    with pytest.raises(FinetuneDataError, match=r"t\.csv:3: label 'neutral' in column 'label' is not in the label set"):
        prepare("classification", rows, tokenizer, data_cfg(), ["neg", "pos"], train=True)


def test_tag_outside_declared_set_names_its_line(tmp_path, tokenizer):
    path = write(tmp_path, "t.conll", "the O\ncat O\n\nalice B-PERSON\n")
    rows = read_file(path, None, "token_classification", data_cfg().columns)
    with pytest.raises(FinetuneDataError, match=r"t\.conll:4: label 'B-PERSON'"):
        prepare("token_classification", rows, tokenizer, data_cfg(), ["O", "B-PER"], train=True)


def test_regression_label_that_is_not_a_number(tmp_path, tokenizer):
    path = write(tmp_path, "t.jsonl", '{"text": "the cat", "label": 0.5}\n{"text": "the mat", "label": "high"}\n')
    rows = read_file(path, None, "regression", data_cfg().columns)
    with pytest.raises(FinetuneDataError, match=r"t\.jsonl:2: label 'high' .* is not a number"):
        prepare("regression", rows, tokenizer, data_cfg(), None, train=True)


def test_words_and_tags_of_different_length(tmp_path, tokenizer):
    path = write(tmp_path, "t.jsonl", '{"tokens": ["the", "cat"], "label": ["O"]}\n')
    rows = read_file(path, None, "token_classification", data_cfg().columns)
    with pytest.raises(FinetuneDataError, match=r"t\.jsonl:1: 2 words in column 'tokens' but 1 labels"):
        prepare("token_classification", rows, tokenizer, data_cfg(), ["O"], train=True)


def squad(context: str, answer: str, start: int) -> str:
    return json.dumps({"data": [{"paragraphs": [{"context": context, "qas": [
        {"id": "q1", "question": "who was it?", "answers": [{"text": answer, "answer_start": start}]}]}]}]})


def test_answer_not_in_its_context_names_the_question(tmp_path, tokenizer):
    rows = read_file(write(tmp_path, "s.json", squad("the cat sat on the mat.", "alice", 4)), None,
                     "question_answering", data_cfg().columns)
    with pytest.raises(FinetuneDataError, match=r"s\.json: data\[0\]\.paragraphs\[0\]\.qas\[0\] \(id q1\): answer "
                                                r"'alice' is not at answer_start 4 .* does not occur"):
        prepare("question_answering", rows, tokenizer, data_cfg(), None, train=True)
    rows = read_file(write(tmp_path, "s2.json", squad("the cat sat on the mat.", "mat", 4)), None,
                     "question_answering", data_cfg().columns)
    with pytest.raises(FinetuneDataError, match=r"occurs at character 19"):
        prepare("question_answering", rows, tokenizer, data_cfg(), None, train=True)


def test_multiple_choice_label_out_of_range(tmp_path, tokenizer):
    path = write(tmp_path, "m.jsonl", '{"context": "the cat", "a": "sat", "b": "mat", "label": 2}\n')
    cfg = data_cfg(choices=["a", "b"], question=None)
    rows = read_file(path, None, "multiple_choice", cfg.columns)
    with pytest.raises(FinetuneDataError, match=r"m\.jsonl:1: label 2 .* must be the index of the right "
                                                   r"choice, 0 to 1"):
        prepare("multiple_choice", rows, tokenizer, cfg, None, train=True)


def test_unknown_extension_asks_for_format(tmp_path):
    with pytest.raises(FinetuneDataError, match="set data.format"):
        read_file(write(tmp_path, "t.data", "x"), None, "classification", data_cfg().columns)


# ---------------------------------------------------------------------------------------------------------------
# Features
# ---------------------------------------------------------------------------------------------------------------


def test_labels_inferred_from_training_data(tmp_path):
    rows = read_file(write(tmp_path, "t.csv", "text,label\na,10\nb,2\nc,2\n"), None, "classification",
                     data_cfg().columns)
    assert infer_labels("classification", rows, "label") == ["2", "10"]  # numeric order
    rows = read_file(write(tmp_path, "t.conll", "a B-PER\nb O\n\nc I-PER\n"), None, "token_classification",
                     data_cfg().columns)
    assert infer_labels("token_classification", rows, "label") == ["O", "B-PER", "I-PER"]


def test_word_labels_go_to_the_first_subtoken_only(tmp_path, tokenizer, caplog):
    # "catz" is not in the vocab: cat ##z (two pieces); "xy": x ##y
    path = write(tmp_path, "t.conll", "-DOCSTART- O\n\nalice B-PER\ncatz O\nxy B-LOC\n")
    rows = read_file(path, None, "token_classification", data_cfg().columns)
    prep = prepare("token_classification", rows, tokenizer, data_cfg(), ["O", "B-PER", "B-LOC"], train=True)
    feature = prep.dataset[0]
    pieces = tokenizer.convert_ids_to_tokens(feature["input_ids"])
    assert pieces == ["[CLS]", "alice", "cat", "##z", "x", "##y", "[SEP]"]
    assert feature["labels"] == [-100, 1, 0, -100, 2, -100, -100]
    cfg = data_cfg()
    cfg.max_seq_len = 8  # [CLS] alice cat ##z x ##y [SEP] fits; a longer sentence is cut, with a warning
    long_rows = read_file(write(tmp_path, "l.conll", "alice B-PER\n" * 9), None, "token_classification", cfg.columns)
    with caplog.at_level("WARNING", logger="mosaicbert.finetune"):
        prepare("token_classification", long_rows, tokenizer, cfg, ["O", "B-PER"], train=True)
    assert "1 of 1 sentences are longer than data.max_seq_len=8" in caplog.text
    batch = PaddingCollator({"input_ids": 0, "token_type_ids": 0, "labels": -100})([feature])
    assert batch["labels"].shape == (1, 8) and batch["labels"][0, -1] == -100
    assert batch["attention_mask"].tolist() == [[1] * 7 + [0]]


def test_qa_windows_cover_long_contexts_and_locate_the_answer(tmp_path, tokenizer):
    context = " ".join(["the cat sat on the mat ."] * 4) + " alice smith was it . " + " ".join(["the mat"] * 3)
    start = context.index("alice smith")
    rows = read_file(write(tmp_path, "s.json", squad(context, "alice smith", start)), None, "question_answering",
                     data_cfg().columns)
    cfg = data_cfg()
    cfg.max_seq_len, cfg.doc_stride = 16, 6
    train = prepare("question_answering", rows, tokenizer, cfg, None, train=True)
    assert len(train.dataset) > 3  # several windows for one example
    found = 0
    for f in train.dataset.features:
        if f["start_positions"] == 0:
            assert f["end_positions"] == 0  # the answer is not (all) in this window: [CLS]
            continue
        found += 1
        answer = f["input_ids"][f["start_positions"]: f["end_positions"] + 1]
        assert tokenizer.decode(answer) == "alice smith"
    assert found >= 1
    evals = prepare("question_answering", rows, tokenizer, cfg, None, train=False)
    assert {f["example_index"] for f in evals.dataset.features} == {0}
    assert evals.contexts == [context] and evals.answers == [["alice smith"]]
    # offsets: -1 outside the context; inside, character spans of the context
    for f in evals.dataset.features:
        for tok, (s, e) in zip(tokenizer.convert_ids_to_tokens(f["input_ids"]), f["offsets"]):
            if s >= 0:
                assert context[s:e] == tok.removeprefix("##")


def test_best_spans_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    n, s, max_len = 5, 12, 3
    start, end = torch.randn(n, s, generator=g), torch.randn(n, s, generator=g)
    offsets = torch.tensor([[k * 4, k * 4 + 3] if 3 <= k < 10 else [-1, -1] for k in range(s)]).expand(n, s, 2)
    got = best_spans(start, end, offsets, max_len)
    for w in range(n):
        best = max((start[w, i] + end[w, j], i, j) for i in range(3, 10) for j in range(i, min(i + max_len, 10)))
        assert got[w, 0].item() == pytest.approx(best[0].item())
        assert got[w, 1:].tolist() == [best[1] * 4, best[2] * 4 + 3]


# ---------------------------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------------------------


def test_bio_spans():
    assert bio_spans(["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-PER"]) == {
        ("PER", 0, 1), ("LOC", 3, 3), ("LOC", 4, 4), ("PER", 5, 5)}
    assert bio_spans(["I-LOC", "I-LOC", "O"]) == {("LOC", 0, 1)}  # IOB1-style start


def test_entity_f1_counts_whole_entities_on_labelled_positions():
    names = ["O", "B-PER", "I-PER", "B-LOC"]
    target = torch.tensor([[-100, 1, 2, 0, 3, -100], [-100, 3, -100, 1, -100, -100]])
    preds = torch.tensor([[0, 1, 0, 0, 3, 1], [2, 3, 2, 1, 1, 1]])  # entity 1 cut short; padding ignored
    m = EntityF1(names)
    m.update(preds, target)
    # gold: PER(0-1), LOC(3) | LOC(0), PER(1); pred: PER(0), LOC(3) | LOC(0), PER(1) -> tp 3, pred 4, gold 4
    assert m.compute().item() == pytest.approx(0.75)


def test_span_metrics_keep_each_examples_best_window():
    contexts, answers = ["the cat sat", "alice was it"], [["cat"], ["Alice"]]
    em, f1 = SpanExactMatch(contexts, answers), SpanF1(contexts, answers)
    # (example, score, start char, end char): example 0's best window says "cat"; example 1 says "alice was"
    rows = torch.tensor([[0, 1.0, 0, 3], [0, 5.0, 4, 7], [1, 2.0, 0, 9], [1, float("-inf"), -1, -1]])
    for m in (em, f1):
        m.update(rows[:2])
        m.update(rows[2:])
    assert em.predictions() == ["cat", "alice was"]
    assert em.compute().item() == pytest.approx(0.5)
    assert f1.compute().item() == pytest.approx((1.0 + 2 / 3) / 2)  # "alice was" vs "alice": P 1/2, R 1


# ---------------------------------------------------------------------------------------------------------------
# The datasets path (what a hub dataset goes through), on local files
# ---------------------------------------------------------------------------------------------------------------


def test_hub_reader_on_local_files_maps_class_label_ids_to_names(tmp_path):
    import datasets

    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["neg", "pos"]),
                                  "tags": datasets.Sequence(datasets.ClassLabel(names=["O", "B-PER"]))})
    ds = datasets.Dataset.from_dict({"text": ["a", "b"], "label": [1, 0], "tags": [[0, 1], [1]]}, features=features)
    ds.to_parquet(str(tmp_path / "train.parquet"))
    rows = read_hub("parquet", None, "train", "label", data_files={"train": str(tmp_path / "train.parquet")})
    assert rows.label_names == ["neg", "pos"] and [r["label"] for r in rows.records] == ["pos", "neg"]
    assert rows.where[1] == "parquet[train] row 1"
    tags = read_hub("parquet", None, "train", "tags", data_files={"train": str(tmp_path / "train.parquet")})
    assert [r["tags"] for r in tags.records] == [["O", "B-PER"], ["B-PER"]]
    with pytest.raises(FinetuneDataError, match="cannot load the dataset"):
        read_hub("json", None, "train", data_files={"train": str(tmp_path / "missing.jsonl")})


# ---------------------------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------------------------


def base_overrides(tmp_path) -> list[str]:
    train = write(tmp_path, "t.csv", "text,label\na,pos\n")
    return [f"data.train_file={train}", f"data.eval_file={train}", "tokenizer=builtin://python-docs"]


@pytest.mark.parametrize("override,message", [
    ("data.colums.text=x", "unknown config key 'data.colums'"),
    ("task=token_clasification", "config key 'task': .* Did you mean: 'token_classification'"),
    ("metrics=[entity_f1]", "'entity_f1' is not a metric of task classification"),
    ("data.format=xlsx", "config key 'data.format': Invalid value 'xlsx', expected one of"),
    ("data.eval_file=null", "'data.eval_file' is not set"),
    ("data.train_file=nope.csv", "'data.train_file' = 'nope.csv': no such file"),
    ("task=multiple_choice", "'data.columns.choices' must name at least two"),
    ("tokenizer=null", "'tokenizer' is null and there is no model.pretrained_checkpoint"),
    ("data.max_train_samples=0", "'data.max_train_samples' must be > 0 or null"),
    ("device_train_microbatch_size=-2", "'device_train_microbatch_size' must be null, a positive int"),
    ("max_duration=3", "'max_duration' = '3' is not a duration"),
    ("data.labels=[pos]", "at least two distinct labels"),
])
def test_config_errors(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        load_finetune_config(None, base_overrides(tmp_path) + [override])


def test_example_yamls_validate():
    root = Path(__file__).resolve().parents[2] / "yamls" / "finetune"
    tasks = {load_finetune_config(str(p)).task for p in sorted(root.glob("*.yaml"))}
    assert tasks == {"classification", "regression", "token_classification", "question_answering",
                     "multiple_choice", "embedding"}
