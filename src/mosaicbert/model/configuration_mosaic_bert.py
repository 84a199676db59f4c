"""MosaicBertConfig: BertConfig's field names plus the MosaicBERT knobs. Defaults = MosaicBERT-base (~137M)."""

from __future__ import annotations

try:  # transformers >= 5 spells it PreTrainedConfig; PretrainedConfig stays as an alias
    from transformers import PreTrainedConfig as _BaseConfig
except ImportError:  # pragma: no cover - transformers 4.x
    from transformers import PretrainedConfig as _BaseConfig

from .attention import check_backend_name

DROPOUT_KERNEL_NAMES = ("auto", "triton", "torch")


class MosaicBertConfig(_BaseConfig):
    """Configuration of a MosaicBERT model.

    Same fields as `BertConfig` (no `max_position_embeddings`: there are no position embeddings), plus
      alibi_starting_size: size of the ALiBi bias built up front; longer inputs grow it on the fly.
      attention_backend: "auto" | "flash_attn" | "sdpa" | "flex" | "torch" | "triton" (attention.VALID_BACKENDS).
      low_precision_layernorm: under autocast run LayerNorm in the autocast dtype instead of fp32.
      dropout_kernel: "auto" | "triton" | "torch": how hidden dropout draws its mask (see dropout.py); "auto" uses
        the Triton kernel on CUDA when triton is installed. Same semantics either way, different random streams.
      packed_length_multiple: 0 (default) = the encoder runs on exactly the T real tokens and the MLM head on the
        M masked ones. N > 1 = T and M are rounded up to multiples of N with dummy rows (up to N - 1 extra rows of
        work each), so that a compiled model sees few distinct shapes: what CUDA graphs (torch.compile
        mode="reduce-overhead") need, since they record one graph per shape. Same loss and gradients.
      sparse_last_layer: in MLM training (labels given) the last encoder layer computes attention for every
        token (keys and values need them all) but its output projection, LayerNorms and feed-forward only for the
        masked tokens, the only rows the MLM head reads (as the original MosaicBERT). Same loss and gradients;
        False = the dense last layer. Never applies without labels, to other heads or with output_hidden_states.
    """

    model_type = "mosaic_bert"

    def __init__(
        self,
        vocab_size: int = 30528,  # BERT's 30522 rounded up to a multiple of 64
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        intermediate_size: int = 3072,
        hidden_act: str = "gelu",
        hidden_dropout_prob: float = 0.1,
        attention_probs_dropout_prob: float = 0.0,
        type_vocab_size: int = 2,
        initializer_range: float = 0.02,
        layer_norm_eps: float = 1e-12,
        pad_token_id: int = 0,
        classifier_dropout: float | None = None,
        alibi_starting_size: int = 512,
        attention_backend: str = "auto",
        low_precision_layernorm: bool = True,
        dropout_kernel: str = "auto",
        packed_length_multiple: int = 0,
        sparse_last_layer: bool = True,
        tie_word_embeddings: bool = True,
        **kwargs,
    ):
        if hidden_size % num_attention_heads != 0:
            raise ValueError(
                f"hidden_size ({hidden_size}) must be divisible by num_attention_heads ({num_attention_heads})"
            )
        check_backend_name(attention_backend)
        if dropout_kernel not in DROPOUT_KERNEL_NAMES:
            raise ValueError(f"dropout_kernel={dropout_kernel!r} is not valid; "
                             f"choose one of {list(DROPOUT_KERNEL_NAMES)}")
        if isinstance(packed_length_multiple, bool) or not isinstance(packed_length_multiple, int) \
                or packed_length_multiple < 0:
            raise ValueError(f"packed_length_multiple must be an int >= 0 (0 = off), got {packed_length_multiple!r}")
        if not 0.0 <= attention_probs_dropout_prob < 1.0:
            raise ValueError(f"attention_probs_dropout_prob must be in [0, 1), got {attention_probs_dropout_prob}")
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.type_vocab_size = type_vocab_size
        self.initializer_range = initializer_range
        self.layer_norm_eps = layer_norm_eps
        self.pad_token_id = pad_token_id
        self.classifier_dropout = classifier_dropout
        self.alibi_starting_size = alibi_starting_size
        self.attention_backend = attention_backend
        self.low_precision_layernorm = low_precision_layernorm
        self.dropout_kernel = dropout_kernel
        self.packed_length_multiple = packed_length_multiple
        self.sparse_last_layer = bool(sparse_last_layer)
        self.tie_word_embeddings = tie_word_embeddings
        # A published MosaicBERT folder (mosaicml/mosaic-bert-base, ...) says model_type "bert" and maps its Auto
        # classes to the original code (bert_layers.py); loaded with these classes, the config is ours: keep only
        # our own auto_map entries, so that save_pretrained writes a folder that loads again.
        kwargs.pop("model_type", None)
        auto_map = kwargs.pop("auto_map", None)
        if auto_map:
            ours = {k: v for k, v in auto_map.items() if not isinstance(v, str) or ".MosaicBert" in v}
            if ours:
                kwargs["auto_map"] = ours
        super().__init__(pad_token_id=pad_token_id, tie_word_embeddings=tie_word_embeddings, **kwargs)
