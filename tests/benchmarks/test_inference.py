"""benchmarks/inference.py: the length distribution, the useful FLOPs by hand, and a tiny CPU run."""

import importlib.util
import json
import statistics

import pytest
from helpers import ROOT

spec = importlib.util.spec_from_file_location("inference", ROOT / "benchmarks" / "inference.py")
inference = importlib.util.module_from_spec(spec)
spec.loader.exec_module(inference)


def test_lengths_look_like_c4_cut_at_512():
    lengths = inference.sequence_lengths(4096, 120, 0.8, 16, 512)
    assert min(lengths) >= 16 and max(lengths) == 512
    assert 110 <= statistics.median(lengths) <= 130
    corpus = inference.padded_batches(lengths, 128, 100)
    sorted_ = inference.padded_batches(sorted(lengths, reverse=True), 128, 100)
    assert sum(b["attention_mask"].sum().item() for b in corpus) == sum(lengths)
    assert [b["sequence_lengths"] for b in corpus][0] == lengths[:128]
    # most of a corpus-order batch is padding; sorted batches have little
    assert inference.padding_share(corpus) > 0.5 and inference.padding_share(sorted_) < 0.1


def test_useful_flops_by_hand():
    from transformers import BertConfig

    from mosaicbert.model import MosaicBertConfig

    bert = BertConfig(hidden_size=8, num_hidden_layers=2, intermediate_size=32, num_attention_heads=2)
    # per layer per token: 4 * 8 * 8 + 2 * 8 * 32 = 768 multiply-adds -> 1536 FLOPs; 2 layers; attention 4 * n * 8
    n = 10
    assert inference.useful_flops("hf_bert", bert, [n]) == n * 1536 * 2 + 2 * 4 * n * n * 8
    mosaic = MosaicBertConfig(hidden_size=8, num_hidden_layers=2, intermediate_size=32, num_attention_heads=2)
    # GeGLU: 3 * 64 + 64 + 8 * 64 + 32 * 8 = 1024 multiply-adds per layer per token
    assert inference.useful_flops("mosaic_bert", mosaic, [n]) == n * 2048 * 2 + 2 * 4 * n * n * 8
    # base sizes: MosaicBERT's GeGLU has 4/3 of BERT's linear FLOPs per token
    _, mb = inference.build("mosaic_bert", "tiny")
    _, hb = inference.build("hf_bert", "tiny")
    assert inference.layer_matmul_params("mosaic_bert", mb) / inference.layer_matmul_params("hf_bert", hb) == \
        pytest.approx((4 * 64 * 64 + 3 * 64 * 128) / (4 * 64 * 64 + 2 * 64 * 128))


def test_modernbert_sliding_window_layers_attend_to_their_window():
    _, cfg = inference.build("modernbert", "tiny")
    keys = inference.attended_keys("modernbert", cfg, 512)
    assert keys[0] == 512 and min(keys) == cfg.local_attention


@pytest.mark.slow
def test_tiny_cpu_run_writes_json(tmp_path, capsys):
    out = tmp_path / "inference.json"
    assert inference.main(["--size", "tiny", "--device", "cpu", "--num-seqs", "24", "--batch", "8", "--max-len", "48",
                           "--min-len", "4", "--median", "16", "--fixed", "32x4", "--fixed-batches", "1",
                           "--repeats", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = result["results"]
    assert not [r for r in rows if "error" in r], rows
    assert {(r["model"], r["workload"]) for r in rows} == {
        (m, w) for m in inference.MODELS for w in ("variable/corpus", "variable/sorted", "fixed/32x4")}
    real = sum(inference.sequence_lengths(24, 16, 0.8, 4, 48))
    for r in rows:
        assert r["real_tokens_per_s"] > 0 and r["flops_per_real_token"] > 0
        assert r["real_tokens"] == (32 * 4 if r["workload"] == "fixed/32x4" else real)
    assert "| mosaic_bert (auto) |" in capsys.readouterr().out
