"""Export a Composer checkpoint written by main.py to a Hugging Face folder.

    python -m mosaicbert.export runs/base/ep0-ba1000-rank0.pt exported/mosaicbert-base

The folder holds the weights, config.json with `auto_map`, the model's own source files and the tokenizer files
stored in the checkpoint, so that

    AutoModelForMaskedLM.from_pretrained("exported/mosaicbert-base", trust_remote_code=True)

works with plain transformers (mosaicbert not installed). hf_bert checkpoints export to a regular BERT folder.
"""

from __future__ import annotations

import argparse
import os
import sys

from mosaicbert.core.checkpoint import load_weights, read_composer_checkpoint
from mosaicbert.core.tokenizer import write_tokenizer_files


def export(checkpoint: str, out_dir: str) -> str:
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    from mosaicbert.model import MosaicBertConfig, MosaicBertForMaskedLM
    from mosaicbert.model.modeling_mosaic_bert import auto_map

    state = read_composer_checkpoint(checkpoint)
    meta = (state.get("integrations") or {}).get("huggingface")
    if not meta:
        raise ValueError(f"{checkpoint} has no Hugging Face metadata (was it written by main.py?)")
    config_dict = dict(meta["model"]["config"]["content"])
    model_type = config_dict.get("model_type")
    if model_type == MosaicBertConfig.model_type:
        config_dict.pop("auto_map", None)
        model = MosaicBertForMaskedLM(MosaicBertConfig.from_dict(config_dict))
    elif model_type == "bert":
        model = BertForMaskedLM(BertConfig.from_dict(config_dict))
    else:
        raise ValueError(f"{checkpoint}: unsupported model_type {model_type!r}")
    report = load_weights(model, state["model"], name=checkpoint)
    if not report.complete:
        raise RuntimeError(f"{checkpoint}: weights do not match the model: missing {report.missing}, unexpected "
                           f"{report.unexpected}, shape mismatch {report.shape_mismatch}")

    os.makedirs(out_dir, exist_ok=True)
    if model_type == MosaicBertConfig.model_type:
        # save_pretrained maps only this class; the same files also serve the encoder and every task head
        model.config.auto_map = auto_map()
    model.save_pretrained(out_dir)
    tokenizer_files = (meta.get("tokenizer") or {})
    if tokenizer_files:
        write_tokenizer_files(tokenizer_files, out_dir)
        tokenizer = AutoTokenizer.from_pretrained(out_dir, trust_remote_code=True)  # fail here, not at first use
        if model_type == MosaicBertConfig.model_type:
            # ALiBi has no position table: the tokenizer's length limit (BERT's 512) would only warn falsely
            from transformers.tokenization_utils_base import VERY_LARGE_INTEGER

            tokenizer.model_max_length = VERY_LARGE_INTEGER
            tokenizer.save_pretrained(out_dir)
    return out_dir


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="Composer checkpoint file written by main.py (e.g. runs/x/latest-rank0.pt)")
    parser.add_argument("out_dir", help="folder to write the Hugging Face model into")
    args = parser.parse_args(argv)
    out = export(args.checkpoint, args.out_dir)
    print(f"exported {args.checkpoint} -> {out}\n"
          f"load with: AutoModelForMaskedLM.from_pretrained({out!r}, trust_remote_code=True)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
