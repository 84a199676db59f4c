"""Data readers for finetuning: local CSV / TSV / JSON Lines / CoNLL / SQuAD JSON files, or a hub dataset.

Every reader returns `Rows`: one dict per example plus where it came from (`file:line N`, a SQuAD path, or
`dataset[split] row N`), so that any later problem with a row (a missing column, a label outside the label
set, an answer not in its context) is reported with its file and line. A file that does not parse fails here,
with the line.
"""

from __future__ import annotations

import codecs
import csv
import json
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

csv.field_size_limit(1 << 24)

EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".conll": "conll", ".iob": "conll", ".bio": "conll"}


class FinetuneDataError(ValueError):
    """A problem with the finetuning data, naming the file and line (or row)."""


@dataclass
class Rows:
    records: List[Dict[str, Any]]
    where: List[str]  # one location per record, for error messages
    source: str  # file path or hub dataset/split
    # Label names of a hub ClassLabel column (hub datasets store class ids); None for local files.
    label_names: Optional[List[str]] = None

    def __len__(self) -> int:
        return len(self.records)

    def head(self, n: Optional[int]) -> "Rows":
        if n is None or n >= len(self.records):
            return self
        return Rows(self.records[:n], self.where[:n], self.source, self.label_names)

    def value(self, i: int, column: str) -> Any:
        """Row i's value in `column`; a missing column or an empty value is an error naming the row."""
        record = self.records[i]
        if column not in record:
            raise FinetuneDataError(f"{self.where[i]}: no column {column!r} (columns: {sorted(record)}); set "
                                    f"data.columns to the names used in {self.source}")
        value = record[column]
        if value is None:
            raise FinetuneDataError(f"{self.where[i]}: column {column!r} is empty")
        return value

    def text(self, i: int, column: str, non_empty: bool = False) -> str:
        """Row i's text in `column` (with `non_empty`, at least one non-blank character)."""
        value = self.value(i, column)
        if not isinstance(value, str):
            raise FinetuneDataError(f"{self.where[i]}: column {column!r} must be text, got {type(value).__name__} "
                                    f"{value!r}")
        if non_empty and not value.strip():
            raise FinetuneDataError(f"{self.where[i]}: column {column!r} must be a non-empty text, got {value!r}")
        return value


def infer_format(path: str, task: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    if ext == ".json":  # SQuAD's own format for question answering; JSON Lines otherwise
        return "squad" if task == "question_answering" else "jsonl"
    if ext in EXTENSIONS:
        return EXTENSIONS[ext]
    raise FinetuneDataError(f"{path}: cannot tell the format from the extension {ext or '(none)'}: set "
                            f"data.format to csv, tsv, jsonl, conll or squad")


# ---------------------------------------------------------------------------------------------------------------
# Local files
# ---------------------------------------------------------------------------------------------------------------


def read_table(path: str, delimiter: str) -> Rows:
    """CSV (RFC 4180 quoting) or TSV (no quoting) with a header row; every row needs as many fields as the header."""
    records, where = [], []
    quoting = csv.QUOTE_MINIMAL if delimiter == "," else csv.QUOTE_NONE
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter, quoting=quoting, strict=True)
        try:
            header = next(reader)
        except StopIteration:
            raise FinetuneDataError(f"{path}:1: empty file (expected a header row)") from None
        except csv.Error as e:
            raise FinetuneDataError(f"{path}:1: cannot parse the header: {e}") from None
        header = [h.strip() for h in header]
        start = reader.line_num + 1
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                raise FinetuneDataError(f"{path}:{reader.line_num}: cannot parse: {e}") from None
            if not row or (len(row) == 1 and not row[0].strip()):
                start = reader.line_num + 1
                continue  # blank line
            if len(row) != len(header):
                sep = "comma" if delimiter == "," else "tab"
                raise FinetuneDataError(f"{path}:{start}: expected {len(header)} {sep}-separated fields as in the "
                                        f"header {header}, got {len(row)}")
            records.append(dict(zip(header, row)))
            where.append(f"{path}:{start}")
            start = reader.line_num + 1
    return Rows(records, where, path)


