"""CPU fp32 checks of MosaicBERT against a plain padded implementation written here, from the spec."""


import pytest
import torch
import torch.nn.functional as F
from helpers import make_batch, randomize_, reference_encoder, tiny_config

from mosaicbert import MosaicBertConfig, MosaicBertForMaskedLM, MosaicBertForSequenceClassification, MosaicBertModel
from mosaicbert.model import load_mosaic_state_dict
from mosaicbert.model.attention import ATTENTION_BACKENDS, AlibiCache, AttentionContext, resolve_backend
from mosaicbert.model.padding import get_unpad_info

CPU_BACKENDS = ["torch", "sdpa", "auto"]


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("heads,hidden", [(12, 96), (4, 64), (8, 64)])
def test_matches_reference(backend, heads, hidden):
    cfg = tiny_config(num_attention_heads=heads, hidden_size=hidden, attention_backend=backend)
    model = randomize_(MosaicBertModel(cfg)).eval()
    ids, mask, tt = make_batch([13, 5, 1, 9], 13, cfg.vocab_size)
    out = model(ids, attention_mask=mask, token_type_ids=tt).last_hidden_state
    with torch.no_grad():
        ref = reference_encoder(model, ids, mask, tt)
    real = mask.bool()
    assert rel_err(out[real], ref[real]) <= 1e-5
    assert torch.count_nonzero(out[~real]) == 0  # padding positions are zeros


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_padding_invariance(backend):
    cfg = tiny_config(attention_backend=backend)
    model = randomize_(MosaicBertModel(cfg)).eval()
    ids, mask, tt = make_batch([7, 20, 15], 20, cfg.vocab_size, seed=1)
    batched = model(ids, attention_mask=mask, token_type_ids=tt).last_hidden_state
    alone = model(ids[:1, :7], attention_mask=mask[:1, :7], token_type_ids=tt[:1, :7]).last_hidden_state
    torch.testing.assert_close(batched[0, :7], alone[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["torch", "sdpa"])
def test_extrapolation_beyond_alibi_starting_size(backend):
    cfg = tiny_config(alibi_starting_size=128, num_hidden_layers=1, attention_backend=backend)
    model = randomize_(MosaicBertModel(cfg)).eval()
    ids, mask, tt = make_batch([512, 300], 512, cfg.vocab_size, seed=2)
    out = model(ids, attention_mask=mask, token_type_ids=tt).last_hidden_state
    with torch.no_grad():
        ref = reference_encoder(model, ids, mask, tt)
    real = mask.bool()
    assert rel_err(out[real], ref[real]) <= 1e-5


def test_backends_agree_on_gradients():
    cfg = tiny_config()
    grads = {}
    for backend in ["torch", "sdpa"]:
        torch.manual_seed(0)
        model = randomize_(MosaicBertForMaskedLM(tiny_config(attention_backend=backend)))
        ids, mask, tt = make_batch([9, 4, 6], 9, cfg.vocab_size, seed=3)
        model(ids, attention_mask=mask, token_type_ids=tt).logits[mask.bool()].square().mean().backward()
        grads[backend] = {n: p.grad.clone() for n, p in model.named_parameters()}
    for n, g in grads["torch"].items():
        torch.testing.assert_close(grads["sdpa"][n], g, rtol=1e-4, atol=1e-5)


def test_masked_only_head_matches_full_head():
    cfg = tiny_config()
    model = randomize_(MosaicBertForMaskedLM(cfg))
    ids, mask, tt = make_batch([10, 6, 8], 10, cfg.vocab_size, seed=4)
    g = torch.Generator().manual_seed(5)
    labels = torch.where((torch.rand(ids.shape, generator=g) < 0.3) & mask.bool(), ids, torch.full_like(ids, -100))
    labels[0, 0] = 3  # at least one
    sel = labels != -100

    out = model(ids, attention_mask=mask, token_type_ids=tt, labels=labels)
    assert out.logits.shape == (int(sel.sum()), cfg.vocab_size)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    full = model(ids, attention_mask=mask, token_type_ids=tt).logits  # [B, S, V]
    assert full.shape == (3, 10, cfg.vocab_size)
    torch.testing.assert_close(out.logits, full[sel], rtol=1e-5, atol=1e-5)  # row-major order of labels != -100
    full_loss = F.cross_entropy(full[sel], labels[sel])
    torch.testing.assert_close(out.loss, full_loss, rtol=1e-6, atol=1e-6)
    full_loss.backward()
    for n, p in model.named_parameters():
        assert rel_err(grads[n], p.grad) < 1e-5, n
    # the training wrapper's accuracy (composer's MaskedAccuracy) is the same on the masked-only logits
    from composer.metrics.nlp import MaskedAccuracy

    on_full, on_masked = MaskedAccuracy(ignore_index=-100), MaskedAccuracy(ignore_index=-100)
    on_full.update(full.detach(), labels)
    on_masked.update(out.logits.detach(), labels[sel])
    expected = (full[sel].argmax(-1) == labels[sel]).float().mean()
    torch.testing.assert_close(on_masked.compute(), expected)
    torch.testing.assert_close(on_full.compute(), expected)


def test_tied_decoder_and_param_names():
    model = MosaicBertForMaskedLM(tiny_config())
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    names = set(model.state_dict())
    for n in [
        "bert.embeddings.word_embeddings.weight",
        "bert.embeddings.token_type_embeddings.weight",
        "bert.embeddings.LayerNorm.weight",
        "bert.encoder.layer.1.attention.self.Wqkv.weight",
        "bert.encoder.layer.1.attention.output.dense.bias",
        "bert.encoder.layer.1.attention.output.LayerNorm.weight",
        "bert.encoder.layer.1.mlp.gated_layers.weight",
        "bert.encoder.layer.1.mlp.wo.bias",
        "bert.encoder.layer.1.mlp.layernorm.weight",
        "cls.predictions.transform.dense.weight",
        "cls.predictions.transform.LayerNorm.bias",
        "cls.predictions.decoder.bias",
    ]:
        assert n in names, n
    assert "bert.encoder.layer.0.mlp.gated_layers.bias" not in names
    assert not any("position" in n or "pooler" in n for n in names)
    clf = MosaicBertForSequenceClassification(tiny_config(num_labels=3))
    assert {"bert.pooler.dense.weight", "classifier.weight", "classifier.bias"} <= set(clf.state_dict())


def test_init():
    model = MosaicBertForMaskedLM(tiny_config(hidden_size=256, intermediate_size=512, num_hidden_layers=1))
    w = model.bert.encoder.layer[0].mlp.gated_layers.weight
    assert abs(w.std().item() - 0.02) < 0.002
    assert torch.count_nonzero(model.bert.encoder.layer[0].attention.self.Wqkv.bias) == 0
    assert torch.count_nonzero(model.cls.predictions.decoder.bias) == 0
    ln = model.bert.encoder.layer[0].mlp.layernorm
    assert torch.all(ln.weight == 1) and torch.all(ln.bias == 0)


def test_sequence_classification_losses():
    ids, mask, tt = make_batch([6, 3], 6, 101, seed=6)
    reg = MosaicBertForSequenceClassification(tiny_config(num_labels=1)).eval()
    out = reg(ids, attention_mask=mask, labels=torch.tensor([0.5, -1.0]))
    assert out.logits.shape == (2, 1)
    torch.testing.assert_close(out.loss, F.mse_loss(out.logits.squeeze(-1), torch.tensor([0.5, -1.0])))
    clf = MosaicBertForSequenceClassification(tiny_config(num_labels=3)).eval()
    out = clf(ids, attention_mask=mask, labels=torch.tensor([2, 0]))
    assert out.logits.shape == (2, 3)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, torch.tensor([2, 0])))


