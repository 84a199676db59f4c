"""The CPU commands of README.md run in a clean copy of the repository with nothing beside it (every shipped
finetune example among them).

README_CPU_COMMANDS is the list, in README order (later commands use what earlier ones wrote); a fast test checks
that each is in README.md verbatim, so the list and the README cannot drift apart.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import write_own_text

ROOT = Path(__file__).resolve().parents[2]

README_CPU_COMMANDS = [
    ".venv/bin/composer main.py yamls/quickstart.yaml",
    ".venv/bin/python glue.py yamls/glue/quickstart.yaml",
    ".venv/bin/python glue.py yamls/glue/quickstart.yaml model.pretrained_checkpoint=runs/quickstart/latest-rank0.pt",
    ".venv/bin/python -m mosaicbert.export runs/quickstart/latest-rank0.pt exported/quickstart",
    ".venv/bin/python -m mosaicbert.pretrain.convert --source local --train_files my-text --tokenizer "
    "builtin://python-docs --out_root data/my-text",
    ".venv/bin/composer main.py yamls/quickstart.yaml data.local=data/my-text run_name=my-text",
    *[f".venv/bin/python finetune.py yamls/finetune/{task}.yaml" for task in (
        "classification", "pair_classification", "regression", "token_classification", "question_answering",
        "multiple_choice")],
]


def readme_code_lines() -> list[str]:
    """The lines of README.md's fenced code blocks, trailing comments and whitespace removed."""
    lines, fenced = [], False
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif fenced:
            lines.append(line.split("  #")[0].strip())
    return lines


def test_cpu_commands_are_in_the_readme():
    code = readme_code_lines()
    missing = [c for c in README_CPU_COMMANDS if c not in code]
    assert not missing, f"README.md has no code line {missing}: update README_CPU_COMMANDS or the README"


def clean_copy(dest: Path) -> Path:
    """The repository's tracked and untracked-but-not-ignored files under dest/repo (no .venv, runs/, data)."""
    listing = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, text=True)
    if listing.returncode != 0:
        pytest.skip(f"not a git checkout, cannot tell which files belong to the repository: {listing.stderr[:200]}")
    repo = dest / "repo"
    for name in filter(None, listing.stdout.split("\0")):
        src = ROOT / name
        if src.is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, repo / name)
    return repo


@pytest.mark.slow
def test_readme_cpu_commands_run_in_a_clean_copy(tmp_path, mosaicbert_cache):
    repo = clean_copy(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]  # nothing beside it: no ../shared
    (repo / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)  # the environment running the tests
    env = {**os.environ, "PYTHONPATH": str(repo / "src"), "MOSAICBERT_CACHE": str(mosaicbert_cache),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    write_own_text(repo / "my-text")
    for command in README_CPU_COMMANDS:
        proc = subprocess.run(shlex.split(command), cwd=repo, env=env, capture_output=True, text=True, timeout=1800)
        assert proc.returncode == 0, f"`{command}` failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        if command.startswith(".venv/bin/composer main.py"):
            run = "my-text" if "run_name=my-text" in command else "quickstart"
            rows = [json.loads(line) for line in (repo / "runs" / run / "metrics.jsonl").read_text().splitlines()]
            train = [r["train_loss"] for r in rows if "train_loss" in r]
            assert train[-1] < train[0] - 1.0, f"the quickstart did not learn: train loss {train[0]} -> {train[-1]}"
            assert any("eval/LanguageCrossEntropy" in r for r in rows)
        elif "finetune.py" in command:
            folder = repo / "runs" / "finetune" / Path(shlex.split(command)[2]).stem
            results = json.loads((folder / "results.json").read_text())
            assert results["evaluations"] and (folder / "best_model" / "config.json").is_file(), results
            assert (folder / "best_model" / "tokenizer.json").is_file()
        elif "glue.py" in command:
            results = json.loads((repo / "runs/glue/quickstart/results.json").read_text())
            assert {t: r["status"] for t, r in results["tasks"].items()} == {"rte": "ok", "mrpc": "ok"}
            kinds = {job["init_kind"] for job in results["jobs"]}
            if "pretrained_checkpoint=" in command:
                assert "random" not in kinds, results["jobs"]
            else:
                assert kinds == {"random"}

    from transformers import AutoModelForMaskedLM, AutoTokenizer

    folder = repo / "exported" / "quickstart"
    model = AutoModelForMaskedLM.from_pretrained(folder, trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    batch = tokenizer(["Return the number of items in a container."], return_tensors="pt")
    logits = model(**batch).logits
    assert logits.shape == (*batch["input_ids"].shape, model.config.vocab_size) and logits.isfinite().all()
