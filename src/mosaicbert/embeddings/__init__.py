"""Sentence embeddings from the encoder: fast encoding (encode), contrastive finetuning (finetune.py task
embedding: train), STS-B and retrieval evaluation (python -m mosaicbert.embeddings.evaluate)."""
