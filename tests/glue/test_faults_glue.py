"""Faults in GLUE runs: a label outside the task's set and a non-UTF-8 TSV name the file, line and value; a data_dir
holding none of the requested tasks and an eval_interval of zero are config errors, not a "GLUE average over 0
tasks"; a damaged start checkpoint stops the run before any job, naming the file and the tensor."""

from __future__ import annotations

import importlib.util
import struct
import zipfile
from pathlib import Path

import pytest

from mosaicbert.core.config import ConfigError
from mosaicbert.glue.config import load_glue_config
from mosaicbert.glue.data import GlueDataError, read_glue_tsv
from mosaicbert.glue.tasks import TASKS

ROOT = Path(__file__).resolve().parents[2]
HEADER = "index\tsentence1\tsentence2\tlabel\n"


def write_vocab(folder: Path) -> Path:
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + letters + [f"##{c}" for c in letters] + \
        [f"w{i}" for i in range(60)]
    (folder / "vocab.txt").write_text("\n".join(tokens) + "\n")
    return folder / "vocab.txt"


def overrides(tmp_path: Path, *extra: str) -> list[str]:
    return ["model.name=hf_bert", "model.pretrained_checkpoint=null", f"tokenizer={write_vocab(tmp_path)}",
            "model.config_overrides={hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, "
            "intermediate_size: 37}", "tasks_to_run=[rte, mrpc]", "device=cpu", "progress_bar=false",
            f"save_folder={tmp_path / 'run'}", *extra]


def glue_main():
    spec = importlib.util.spec_from_file_location("glue_script", ROOT / "glue.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_label_outside_the_tasks_set_names_line_value_and_labels(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text(HEADER + "0\ta\tb\tentailment\n1\tc\td\tmaybe\n")
    with pytest.raises(GlueDataError, match=rf"{path}:3: malformed RTE row: label 'maybe' is not one of the RTE "
                                            r"labels \['entailment', 'not_entailment'\]"):
        read_glue_tsv(str(path), TASKS["rte"])
    sst = tmp_path / "sst.tsv"
    sst.write_text("sentence\tlabel\nfine\t1\nodd\t2\n")
    with pytest.raises(GlueDataError, match=rf"{sst}:3: .*label '2' is not one of the SST-2 labels \['0', '1'\]"):
        read_glue_tsv(str(sst), TASKS["sst2"])
    sts = tmp_path / "sts.tsv"
    sts.write_text("index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
                   "0\tg\tf\ty\t0\ts\ts\ta\tb\tfive\n")
    with pytest.raises(GlueDataError, match=rf"{sts}:2: .*label 'five' is not a number"):
        read_glue_tsv(str(sts), TASKS["stsb"])


def test_latin1_tsv_names_file_line_and_encoding(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_bytes((HEADER + "0\ta\tb\tentailment\n1\tcaf\xe9\td\tentailment\n").encode("latin-1"))
    with pytest.raises(GlueDataError, match=rf"{path}:3: not UTF-8 text \(byte 0xe9 at column 6: invalid "
                                            r"continuation byte\); convert the file to UTF-8"):
        read_glue_tsv(str(path), TASKS["rte"])


def test_data_dir_without_any_requested_task_is_a_config_error(tmp_path, capsys):
    data = tmp_path / "glue"
    (data / "RTE").mkdir(parents=True)
    (data / "RTE" / "dev.tsv").write_text(HEADER)  # train.tsv missing
    main = glue_main()
    yaml = str(ROOT / "yamls" / "glue" / "base.yaml")
    assert main([yaml, *overrides(tmp_path, f"data_dir={data}")]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"config error: config key 'data_dir' = {str(data)!r} holds none of the requested tasks "
                           f"['rte', 'mrpc']: looked for rte: {data}/RTE/train.tsv; mrpc: {data}/MRPC/train.tsv, ")
    assert not (tmp_path / "run" / "results.json").exists()


@pytest.mark.parametrize("override", ["tasks.rte.eval_interval=0ba", "tasks.mrpc.eval_interval=0ep"])
def test_eval_interval_of_zero_is_a_config_error(tmp_path, override):
    with pytest.raises(ConfigError, match=rf"'{override.split('=')[0]}' = '0\w+' is zero"):
        load_glue_config(str(ROOT / "yamls" / "glue" / "base.yaml"), overrides(tmp_path, override))


def test_damaged_start_checkpoint_stops_before_any_job(tmp_path, capsys):
    import torch
    from transformers import BertConfig, BertForMaskedLM

    vocab = len(write_vocab(tmp_path).read_text().split())
    model = BertForMaskedLM(BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=37, max_position_embeddings=64))
    ckpt = tmp_path / "ep0-ba10-rank0.pt"
    torch.save({"state": {"model": {f"model.{k}": v for k, v in model.state_dict().items()}}}, ckpt)
    with zipfile.ZipFile(ckpt) as zf:  # the word-embedding storage: the only one of vocab x hidden floats
        (info,) = [i for i in zf.infolist() if i.file_size == vocab * 32 * 4]
    with open(ckpt, "r+b") as f:
        f.seek(info.header_offset + 26)
        start = info.header_offset + 30 + sum(struct.unpack("<HH", f.read(4))) + 512
        f.seek(start)
        data = f.read(64)
        f.seek(start)
        f.write(bytes(b ^ 0xFF for b in data))
    (tmp_path / "glue").mkdir()
    main = glue_main()
    yaml = str(ROOT / "yamls" / "glue" / "base.yaml")
    assert main([yaml, *overrides(tmp_path, f"model.pretrained_checkpoint={ckpt}", f"data_dir={tmp_path / 'glue'}")]) \
        == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"error: checkpoint {ckpt} is damaged: tensor ") and "word_embeddings.weight" in last
    assert not (tmp_path / "run").exists()
