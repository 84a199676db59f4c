"""Moved: the pretraining data code lives in mosaicbert.pretrain (convert, mlm, masking) and the tokenizer loader in
mosaicbert.core.tokenizer."""
