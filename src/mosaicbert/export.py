"""Export a Composer checkpoint written by main.py to a Hugging Face folder.

    python -m mosaicbert.export runs/base/ep0-ba1000-rank0.pt exported/mosaicbert-base

The folder holds the weights, config.json with `auto_map`, the model's own source files and the tokenizer files
stored in the checkpoint, so that

    AutoModelForMaskedLM.from_pretrained("exported/mosaicbert-base", trust_remote_code=True)

works with plain transformers (mosaicbert not installed). hf_bert checkpoints export to a regular BERT folder.

With --sentence-transformers the folder also loads as a sentence embedding model, again without mosaicbert:

    SentenceTransformer("exported/mosaicbert-base", trust_remote_code=True)

(the encoder -> mean pooling, or --pooling cls -> L2 normalisation).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import uuid
from typing import Iterator

from mosaicbert.core.checkpoint import CheckpointError, load_weights, read_composer_checkpoint
from mosaicbert.core.tokenizer import write_tokenizer_files


class ExportError(ValueError):
    """An export that cannot go ahead (destination in the way, checkpoint of another kind), naming the fix."""


def check_destination(out_dir: str, overwrite: bool) -> None:
    """Refuse a destination that is a file, or a non-empty folder unless `overwrite`."""
    if os.path.isfile(out_dir) or (os.path.exists(out_dir) and not os.path.isdir(out_dir)):
        raise ExportError(f"destination {out_dir} is a file, not a folder: give a folder path for the Hugging Face "
                          f"model (it is created)")
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not overwrite:
        raise ExportError(f"destination {out_dir} is not empty ({', '.join(sorted(os.listdir(out_dir))[:5])}"
                          f"{', ...' if len(os.listdir(out_dir)) > 5 else ''}): give a new folder, or pass --overwrite "
                          f"to replace the folder and everything in it")


@contextlib.contextmanager
def replacing(out_dir: str) -> Iterator[str]:
    """Yield a temporary sibling of `out_dir` to build in; on success it takes `out_dir`'s place (a folder that was
    there is removed only after the swap), on failure it is removed and `out_dir` is untouched."""
    out_dir = os.path.abspath(out_dir)
    parent, name = os.path.dirname(out_dir), os.path.basename(out_dir)
    os.makedirs(parent, exist_ok=True)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp, old = os.path.join(parent, f".{name}.export-{tag}"), os.path.join(parent, f".{name}.replaced-{tag}")
    os.makedirs(tmp)
    try:
        yield tmp
        if not os.path.isdir(out_dir):
            os.rename(tmp, out_dir)
            return
        os.rename(out_dir, old)
        try:
            os.rename(tmp, out_dir)
        except BaseException:
            os.rename(old, out_dir)
            raise
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def export(checkpoint: str, out_dir: str, overwrite: bool = False) -> str:
    """Export `checkpoint` into the folder `out_dir`; a non-empty `out_dir` is refused unless `overwrite`, and is
    then replaced only once the new folder is complete."""
    check_destination(out_dir, overwrite)
    from transformers import BertConfig, BertForMaskedLM

    from mosaicbert.model import MosaicBertConfig, MosaicBertForMaskedLM
    from mosaicbert.model.modeling_mosaic_bert import auto_map

    if os.path.isdir(checkpoint) and os.path.isfile(os.path.join(checkpoint, "config.json")):
        raise ExportError(f"{checkpoint} is a Hugging Face folder (already exported?): it loads with from_pretrained "
                          f"as it is; export takes the Composer .pt file main.py wrote (e.g. "
                          f"runs/<run>/latest-rank0.pt)")
    state = read_composer_checkpoint(checkpoint)
    meta = (state.get("integrations") or {}).get("huggingface")
    if not meta:
        raise ExportError(f"{checkpoint} has no Hugging Face metadata (state.integrations.huggingface): export takes "
                          f"checkpoints written by main.py")
    config_dict = dict(meta["model"]["config"]["content"])
    model_type = config_dict.get("model_type")
    if model_type == MosaicBertConfig.model_type:
        config_dict.pop("auto_map", None)
        model = MosaicBertForMaskedLM(MosaicBertConfig.from_dict(config_dict))
    elif model_type == "bert":
        model = BertForMaskedLM(BertConfig.from_dict(config_dict))
    else:
        raise ExportError(f"{checkpoint}: unsupported model_type {model_type!r} (export writes mosaic_bert and bert)")
    report = load_weights(model, state["model"], name=checkpoint)
    if not report.complete:
        raise ExportError(f"{checkpoint}: weights do not match the model: missing {report.missing}, unexpected "
                          f"{report.unexpected}, shape mismatch {report.shape_mismatch}")
    with replacing(out_dir) as tmp:
        _write(model, meta, tmp, auto_map() if model_type == MosaicBertConfig.model_type else None)
    return out_dir


def _write(model, meta: dict, out_dir: str, auto_map) -> None:
    """The model (with `auto_map` for remote code, when given) and the checkpoint's tokenizer files."""
    from transformers import AutoTokenizer

    if auto_map is not None:
        # save_pretrained maps only this class; the same files also serve the encoder and every task head
        model.config.auto_map = auto_map
    model.save_pretrained(out_dir)
    tokenizer_files = (meta.get("tokenizer") or {})
    if tokenizer_files:
        write_tokenizer_files(tokenizer_files, out_dir)
        tokenizer = AutoTokenizer.from_pretrained(out_dir, trust_remote_code=True)  # fail here, not at first use
        if auto_map is not None:
            # ALiBi has no position table: the tokenizer's length limit (BERT's 512) would only warn falsely
            from transformers.tokenization_utils_base import VERY_LARGE_INTEGER

            tokenizer.model_max_length = VERY_LARGE_INTEGER
            tokenizer.save_pretrained(out_dir)


