"""Task types: model classes, label sets, examples -> tokenized features, collators, QA span decoding.

Features are plain dicts of Python lists (one per model input row); the collators pad a batch to its longest row
(rounded up to a multiple of 8). Shapes after collation:
    classification / regression   input_ids [B, S], labels [B]
    token_classification          input_ids [B, S], labels [B, S] (-100: not the first sub-token of a word)
    question_answering            input_ids [B, S]; train: start_positions / end_positions [B];
                                  eval: example_index [B], offsets [B, S, 2] (char span of context tokens, else -1)
    multiple_choice               input_ids [B, C, S], labels [B]
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch.utils.data import Dataset

from mosaicbert.core.config import ConfigError
from mosaicbert.finetune.data import FinetuneDataError, Rows

log = logging.getLogger("mosaicbert.finetune")

# The one table of task type -> (transformers class, mosaicbert.model class).
TASK_MODEL_CLASSES: Dict[str, Tuple[str, str]] = {
    "classification": ("BertForSequenceClassification", "MosaicBertForSequenceClassification"),
    "regression": ("BertForSequenceClassification", "MosaicBertForSequenceClassification"),
    "token_classification": ("BertForTokenClassification", "MosaicBertForTokenClassification"),
    "question_answering": ("BertForQuestionAnswering", "MosaicBertForQuestionAnswering"),
    "multiple_choice": ("BertForMultipleChoice", "MosaicBertForMultipleChoice"),
}


def model_class(model_name: str, task: str) -> type:
    """The task's model class for model.name (hf_bert: transformers; mosaic_bert: mosaicbert.model)."""
    hf_name, mosaic_name = TASK_MODEL_CLASSES[task]
    if model_name == "hf_bert":
        import transformers

        return getattr(transformers, hf_name)
    import mosaicbert.model

    return getattr(mosaicbert.model, mosaic_name)


# ---------------------------------------------------------------------------------------------------------------
# Reading values out of rows
# ---------------------------------------------------------------------------------------------------------------


def _words(rows: Rows, i: int, column: str) -> List[str]:
    value = rows.value(i, column)
    return value.split() if isinstance(value, str) else [str(v) for v in value]


