"""The token-classification, question-answering and multiple-choice heads (CPU fp32) against a padded reference:
the from-spec encoder of tests/helpers.py run on the same weights, then the head and loss as transformers'
BertFor* define them."""

import pytest
import torch
import torch.nn.functional as F
from helpers import make_batch, randomize_, reference_encoder, tiny_config

from mosaicbert.model import (
    MosaicBertForMaskedLM,
    MosaicBertForMultipleChoice,
    MosaicBertForQuestionAnswering,
    MosaicBertForSequenceClassification,
    MosaicBertForTokenClassification,
    MosaicBertModel,
    load_mosaic_state_dict,
)

TOL = dict(rtol=1e-5, atol=1e-5)


def _reference_hidden(model, ids, mask, tt):
    """[B, S, hidden] of the padded from-spec encoder with the model's encoder weights."""
    with torch.no_grad():
        return reference_encoder(model.bert, ids, mask, tt)


def test_token_classification_matches_reference():
    cfg = tiny_config(num_labels=5)
    model = randomize_(MosaicBertForTokenClassification(cfg)).eval()
    ids, mask, tt = make_batch([9, 4, 7], 9, cfg.vocab_size, seed=1)
    g = torch.Generator().manual_seed(2)
    labels = torch.randint(0, 5, ids.shape, generator=g).masked_fill(mask == 0, -100)
    labels[0, 3] = labels[2, 1] = -100  # ignored real tokens too
    out = model(ids, attention_mask=mask, token_type_ids=tt, labels=labels)
    assert out.logits.shape == (3, 9, 5)
    ref_logits = model.classifier(_reference_hidden(model, ids, mask, tt))  # [B, S, 5]
    real = mask.bool()
    torch.testing.assert_close(out.logits[real], ref_logits[real], **TOL)
    # padding: the encoder output there is zero, so the logits are the classifier's bias
    torch.testing.assert_close(out.logits[~real], model.classifier.bias.expand(int((~real).sum()), -1))
    keep = labels != -100
    torch.testing.assert_close(out.loss, F.cross_entropy(ref_logits[keep], labels[keep]), **TOL)
    # a label on padding counts as in transformers (at the logits there: the bias)
    on_padding = labels.clone()
    on_padding[1, 6] = 2
    full = torch.where(real[..., None], ref_logits, model.classifier.bias)
    keep = on_padding != -100
    torch.testing.assert_close(model(ids, attention_mask=mask, token_type_ids=tt, labels=on_padding).loss,
                               F.cross_entropy(full[keep], on_padding[keep]), **TOL)
    with pytest.raises(ValueError, match="labels must have input_ids' shape"):
        model(ids, attention_mask=mask, labels=labels[:, :4])


def test_token_classification_gradients_match_reference():
    cfg = tiny_config(num_labels=3)
    model = randomize_(MosaicBertForTokenClassification(cfg)).train()  # dropout probabilities are 0 here
    ids, mask, tt = make_batch([6, 3], 6, cfg.vocab_size, seed=3)
    labels = torch.randint(0, 3, ids.shape, generator=torch.Generator().manual_seed(4)).masked_fill(mask == 0, -100)
    model(ids, attention_mask=mask, token_type_ids=tt, labels=labels).loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    ref_logits = model.classifier(reference_encoder(model.bert, ids, mask, tt))
    keep = labels != -100
    F.cross_entropy(ref_logits[keep], labels[keep]).backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, rtol=1e-4, atol=1e-6, msg=n)


