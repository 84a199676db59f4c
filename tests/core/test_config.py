"""Config validation: every shipped YAML loads; bad keys, types and values are errors naming the key."""

from pathlib import Path

import pytest

from mosaicbert.core.config import ConfigError, to_yaml
from mosaicbert.pretrain.config import PretrainConfig, load_pretrain_config

ROOT = Path(__file__).resolve().parents[2]
PRETRAIN_YAMLS = sorted((ROOT / "yamls").glob("*.yaml"))


@pytest.mark.parametrize("path", PRETRAIN_YAMLS, ids=lambda p: p.name)
def test_shipped_yamls_validate(path):
    cfg = load_pretrain_config(str(path))
    assert isinstance(cfg, PretrainConfig)
    assert cfg.data.eval_mlm_probability == 0.15


def test_published_recipe_in_base_yaml():
    cfg = load_pretrain_config(str(ROOT / "yamls/base.yaml"))
    assert cfg.model.name == "mosaic_bert"
    assert cfg.data.max_seq_len == 128 and cfg.data.mlm_probability == 0.30
    assert cfg.global_train_batch_size == 4096 and cfg.max_duration == "286720000sp"
    assert cfg.optimizer.name == "decoupled_adamw" and cfg.optimizer.lr == 5e-4
    assert cfg.optimizer.betas == [0.9, 0.98] and cfg.optimizer.eps == 1e-6 and cfg.optimizer.weight_decay == 1e-5
    assert cfg.scheduler.t_warmup == "0.06dur" and cfg.scheduler.alpha_f == 0.02
    assert cfg.precision == "amp_bf16"
    hf = load_pretrain_config(str(ROOT / "yamls/hf-bert-base.yaml"))
    assert hf.model.name == "hf_bert" and hf.data.mlm_probability == 0.15


def test_override_applies():
    cfg = load_pretrain_config(str(ROOT / "yamls/quickstart.yaml"), ["optimizer.lr=1e-4", "data.local=/x/y"])
    assert cfg.optimizer.lr == 1e-4 and cfg.data.local == "/x/y"
    graphs = load_pretrain_config(str(ROOT / "yamls/quickstart.yaml"), [
        "compile=true", "compile_mode=reduce-overhead", "model.config_overrides.packed_length_multiple=1024"])
    assert graphs.compile_mode == "reduce-overhead"
    assert graphs.model.config_overrides["packed_length_multiple"] == 1024


@pytest.mark.parametrize(
    "override, expected",
    [
        (["optimizer.lrr=1e-4"], "command line: unknown config key 'optimizer.lrr': .*Did you mean: 'lr'"),
        (["max_duraton=10ba"], "unknown config key 'max_duraton': .*Did you mean: 'max_duration'"),
        (["data.mlm_probabilty=0.2"], "Did you mean one of: 'mlm_probability'"),
        (["callbacks.speed_monitor.windw_size=3"], "'callbacks.speed_monitor.windw_size'.*Did you mean: 'window_size'"),
        # no near miss: the valid keys are listed instead
        (["optimizer.zzzz=1"], "'optimizer.zzzz'.*Valid keys: name, lr, betas, eps, weight_decay, fused"),
    ],
)
def test_misspelled_key_names_key_and_suggestion(override, expected):
    with pytest.raises(ConfigError, match=expected):
        load_pretrain_config(str(ROOT / "yamls/quickstart.yaml"), override)


def test_misspelled_key_in_yaml_file(tmp_path):
    text = (ROOT / "yamls/quickstart.yaml").read_text().replace("max_seq_len:", "max_seq_length:")
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown config key 'data.max_seq_length': .*"
                                          r"Did you mean.*'max_seq_len'"):
        load_pretrain_config(str(path))


def test_scalar_for_a_section_names_the_key(tmp_path):
    """OmegaConf's merge error for this case names no key; the message still does."""
    path = tmp_path / "bad.yaml"
    path.write_text((ROOT / "yamls/quickstart.yaml").read_text().replace("speed_monitor: {window_size: 20}",
                                                                         "speed_monitor: 20"))
    with pytest.raises(ConfigError, match=r"bad.yaml: bad value for config key 'callbacks.speed_monitor': "):
        load_pretrain_config(str(path))
    with pytest.raises(ConfigError, match=r"command line: bad value for config key 'optimizer': "):
        load_pretrain_config(str(ROOT / "yamls/quickstart.yaml"), ["optimizer=3"])


