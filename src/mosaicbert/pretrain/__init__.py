"""Pretraining (main.py): its config, MDS conversion, shard integrity, the MLM dataset and masking, the Trainer,
checkpoint resume and the run lock."""