def test_question_answering_matches_reference():
    cfg = tiny_config()  # num_labels = 2 (start, end)
    model = randomize_(MosaicBertForQuestionAnswering(cfg)).eval()
    S = 10
    ids, mask, tt = make_batch([10, 6, 8, 3], S, cfg.vocab_size, seed=5)
    start = torch.tensor([2, 0, 7, 40])  # 40: outside the sequence (a truncated answer) -> ignored
    end = torch.tensor([4, 5, 7, 41])
    out = model(ids, attention_mask=mask, token_type_ids=tt, start_positions=start, end_positions=end)
    assert out.start_logits.shape == out.end_logits.shape == (4, S)
    ref = model.qa_outputs(_reference_hidden(model, ids, mask, tt))  # [B, S, 2]
    real = mask.bool()
    torch.testing.assert_close(out.start_logits[real], ref[..., 0][real], **TOL)
    torch.testing.assert_close(out.end_logits[real], ref[..., 1][real], **TOL)
    torch.testing.assert_close(out.start_logits[~real], model.qa_outputs.bias[0].expand(int((~real).sum())))
    # transformers: softmax over all S positions (padding included, where the logits are the bias); positions
    # clamped to S, which is the ignore index; mean over the other examples
    full = torch.where(real[..., None], ref, model.qa_outputs.bias)
    start_loss = -(full[..., 0].log_softmax(-1)[torch.arange(3), start[:3]]).mean()
    end_loss = -(full[..., 1].log_softmax(-1)[torch.arange(3), end[:3]]).mean()
    torch.testing.assert_close(out.loss, (start_loss + end_loss) / 2, **TOL)
    # [B, 1] positions (as gathered on several GPUs) give the same loss
    again = model(ids, attention_mask=mask, token_type_ids=tt, start_positions=start[:, None],
                  end_positions=end[:, None])
    torch.testing.assert_close(again.loss, out.loss)
    assert model(ids, attention_mask=mask).loss is None
    with pytest.raises(ValueError, match="num_labels == 2"):
        MosaicBertForQuestionAnswering(tiny_config(num_labels=3))


def test_multiple_choice_matches_reference():
    cfg = tiny_config()
    model = randomize_(MosaicBertForMultipleChoice(cfg)).eval()
    B, C, S = 2, 3, 8
    ids, mask, tt = make_batch([8, 5, 2, 7, 8, 4], S, cfg.vocab_size, seed=6)  # B * C sequences
    labels = torch.tensor([2, 0])
    out = model(ids.view(B, C, S), attention_mask=mask.view(B, C, S), token_type_ids=tt.view(B, C, S),
                labels=labels)
    assert out.logits.shape == (B, C)
    hidden = _reference_hidden(model, ids, mask, tt)  # [B * C, S, hidden]
    pooled = torch.tanh(model.bert.pooler.dense(hidden[:, 0]))
    ref_logits = model.classifier(pooled).view(B, C)
    torch.testing.assert_close(out.logits, ref_logits, **TOL)
    torch.testing.assert_close(out.loss, F.cross_entropy(ref_logits, labels), **TOL)
    # host counts (one per sequence, B * C) change nothing
    counted = model(ids.view(B, C, S), attention_mask=mask.view(B, C, S), token_type_ids=tt.view(B, C, S),
                    sequence_lengths=mask.sum(1).tolist())
    torch.testing.assert_close(counted.logits, out.logits)
    # choices are independent sequences: one choice alone, unpadded, scores the same
    alone = model(ids[4:5, :8].view(1, 1, S), attention_mask=mask[4:5].view(1, 1, S),
                  token_type_ids=tt[4:5].view(1, 1, S))
    torch.testing.assert_close(alone.logits[0, 0], out.logits[1, 1], **TOL)
    with pytest.raises(ValueError, match="num_choices"):
        model(ids)


@pytest.mark.parametrize("head", [MosaicBertForTokenClassification, MosaicBertForQuestionAnswering,
                                  MosaicBertForMultipleChoice])
def test_head_compiled_forward_is_one_graph(head):
    """Each head calls the encoder's host step first: a compiled training forward is one graph."""
    import torch._dynamo

    torch._dynamo.reset()
    model = head(tiny_config()).train()
    ids, mask, tt = make_batch([7, 4], 7, 101, seed=7)
    if head is MosaicBertForTokenClassification:
        batch = dict(input_ids=ids, attention_mask=mask, labels=ids % 2)
    elif head is MosaicBertForQuestionAnswering:
        batch = dict(input_ids=ids, attention_mask=mask, start_positions=torch.tensor([1, 2]),
                     end_positions=torch.tensor([3, 3]))
    else:
        batch = dict(input_ids=ids.view(1, 2, 7), attention_mask=mask.view(1, 2, 7), labels=torch.tensor([1]))
    ex = torch._dynamo.explain(lambda **b: model(**b).loss)(**batch)
    assert ex.graph_count == 1, [r.reason for r in ex.break_reasons]
    assert ex.graph_break_count <= 1, [r.reason for r in ex.break_reasons]