def read_jsonl(path: str) -> Rows:
    """One JSON object per line; blank lines are skipped."""
    records, where = [], []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise FinetuneDataError(f"{path}:{n}: not valid JSON ({e.msg} at column {e.colno}); JSON Lines "
                                        f"files hold one object per line") from None
            if not isinstance(obj, dict):
                raise FinetuneDataError(f"{path}:{n}: expected a JSON object, got {type(obj).__name__}")
            records.append(obj)
            where.append(f"{path}:{n}")
    return Rows(records, where, path)


def read_conll(path: str, tokens_column: str, label_column: str) -> Rows:
    """CoNLL-style: one token per line (token first, label in the last column, whitespace-separated), a blank
    line between sentences; `-DOCSTART-` lines are skipped."""
    records, where = [], []
    words: List[str] = []
    tags: List[str] = []
    first = 0

    def flush() -> None:
        if words:
            records.append({tokens_column: list(words), label_column: list(tags)})
            where.append(f"{path}:{first}")
        words.clear()
        tags.clear()

    columns = 0  # of the file's first data line; every data line must have as many
    columns_line = 0
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                flush()
                continue
            if parts[0] == "-DOCSTART-":
                flush()
                continue
            if len(parts) < 2:
                raise FinetuneDataError(f"{path}:{n}: expected a token and its label (whitespace-separated), got "
                                        f"{line.strip()!r}")
            if not columns:
                columns, columns_line = len(parts), n
            elif len(parts) != columns:  # else a middle column (e.g. a POS tag) would be taken for the label
                raise FinetuneDataError(f"{path}:{n}: {len(parts)} whitespace-separated columns ({line.strip()!r}), "
                                        f"but the file's first data line ({path}:{columns_line}) has {columns}: "
                                        f"every line needs the same columns (token first, label last)")
            if not words:
                first = n
            words.append(parts[0])
            tags.append(parts[-1])
    flush()
    return Rows(records, where, path)


def _squad_error(path: str, where: str, msg: str) -> FinetuneDataError:
    return FinetuneDataError(f"{path}: {where}: {msg}")


