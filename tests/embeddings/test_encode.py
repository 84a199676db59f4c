"""encode (length-sorted batches, unpadded MosaicBERT forward, input order kept) against plain one-by-one fp32
encoding, for MosaicBERT and transformers' BERT."""

import pytest
import torch
import torch.nn.functional as F
from helpers import WORDS, randomize_, tiny_config, write_vocab
from transformers import BertConfig, BertModel

from mosaicbert.core.tokenizer import load_tokenizer
from mosaicbert.embeddings.encode import encode, length_sorted_batches
from mosaicbert.model import MosaicBertForMaskedLM

TEXTS = [" ".join(WORDS[(7 * i + j) % 90] for j in range(n)) for i, n in enumerate([3, 17, 1, 9, 30, 5, 12, 2, 25])]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return load_tokenizer(str(write_vocab(tmp_path_factory.mktemp("vocab") / "vocab.txt")))


def one_by_one(encoder, tokenizer, texts, pooling):
    """The plain reference: each text alone (no padding at all), fp32, then pooling and L2 normalisation."""
    out = []
    with torch.no_grad():
        for text in texts:
            batch = tokenizer(text, return_tensors="pt")
            hidden = encoder(input_ids=batch["input_ids"], token_type_ids=batch["token_type_ids"]).last_hidden_state[0]
            out.append(F.normalize(hidden.mean(0) if pooling == "mean" else hidden[0], dim=-1))
    return torch.stack(out)


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_encode_mosaicbert_equals_one_by_one(tokenizer, pooling):
    torch.manual_seed(0)
    model = randomize_(MosaicBertForMaskedLM(tiny_config(vocab_size=len(tokenizer)))).eval()
    got = encode(model, tokenizer, TEXTS, batch_size=4, pooling=pooling)  # the MLM model: its encoder is used
    assert got.shape == (len(TEXTS), model.config.hidden_size) and got.dtype == torch.float32
    torch.testing.assert_close(got, one_by_one(model.bert, tokenizer, TEXTS, pooling), rtol=1e-4, atol=1e-5)
    assert not model.training


def test_encode_hf_bert_equals_one_by_one(tokenizer):
    torch.manual_seed(0)
    encoder = BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                                   num_attention_heads=4, intermediate_size=64), add_pooling_layer=False).eval()
    got = encode(encoder, tokenizer, TEXTS, batch_size=3, normalize=True, show_progress=True)
    torch.testing.assert_close(got, one_by_one(encoder, tokenizer, TEXTS, "mean"), rtol=1e-4, atol=1e-5)


def test_encode_truncates_and_handles_edge_cases(tokenizer):
    torch.manual_seed(0)
    model = MosaicBertForMaskedLM(tiny_config(vocab_size=len(tokenizer))).eval()
    long = [TEXTS[4]]
    cut = encode(model, tokenizer, long, max_seq_len=8)
    short = " ".join(TEXTS[4].split()[:6])  # [CLS] + 6 words + [SEP] = 8 tokens
    torch.testing.assert_close(cut, encode(model, tokenizer, [short]), rtol=1e-5, atol=1e-6)
    assert encode(model, tokenizer, []).shape == (0, model.config.hidden_size)
    with pytest.raises(TypeError):
        encode(model, tokenizer, "one string")


def test_length_sorted_batches():
    assert length_sorted_batches([3, 9, 1, 9, 5], 2) == [[1, 3], [4, 0], [2]]