@pytest.mark.parametrize(
    "override, expected",
    [
        # types (OmegaConf)
        (["optimizer.lr=fast"], "bad value for config key 'optimizer.lr': Value 'fast' of type 'str'"),
        (["global_train_batch_size=big"], "bad value for config key 'global_train_batch_size'"),
        # closed sets (Enum fields): the valid values are listed, the nearest one suggested
        (["model.name=roberta"], r"'model.name': Invalid value 'roberta', expected one of \[mosaic_bert, hf_bert\]"),
        (["precision=bf16"], r"expected one of \[fp32, amp_bf16, amp_fp16\]. Did you mean: 'amp_bf16'"),
        (["optimizer.name=adam"], "'optimizer.name'.*decoupled_adamw, adamw"),
        (["scheduler.name=linear"], "'scheduler.name'.*linear_decay_with_warmup"),
        (["algorithms.gradient_clipping.clipping_type=nrm"], "'algorithms.gradient_clipping.clipping_type'.*'norm'"),
        (["compile=true", "compile_mode=reduce_overhead"], "Did you mean: 'reduce-overhead'"),
        # ranges
        (["optimizer.lr=0"], "'optimizer.lr' must be a finite number > 0, got 0.0"),
        (["optimizer.lr=-1e-4"], "'optimizer.lr' must be a finite number > 0"),
        (["optimizer.lr=inf"], "'optimizer.lr' must be a finite number > 0, got inf"),
        (["optimizer.betas=[0.9]"], r"'optimizer.betas' must be two values in \[0, 1\)"),
        (["optimizer.betas=[0.9,1.0]"], r"'optimizer.betas' must be two values in \[0, 1\), got \[0.9, 1.0\]"),
        (["optimizer.betas=[-0.1,0.9]"], "'optimizer.betas' must be two values"),
        (["scheduler.t_warmup=1.0dur"], r"'scheduler.t_warmup' must be a fraction of training in \[0, 1\)"),
        (["data.mlm_probability=1.5"], "'data.mlm_probability' must be between 0 and 1"),
        (["data.mlm_probability=0"], "'data.mlm_probability' must be between 0 and 1"),
        (["data.eval_mlm_probability=1"], "'data.eval_mlm_probability' must be between 0 and 1"),
        (["seed=-1"], "'seed' must be >= 0"),
        (["data.max_seq_len=2"], "data.max_seq_len"),
        (["device_train_microbatch_size=-3"], "device_train_microbatch_size"),
        # durations
        (["eval_interval=banana"], "'eval_interval' = 'banana' is not a duration"),
        (["max_duration=10min"], "'max_duration'"),
        (["scheduler.t_warmup=soon"], "scheduler.t_warmup"),
        # rules between fields
        (["compile=false", "compile_mode=max-autotune"], "needs compile: true"),
        (["compile=true", "compile_mode=reduce-overhead"], "packed_length_multiple"),
        (["max_train_time=5min", "scheduler.t_warmup=100ba"], "'max_train_time' needs .*0.06dur"),
        (["max_train_time=5min", "scheduler.name=cosine_with_warmup"], "'max_train_time' needs"),
        (["max_train_time=soon"], "'max_train_time' = 'soon'"),
        (["data.local=null"], "'data.local' is not set"),
        (["data.packing=true", "model.name=hf_bert"], "'data.packing' = true needs model.name=mosaic_bert: hf_bert"),
    ],
)
def test_bad_values_name_the_key(override, expected):
    with pytest.raises(ConfigError, match=expected):
        load_pretrain_config(str(ROOT / "yamls/quickstart.yaml"), override)


def test_closed_sets_are_plain_strings_downstream():
    """Enum fields compare, print and serialise as their value (Composer and json get 'amp_bf16')."""
    import json

    cfg = load_pretrain_config(str(ROOT / "yamls/quickstart.yaml"), ["device=cpu"])
    assert cfg.precision == "amp_bf16" and f"{cfg.precision}" == "amp_bf16" and cfg.device == "cpu"
    assert json.dumps({"p": cfg.precision}) == '{"p": "amp_bf16"}'
    assert "precision: amp_bf16" in to_yaml(cfg)


def test_to_yaml_round_trips(tmp_path):
    cfg = load_pretrain_config(str(ROOT / "yamls/quickstart.yaml"), [
        "compile=true", "compile_mode=max-autotune", "algorithms.gradient_clipping.clipping_type=value"])
    path = tmp_path / "dumped.yaml"
    path.write_text(to_yaml(cfg))
    assert "compile_mode: max-autotune" in path.read_text()
    assert load_pretrain_config(str(path)) == cfg


def test_malformed_override_and_missing_file():
    with pytest.raises(ConfigError, match="key=value"):
        load_pretrain_config(str(ROOT / "yamls/quickstart.yaml"), ["optimizer.lr"])
    with pytest.raises(ConfigError, match="config file not found"):
        load_pretrain_config("yamls/nope.yaml")


def test_model_config_overrides_are_checked():
    from transformers import AutoTokenizer  # noqa: F401  (builders import transformers anyway)

    from mosaicbert.core.config import ModelConfig
    from mosaicbert.core.trainer import build_hf_config

    with pytest.raises(ConfigError, match=r"model.config_overrides.hiden_size': did you mean 'hidden_size'"):
        build_hf_config(ModelConfig(name="mosaic_bert", config_overrides={"hiden_size": 64}))
    cfg = build_hf_config(ModelConfig(name="hf_bert", config_overrides={"hidden_size": 64, "num_attention_heads": 2}))
    assert cfg.vocab_size == 30528 and cfg.attention_probs_dropout_prob == 0.1 and cfg.hidden_size == 64


def test_fsdp_keys_are_checked():
    from mosaicbert.pretrain.trainer import build_fsdp

    assert build_fsdp({"sharding_strategy": "FULL_SHARD"})["fsdp"].reshard_after_forward is True
    with pytest.raises(ConfigError, match="did you mean 'sharding_strategy'"):
        build_fsdp({"sharding_stratgy": "FULL_SHARD"})
