"""A trained `tokenizers` WordPiece model as a transformers fast tokenizer (used by tokenizer.py and by the built-in
corpus's tokenizer training)."""

from __future__ import annotations

from transformers import PreTrainedTokenizerFast


def wordpiece_to_fast(wp, lowercase: bool = True) -> PreTrainedTokenizerFast:
    """A `tokenizers.BertWordPieceTokenizer` as a transformers BertTokenizerFast with BERT's special tokens."""
    from transformers import BertTokenizerFast

    return BertTokenizerFast(
        tokenizer_object=wp._tokenizer,
        do_lower_case=lowercase,
        unk_token="[UNK]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        mask_token="[MASK]",
        model_max_length=512,
    )