def _label_str(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # 1.0 in JSON is the label "1"
    return str(value).strip()


def infer_labels(task: str, rows: Rows, label_column: str) -> List[str]:
    """The label set of the training data: hub ClassLabel names, else the sorted distinct labels (numbers in
    numeric order; token tags with 'O' first)."""
    if rows.label_names:
        return list(rows.label_names)
    seen = set()
    for i in range(len(rows)):
        if task == "token_classification":
            seen.update(_words(rows, i, label_column))
        else:
            seen.add(_label_str(rows.value(i, label_column)))
    try:
        labels = sorted(seen, key=float)
    except ValueError:
        labels = sorted(seen)
    if "O" in labels:
        labels = ["O"] + [t for t in labels if t != "O"]
    if len(labels) < 2:
        raise FinetuneDataError(f"{rows.source}: the label column {label_column!r} has a single value {labels}: "
                                f"classification needs at least two labels")
    return labels


def _label_id(rows: Rows, i: int, value: str, label_ids: Dict[str, int], column: str) -> int:
    if value not in label_ids:
        raise FinetuneDataError(f"{rows.where[i]}: label {value!r} in column {column!r} is not in the label set "
                                f"{list(label_ids)} (data.labels)")
    return label_ids[value]


# ---------------------------------------------------------------------------------------------------------------
# Features
# ---------------------------------------------------------------------------------------------------------------


class TokenizedDataset(Dataset):
    """Model inputs as plain dicts of Python lists, one per row."""

    def __init__(self, features: List[dict]):
        self.features = features

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict:
        return self.features[i]


@dataclass
class Prepared:
    dataset: TokenizedDataset
    num_examples: int
    # question answering (eval): contexts and gold answer texts per example, for the span metrics
    contexts: List[str] = field(default_factory=list)
    answers: List[List[str]] = field(default_factory=list)


def prepare(task: str, rows: Rows, tokenizer, data_cfg, labels: Optional[List[str]], train: bool) -> Prepared:
    """Tokenize rows into features for `task`; any bad row raises FinetuneDataError naming its file and line."""
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError("finetuning needs a fast tokenizer (word and character offsets); got "
                          f"{type(tokenizer).__name__}")
    cols, max_len = data_cfg.columns, data_cfg.max_seq_len
    if task in ("classification", "regression"):
        return _prepare_sequence(task, rows, tokenizer, cols, max_len, labels)
    if task == "token_classification":
        return _prepare_tokens(rows, tokenizer, cols, max_len, labels or [])
    if task == "question_answering":
        return _prepare_qa(rows, tokenizer, cols, max_len, data_cfg.doc_stride, train)
    if task == "multiple_choice":
        return _prepare_choices(rows, tokenizer, cols, max_len)
    raise ConfigError(f"unknown task {task!r}")


def _prepare_sequence(task, rows, tokenizer, cols, max_len, labels) -> Prepared:
    first = [rows.text(i, cols.text) for i in range(len(rows))]
    second = [rows.text(i, cols.text_pair) for i in range(len(rows))] if cols.text_pair else None
    if task == "regression":
        targets = []
        for i in range(len(rows)):
            raw = rows.value(i, cols.label)
            try:
                targets.append(float(raw))
            except (TypeError, ValueError):
                raise FinetuneDataError(f"{rows.where[i]}: label {raw!r} in column {cols.label!r} is not a number "
                                        f"(task regression)") from None
    else:
        ids = {name: k for k, name in enumerate(labels)}
        targets = [_label_id(rows, i, _label_str(rows.value(i, cols.label)), ids, cols.label) for i in range(len(rows))]
    enc = tokenizer(first, second, truncation=True, max_length=max_len, return_token_type_ids=True,
                    return_attention_mask=False)
    features = [{"input_ids": enc["input_ids"][i], "token_type_ids": enc["token_type_ids"][i], "labels": y}
                for i, y in enumerate(targets)]
    return Prepared(TokenizedDataset(features), len(rows))


def _prepare_tokens(rows, tokenizer, cols, max_len, labels) -> Prepared:
    ids = {name: k for k, name in enumerate(labels)}
    words, tags = [], []
    for i in range(len(rows)):
        w, t = _words(rows, i, cols.tokens), _words(rows, i, cols.label)
        if len(w) != len(t):
            raise FinetuneDataError(f"{rows.where[i]}: {len(w)} words in column {cols.tokens!r} but {len(t)} labels "
                                    f"in column {cols.label!r}")
        words.append(w)
        tags.append([_label_id(rows, i, tag, ids, cols.label) for tag in t])
    enc = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_len,
                    return_token_type_ids=True, return_attention_mask=False)
    features = []
    for i in range(len(words)):
        # Label a word's first sub-token only; later sub-tokens and [CLS]/[SEP] are ignored by the loss (-100).
        aligned, previous = [], None
        for w in enc.word_ids(i):
            aligned.append(tags[i][w] if w is not None and w != previous else -100)
            previous = w
        features.append({"input_ids": enc["input_ids"][i], "token_type_ids": enc["token_type_ids"][i],
                         "labels": aligned})
    cut = sum(sum(y != -100 for y in f["labels"]) < len(w) for f, w in zip(features, words))
    if cut:
        log.warning("%s: %d of %d sentences are longer than data.max_seq_len=%d tokens; their last words are "
                    "neither trained on nor scored", rows.source, cut, len(words), max_len)
    return Prepared(TokenizedDataset(features), len(rows))


