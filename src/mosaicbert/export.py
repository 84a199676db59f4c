"""Export a Composer checkpoint written by main.py to a Hugging Face folder.

    python -m mosaicbert.export runs/base/ep0-ba1000-rank0.pt exported/mosaicbert-base

The folder holds the weights, config.json with `auto_map`, the model's own source files and the tokenizer files
stored in the checkpoint, so that

    AutoModelForMaskedLM.from_pretrained("exported/mosaicbert-base", trust_remote_code=True)

works with plain transformers (mosaicbert not installed). hf_bert checkpoints export to a regular BERT folder.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import torch


def _torch_load(path: str) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise RuntimeError(f"cannot read checkpoint {path}: {e}") from e


def read_composer_checkpoint(path: str) -> dict:
    """The `state` dict of a Composer checkpoint file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    ckpt = _torch_load(path)
    if not isinstance(ckpt, dict) or "state" not in ckpt or "model" not in ckpt["state"]:
        raise ValueError(f"{path} is not a Composer checkpoint (no state.model inside)")
    return ckpt["state"]


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Model weights from a Composer checkpoint file or a Hugging Face folder (safetensors or .bin)."""
    if os.path.isdir(path):
        st = os.path.join(path, "model.safetensors")
        if os.path.isfile(st):
            from safetensors.torch import load_file

            return load_file(st)
        binary = os.path.join(path, "pytorch_model.bin")
        if os.path.isfile(binary):
            return _torch_load(binary)
        raise FileNotFoundError(f"{path} holds neither model.safetensors nor pytorch_model.bin")
    return read_composer_checkpoint(path)["model"]


def looks_like_hub_id(name: str) -> bool:
    return (not name.startswith((".", "/", "~")) and name.count("/") <= 1 and not name.endswith((".pt", ".pth"))
            and not os.path.exists(name))


def read_weights(source: str) -> dict[str, torch.Tensor]:
    """Weights of a Composer checkpoint (main.py, a GLUE job), a Hugging Face folder or a hub model name, with
    Composer's `model.` prefix removed and old `gamma`/`beta` LayerNorm names renamed."""

    path = os.path.expanduser(source)
    if not os.path.exists(path) and looks_like_hub_id(source):
        try:
            from huggingface_hub import snapshot_download

            path = snapshot_download(source, allow_patterns=["*.safetensors", "pytorch_model.bin", "*.json"])
        except Exception as e:
            raise FileNotFoundError(f"model.pretrained_checkpoint {source!r} is not a local file or folder, and "
                                    f"downloading it from the Hugging Face hub failed: {e}") from e
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint not found: {source}")
    state = read_state_dict(path)
    out = {}
    for k, v in state.items():
        k = k.removeprefix("model.")
        # Old TF-converted BERT checkpoints (bert-base-uncased) name LayerNorm parameters gamma/beta.
        if "LayerNorm" in k and k.endswith(".gamma"):
            k = k[: -len("gamma")] + "weight"
        elif "LayerNorm" in k and k.endswith(".beta"):
            k = k[: -len("beta")] + "bias"
        out[k] = v
    return out


def export(checkpoint: str, out_dir: str) -> str:
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    from mosaicbert.model import MosaicBertConfig, MosaicBertForMaskedLM
    from mosaicbert.model.modeling_mosaic_bert import auto_map, load_mosaic_state_dict

    state = read_composer_checkpoint(checkpoint)
    meta = (state.get("integrations") or {}).get("huggingface")
    if not meta:
        raise ValueError(f"{checkpoint} has no Hugging Face metadata (was it written by main.py?)")
    config_dict = dict(meta["model"]["config"]["content"])
    model_type = config_dict.get("model_type")
    if model_type == MosaicBertConfig.model_type:
        config_dict.pop("auto_map", None)
        model = MosaicBertForMaskedLM(MosaicBertConfig.from_dict(config_dict))
        missing, unexpected = load_mosaic_state_dict(model, state["model"])
    elif model_type == "bert":
        model = BertForMaskedLM(BertConfig.from_dict(config_dict))
        weights = {k.removeprefix("model."): v for k, v in state["model"].items()}
        missing, unexpected = model.load_state_dict(weights, strict=False)
        missing = [k for k in missing if k != "cls.predictions.decoder.weight"]  # tied to the word embeddings
    else:
        raise ValueError(f"{checkpoint}: unsupported model_type {model_type!r}")
    if missing or unexpected:
        raise RuntimeError(f"{checkpoint}: weights do not match the model: missing {missing}, unexpected {unexpected}")

    os.makedirs(out_dir, exist_ok=True)
    if model_type == MosaicBertConfig.model_type:
        # save_pretrained maps only this class; the same files also serve the encoder and every task head
        model.config.auto_map = auto_map()
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