def test_load_composer_state_dict():
    src = randomize_(MosaicBertForMaskedLM(tiny_config()))
    composer_sd = {"model." + k: v for k, v in src.state_dict().items()}
    dst = MosaicBertForMaskedLM(tiny_config())
    missing, unexpected = load_mosaic_state_dict(dst, composer_sd)
    assert missing == [] and unexpected == []
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k
    assert dst.cls.predictions.decoder.weight is dst.bert.embeddings.word_embeddings.weight

    # deduplicated checkpoint (no tied decoder weight) and old non-persistent buffers: still clean
    sd = {k: v for k, v in composer_sd.items() if k != "model.cls.predictions.decoder.weight"}
    sd["model.bert.encoder.alibi"] = torch.zeros(1)
    assert load_mosaic_state_dict(MosaicBertForMaskedLM(tiny_config()), sd) == ([], [])

    # a mismatch is reported, not swallowed
    sd = dict(composer_sd)
    sd.pop("model.bert.encoder.layer.0.mlp.wo.weight")
    sd["model.bert.encoder.layer.0.mlp.extra"] = torch.zeros(1)
    missing, unexpected = load_mosaic_state_dict(MosaicBertForMaskedLM(tiny_config()), sd)
    assert missing == ["bert.encoder.layer.0.mlp.wo.weight"]
    assert unexpected == ["bert.encoder.layer.0.mlp.extra"]
    with pytest.raises(RuntimeError):
        load_mosaic_state_dict(MosaicBertForMaskedLM(tiny_config()), sd, strict=True)

    # MLM checkpoint into a classifier: only the new head (pooler, classifier) is missing
    missing, unexpected = load_mosaic_state_dict(MosaicBertForSequenceClassification(tiny_config()), composer_sd)
    assert sorted(missing) == ["bert.pooler.dense.bias", "bert.pooler.dense.weight", "classifier.bias",
                               "classifier.weight"]
    assert all(k.startswith("cls.") for k in unexpected)


