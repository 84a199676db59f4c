"""mosaicbert.core.checkpoint: every weight source (Composer file, HF folder: safetensors / sharded / .bin, hub id) and
the one report of keys not loaded. Tiny models on CPU; the hub download is replaced by a local folder."""

from __future__ import annotations

import logging

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, BertForSequenceClassification

from mosaicbert.core.checkpoint import LoadReport, load_weights, looks_like_hub_id, read_weights
from mosaicbert.model import MosaicBertConfig, MosaicBertForMaskedLM, MosaicBertForSequenceClassification


def mosaic_config(**kw) -> MosaicBertConfig:
    return MosaicBertConfig(**{**dict(vocab_size=97, hidden_size=48, num_hidden_layers=2, num_attention_heads=12,
                                      intermediate_size=64, alibi_starting_size=16), **kw})


def bert_config(**kw) -> BertConfig:
    return BertConfig(**{**dict(vocab_size=97, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=37), **kw})


def seeded(cls, config, seed: int):
    torch.manual_seed(seed)
    return cls(config)


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module, skip: tuple = ()) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    for k, v in sa.items():
        if k in sb and not k.startswith(skip):
            assert torch.equal(v, sb[k]), k


def write_composer_checkpoint(model: torch.nn.Module, path) -> None:
    """The layout Composer writes: state.model with the ComposerModel's `model.` prefix."""
    torch.save({"state": {"model": {f"model.{k}": v for k, v in model.state_dict().items()},
                          "timestamp": {}}, "rng": []}, path)


@pytest.mark.parametrize("cls, config", [(MosaicBertForMaskedLM, mosaic_config), (BertForMaskedLM, bert_config)])
def test_composer_checkpoint_loads_completely(tmp_path, cls, config):
    src = seeded(cls, config(), 0)
    write_composer_checkpoint(src, tmp_path / "ep0-ba10-rank0.pt")
    dst = seeded(cls, config(), 1)
    report = load_weights(dst, str(tmp_path / "ep0-ba10-rank0.pt"))
    assert report.complete and report.loaded > 10 and not report.resized and not report.head_not_loaded
    assert_same_weights(src, dst)


@pytest.mark.parametrize("sharded", [False, True])
def test_hf_folder_safetensors(tmp_path, sharded):
    src = seeded(MosaicBertForMaskedLM, mosaic_config(), 0)
    src.save_pretrained(tmp_path / "hf", max_shard_size="40KB" if sharded else "5GB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file() == sharded
    dst = seeded(MosaicBertForMaskedLM, mosaic_config(), 1)
    report = load_weights(dst, str(tmp_path / "hf"))
    assert report.complete  # the tied decoder weight, absent from the files, is not reported missing
    assert_same_weights(src, dst)


def test_pytorch_model_bin_with_old_layernorm_names(tmp_path):
    """A TF-converted BERT (bert-base-uncased style): pytorch_model.bin, LayerNorm gamma/beta."""
    src = seeded(BertForMaskedLM, bert_config(), 0)
    old = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
           for k, v in src.state_dict().items()}
    assert any(k.endswith("LayerNorm.gamma") for k in old)
    (tmp_path / "bin").mkdir()
    torch.save(old, tmp_path / "bin" / "pytorch_model.bin")
    assert not any(k.endswith(("gamma", "beta")) for k in read_weights(str(tmp_path / "bin")))
    dst = seeded(BertForMaskedLM, bert_config(), 1)
    assert load_weights(dst, str(tmp_path / "bin")).complete
    assert_same_weights(src, dst)


def test_hub_id_is_downloaded_once_with_snapshot_download(tmp_path, monkeypatch):
    import huggingface_hub

    import mosaicbert.core.checkpoint as checkpoint

    monkeypatch.setattr(checkpoint, "hub_local_only", lambda name: False)  # as with a reachable Hub
    src = seeded(BertForMaskedLM, bert_config(), 0)
    src.save_pretrained(tmp_path / "snapshot")
    calls = []

    def fake_snapshot_download(repo_id, allow_patterns=None, **kw):
        calls.append((repo_id, allow_patterns))
        return str(tmp_path / "snapshot")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.chdir(tmp_path)  # the id must not exist as a local path
    assert looks_like_hub_id("org/tiny-bert") and not looks_like_hub_id("runs/x/latest-rank0.pt")
    dst = seeded(BertForMaskedLM, bert_config(), 1)
    assert load_weights(dst, "org/tiny-bert").complete
    assert len(calls) == 1 and calls[0][0] == "org/tiny-bert" and "*.safetensors" in calls[0][1]
    assert_same_weights(src, dst)

    def offline(repo_id, **kw):
        raise ConnectionError("hub unreachable")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(FileNotFoundError, match="'org/other'.*downloading it from the Hugging Face hub failed: "
                                                "hub unreachable"):
        read_weights("org/other")


