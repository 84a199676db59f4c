"""Published MosaicBERT folders (mosaicml/mosaic-bert-base, mosaic-bert-base-seqlen-1024, ...) load into every head.

Such a folder holds the original code's config.json (model_type "bert", architectures BertForMaskedLM,
alibi_starting_size; attention_probs_dropout_prob 0.1 in the newer ones) and a pytorch_model.bin with the
original BertForMaskedLM's key names. Built here with random weights (no download): the key layout is written
out from the original's bert_layers.py, not taken from this package's state dict.
"""

import json
import logging

import pytest
import torch

from mosaicbert.model import (
    MosaicBertConfig,
    MosaicBertForMaskedLM,
    MosaicBertForMultipleChoice,
    MosaicBertForQuestionAnswering,
    MosaicBertForSequenceClassification,
    MosaicBertForTokenClassification,
    MosaicBertModel,
)

V, H, I, LAYERS, HEADS = 64, 48, 80, 2, 4  # vocab, hidden, intermediate (GeGLU: 2I rows), layers, heads


def original_state_dict(seed=0):
    """The original BertForMaskedLM's state dict (bert_layers.py): no position embeddings, fused Wqkv, GeGLU
    `gated_layers` (no bias) + `wo`, post-LayerNorms `attention.output.LayerNorm` and `mlp.layernorm`, MLM head
    with the decoder tied to the word embeddings."""
    shapes = {
        "bert.embeddings.word_embeddings.weight": (V, H),
        "bert.embeddings.token_type_embeddings.weight": (2, H),
        "bert.embeddings.LayerNorm.weight": (H,),
        "bert.embeddings.LayerNorm.bias": (H,),
    }
    for i in range(LAYERS):
        p = f"bert.encoder.layer.{i}."
        shapes.update({
            p + "attention.self.Wqkv.weight": (3 * H, H),
            p + "attention.self.Wqkv.bias": (3 * H,),
            p + "attention.output.dense.weight": (H, H),
            p + "attention.output.dense.bias": (H,),
            p + "attention.output.LayerNorm.weight": (H,),
            p + "attention.output.LayerNorm.bias": (H,),
            p + "mlp.gated_layers.weight": (2 * I, H),
            p + "mlp.wo.weight": (H, I),
            p + "mlp.wo.bias": (H,),
            p + "mlp.layernorm.weight": (H,),
            p + "mlp.layernorm.bias": (H,),
        })
    shapes.update({
        "cls.predictions.transform.dense.weight": (H, H),
        "cls.predictions.transform.dense.bias": (H,),
        "cls.predictions.transform.LayerNorm.weight": (H,),
        "cls.predictions.transform.LayerNorm.bias": (H,),
        "cls.predictions.decoder.bias": (V,),
    })
    g = torch.Generator().manual_seed(seed)
    sd = {k: torch.randn(shape, generator=g) for k, shape in shapes.items()}
    sd["cls.predictions.decoder.weight"] = sd["bert.embeddings.word_embeddings.weight"]  # tied
    return sd


def original_config(attention_dropout, alibi_starting_size):
    return {
        "_name_or_path": "mosaicml/mosaic-bert",
        "alibi_starting_size": alibi_starting_size,
        "architectures": ["BertForMaskedLM"],
        "attention_probs_dropout_prob": attention_dropout,
        "auto_map": {"AutoConfig": "configuration_bert.BertConfig",
                     "AutoModelForMaskedLM": "bert_layers.BertForMaskedLM"},
        "classifier_dropout": None,
        "gradient_checkpointing": False,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": H,
        "initializer_range": 0.02,
        "intermediate_size": I,
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": 512,
        "model_type": "bert",
        "num_attention_heads": HEADS,
        "num_hidden_layers": LAYERS,
        "pad_token_id": 0,
        "position_embedding_type": "absolute",
        "torch_dtype": "float32",
        "transformers_version": "4.26.0",
        "type_vocab_size": 2,
        "use_cache": False,
        "vocab_size": V,
    }


@pytest.fixture(params=[(0.0, 512), (0.1, 1024)], ids=["base", "seqlen-1024"])
def published_folder(request, tmp_path):
    attention_dropout, alibi_size = request.param
    folder = tmp_path / "mosaic-bert"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(original_config(attention_dropout, alibi_size), indent=2))
    sd = original_state_dict()
    torch.save(sd, folder / "pytorch_model.bin")
    return folder, sd, attention_dropout, alibi_size


POOLER = ["bert.pooler.dense.bias", "bert.pooler.dense.weight"]
MISSING = {  # the new heads' keys, reported missing
    MosaicBertForMaskedLM: [],
    MosaicBertModel: ["pooler.dense.bias", "pooler.dense.weight"],
    MosaicBertForSequenceClassification: POOLER + ["classifier.bias", "classifier.weight"],
    MosaicBertForTokenClassification: ["classifier.bias", "classifier.weight"],
    MosaicBertForQuestionAnswering: ["qa_outputs.bias", "qa_outputs.weight"],
    MosaicBertForMultipleChoice: POOLER + ["classifier.bias", "classifier.weight"],
}