def test_bad_config_errors():
    with pytest.raises(ValueError, match="num_attention_heads"):
        MosaicBertConfig(hidden_size=64, num_attention_heads=5)
    with pytest.raises(ValueError, match="attention_backend"):
        MosaicBertConfig(attention_backend="xformers")
    cfg = tiny_config()
    cfg.attention_backend = "nope"  # set after validation: caught at model construction
    with pytest.raises(ValueError, match="attention_backend"):
        MosaicBertModel(cfg)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_out_of_range_token_ids(backend):
    cfg = tiny_config(attention_backend=backend)
    model = MosaicBertForMaskedLM(cfg)
    ids = torch.tensor([[1, 2, cfg.vocab_size]])
    with pytest.raises(ValueError, match="input_ids"):
        model(ids)
    with pytest.raises(ValueError, match="input_ids"):
        model(torch.tensor([[1, -1]]))
    with pytest.raises(ValueError, match="token_type_ids"):
        model(torch.tensor([[1, 2]]), token_type_ids=torch.tensor([[0, 2]]))


def test_base_param_count():
    with torch.device("meta"):
        model = MosaicBertForMaskedLM(MosaicBertConfig())
    n = sum(p.numel() for p in model.parameters())  # parameters() counts the tied decoder weight once
    assert abs(n - 137e6) <= 1e6, n


@pytest.mark.parametrize("backend", ["torch", "sdpa"])
@pytest.mark.slow
def test_attention_dropout_is_unbiased(backend):
    """With dropout, E[out] equals the no-dropout output (inverted dropout on the attention probabilities)."""
    torch.manual_seed(0)
    H, D = 2, 4  # 2 sequences of 6 tokens
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2])
    info = get_unpad_info(mask)
    ctx = AttentionContext(info, mask.bool(), AlibiCache(H, 8), H)
    qkv = torch.randn(int(mask.sum()), 3, H, D)
    attend = ATTENTION_BACKENDS[backend].attend
    clean = attend(qkv, ctx, 0.0)
    noisy = [attend(qkv, ctx, 0.5) for _ in range(1000)]
    assert not torch.allclose(noisy[0], clean)
    mean = torch.stack(noisy).mean(0)
    # sampling error ~3%; forgetting the 1/(1-p) rescale would give ~50%
    assert ((mean - clean).norm() / clean.norm()).item() < 0.1


def test_attention_dropout_in_model_train_mode():
    cfg = tiny_config(attention_probs_dropout_prob=0.3)
    model = randomize_(MosaicBertModel(cfg))
    ids, mask, tt = make_batch([8, 5], 8, cfg.vocab_size)
    model.train()
    a = model(ids, attention_mask=mask).last_hidden_state
    b = model(ids, attention_mask=mask).last_hidden_state
    assert not torch.allclose(a, b)
    model.eval()
    torch.testing.assert_close(model(ids, attention_mask=mask).last_hidden_state,
                               model(ids, attention_mask=mask).last_hidden_state)


def test_auto_backend_on_cpu_is_torch():
    assert resolve_backend("auto", torch.device("cpu"), torch.float32).name == "torch"
    assert resolve_backend("auto", torch.device("cpu"), torch.bfloat16).name == "torch"
    with pytest.raises(ValueError, match="attention_backend"):
        resolve_backend("bogus", torch.device("cpu"), torch.float32)


def test_auto_backend_on_cuda_prefers_triton_where_it_applies(monkeypatch):
    from mosaicbert.model import attention

    monkeypatch.setattr(attention, "HAS_FLASH_ATTN", False)
    monkeypatch.setattr(attention, "HAS_TRITON", True)
    monkeypatch.setattr(attention, "cuda_capability", lambda dev: (9, 0))
    cuda = torch.device("cuda")  # resolve_backend only chooses; nothing touches the device
    assert resolve_backend("auto", cuda, torch.bfloat16, head_dim=64).name == "triton"
    assert resolve_backend("auto", cuda, torch.float16, head_dim=128).name == "triton"
    # what the kernel does not do: attention dropout, odd head dims, fp32 (slow full-precision dots)
    assert resolve_backend("auto", cuda, torch.bfloat16, head_dim=64, attention_dropout=0.1).name == "sdpa"
    assert resolve_backend("auto", cuda, torch.bfloat16, head_dim=48).name == "sdpa"
    assert resolve_backend("auto", cuda, torch.float32, head_dim=64).name == "sdpa"
    monkeypatch.setattr(attention, "cuda_capability", lambda dev: (7, 5))  # pre-Ampere
    assert resolve_backend("auto", cuda, torch.float16, head_dim=64).name == "sdpa"
    monkeypatch.setattr(attention, "cuda_capability", lambda dev: (9, 0))
    monkeypatch.setattr(attention, "HAS_TRITON", False)
    assert resolve_backend("auto", cuda, torch.bfloat16, head_dim=64).name == "sdpa"


