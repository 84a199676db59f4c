"""Config validation: every shipped YAML loads; bad keys, types and values are errors naming the key."""

from pathlib import Path

import pytest

from mosaicbert.config import ConfigError, PretrainConfig, load_pretrain_config

ROOT = Path(__file__).resolve().parents[1]
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
        (["optimizer.lrr=1e-4"], "unknown config key 'optimizer.lrr': did you mean 'lr'"),
        (["max_duraton=10ba"], "unknown config key 'max_duraton': did you mean 'max_duration'"),
        (["data.mlm_probabilty=0.2"], "did you mean 'mlm_probability'"),
        (["callbacks.speed_monitor.windw_size=3"], "'callbacks.speed_monitor.windw_size'"),
    ],
)
def test_misspelled_key_names_key_and_suggestion(override, expected):
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(")):
        load_pretrain_config(str(ROOT / "yamls/quickstart.yaml"), override)


def test_misspelled_key_in_yaml_file(tmp_path):
    text = (ROOT / "yamls/quickstart.yaml").read_text().replace("max_seq_len:", "max_seq_length:")
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown config key 'data.max_seq_length': did you mean 'max_seq_len'"):
        load_pretrain_config(str(path))


@pytest.mark.parametrize(
    "override, expected",
    [
        (["optimizer.lr=fast"], "optimizer.lr"),
        (["global_train_batch_size=big"], "global_train_batch_size"),
        (["model.name=roberta"], "model.name"),
        (["precision=bf16"], "did you mean 'amp_bf16'"),
        (["data.mlm_probability=1.5"], "data.mlm_probability"),
        (["device_train_microbatch_size=-3"], "device_train_microbatch_size"),
        (["optimizer.betas=[0.9]"], "optimizer.betas"),
        (["eval_interval=banana"], "'eval_interval' = 'banana' is not a duration"),
        (["max_duration=10min"], "'max_duration'"),
        (["scheduler.t_warmup=soon"], "scheduler.t_warmup"),
        (["seed=-1"], "'seed' must be >= 0"),
        (["data.max_seq_len=2"], "data.max_seq_len"),
        (["compile=true", "compile_mode=reduce_overhead"], "did you mean 'reduce-overhead'"),
        (["compile=false", "compile_mode=max-autotune"], "needs compile: true"),
        (["compile=true", "compile_mode=reduce-overhead"], "packed_length_multiple"),
    ],
)
def test_bad_values_name_the_key(override, expected):
    with pytest.raises(ConfigError, match=expected):
        load_pretrain_config(str(ROOT / "yamls/quickstart.yaml"), override)


def test_malformed_override_and_missing_file():
    with pytest.raises(ConfigError, match="key=value"):
        load_pretrain_config(str(ROOT / "yamls/quickstart.yaml"), ["optimizer.lr"])
    with pytest.raises(ConfigError, match="config file not found"):
        load_pretrain_config("yamls/nope.yaml")


def test_model_config_overrides_are_checked():
    from transformers import AutoTokenizer  # noqa: F401  (builders import transformers anyway)

    from mosaicbert.builders import build_hf_config
    from mosaicbert.config import ModelConfig

    with pytest.raises(ConfigError, match=r"model.config_overrides.hiden_size': did you mean 'hidden_size'"):
        build_hf_config(ModelConfig(name="mosaic_bert", config_overrides={"hiden_size": 64}))
    cfg = build_hf_config(ModelConfig(name="hf_bert", config_overrides={"hidden_size": 64, "num_attention_heads": 2}))
    assert cfg.vocab_size == 30528 and cfg.attention_probs_dropout_prob == 0.1 and cfg.hidden_size == 64


def test_fsdp_keys_are_checked():
    from mosaicbert.builders import build_fsdp

    assert build_fsdp({"sharding_strategy": "FULL_SHARD"})["fsdp"].reshard_after_forward is True
    with pytest.raises(ConfigError, match="did you mean 'sharding_strategy'"):
        build_fsdp({"sharding_stratgy": "FULL_SHARD"})
