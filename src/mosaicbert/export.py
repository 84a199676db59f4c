"""Export a Composer checkpoint written by main.py to a Hugging Face folder.

    python -m mosaicbert.export runs/base/ep0-ba1000-rank0.pt exported/mosaicbert-base

The folder holds the weights, config.json with `auto_map`, the model's own source files and the tokenizer files
stored in the checkpoint, so that

    AutoModelForMaskedLM.from_pretrained("exported/mosaicbert-base", trust_remote_code=True)

works with plain transformers (mosaicbert not installed). hf_bert checkpoints export to a regular BERT folder.
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
        for name, entry in tokenizer_files.items():
            content = entry["content"]
            path = os.path.join(out_dir, name)
            if isinstance(content, bytes):  # sentencepiece .model
                with open(path, "wb") as f:
                    f.write(content)
            elif isinstance(content, list):  # .txt files are stored as their lines
                with open(path, "w", encoding="utf-8") as f:
                    f.write("\n".join(content))
            elif isinstance(content, str):
                with open(path, "w", encoding="utf-8") as f:
                    f.write(content)
            else:
                with open(path, "w", encoding="utf-8") as f:
                    json.dump(content, f, indent=2)
        AutoTokenizer.from_pretrained(out_dir, trust_remote_code=True)  # fail here, not at the user's first load


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="Composer checkpoint file written by main.py (e.g. runs/x/latest-rank0.pt)")
    parser.add_argument("out_dir", help="folder to write the Hugging Face model into")
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