# ---------------------------------------------------------------------------------------------------------------
# sentence-transformers files
# ---------------------------------------------------------------------------------------------------------------

POOLINGS = ("mean", "cls")
# The module type names every sentence-transformers release resolves (2.x to 6.x: newer releases map these
# names onto their moved classes), so the folder loads with whichever version a user has.
ST_MODULES = [
    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
]


def check_pooling(pooling: str) -> str:
    if pooling not in POOLINGS:
        raise ValueError(f"pooling {pooling!r} is not one of {list(POOLINGS)}")
    return pooling


def _write_json(path: str, obj) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def write_sentence_transformers_files(folder: str, pooling: str = "mean", max_seq_length: int = 512) -> str:
    """Add modules.json, sentence_bert_config.json, config_sentence_transformers.json, 1_Pooling/config.json and
    2_Normalize/ to a Hugging Face folder holding config.json (the embedding size comes from it). Returns folder."""
    check_pooling(pooling)
    if max_seq_length < 1:
        raise ValueError(f"max_seq_length must be >= 1, got {max_seq_length}")
    config_path = os.path.join(folder, "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{config_path} not found: save the model to {folder} first")
    with open(config_path) as f:
        hidden_size = json.load(f).get("hidden_size")
    if not isinstance(hidden_size, int):
        raise ValueError(f"{config_path}: no integer 'hidden_size'")
    _write_json(os.path.join(folder, "modules.json"), ST_MODULES)
    # add_pooling_layer False: the encoder's [CLS] pooler (absent from MLM exports) is not part of the embedding
    _write_json(os.path.join(folder, "sentence_bert_config.json"), {
        "max_seq_length": int(max_seq_length), "do_lower_case": False, "model_args": {"add_pooling_layer": False}})
    _write_json(os.path.join(folder, "config_sentence_transformers.json"),
                {"prompts": {}, "default_prompt_name": None, "similarity_fn_name": "cosine"})
    os.makedirs(os.path.join(folder, "1_Pooling"), exist_ok=True)
    _write_json(os.path.join(folder, "1_Pooling", "config.json"), {
        "word_embedding_dimension": hidden_size,
        "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean",
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": False,
        "include_prompt": True,
    })
    os.makedirs(os.path.join(folder, "2_Normalize"), exist_ok=True)
    return folder


def read_sentence_transformers_settings(folder: str) -> dict:
    """{"pooling", "max_seq_length", "normalize"} of a folder written by write_sentence_transformers_files; a plain
    Hugging Face folder gets the defaults (mean pooling, 512 tokens, normalised)."""
    settings = {"pooling": "mean", "max_seq_length": 512, "normalize": True}
    pooling_path = os.path.join(folder, "1_Pooling", "config.json")
    if os.path.isfile(pooling_path):
        with open(pooling_path) as f:
            cfg = json.load(f)
        modes = [m for m, key in (("mean", "pooling_mode_mean_tokens"), ("cls", "pooling_mode_cls_token"))
                 if cfg.get(key)]
        others = [k for k, v in cfg.items() if k.startswith("pooling_mode_") and v and k not in
                  ("pooling_mode_mean_tokens", "pooling_mode_cls_token")]
        if len(modes) != 1 or others:
            raise ValueError(f"{pooling_path}: only mean or [CLS] pooling (one of them) is supported here")
        settings["pooling"] = modes[0]
    config_path = os.path.join(folder, "sentence_bert_config.json")
    if os.path.isfile(config_path):
        with open(config_path) as f:
            settings["max_seq_length"] = int(json.load(f).get("max_seq_length") or 512)
    modules_path = os.path.join(folder, "modules.json")
    if os.path.isfile(modules_path):
        with open(modules_path) as f:
            settings["normalize"] = any(m.get("type", "").endswith("Normalize") for m in json.load(f))
    return settings


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="Composer checkpoint file written by main.py (e.g. runs/x/latest-rank0.pt)")
    parser.add_argument("out_dir", help="folder to write the Hugging Face model into")
    parser.add_argument("--sentence-transformers", action="store_true",
                        help="also write the sentence-transformers files (pooling, normalisation)")
    parser.add_argument("--pooling", choices=POOLINGS, default="mean",
                        help="sentence embedding pooling with --sentence-transformers (default: mean)")
    parser.add_argument("--max-seq-length", type=int, default=512,
                        help="sentence-transformers truncation length in tokens (default: 512)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a non-empty out_dir (the new folder is built beside it and swapped in when "
                             "complete)")
    args = parser.parse_args(argv)
    try:
        out = export(args.checkpoint, args.out_dir, overwrite=args.overwrite)
    except (ExportError, CheckpointError) as e:  # known causes: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"exported {args.checkpoint} -> {out}\n"
          f"load with: AutoModelForMaskedLM.from_pretrained({out!r}, trust_remote_code=True)")
    if args.sentence_transformers:
        write_sentence_transformers_files(out, args.pooling, args.max_seq_length)
        print(f"sentence embeddings: SentenceTransformer({out!r}, trust_remote_code=True)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
