"""Build the example pair set of yamls/finetune/embedding.yaml from docstrings: this repository's own and those of
the Python standard library (PSF License: see README.md here).

    python yamls/finetune/data/make_docstring_pairs.py

Each docstring with a summary sentence and more text gives one pair: anchor = the summary sentence, positive = the
text after it; the negative is the summary of another docstring of the same file (a hard negative: same topic).
Files are split into train and eval by a hash of their path, so no eval pair comes from a file seen in training.
The shipped files were made from the repository as it was then; rerunning on a later checkout gives other pairs.
"""

import ast
import hashlib
import inspect
import json
import random
import re
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
OUT = Path(__file__).resolve().parent
STDLIB = Path(sysconfig.get_paths()["stdlib"])
SOURCES = [(ROOT, p) for p in ("src/mosaicbert/**/*.py", "benchmarks/*.py", "tests/**/*.py", "*.py")] + [
    (STDLIB, p) for p in ("*.py", "email/*.py", "json/*.py", "http/*.py", "urllib/*.py", "asyncio/*.py",
                          "concurrent/futures/*.py", "logging/*.py", "importlib/*.py", "xml/etree/*.py")]
MAX_PAIRS = 2600


def split_docstring(doc: str):
    text = " ".join(inspect.cleandoc(doc).split("\n\n")[0:3])
    text = re.sub(r"\s+", " ", text).strip()
    m = re.match(r"(.+?\.)\s+([A-Z`(].+)", text)  # the first sentence, and what follows it
    if not m:
        return None
    summary, body = m.group(1).strip(), m.group(2).strip()
    if len(body) > 400:
        body = body[:400].rsplit(" ", 1)[0]
    if not 20 <= len(summary) <= 200 or len(body) < 60 or ">>>" in body:
        return None
    return summary, body


def main():
    by_file = {}
    for base, pattern in SOURCES:
        for path in sorted(base.glob(pattern)):
            if "/data/" in str(path.relative_to(base)) or ".venv" in path.parts:
                continue
            try:
                tree = ast.parse(path.read_text(encoding="utf-8"))
            except (SyntaxError, UnicodeDecodeError):
                continue
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    doc = ast.get_docstring(node)
                    pair = split_docstring(doc) if doc else None
                    if pair:
                        by_file.setdefault(str(path), []).append(pair)
    rng = random.Random(0)
    train, evals, seen = [], [], set()
    for name, pairs in sorted(by_file.items()):
        held_out = int(hashlib.md5(Path(name).name.encode()).hexdigest(), 16) % 5 == 0
        for i, (anchor, positive) in enumerate(pairs):
            if anchor in seen:
                continue
            seen.add(anchor)
            others = [a for j, (a, _) in enumerate(pairs) if j != i and a != anchor]
            row = {"anchor": anchor, "positive": positive}
            if others:
                row["negative"] = rng.choice(others)
            (evals if held_out else train).append(row)
    # every row has the hard-negative column (data.columns.negatives applies to both files)
    train, evals = [r for r in train if "negative" in r], [r for r in evals if "negative" in r]
    rng.shuffle(train)
    rng.shuffle(evals)
    train, evals = train[:MAX_PAIRS * 4 // 5], evals[:MAX_PAIRS // 5]  # small files: the example runs on a CPU
    for rows, stem in ((train, "docstring_pairs_train"), (evals, "docstring_pairs_eval")):
        with open(OUT / f"{stem}.jsonl", "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        print(f"{stem}.jsonl: {len(rows)} pairs")


if __name__ == "__main__":
    main()