def test_auto_takes_the_first_fitting_backend_of_the_preference_order(monkeypatch):
    from mosaicbert.model import attention

    monkeypatch.setattr(attention, "HAS_FLASH_ATTN", True)  # both fast kernels "installed", on a Hopper
    monkeypatch.setattr(attention, "HAS_TRITON", True)
    monkeypatch.setattr(attention, "cuda_capability", lambda dev: (9, 0))
    cuda, bf16 = torch.device("cuda"), torch.bfloat16
    for order in [("flash_attn", "triton", "sdpa", "torch"), ("triton", "flash_attn", "sdpa", "torch"),
                  ("sdpa", "triton", "torch")]:
        monkeypatch.setattr(attention, "AUTO_PREFERENCE", order)
        assert resolve_backend("auto", cuda, bf16, head_dim=64).name == order[0]
    # with triton first, what it does not fit falls to the next backend that does
    monkeypatch.setattr(attention, "AUTO_PREFERENCE", ("triton", "flash_attn", "sdpa", "torch"))
    assert resolve_backend("auto", cuda, bf16, head_dim=64, attention_dropout=0.1).name == "flash_attn"
    assert resolve_backend("auto", cuda, bf16, head_dim=48).name == "flash_attn"
    assert resolve_backend("auto", cuda, bf16, head_dim=512).name == "sdpa"  # beyond flash-attn's 256
    assert resolve_backend("auto", cuda, torch.float32, head_dim=64).name == "sdpa"
    monkeypatch.setattr(attention, "cuda_capability", lambda dev: (7, 5))  # pre-Ampere: neither fast kernel
    assert resolve_backend("auto", cuda, bf16, head_dim=64).name == "sdpa"
    assert resolve_backend("auto", torch.device("cpu"), bf16, head_dim=64).name == "torch"
    # a new backend is one entry in the registry and one place in the order; its checks are honoured
    fake = attention.AttentionBackend("fake", attention.torch_attention, installed=lambda: True,
                                      usable=lambda dev, dt: dev.type == "cuda",
                                      fits=lambda head_dim, p: head_dim == 64 and p == 0.0)
    monkeypatch.setitem(attention.ATTENTION_BACKENDS, "fake", fake)
    monkeypatch.setattr(attention, "AUTO_PREFERENCE", ("fake", "sdpa", "torch"))
    assert resolve_backend("auto", cuda, bf16, head_dim=64).name == "fake"
    assert resolve_backend("auto", cuda, bf16, head_dim=128).name == "sdpa"
    assert resolve_backend("auto", cuda, bf16, head_dim=64, attention_dropout=0.1).name == "sdpa"
    assert resolve_backend("auto", torch.device("cpu"), bf16, head_dim=64).name == "torch"
    monkeypatch.setattr(attention, "AUTO_PREFERENCE", ("fake",))  # nothing fits: a clear error, not a None
    with pytest.raises(ValueError, match="no backend"):
        resolve_backend("auto", torch.device("cpu"), bf16, head_dim=64)


def test_shipped_order_takes_triton_then_flash_attn_for_dropout(monkeypatch):
    # the measured order (benchmarks/README.md, flash-attn): triton trains faster than flash_attn on an H200, and
    # flash_attn runs what the triton kernel does not (attention dropout, other head dims)
    from mosaicbert.model import attention

    monkeypatch.setattr(attention, "HAS_FLASH_ATTN", True)
    monkeypatch.setattr(attention, "HAS_TRITON", True)
    monkeypatch.setattr(attention, "cuda_capability", lambda dev: (9, 0))
    cuda, bf16 = torch.device("cuda"), torch.bfloat16
    assert resolve_backend("auto", cuda, bf16, head_dim=64).name == "triton"
    assert resolve_backend("auto", cuda, torch.float16, head_dim=128).name == "triton"
    assert resolve_backend("auto", cuda, bf16, head_dim=64, attention_dropout=0.1).name == "flash_attn"
    assert resolve_backend("auto", cuda, bf16, head_dim=48).name == "flash_attn"
    monkeypatch.setattr(attention, "FLASH_HEAD_DIMS", (64, 128))  # a restricted build: other head dims go to sdpa
    assert resolve_backend("auto", cuda, bf16, head_dim=48).name == "sdpa"
    assert resolve_backend("auto", cuda, bf16, head_dim=64, attention_dropout=0.1).name == "flash_attn"


def test_auto_preference_order_is_well_formed():
    from mosaicbert.model.attention import AUTO_PREFERENCE

    assert len(set(AUTO_PREFERENCE)) == len(AUTO_PREFERENCE)
    assert set(AUTO_PREFERENCE) <= set(ATTENTION_BACKENDS)
    last = ATTENTION_BACKENDS[AUTO_PREFERENCE[-1]]  # the fallback runs anything, so "auto" always resolves
    assert last.installed() and last.usable(torch.device("cpu"), torch.float32) and last.fits(None, 0.5)
    assert last.fits(96, 0.1)


@pytest.mark.parametrize("low_precision", [True, False])
def test_low_precision_layernorm(low_precision):
    cfg = tiny_config(low_precision_layernorm=low_precision)
    model = MosaicBertModel(cfg).eval()
    ln = model.encoder.layer[0].mlp.layernorm
    x = torch.randn(5, cfg.hidden_size)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = ln(x)
        out = model(torch.tensor([[1, 2, 3]])).last_hidden_state
    assert y.dtype == (torch.bfloat16 if low_precision else torch.float32)
    assert out.dtype == (torch.bfloat16 if low_precision else torch.float32)
    torch.testing.assert_close(y.float(), F.layer_norm(x, (cfg.hidden_size,), ln.weight, ln.bias, ln.eps),
                               rtol=2e-2, atol=2e-2)