def test_bad_sources_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found: .*nope.pt"):
        read_weights(str(tmp_path / "nope.pt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="neither model.safetensors"):
        read_weights(str(tmp_path / "empty"))
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a Composer checkpoint"):
        read_weights(str(tmp_path / "other.pt"))
    (tmp_path / "junk.pt").write_text("not a pickle")
    with pytest.raises(ValueError, match="checkpoint .*junk.pt cannot be read .*not a torch checkpoint"):
        read_weights(str(tmp_path / "junk.pt"))


def test_mlm_to_classifier_report(tmp_path, caplog):
    """Finetuning start: the MLM head is left out on purpose, the new classifier expected, nothing else."""
    mlm = seeded(MosaicBertForMaskedLM, mosaic_config(), 0)
    write_composer_checkpoint(mlm, tmp_path / "mlm.pt")
    clf = seeded(MosaicBertForSequenceClassification, mosaic_config(num_labels=3), 1)
    with caplog.at_level(logging.INFO, logger="mosaicbert"):
        report = load_weights(clf, str(tmp_path / "mlm.pt"), head_prefixes=("cls.", "classifier."),
                              new_head_prefixes=("classifier.",))
    assert report.head_not_loaded and all(k.startswith("cls.") for k in report.head_not_loaded)
    assert report.new_head == ["classifier.bias", "classifier.weight"]
    # An MLM model has no pooler: the classifier's is newly initialised, and says so.
    assert report.missing == ["bert.pooler.dense.weight", "bert.pooler.dense.bias"]
    assert not report.unexpected and not report.shape_mismatch and report.as_dict()["loaded"] == report.loaded
    assert set(report.as_dict()) == {"loaded", "head_not_loaded", "new_head", "missing", "unexpected",
                                     "shape_mismatch", "resized"}
    assert_same_weights(mlm, clf, skip=("classifier.",))
    assert "intentionally not loaded" in caplog.text and "classifier.weight" in caplog.text


def test_report_lists_missing_unexpected_mismatched_and_resized(caplog):
    src = seeded(BertForSequenceClassification, bert_config(vocab_size=90), 0)
    state = dict(src.state_dict())
    del state["bert.encoder.layer.0.output.dense.bias"]
    state["bert.encoder.layer.0.extra.weight"] = torch.zeros(3)
    state["bert.encoder.layer.0.intermediate.dense.weight"] = torch.zeros(5, 32)
    dst = seeded(BertForSequenceClassification, bert_config(vocab_size=96), 1)
    with caplog.at_level(logging.WARNING, logger="mosaicbert"):
        report = load_weights(dst, {f"model.{k}": v for k, v in state.items()}, head_prefixes=("classifier.",),
                              new_head_prefixes=("classifier.",), name="edited")
    assert isinstance(report, LoadReport) and report.source == "edited" and not report.complete
    assert report.missing == ["bert.encoder.layer.0.output.dense.bias"]  # the mismatched key is listed once
    assert report.unexpected == ["bert.encoder.layer.0.extra.weight"]
    assert report.shape_mismatch == ["bert.encoder.layer.0.intermediate.dense.weight: checkpoint (5, 32) vs model "
                                     "(37, 32)"]
    assert report.resized == ["bert.embeddings.word_embeddings.weight: (90, 32) -> (96, 32)"]
    word = dst.state_dict()["bert.embeddings.word_embeddings.weight"]
    assert torch.equal(word[:90], src.state_dict()["bert.embeddings.word_embeddings.weight"])
    for what in ("not in the checkpoint", "not used by this model", "different shape NOT loaded", "resized"):
        assert what in caplog.text, what


def test_nothing_matching_is_an_error():
    """A MosaicBERT checkpoint into transformers' BERT (wrong model.name): no key fits, so it fails loudly."""
    dst = seeded(BertForMaskedLM, bert_config(), 1)
    mosaic = seeded(MosaicBertForMaskedLM, mosaic_config(hidden_size=40, num_attention_heads=4, vocab_size=128), 0)
    with pytest.raises(RuntimeError, match="none of its .* weights match this model"):
        load_weights(dst, mosaic.state_dict())
