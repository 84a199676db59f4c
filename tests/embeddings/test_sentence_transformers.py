"""python -m mosaicbert.export --sentence-transformers -> SentenceTransformer(folder, trust_remote_code=True) in a
process that cannot import mosaicbert -> the same embeddings as the library's encode; then the evaluation CLI on the
same folder."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from helpers import ROOT, WORDS, randomize_, tiny_config, write_vocab

from mosaicbert.core.tokenizer import load_tokenizer
from mosaicbert.embeddings.encode import encode, load_encoder
from mosaicbert.embeddings.evaluate import main as evaluate_main
from mosaicbert.export import main as export_main
from mosaicbert.export import read_sentence_transformers_settings
from mosaicbert.model import MosaicBertForMaskedLM

TEXTS = [" ".join(WORDS[(5 * i + j) % 80] for j in range(n)) for i, n in enumerate([4, 20, 1, 11, 28, 7])]

CHILD = textwrap.dedent(
    """
    import importlib.abc, sys

    class BlockMosaicBert(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "mosaicbert" or name.startswith("mosaicbert."):
                raise ImportError("mosaicbert is blocked in this process")
            return None

    sys.meta_path.insert(0, BlockMosaicBert())

    import json
    import torch
    from sentence_transformers import SentenceTransformer

    texts = json.loads(sys.argv[1])
    for folder in sys.argv[2:]:
        model = SentenceTransformer(folder, trust_remote_code=True, device="cpu")
        encoder = model[0].auto_model
        assert type(encoder).__module__.startswith("transformers_modules"), type(encoder).__module__
        assert encoder.pooler is None  # sentence_bert_config.json's model_args
        emb = model.encode(texts, batch_size=4, convert_to_tensor=True)
        torch.save(emb.cpu(), folder + "/st_embeddings.pt")
    assert not any(m == "mosaicbert" or m.startswith("mosaicbert.") for m in sys.modules)
    """
)


def composer_checkpoint(model, tokenizer, path):
    """A checkpoint laid out as main.py writes it: state.model with Composer's `model.` prefix, and the Hugging Face
    metadata (config, tokenizer files) under state.integrations.huggingface."""
    tok_dir = path.parent / "tok"
    tokenizer.save_pretrained(tok_dir)
    files = {}
    for name in os.listdir(tok_dir):
        text = (tok_dir / name).read_text()
        files[name] = {"content": json.loads(text) if name.endswith(".json") else text.splitlines()}
    hf = {"model": {"config": {"content": model.config.to_dict()}}, "tokenizer": files}
    state = {"model": {f"model.{k}": v for k, v in model.state_dict().items()}, "integrations": {"huggingface": hf}}
    torch.save({"state": state}, path)
    return path


@pytest.mark.slow
def test_export_loads_in_sentence_transformers_without_the_package(tmp_path):
    tokenizer = load_tokenizer(str(write_vocab(tmp_path / "vocab.txt")))
    torch.manual_seed(0)
    model = randomize_(MosaicBertForMaskedLM(tiny_config(vocab_size=len(tokenizer)))).eval()
    ckpt = composer_checkpoint(model, tokenizer, tmp_path / "latest-rank0.pt")
    folders = {}
    for pooling in ("mean", "cls"):
        folders[pooling] = str(tmp_path / f"export_{pooling}")
        assert export_main([str(ckpt), folders[pooling], "--sentence-transformers", "--pooling", pooling]) == 0
        assert read_sentence_transformers_settings(folders[pooling]) == {"pooling": pooling, "max_seq_length": 512,
                                                                         "normalize": True}
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error",
               HF_MODULES_CACHE=str(tmp_path / "hf_modules"))
    env["PYTHONPATH"] = os.pathsep.join(p for p in env.get("PYTHONPATH", "").split(os.pathsep)
                                        if p and os.path.abspath(p) != str(ROOT / "src"))
    (tmp_path / "child.py").write_text(CHILD)
    proc = subprocess.run([sys.executable, str(tmp_path / "child.py"), json.dumps(TEXTS), *folders.values()],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for pooling, folder in folders.items():
        got = torch.load(os.path.join(folder, "st_embeddings.pt"))
        expected = encode(model, tokenizer, TEXTS, batch_size=2, pooling=pooling)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
        encoder, folder_tokenizer, settings = load_encoder(folder)  # the evaluation's loader reads the same folder
        assert settings["pooling"] == pooling
        torch.testing.assert_close(encode(encoder, folder_tokenizer, TEXTS, pooling=pooling), expected)


def test_evaluate_cli_writes_the_table_and_json(tmp_path, capsys):
    tokenizer = load_tokenizer(str(write_vocab(tmp_path / "vocab.txt")))
    torch.manual_seed(0)
    model = randomize_(MosaicBertForMaskedLM(tiny_config(vocab_size=len(tokenizer)))).eval()
    ckpt = composer_checkpoint(model, tokenizer, tmp_path / "latest-rank0.pt")
    folder = str(tmp_path / "export")
    assert export_main([str(ckpt), folder, "--sentence-transformers"]) == 0
    sts = tmp_path / "dev.tsv"
    sts.write_text("index\tsentence1\tsentence2\tscore\n" + "".join(
        f"{i}\t{TEXTS[i]}\t{TEXTS[(i + 1) % 6]}\t{i * 0.5}\n" for i in range(6)))
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"q": TEXTS[i], "d": TEXTS[i][:9], "n": TEXTS[-1]}) + "\n" for i in range(5)))
    out = tmp_path / "res" / "eval.json"
    assert evaluate_main([folder, "--stsb", str(sts), "--pairs", str(pairs), "--anchor-column", "q",
                          "--positive-column", "d", "--negative-column", "n", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| model | stsb_spearman | ndcg@10 | recall@1 | recall@10 |" in printed
    (result,) = json.loads(out.read_text())
    assert result["pairs"] == 5 and result["stsb_pairs"] == 6 and result["pooling"] == "mean"
    # 5 positives + 1 distinct negative: every relevant document is within the top 10 of 6
    assert result["metrics"]["recall@10"] == 1.0
    assert -1.0 <= result["metrics"]["stsb_spearman"] <= 1.0
