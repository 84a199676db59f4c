"""mosaicbert.core.cli.run_script, the frame of main.py, glue.py and finetune.py: help, config errors, exit status."""

from dataclasses import dataclass

from mosaicbert.core.cli import run_script
from mosaicbert.core.config import ConfigError, load_config


@dataclass
class Schema:
    lr: float = 1.0
    name: str = "x"


def load(yaml_path, overrides):
    return load_config(Schema, None, overrides)


def test_help_and_missing_arguments(capsys):
    assert run_script(["--help"], "DOC TEXT", load, lambda cfg: 0) == 0
    assert "DOC TEXT" in capsys.readouterr().out
    assert run_script([], "DOC TEXT", load, lambda cfg: 0) == 2  # no config: usage, failure status


def test_runs_with_the_loaded_config_and_prints_it(capsys):
    seen = []
    assert run_script(["cfg.yaml", "lr=0.5"], "", load, lambda cfg: seen.append(cfg) or 7) == 7
    assert seen == [Schema(lr=0.5)]
    assert "lr: 0.5" in capsys.readouterr().out
    assert run_script(["cfg.yaml"], "", load, lambda cfg: 0, show_config=False) == 0
    assert "lr:" not in capsys.readouterr().out


def test_config_errors_from_loading_or_running_exit_2(capsys):
    assert run_script(["cfg.yaml", "lrr=1"], "", load, lambda cfg: 0) == 2
    err = capsys.readouterr().err
    assert err.startswith("config error: ") and "lrr" in err

    def bad(cfg):
        raise ConfigError("config key 'lr' is too large")

    assert run_script(["cfg.yaml"], "", load, bad) == 2
    assert "config error: config key 'lr' is too large" in capsys.readouterr().err