def test_output_hidden_states():
    cfg = tiny_config()
    model = MosaicBertModel(cfg).eval()
    out = model(torch.tensor([[1, 2, 3]]), output_hidden_states=True)
    assert len(out.hidden_states) == cfg.num_hidden_layers + 1
    assert torch.equal(out.hidden_states[-1], out.last_hidden_state)
    assert out.pooler_output.shape == (1, cfg.hidden_size)


def test_masked_only_head_label_on_padding():
    """A label on a padding position sees the padded encoder output there (zeros), as the full head does."""
    cfg = tiny_config()
    model = randomize_(MosaicBertForMaskedLM(cfg))
    ids, mask, tt = make_batch([10, 6, 8], 10, cfg.vocab_size, seed=7)
    labels = torch.full_like(ids, -100)
    labels[0, 3], labels[1, 8], labels[2, 0], labels[2, 7] = 5, 6, 7, 8  # [1, 8] is padding
    sel = labels != -100
    out = model(ids, attention_mask=mask, token_type_ids=tt, labels=labels)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    full = model(ids, attention_mask=mask, token_type_ids=tt).logits
    torch.testing.assert_close(out.logits, full[sel], rtol=1e-5, atol=1e-5)
    F.cross_entropy(full[sel], labels[sel]).backward()
    for n, p in model.named_parameters():
        assert rel_err(grads[n], p.grad) < 1e-5, n


def test_masked_lm_without_any_label():
    cfg = tiny_config()
    model = randomize_(MosaicBertForMaskedLM(cfg))
    ids, mask, tt = make_batch([5, 3], 5, cfg.vocab_size)
    out = model(ids, attention_mask=mask, labels=torch.full_like(ids, -100))
    assert out.logits.shape == (0, cfg.vocab_size) and out.loss.item() == 0.0
    out.loss.backward()


def _mlm_batch(cfg, lengths, seqlen, seed):
    ids, mask, tt = make_batch(lengths, seqlen, cfg.vocab_size, seed=seed)
    g = torch.Generator().manual_seed(seed)
    labels = torch.where((torch.rand(ids.shape, generator=g) < 0.3) & mask.bool(), ids, torch.full_like(ids, -100))
    labels[0, 0] = 3
    return dict(input_ids=ids, attention_mask=mask, token_type_ids=tt, labels=labels)


@pytest.mark.parametrize("backend", ["torch", "sdpa"])
def test_compiled_training_forward_is_one_graph(backend, monkeypatch):
    """The data-dependent shapes (nonzero on mask and labels) are computed in one torch.compiler.disable'd
    function at the top of forward: the rest of the training forward (encoder, head, loss) is a single graph.
    Also on the first call of a process, when the backend choice is logged (a logging call is a graph break)."""
    import torch._dynamo

    from mosaicbert.model import attention

    monkeypatch.setattr(attention, "_logged", set())
    torch._dynamo.reset()
    cfg = tiny_config(attention_backend=backend)
    model = MosaicBertForMaskedLM(cfg).train()
    batch = _mlm_batch(cfg, [9, 4, 6], 9, seed=8)
    ex = torch._dynamo.explain(lambda **b: model(**b).loss)(**batch)
    assert ex.graph_count == 1, [r.reason for r in ex.break_reasons]
    # at most the disabled prepare call at the very top (torch versions count it differently)
    assert ex.graph_break_count <= 1, [r.reason for r in ex.break_reasons]


def _with_host_counts(batch):
    """The per-row host counts the MLM collator adds."""
    return dict(batch, sequence_lengths=batch["attention_mask"].sum(1).tolist(),
                label_counts=(batch["labels"] != -100).sum(1).tolist())


def test_host_counts_give_the_same_loss_and_gradients():
    """sequence_lengths / label_counts (the collator's host counts, which spare the GPU path its syncs) change
    nothing: same loss, logits and gradients as learning the counts from the tensors; also in the
    classification model and without labels."""
    import copy

    cfg = tiny_config()
    ref = randomize_(MosaicBertForMaskedLM(cfg)).train()
    fast = copy.deepcopy(ref)
    batch = _mlm_batch(cfg, [9, 4, 6], 9, seed=5)
    out_ref, out_fast = ref(**batch), fast(**_with_host_counts(batch))
    out_ref.loss.backward()
    out_fast.loss.backward()
    torch.testing.assert_close(out_fast.logits, out_ref.logits)
    torch.testing.assert_close(out_fast.loss, out_ref.loss)
    for (n, p1), (_, p2) in zip(ref.named_parameters(), fast.named_parameters()):
        torch.testing.assert_close(p2.grad, p1.grad, msg=n)
    no_labels = {k: v for k, v in batch.items() if k != "labels"}
    torch.testing.assert_close(fast(**no_labels, sequence_lengths=[9, 4, 6]).logits, ref(**no_labels).logits)
    classifier = randomize_(MosaicBertForSequenceClassification(tiny_config(num_labels=3))).eval()
    torch.testing.assert_close(classifier(**no_labels, sequence_lengths=[9, 4, 6]).logits,
                               classifier(**no_labels).logits)