def read_squad(path: str, columns) -> Rows:
    """SQuAD JSON ({"data": [{"paragraphs": [{"context", "qas": [{"id", "question", "answers"}]}]}]}) as rows
    shaped like the hub's `squad` dataset: id, context, question, answers {text: [...], answer_start: [...]}."""
    with open(path, encoding="utf-8") as f:
        try:
            doc = json.load(f)
        except json.JSONDecodeError as e:
            raise FinetuneDataError(f"{path}:{e.lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise FinetuneDataError(f"{path}: not SQuAD JSON: expected an object with a 'data' list (for one JSON object "
                                f"per line, set data.format=jsonl)")
    records, where = [], []
    for i, article in enumerate(doc["data"]):
        for j, para in enumerate(article.get("paragraphs", []) if isinstance(article, dict) else []):
            loc = f"data[{i}].paragraphs[{j}]"
            if not isinstance(para, dict) or not isinstance(para.get("context"), str):
                raise _squad_error(path, loc, "missing the 'context' string")
            for k, qa in enumerate(para.get("qas", [])):
                qloc = f"{loc}.qas[{k}]"
                if not isinstance(qa, dict) or "question" not in qa:
                    raise _squad_error(path, qloc, "missing 'question'")
                answers = qa.get("answers", [])
                try:
                    texts = [a["text"] for a in answers]
                    starts = [int(a["answer_start"]) for a in answers]
                except (KeyError, TypeError, ValueError):
                    raise _squad_error(path, qloc, "each answer needs 'text' and an integer 'answer_start'") from None
                qid = str(qa.get("id", f"{i}-{j}-{k}"))
                records.append({columns.id: qid, columns.context: para["context"], columns.question: qa["question"],
                                columns.answers: {"text": texts, "answer_start": starts}})
                where.append(f"{path}: {qloc} (id {qid})")
    if not records:
        raise FinetuneDataError(f"{path}: no questions found (data[].paragraphs[].qas[] is empty)")
    return Rows(records, where, path)


def not_utf8_message(path: str) -> str:
    """'path:line: not UTF-8 text (...)' for the first line of `path` that does not decode as UTF-8."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            raw = raw[len(codecs.BOM_UTF8):] if n == 1 and raw.startswith(codecs.BOM_UTF8) else raw
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                return (f"{path}:{n}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1}: {e.reason}); "
                        f"convert the file to UTF-8 (e.g. iconv -f latin1 -t utf-8)")
    return f"{path}: not UTF-8 text; convert the file to UTF-8 (e.g. iconv -f latin1 -t utf-8)"


def read_file(path: str, fmt: Optional[str], task: str, columns) -> Rows:
    fmt = fmt or infer_format(path, task)
    if not os.path.isfile(path):
        raise FinetuneDataError(f"{path}: no such file")
    try:
        rows = _read_format(path, fmt, columns)
    except UnicodeDecodeError:  # the readers decode as they go; name the line here
        raise FinetuneDataError(not_utf8_message(path)) from None
    if not rows.records:
        raise FinetuneDataError(f"{path}: no examples")
    return rows


def _read_format(path: str, fmt: str, columns) -> Rows:
    if fmt == "csv":
        rows = read_table(path, ",")
    elif fmt == "tsv":
        rows = read_table(path, "\t")
    elif fmt == "jsonl":
        rows = read_jsonl(path)
    elif fmt == "conll":
        rows = read_conll(path, columns.tokens, columns.label)
    elif fmt == "squad":
        rows = read_squad(path, columns)
    else:
        raise FinetuneDataError(f"{path}: unknown format {fmt!r}")
    return rows


# ---------------------------------------------------------------------------------------------------------------
# Hugging Face hub (or any datasets.load_dataset builder)
# ---------------------------------------------------------------------------------------------------------------


def _class_label_names(feature) -> Optional[List[str]]:
    """Names of a ClassLabel column, or of a sequence of ClassLabels (token tags)."""
    names = getattr(feature, "names", None)
    if names:
        return list(names)
    inner = getattr(feature, "feature", None)
    if isinstance(feature, list) and feature:
        inner = feature[0]
    return list(getattr(inner, "names", None) or []) or None


def read_hub(name: str, config: Optional[str], split: str, label_column: Optional[str] = None,
             **load_kwargs: Any) -> Rows:
    """`datasets.load_dataset(name, config, split=split)` as Rows; class ids of a ClassLabel label column become
    its names, so that they go through the same label checks as local files. `load_kwargs` reach load_dataset
    (e.g. data_files with the packaged 'csv' / 'json' builders)."""
    import datasets

    try:
        ds = datasets.load_dataset(name, config, split=split, **load_kwargs)
    except Exception as e:
        raise FinetuneDataError(f"cannot load the dataset {name!r} (config {config!r}, split {split!r}): "
                                f"{type(e).__name__}: {e}") from e
    source = f"{name}[{split}]"
    names = None
    if label_column is not None and label_column in ds.features:
        names = _class_label_names(ds.features[label_column])
    records = [dict(r) for r in ds]
    if names:
        for r in records:
            v = r.get(label_column)
            if isinstance(v, list):
                r[label_column] = [names[i] if isinstance(i, int) and 0 <= i < len(names) else i for i in v]
            elif isinstance(v, int) and 0 <= v < len(names):
                r[label_column] = names[v]
    return Rows(records, [f"{source} row {i}" for i in range(len(records))], source, names)
