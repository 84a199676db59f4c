"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = (PROJECT_ROOT / ".." / "shared" / "data").resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (real C4-format text, GLUE, the bert-base-uncased vocab), or skip."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"../shared/data not present: expected {SHARED_DATA} (local real data for offline tests)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def bert_vocab_dir(shared_data: Path) -> Path:
    """Folder holding the bert-base-uncased vocab.txt, or skip."""
    folder = shared_data / "vocab" / "bert-base-uncased"
    if not (folder / "vocab.txt").is_file():
        pytest.skip(f"bert-base-uncased vocab not present: expected {folder / 'vocab.txt'}")
    return folder


@pytest.fixture(scope="session")
def bert_tokenizer(bert_vocab_dir: Path):
    """The bert-base-uncased tokenizer loaded offline from ../shared/data (or skip)."""
    from mosaicbert.core.tokenizer import load_tokenizer

    return load_tokenizer(str(bert_vocab_dir))


@pytest.fixture(scope="session")
def mosaicbert_cache(tmp_path_factory) -> Path:
    """A session-wide private ``$MOSAICBERT_CACHE`` (built-in corpus/tokenizer/MDS are built once per session)."""
    path = tmp_path_factory.mktemp("mosaicbert_cache")
    old = os.environ.get("MOSAICBERT_CACHE")
    os.environ["MOSAICBERT_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("MOSAICBERT_CACHE", None)
    else:
        os.environ["MOSAICBERT_CACHE"] = old


@pytest.fixture
def compiled_mlm_training_losses():
    """A function that trains a small MosaicBERT (hidden dropout 0.1) compiled on CUDA for `steps` steps on one
    fixed batch and returns the losses: GPU tests check a compiled training path runs and learns."""

    def run(steps: int = 30) -> list[float]:
        import torch

        from mosaicbert import MosaicBertConfig, MosaicBertForMaskedLM

        torch.manual_seed(0)
        cfg = MosaicBertConfig(vocab_size=1024, hidden_size=256, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=512, hidden_dropout_prob=0.1)
        model = MosaicBertForMaskedLM(cfg).cuda().train()
        compiled = torch.compile(model)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        ids = torch.randint(5, 1024, (16, 64), device="cuda")
        labels = torch.where(torch.rand(16, 64, device="cuda") < 0.3, ids, -100)
        losses = []
        for _ in range(steps):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = compiled(input_ids=ids, labels=labels).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
        return losses

    return run