def test_wrong_host_counts_are_clear_errors():
    cfg = tiny_config()
    model = MosaicBertForMaskedLM(cfg)
    batch = _with_host_counts(_mlm_batch(cfg, [9, 4, 6], 9, seed=5))
    with pytest.raises(ValueError, match=r"sum\(sequence_lengths\) = 18 disagrees"):
        model(**dict(batch, sequence_lengths=[9, 4, 5]))
    with pytest.raises(ValueError, match=r"sum\(label_counts\)"):
        model(**dict(batch, label_counts=[c + 1 for c in batch["label_counts"]]))
    with pytest.raises(ValueError, match="one count per row"):
        model(**dict(batch, sequence_lengths=[9, 4]))


def test_mismatched_shapes_are_clear_errors():
    cfg = tiny_config()
    model = MosaicBertForMaskedLM(cfg)
    ids = torch.randint(5, cfg.vocab_size, (2, 6))
    with pytest.raises(ValueError, match="labels must have input_ids' shape"):
        model(input_ids=ids, labels=ids[:, :5])
    with pytest.raises(ValueError, match="token_type_ids must have input_ids' shape"):
        model(input_ids=ids, token_type_ids=torch.zeros(2, 7, dtype=torch.long))


def test_alibi_matrix_built_only_for_backends_that_read_it():
    from mosaicbert.model.attention import ATTENTION_BACKENDS, AlibiCache
    from mosaicbert.model.modeling_mosaic_bert import _prepare_batch

    assert [n for n, b in ATTENTION_BACKENDS.items() if b.needs_alibi_matrix] == ["sdpa", "torch"]
    ids = torch.randint(5, 50, (2, 6))
    for needs, built in ((False, False), (True, True)):
        cache = AlibiCache(num_heads=4, starting_size=8)
        _prepare_batch(ids, None, torch.ones_like(ids), None, 50, 2, cache, with_alibi_matrix=needs)
        assert (cache._matrix is not None) == built and cache._slopes is not None


@pytest.mark.parametrize("host_counts", [False, True])
def test_compiled_matches_eager_across_batches(host_counts):
    """torch.compile (aot_eager: traces forward and backward like inductor, runs fast on CPU) over batches with
    different T and M gives the eager loss and gradients, and compiles once (T, M marked dynamic; the per-row
    host counts, lists of ints that change every batch, cause no recompile either)."""
    import copy

    import torch._dynamo
    import torch._dynamo.testing

    torch._dynamo.reset()
    cfg = tiny_config(attention_backend="sdpa")
    eager = randomize_(MosaicBertForMaskedLM(cfg)).train()
    compiled_model = copy.deepcopy(eager)
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(compiled_model, backend=counter)
    for seed, lengths in enumerate([[9, 4, 6], [9, 9, 2], [1, 5, 7]]):
        batch = _mlm_batch(cfg, lengths, 9, seed=10 + seed)
        if host_counts:
            batch = _with_host_counts(batch)
        l1 = eager(**batch).loss
        l1.backward()
        l2 = compiled(**batch).loss
        l2.backward()
        torch.testing.assert_close(l2, l1, rtol=1e-5, atol=1e-6)
        for (n, p1), (_, p2) in zip(eager.named_parameters(), compiled_model.named_parameters()):
            assert rel_err(p2.grad, p1.grad) < 1e-5, n
        eager.zero_grad()
        compiled_model.zero_grad()
    assert counter.frame_count == 1


def _assert_same_training_step(ref, other, batch):
    """Same loss and gradients (the logits may differ by trailing dummy rows)."""
    out_ref, out_other = ref(**batch), other(**batch)
    out_ref.loss.backward()
    out_other.loss.backward()
    torch.testing.assert_close(out_other.loss, out_ref.loss, rtol=1e-5, atol=1e-6)
    for (n, p1), (_, p2) in zip(ref.named_parameters(), other.named_parameters()):
        assert rel_err(p2.grad, p1.grad) < 1e-5, n
    return out_ref, out_other


@pytest.mark.parametrize("backend", ["torch", "sdpa"])
@pytest.mark.parametrize("host_counts", [False, True])
def test_packed_length_multiple_gives_the_same_loss_and_gradients(backend, host_counts):
    """packed_length_multiple rounds T and M up with dummy rows (fixed shapes for CUDA graphs): same loss and
    gradients, the real logits first, and T, M, cu_seqlens of the rounded sizes. A multiple larger than S
    (several dummy sequences) and one smaller; a label on padding too."""
    import copy

    cfg = tiny_config(attention_backend=backend, hidden_dropout_prob=0.0)
    batch = _mlm_batch(cfg, [9, 4, 6], 9, seed=12)
    batch["labels"][1, 7] = 4  # a label on a padding position
    if host_counts:
        batch = _with_host_counts(batch)
    num_labels = int((batch["labels"] != -100).sum())
    for multiple in (8, 20):
        ref = randomize_(MosaicBertForMaskedLM(cfg)).train()
        rounded = copy.deepcopy(ref)
        rounded.config.packed_length_multiple = multiple
        out_ref, out = _assert_same_training_step(ref, rounded, batch)
        assert out.logits.shape[0] % multiple == 0 and out.logits.shape[0] >= num_labels
        torch.testing.assert_close(out.logits[:num_labels], out_ref.logits, rtol=1e-5, atol=1e-5)