@pytest.mark.parametrize("head", list(MISSING), ids=lambda c: c.__name__)
def test_published_folder_loads_into_every_head(head, published_folder):
    folder, sd, attention_dropout, alibi_size = published_folder
    model, info = head.from_pretrained(folder, output_loading_info=True)
    assert isinstance(model.config, MosaicBertConfig)
    assert model.config.attention_probs_dropout_prob == attention_dropout
    assert model.config.alibi_starting_size == alibi_size
    assert sorted(info["missing_keys"]) == MISSING[head]
    expected_unexpected = [] if head is MosaicBertForMaskedLM else sorted(k for k in sd if k.startswith("cls."))
    assert sorted(info["unexpected_keys"]) == expected_unexpected
    loaded = model.state_dict()
    prefix = "bert." if head is MosaicBertModel else ""
    landed = 0
    for key, tensor in sd.items():
        name = key.removeprefix(prefix)
        if name in loaded:
            assert torch.equal(loaded[name], tensor), key
            landed += 1
    assert landed == len(sd) - len(expected_unexpected)  # every encoder weight (and the MLM head's)
    if head is MosaicBertForMaskedLM:  # the decoder stays tied to the word embeddings
        assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
        with torch.no_grad():
            logits = model.eval()(torch.tensor([[2, 7, 9, 0]]), attention_mask=torch.tensor([[1, 1, 1, 0]])).logits
        assert logits.shape == (1, 4, V) and torch.isfinite(logits).all()


def test_published_folder_saves_as_a_loadable_mosaicbert_folder(published_folder, tmp_path):
    """Saved again, the folder is ours: model_type mosaic_bert and an auto_map without the original code's
    bert_layers.py (which the folder does not hold)."""
    folder, sd, _, _ = published_folder
    model = MosaicBertForTokenClassification.from_pretrained(folder)
    model.save_pretrained(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert saved["model_type"] == "mosaic_bert"
    assert saved["auto_map"] == {"AutoConfig": "configuration_mosaic_bert.MosaicBertConfig",
                                 "AutoModelForTokenClassification":
                                     "modeling_mosaic_bert.MosaicBertForTokenClassification"}
    again = MosaicBertForTokenClassification.from_pretrained(tmp_path / "saved")
    for k, v in model.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k


def test_attention_dropout_logs_the_backend_once(published_folder, caplog, monkeypatch):
    """attention_probs_dropout_prob > 0 (the seqlen-1024 checkpoints): training logs once which attention backend
    that selects; eval (no dropout) and a dropout-free config log no such line."""
    from mosaicbert.model import attention

    folder, _, attention_dropout, _ = published_folder
    monkeypatch.setattr(attention, "_logged", set())
    model = MosaicBertForMaskedLM.from_pretrained(folder)
    ids = torch.tensor([[2, 7, 9, 4]])
    labels = torch.tensor([[-100, 7, -100, -100]])
    with caplog.at_level(logging.INFO, logger="mosaicbert"):
        model.train()
        model(ids, labels=labels)
        model(ids, labels=labels)
        model.eval()
        model(ids)
    lines = [r.getMessage() for r in caplog.records if "attention dropout" in r.getMessage()]
    if attention_dropout == 0.0:
        assert lines == []
    else:
        assert lines == ["MosaicBERT attention dropout 0.1 (attention_probs_dropout_prob) selects attention "
                         "backend 'torch' in training"]


def test_attention_dropout_names_the_faster_backend(monkeypatch, caplog):
    """On a GPU where "auto" picks the triton kernel, attention dropout falls back to sdpa: the log says so and
    how to get the fast one."""
    from mosaicbert.model import attention

    monkeypatch.setattr(attention, "HAS_FLASH_ATTN", False)
    monkeypatch.setattr(attention, "HAS_TRITON", True)
    monkeypatch.setattr(attention, "cuda_capability", lambda dev: (9, 0))
    monkeypatch.setattr(attention, "_logged", set())
    model = MosaicBertModel(MosaicBertConfig(hidden_size=128, num_attention_heads=2, num_hidden_layers=1,
                                             intermediate_size=64, vocab_size=V, attention_probs_dropout_prob=0.1))
    model.to(torch.bfloat16)
    cuda = torch.device("cuda")  # only chosen, never touched
    with caplog.at_level(logging.INFO, logger="mosaicbert"):
        backend, choice = model.train()._resolve_backend(cuda)
        assert backend.name == "sdpa" and choice[-1] == "triton"
        attention.log_backend_choice(*choice)
        attention.log_backend_choice(*choice)  # once
    lines = [r.getMessage() for r in caplog.records if "attention dropout" in r.getMessage()]
    assert len(lines) == 1
    assert "'sdpa' in training; 'triton', faster, has no attention dropout: set attention_probs_dropout_prob=0" \
        in lines[0]