def _answers(rows: Rows, i: int, cols, context: str) -> List[Tuple[str, int]]:
    """(text, start char) of each gold answer, each checked to be where it says in the context."""
    raw = rows.value(i, cols.answers)
    try:
        texts, starts = list(raw["text"]), [int(s) for s in raw["answer_start"]]
    except (TypeError, KeyError, ValueError):
        raise FinetuneDataError(f"{rows.where[i]}: column {cols.answers!r} must be "
                                f'{{"text": [...], "answer_start": [...]}}, got {raw!r}') from None
    if len(texts) != len(starts):
        raise FinetuneDataError(f"{rows.where[i]}: {len(texts)} answer texts but {len(starts)} answer_start values")
    if not texts:
        raise FinetuneDataError(f"{rows.where[i]}: the question has no answer (unanswerable questions, as in "
                                f"SQuAD 2.0, are not supported)")
    for text, start in zip(texts, starts):
        if context[start:start + len(text)] != text:
            found = context.find(text)
            hint = f"; it occurs at character {found}" if found >= 0 else "; it does not occur in the context"
            raise FinetuneDataError(f"{rows.where[i]}: answer {text!r} is not at answer_start {start} of its "
                                    f"context (found {context[start:start + len(text)]!r} there{hint})")
    return list(zip(texts, starts))


def _prepare_qa(rows, tokenizer, cols, max_len, doc_stride, train) -> Prepared:
    questions = [rows.text(i, cols.question).lstrip() for i in range(len(rows))]
    contexts = [rows.text(i, cols.context) for i in range(len(rows))]
    answers = [_answers(rows, i, cols, contexts[i]) for i in range(len(rows))]
    # A long context becomes several windows, each overlapping the previous by doc_stride tokens.
    try:
        enc = tokenizer(questions, contexts, truncation="only_second", max_length=max_len, stride=doc_stride,
                        return_overflowing_tokens=True, return_offsets_mapping=True, return_token_type_ids=True,
                        return_attention_mask=False)
    except Exception as e:
        raise FinetuneDataError(f"{rows.source}: cannot split the contexts into windows of data.max_seq_len="
                                f"{max_len} tokens with data.doc_stride={doc_stride} (a question longer than the "
                                f"window?): {e}") from e
    features = []
    for w, ex in enumerate(enc["overflow_to_sample_mapping"]):
        seq = enc.sequence_ids(w)
        offsets = enc["offset_mapping"][w]
        feature = {"input_ids": enc["input_ids"][w], "token_type_ids": enc["token_type_ids"][w]}
        if train:
            # The first answer, as token positions; [CLS] (0) when the window does not hold all of it.
            text, start_char = answers[ex][0]
            end_char = start_char + len(text)
            ctx = [k for k, s in enumerate(seq) if s == 1]
            start = end = 0
            if ctx and offsets[ctx[0]][0] <= start_char and offsets[ctx[-1]][1] >= end_char:
                start = next(k for k in ctx if offsets[k][1] > start_char)
                end = next(k for k in reversed(ctx) if offsets[k][0] < end_char)
            feature.update(start_positions=start, end_positions=end)
        else:
            feature.update(example_index=ex,
                           offsets=[list(o) if s == 1 else [-1, -1] for o, s in zip(offsets, seq)])
        features.append(feature)
    return Prepared(TokenizedDataset(features), len(rows), contexts, [[t for t, _ in a] for a in answers])


def _prepare_choices(rows, tokenizer, cols, max_len) -> Prepared:
    n = len(cols.choices)
    features = []
    for i in range(len(rows)):
        context = rows.text(i, cols.context)
        question = rows.text(i, cols.question) if cols.question else ""
        choices = [rows.text(i, c) for c in cols.choices]
        raw = rows.value(i, cols.label)
        try:
            label = int(_label_str(raw))
        except ValueError:
            label = -1
        if not 0 <= label < n:
            raise FinetuneDataError(f"{rows.where[i]}: label {raw!r} in column {cols.label!r} must be the index of "
                                    f"the right choice, 0 to {n - 1} (columns {list(cols.choices)})")
        second = [f"{question} {c}".strip() for c in choices]
        enc = tokenizer([context] * n, second, truncation=True, max_length=max_len, return_token_type_ids=True,
                        return_attention_mask=False)
        features.append({"input_ids": enc["input_ids"], "token_type_ids": enc["token_type_ids"], "labels": label})
    return Prepared(TokenizedDataset(features), len(rows))