def test_packed_length_multiple_unpad_info():
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]])
    info = get_unpad_info(mask, length_multiple=16)  # T = 8 -> 16: 8 dummy rows in ceil(16 / 4) = 4 sequences
    assert info.indices.shape == (16,) and info.indices[8:].eq(0).all()
    assert info.valid_rows.tolist() == [True] * 8 + [False] * 8
    assert info.cu_seqlens.tolist() == [0, 3, 4, 8, 12, 16, 16, 16]  # 4 + 4 dummy tokens, then empty sequences
    assert info.max_seqlen == 4
    full = get_unpad_info(torch.ones(2, 4, dtype=torch.long), length_multiple=8)  # already a multiple
    assert full.indices.shape == (8,) and full.valid_rows.all() and full.cu_seqlens.tolist() == [0, 4, 8, 8, 8]
    assert get_unpad_info(mask).valid_rows is None


def test_packed_length_multiple_in_other_heads():
    """Classification and the bare encoder (padded outputs, hidden states) are unchanged by the dummy rows."""
    import copy

    ids, mask, tt = make_batch([7, 3, 5], 7, 101, seed=4)
    classifier = randomize_(MosaicBertForSequenceClassification(tiny_config(num_labels=3))).train()
    rounded = copy.deepcopy(classifier)
    rounded.config.packed_length_multiple = 4
    labels = torch.tensor([0, 2, 1])
    _assert_same_training_step(classifier, rounded, dict(input_ids=ids, attention_mask=mask, token_type_ids=tt,
                                                         labels=labels))
    encoder = randomize_(MosaicBertModel(tiny_config())).eval()
    out = encoder(ids, attention_mask=mask, token_type_ids=tt, output_hidden_states=True)
    encoder.config.packed_length_multiple = 6
    out_rounded = encoder(ids, attention_mask=mask, token_type_ids=tt, output_hidden_states=True)
    torch.testing.assert_close(out_rounded.last_hidden_state, out.last_hidden_state)
    for a, b in zip(out_rounded.hidden_states, out.hidden_states):
        torch.testing.assert_close(a, b)


def test_packed_length_multiple_compiles_once_per_rounded_shape():
    """Batches whose T and M round to the same multiples reuse one compiled graph with the same shapes, and
    match eager (aot_eager traces forward and backward as inductor does)."""
    import copy

    import torch._dynamo
    import torch._dynamo.testing

    torch._dynamo.reset()
    cfg = tiny_config(attention_backend="sdpa", packed_length_multiple=32)
    eager = randomize_(MosaicBertForMaskedLM(cfg)).train()
    compiled_model = copy.deepcopy(eager)
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(compiled_model, backend=counter)
    shapes = set()
    for seed, lengths in enumerate([[9, 4, 6], [9, 9, 2], [1, 5, 7]]):
        batch = _with_host_counts(_mlm_batch(cfg, lengths, 9, seed=20 + seed))
        _, out = _assert_same_training_step(eager, compiled, batch)
        shapes.add(tuple(out.logits.shape))
        eager.zero_grad()
        compiled_model.zero_grad()
    assert shapes == {(32, cfg.vocab_size)}
    assert counter.frame_count == 1


def _count_last_layer_rows(model):
    """The numbers of rows the last layer's feed-forward computes, one per forward (a forward hook)."""
    rows = []
    model.bert.encoder.layer[-1].mlp.register_forward_hook(lambda mod, args, out: rows.append(args[0].shape[0]))
    return rows


