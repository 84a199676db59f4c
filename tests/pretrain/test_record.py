"""The run record (config.yaml in the run folder): a command resumes only the run it describes."""

from __future__ import annotations

import pytest

from mosaicbert.core.config import ConfigError
from mosaicbert.pretrain.config import load_pretrain_config
from mosaicbert.pretrain.record import check_run_folder, differences, write_record


def _cfg(tmp_path, *overrides):
    return load_pretrain_config(None, [f"save_folder={tmp_path / 'run'}", "run_name=a", "data.local=/data/one",
                                       "tokenizer=builtin://python-docs", "autoresume=true", *overrides])


def test_same_run_resumes_and_a_changed_one_is_refused_naming_the_keys(tmp_path):
    cfg = _cfg(tmp_path)
    folder = str(tmp_path / "run")
    check_run_folder(cfg, folder)  # nothing recorded yet
    write_record(cfg, folder)
    check_run_folder(_cfg(tmp_path, "data.num_workers=3", "max_duration=10ba"), folder)  # same data and model
    with pytest.raises(ConfigError, match=r"holds run 'a' with other data\.local: '/data/one' -> '/data/two'.*"
                                          r"another run_name"):
        check_run_folder(_cfg(tmp_path, "data.local=/data/two"), folder)
    with pytest.raises(ConfigError, match=r"model\.config_overrides\.hidden_size: None -> 64"):
        check_run_folder(_cfg(tmp_path, "model.config_overrides.hidden_size=64"), folder)


def test_autoresume_false_over_checkpoints_is_refused_before_anything_is_touched(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "ep0-ba4-rank0.pt").write_bytes(b"x")
    (folder / "metrics.jsonl").write_text('{"batch": 4}\n')
    with pytest.raises(ConfigError, match="holds checkpoints of an earlier run and autoresume is false"):
        check_run_folder(_cfg(tmp_path, "autoresume=false"), str(folder))
    assert (folder / "metrics.jsonl").read_text() == '{"batch": 4}\n'
    check_run_folder(_cfg(tmp_path, "autoresume=false", "save_overwrite=true"), str(folder))


def test_differences_lists_only_identity_keys():
    a = {"tokenizer": "t", "data": {"local": "x", "num_workers": 1}, "model": {"name": "mosaic_bert"}}
    b = {"tokenizer": "u", "data": {"local": "x", "num_workers": 8}, "model": {"name": "mosaic_bert"}}
    assert differences(a, b) == ["tokenizer: 't' -> 'u'"]
    # the mixture of streams is the data too
    c = {**b, "data": {**b["data"], "streams": {"c4": {"local": "c4", "proportion": 0.8}}}}
    d = {**b, "data": {**b["data"], "streams": {"c4": {"local": "c4", "proportion": 0.5}}}}
    assert differences(c, d) == ["data.streams.c4.proportion: 0.8 -> 0.5"]