# ---------------------------------------------------------------------------------------------------------------
# Collators
# ---------------------------------------------------------------------------------------------------------------


def _pad(rows: Sequence[Sequence[Any]], length: int, value: Any) -> List[List[Any]]:
    return [list(r) + [value] * (length - len(r)) for r in rows]


class PaddingCollator:
    """Pads the sequence keys of a batch (`pad_values`: key -> pad value) to the longest row, rounded up to a
    multiple of 8, and builds attention_mask from input_ids; other keys become tensors as they are. Multiple
    choice rows ([C] sequences per example) pad to [B, C, S].

    Flat rows also send each row's real length as a list of ints (`sequence_lengths`), which spares MosaicBERT's
    forward its host sync (see the MLM collator)."""

    def __init__(self, pad_values: Dict[str, Any]):
        self.pad_values = pad_values

    def __call__(self, features: Sequence[dict]) -> Dict[str, Any]:
        nested = isinstance(features[0]["input_ids"][0], list)  # multiple choice
        seqs = [s for f in features for s in (f["input_ids"] if nested else [f["input_ids"]])]
        length = (max(len(s) for s in seqs) + 7) // 8 * 8
        batch: Dict[str, Any] = {}
        for key in features[0]:
            values = [f[key] for f in features]
            if key in self.pad_values:
                if nested:
                    values = [_pad(v, length, self.pad_values[key]) for v in values]
                else:
                    values = _pad(values, length, self.pad_values[key])
            batch[key] = torch.tensor(values)
        mask = [_pad([[1] * len(s) for s in (f["input_ids"] if nested else [f["input_ids"]])], length, 0)
                for f in features]
        batch["attention_mask"] = torch.tensor(mask if nested else [m[0] for m in mask])
        if not nested:
            batch["sequence_lengths"] = [len(s) for s in seqs]
        return batch


def build_collator(task: str, tokenizer) -> PaddingCollator:
    pads: Dict[str, Any] = {"input_ids": tokenizer.pad_token_id, "token_type_ids": 0}
    if task == "token_classification":
        pads["labels"] = -100
    elif task == "question_answering":
        pads["offsets"] = [-1, -1]
    return PaddingCollator(pads)


# ---------------------------------------------------------------------------------------------------------------
# Question answering: best span of each window
# ---------------------------------------------------------------------------------------------------------------


def best_spans(start_logits: torch.Tensor, end_logits: torch.Tensor, offsets: torch.Tensor,
               max_answer_length: int) -> torch.Tensor:
    """The best answer span of each window: [N, 3] rows (score, start char, end char).

    start_logits, end_logits: [N, S]; offsets: [N, S, 2] character spans of context tokens (-1 elsewhere).
    A span runs from token i to token j >= i, both in the context, at most max_answer_length tokens long; its
    score is start_logits[i] + end_logits[j]. Windows without context tokens score -inf.
    """
    n, s = start_logits.shape
    in_ctx = offsets[..., 0] >= 0  # [N, S]
    scores = start_logits.float()[:, :, None] + end_logits.float()[:, None, :]  # [N, S(start), S(end)]
    i = torch.arange(s, device=scores.device)
    span_len = i[None, :] - i[:, None]  # end - start, [S, S]
    valid = (span_len >= 0) & (span_len < max_answer_length)
    valid = valid[None] & in_ctx[:, :, None] & in_ctx[:, None, :]
    scores = scores.masked_fill(~valid, float("-inf"))
    best, flat = scores.view(n, -1).max(dim=-1)
    start, end = flat // s, flat % s
    rows = torch.arange(n, device=scores.device)
    start_char = offsets[rows, start, 0]
    end_char = offsets[rows, end, 1]
    return torch.stack([best, start_char.float(), end_char.float()], dim=-1)