@pytest.mark.parametrize("case", ["plain", "host_counts", "label_on_padding", "packed_length_multiple", "no_label"])
def test_sparse_last_layer_gives_the_dense_loss_and_gradients(case):
    """sparse_last_layer: the last layer's output projection, LayerNorms and feed-forward run on the M labelled
    rows only; loss, logits and every gradient equal the dense last layer's."""
    import copy

    cfg = tiny_config(sparse_last_layer=False, packed_length_multiple=8 if case == "packed_length_multiple" else 0)
    batch = _mlm_batch(cfg, [9, 4, 6], 9, seed=30)
    if case in ("label_on_padding", "packed_length_multiple"):
        batch["labels"][1, 7] = 4  # a label on a padding position
    if case == "no_label":
        batch["labels"].fill_(-100)
    if case in ("host_counts", "packed_length_multiple"):
        batch = _with_host_counts(batch)
    dense = randomize_(MosaicBertForMaskedLM(cfg)).train()
    sparse = copy.deepcopy(dense)
    sparse.config.sparse_last_layer = True
    dense_rows, sparse_rows = _count_last_layer_rows(dense), _count_last_layer_rows(sparse)
    if case == "no_label":  # zero loss, zero gradients (rel_err would divide by zero)
        out_dense, out_sparse = dense(**batch), sparse(**batch)
        for model, out in ((dense, out_dense), (sparse, out_sparse)):
            out.loss.backward()
            assert out.loss.item() == 0.0 and all(torch.count_nonzero(p.grad) == 0 for p in model.parameters())
    else:
        out_dense, out_sparse = _assert_same_training_step(dense, sparse, batch)
    torch.testing.assert_close(out_sparse.logits, out_dense.logits, rtol=1e-5, atol=1e-5)
    num_labels = int((batch["labels"] != -100).sum())
    num_tokens = int(batch["attention_mask"].sum())
    if case == "packed_length_multiple":  # dummy rows up to multiples of 8
        num_labels, num_tokens = -(-num_labels // 8) * 8, -(-num_tokens // 8) * 8
    assert dense_rows == [num_tokens] and sparse_rows == [num_labels]
    assert out_sparse.logits.shape[0] == num_labels


def test_sparse_last_layer_only_where_the_head_reads_masked_rows():
    """Dense last layer without labels, with output_hidden_states, and in the classification model."""
    cfg = tiny_config()
    assert cfg.sparse_last_layer
    batch = _mlm_batch(cfg, [9, 4, 6], 9, seed=31)
    num_tokens = int(batch["attention_mask"].sum())
    model = randomize_(MosaicBertForMaskedLM(cfg)).train()
    rows = _count_last_layer_rows(model)
    model(**batch)
    model(**batch, output_hidden_states=True)
    model(**{k: v for k, v in batch.items() if k != "labels"})
    assert rows == [int((batch["labels"] != -100).sum()), num_tokens, num_tokens]
    classifier = randomize_(MosaicBertForSequenceClassification(tiny_config(num_labels=3)))
    rows = _count_last_layer_rows(classifier)
    classifier(batch["input_ids"], attention_mask=batch["attention_mask"], labels=torch.tensor([0, 1, 2]))
    assert rows == [num_tokens]


@pytest.mark.parametrize("sparse", [False, True])
def test_encoder_masked_tokens_mask(sparse):
    """MosaicBertModel(masked_tokens_mask=...) (a bool mask or MLM labels) returns the masked rows of the padded
    output in row-major order (zero rows on padding) and their flat positions."""
    cfg = tiny_config(sparse_last_layer=sparse)
    model = randomize_(MosaicBertModel(cfg, add_pooling_layer=False)).eval()
    ids, mask, tt = make_batch([8, 5, 7], 8, cfg.vocab_size, seed=32)
    masked = torch.zeros_like(mask, dtype=torch.bool)
    masked[0, [0, 5]] = masked[1, 2] = masked[1, 6] = masked[2, 7] = True  # [1, 6] and [2, 7] are padding
    padded = model(ids, attention_mask=mask, token_type_ids=tt).last_hidden_state
    labels = torch.where(masked, ids, torch.full_like(ids, -100))
    for m in (masked, labels):
        out = model(ids, attention_mask=mask, token_type_ids=tt, masked_tokens_mask=m)
        torch.testing.assert_close(out.last_hidden_state, padded[masked], rtol=1e-5, atol=1e-5)
        assert out.masked_positions.tolist() == torch.nonzero(masked.flatten()).flatten().tolist()
        assert torch.count_nonzero(out.last_hidden_state[[3, 4]]) == 0
        assert out.pooler_output is None
    with pytest.raises(ValueError, match="masked_tokens_mask must have input_ids' shape"):
        model(ids, masked_tokens_mask=masked[:, :5])
    # prepare_batch + forward(prepared=...) (how the heads call it) is the same forward
    prepared = model.prepare_batch(ids, mask, tt, masked_tokens_mask=masked)
    torch.testing.assert_close(model(ids, attention_mask=mask, token_type_ids=tt, prepared=prepared).last_hidden_state,
                               out.last_hidden_state)
    with pytest.raises(ValueError, match="pass masked_tokens_mask"):
        model(ids, attention_mask=mask, masked_tokens_mask=masked, prepared=prepared)


def test_flash_attn_head_dims_of_a_restricted_build(monkeypatch):
    """A flash-attn build that names its head dims (benchmarks/build_flash_attn.sh) is picked only for those."""
    from mosaicbert.model import attention

    monkeypatch.setattr(attention, "FLASH_HEAD_DIMS", None)  # pip's build: every head dim up to 256
    assert attention.flash_fits(64) and attention.flash_fits(256) and not attention.flash_fits(320)
    monkeypatch.setattr(attention, "FLASH_HEAD_DIMS", (64, 128))
    assert attention.flash_fits(64) and attention.flash_fits(128) and attention.flash_fits(None)
    assert not attention.flash_fits(32) and not attention.flash_fits(256)
    assert not attention.ATTENTION_BACKENDS["flash_attn"].fits(96, 0.0)


def test_output_attentions_is_refused_not_silently_none():
    model = MosaicBertModel(tiny_config()).eval()
    ids = torch.randint(5, 101, (2, 8))
    with pytest.raises(ValueError, match="output_attentions=True is not supported"):
        model(ids, attention_mask=torch.ones_like(ids), output_attentions=True)
    out = model(ids, attention_mask=torch.ones_like(ids), output_attentions=False)
    assert out.last_hidden_state.shape == (2, 8, 64)
