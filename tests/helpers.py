"""Helpers shared by the tests: the project root, a toy corpus for data tests, the from-spec reference encoder of
the model tests, and a runner for Triton's interpreter. Test files import from here, never from each other."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mosaicbert import MosaicBertConfig, MosaicBertModel

ROOT = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------------------------------------------
# A toy corpus: a WordPiece vocab in which every word `w<i>` is one token (id i + 5), and JSON-lines documents of
# random such words.
# ---------------------------------------------------------------------------------------------------------------

WORDS = [f"w{i}" for i in range(300)]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def write_vocab(path: Path, words: list[str] = WORDS) -> Path:
    path.write_text("\n".join(SPECIALS + words) + "\n")
    return path


def write_documents(path: Path, num_docs: int, min_words: int, max_words: int, seed: int = 0) -> Path:
    """`num_docs` documents of `min_words` to `max_words - 1` words, one JSON object per line."""
    rng = np.random.default_rng(seed)
    with open(path, "w") as fh:
        for _ in range(num_docs):
            words = rng.integers(0, len(WORDS), size=int(rng.integers(min_words, max_words)))
            fh.write(json.dumps({"text": " ".join(WORDS[w] for w in words)}) + "\n")
    return path


# ---------------------------------------------------------------------------------------------------------------
# The model tests' reference: tiny configs, random weights, batches, and a plain padded encoder written from the spec
# ---------------------------------------------------------------------------------------------------------------


def tiny_config(**kw):
    base = dict(
        vocab_size=101,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=96,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        alibi_starting_size=32,
    )
    base.update(kw)
    return MosaicBertConfig(**base)


def randomize_(model, seed=0):
    """Larger-than-init random weights so attention is far from uniform and every parameter matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "LayerNorm" in name or "layernorm" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * noise)
            else:
                p.copy_(0.2 * noise)
    return model


def make_batch(lengths, seqlen, vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (len(lengths), seqlen), generator=g)
    mask = (torch.arange(seqlen)[None, :] < torch.tensor(lengths)[:, None]).long()
    ids = ids * mask  # pad id 0
    token_types = torch.randint(0, 2, ids.shape, generator=g) * mask
    return ids, mask, token_types


def reference_slopes(n):
    # written independently of the model: the paper's recipe
    def pow2(m):
        return [2.0 ** (-8.0 * (i + 1) / m) for i in range(m)]

    if math.log2(n).is_integer():
        return pow2(n)
    c = 2 ** int(math.floor(math.log2(n)))
    return pow2(c) + pow2(2 * c)[::2][: n - c]


def reference_encoder(model: MosaicBertModel, ids, mask, token_types):
    """Straightforward padded BERT-with-ALiBi-and-GeGLU using the model's own parameters. [B, S, hidden]"""
    cfg = model.config
    B, S = ids.shape
    E, H = cfg.hidden_size, cfg.num_attention_heads
    D, I = E // H, cfg.intermediate_size
    eps = cfg.layer_norm_eps

    def ln(x, mod):
        return F.layer_norm(x, (E,), mod.weight, mod.bias, eps)

    def lin(x, mod):
        return x @ mod.weight.T + (mod.bias if mod.bias is not None else 0.0)

    emb = model.embeddings
    x = ln(emb.word_embeddings.weight[ids] + emb.token_type_embeddings.weight[token_types], emb.LayerNorm)
    slopes = torch.tensor(reference_slopes(H))
    pos = torch.arange(S)
    alibi = -slopes[:, None, None] * (pos[:, None] - pos[None, :]).abs()[None].float()  # [H, S, S]
    key_mask = torch.zeros(B, S).masked_fill(mask == 0, float("-inf"))[:, None, None, :]  # [B, 1, 1, S]
    for layer in model.encoder.layer:
        qkv = lin(x, layer.attention.self.Wqkv)  # [B, S, 3E]
        q, k, v = (t.reshape(B, S, H, D).transpose(1, 2) for t in qkv.split(E, dim=-1))
        scores = q @ k.transpose(-1, -2) / math.sqrt(D) + alibi[None] + key_mask
        a = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, S, E)
        x = ln(lin(a, layer.attention.output.dense) + x, layer.attention.output.LayerNorm)
        g = x @ layer.mlp.gated_layers.weight.T  # [B, S, 2I]
        m = F.gelu(g[..., :I]) * g[..., I:]
        x = ln(lin(m, layer.mlp.wo) + x, layer.mlp.layernorm)
    return x

# ---------------------------------------------------------------------------------------------------------------
# Triton's interpreter, on CPU, in a child process: TRITON_INTERPRET=1 must be set before the kernels are decorated
# (at import), so it cannot be set in the pytest process without leaking into the other tests.
# ---------------------------------------------------------------------------------------------------------------


def run_in_interpreter(code: str, timeout: int = 300) -> str:
    """Run `code` with TRITON_INTERPRET=1; fail with the child's output if it fails, else return its stdout (also
    printed, so the measured errors show with pytest -s)."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"child failed:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    print(proc.stdout)
    return proc.stdout


def write_own_text(folder: Path) -> Path:
    """"Your own text": the README's paragraphs as .txt (a blank line between documents) and the YAML files'
    comments as JSON lines, the two local formats the converter reads."""
    folder.mkdir(parents=True)
    (folder / "readme.txt").write_text((ROOT / "README.md").read_text())
    comments = [line.lstrip("# ").strip() for p in sorted((ROOT / "yamls").rglob("*.yaml"))
                for line in p.read_text().splitlines() if line.startswith("#")]
    (folder / "comments.jsonl").write_text("".join(json.dumps({"text": c}) + "\n" for c in comments if c))
    return folder