HEAD_KEYS = {
    MosaicBertForTokenClassification: ["classifier.bias", "classifier.weight"],
    MosaicBertForQuestionAnswering: ["qa_outputs.bias", "qa_outputs.weight"],
    MosaicBertForMultipleChoice: ["bert.pooler.dense.bias", "bert.pooler.dense.weight", "classifier.bias",
                                  "classifier.weight"],
    MosaicBertForSequenceClassification: ["bert.pooler.dense.bias", "bert.pooler.dense.weight",
                                          "classifier.bias", "classifier.weight"],
}


@pytest.mark.parametrize("head", list(HEAD_KEYS))
def test_head_from_pretraining_checkpoint(head, tmp_path):
    """A pretraining (MLM) checkpoint loads into every head: the encoder weights land, the new head's keys are
    reported missing and the MLM head's unexpected; by load_mosaic_state_dict (Composer checkpoints) and by
    from_pretrained (exported folders)."""
    mlm = randomize_(MosaicBertForMaskedLM(tiny_config()))
    composer_sd = {"model." + k: v for k, v in mlm.state_dict().items()}
    model = head(tiny_config())
    missing, unexpected = load_mosaic_state_dict(model, composer_sd)
    assert sorted(missing) == HEAD_KEYS[head]
    assert unexpected and all(k.startswith("cls.") for k in unexpected)
    encoder = model.bert.state_dict()
    for k, v in mlm.bert.state_dict().items():
        assert torch.equal(encoder[k], v), k

    mlm.save_pretrained(tmp_path / "mlm")
    loaded, info = head.from_pretrained(tmp_path / "mlm", output_loading_info=True)
    assert sorted(info["missing_keys"]) == HEAD_KEYS[head]
    assert info["unexpected_keys"] and all(k.startswith("cls.") for k in info["unexpected_keys"])
    for k, v in mlm.bert.state_dict().items():
        assert torch.equal(loaded.bert.state_dict()[k], v), k


def test_bare_encoder_ignores_every_head_of_a_checkpoint():
    for head in HEAD_KEYS:
        sd = randomize_(head(tiny_config())).state_dict()
        missing, unexpected = load_mosaic_state_dict(MosaicBertModel(tiny_config()), sd)
        assert unexpected == [], head
        assert missing == ([] if "bert.pooler.dense.weight" in sd else ["pooler.dense.weight", "pooler.dense.bias"])


def _head_batch(head, ids, mask):
    """A labelled batch for `head` from ids / mask [2, S]."""
    if head is MosaicBertForMaskedLM:
        return dict(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(torch.rand(ids.shape) < 0.5, -100))
    if head is MosaicBertForTokenClassification:
        return dict(input_ids=ids, attention_mask=mask, labels=ids % 2)
    if head is MosaicBertForSequenceClassification:
        return dict(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 1]))
    if head is MosaicBertForQuestionAnswering:
        return dict(input_ids=ids, attention_mask=mask, start_positions=torch.tensor([1, 2]),
                    end_positions=torch.tensor([3, 3]))
    return dict(input_ids=ids.view(1, 2, -1), attention_mask=mask.view(1, 2, -1), labels=torch.tensor([1]))


@pytest.mark.parametrize("head", [MosaicBertForMaskedLM, *HEAD_KEYS])
def test_tuple_output_is_transformers_order(head):
    """return_dict=False: (loss, logits..., hidden_states), the absent ones left out, as in transformers."""
    torch.manual_seed(0)
    model = randomize_(head(tiny_config())).eval()
    ids, mask, _ = make_batch([7, 4], 7, 101, seed=8)
    batch = _head_batch(head, ids, mask)
    logit_fields = ("start_logits", "end_logits") if head is MosaicBertForQuestionAnswering else ("logits",)
    for labelled in (True, False):
        inputs = batch if labelled else {k: batch[k] for k in ("input_ids", "attention_mask")}
        ref = model(**inputs, output_hidden_states=True)
        assert (ref.loss is not None) == labelled
        for hidden in (True, False):
            want = (((ref.loss,) if labelled else ()) + tuple(getattr(ref, f) for f in logit_fields)
                    + ((ref.hidden_states,) if hidden else ()))
            got = model(**inputs, output_hidden_states=hidden, return_dict=False)
            assert isinstance(got, tuple) and len(got) == len(want)
            torch.testing.assert_close(got, want)
