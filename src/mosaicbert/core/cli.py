"""The frame of the entry scripts (main.py, glue.py, finetune.py): help, logging, the config, the exit status."""

from __future__ import annotations

import logging
import sys
from typing import Any, Callable, Sequence

from mosaicbert.core.config import ConfigError, to_yaml


def run_script(argv: Sequence[str], doc: str, load_config: Callable[[str, Sequence[str]], Any],
               run: Callable[[Any], int], show_config: bool = True) -> int:
    """`script.py CONFIG.yaml [key=value ...]` -> exit status.

    No arguments or -h/--help: prints `doc` (status 2 / 0). Otherwise loads and validates the config with
    `load_config(yaml_path, overrides)`, prints it as YAML (if `show_config`), and returns `run(cfg)`. A ConfigError,
    from loading or from `run`, prints `config error: ...` and returns 2. `run` imports the heavy modules, so that a
    bad config fails fast.
    """
    if not argv or argv[0] in ("-h", "--help"):
        print(doc)
        return 0 if argv else 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("streaming").setLevel(logging.WARNING)  # per-worker INFO lines, repeated on every rank
    try:
        cfg = load_config(argv[0], list(argv[1:]))
        if show_config:
            print(to_yaml(cfg), flush=True)
        return run(cfg)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
