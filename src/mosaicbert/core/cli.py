"""The frame of the entry scripts (main.py, glue.py, finetune.py): help, logging, the config, errors, the exit status.

Errors the project knows the cause of (its own exception types, also when torch re-raises them from a DataLoader
worker as "Caught X in DataLoader worker process N" with the worker's traceback inside) end in one line,
`config error: ...` or `error: ...`, and exit status 2; the tracebacks only with MOSAICBERT_DEBUG=1.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import os
import re
import sys
import traceback
import typing
from typing import Any, Callable, Optional, Sequence

from mosaicbert.core.config import ConfigError, to_yaml

DEBUG_ENV = "MOSAICBERT_DEBUG"
PRINT_CONFIG = "--print-config"

# torch.utils.data._utils.ExceptionWrapper.reraise: "Caught {type} in DataLoader worker process {n}.\nOriginal {tb}"
_WORKER = re.compile(r"^Caught (\w+) (in DataLoader worker process \d+)\.\nOriginal (Traceback .*)$", re.S)


@dataclasses.dataclass
class ErrorReport:
    message: str  # the one line for the user
    project: bool  # an error type of this project (its message names the cause and the fix)
    worker_traceback: Optional[str] = None  # the DataLoader worker's own traceback, when it came from one


def debug() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def describe_error(exc: BaseException) -> ErrorReport:
    """The user's headline for `exc`: its own message, unwrapped from torch's DataLoader worker wrapper."""
    name, text = type(exc).__name__, str(exc)
    project = type(exc).__module__.startswith("mosaicbert.")
    m = _WORKER.match(text)
    if m is None:
        return ErrorReport(text if project else f"{name}: {text}", project)
    name, where, tb = m.groups()
    # the traceback's last entry is "[module.]Name: message" (the message may span lines)
    last = None
    for last in re.finditer(rf"^((?:[\w.]+\.)?){re.escape(name)}(?:: |$)", tb, re.M):
        pass
    message = tb[last.end():].strip() if last else ""
    project = project or bool(last and last.group(1).startswith("mosaicbert."))
    headline = message if project else f"{name}: {message}"
    return ErrorReport(f"{headline} ({where})", project, tb)


def report_error(exc: BaseException) -> Optional[int]:
    """Print one `config error: ...` / `error: ...` line for an error whose cause is known (a ConfigError, a project
    error, an error from a DataLoader worker) and return the exit status; None for anything else (a bug: keep its
    traceback). With MOSAICBERT_DEBUG=1 the tracebacks come first."""
    report = describe_error(exc)
    if not report.project and report.worker_traceback is None:
        return None
    if debug():
        traceback.print_exception(exc)
        if report.worker_traceback:
            print(f"DataLoader worker {report.worker_traceback}", file=sys.stderr)
    hint = "" if debug() or report.worker_traceback is None else f" [set {DEBUG_ENV}=1 for the worker's traceback]"
    kind = "config error" if isinstance(exc, ConfigError) else "error"
    print(f"{kind}: {report.message}{hint}", file=sys.stderr, flush=True)
    return 2 if report.project else 1


# --------------------------------------------------------------------------------------------------------------
# --help: the top-level config keys of the schema
# --------------------------------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:
        rest = [a for a in args if a is not type(None)]
        return " or ".join(_type_name(a) for a in rest) + (" or null" if len(rest) < len(args) else "")
    if origin in (list, tuple):
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return "map"
    if tp is typing.Any:
        return "any"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return " | ".join(m.value for m in tp)
    return getattr(tp, "__name__", str(tp))


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


def config_keys_help(schema: type) -> str:
    """One line per top-level key of the dataclass `schema`: name, type, default (sections: their keys)."""
    hints = typing.get_type_hints(schema)
    lines = [f"Config keys ({schema.__name__}; set in the YAML file or as key=value, sections as section.key=value):"]
    for f in dataclasses.fields(schema):
        tp, default = hints[f.name], _default(f)
        if dataclasses.is_dataclass(default) or (dataclasses.is_dataclass(tp) and default is None):
            section = default if dataclasses.is_dataclass(default) else tp
            keys = ", ".join(sub.name for sub in dataclasses.fields(section))
            lines.append(f"  {f.name}: section ({keys}){' = null' if default is None else ''}")
            continue
        if isinstance(default, enum.Enum):
            default = default.value
        shown = "required" if default is dataclasses.MISSING else \
            "null" if default is None else repr(default).replace("True", "true").replace("False", "false")
        lines.append(f"  {f.name}: {_type_name(tp)} = {shown}")
    return "\n".join(lines)


def run_script(argv: Sequence[str], doc: str, load_config: Callable[[str, Sequence[str]], Any],
               run: Callable[[Any], int], show_config: bool = True, schema: Optional[type] = None) -> int:
    """`script.py CONFIG.yaml [key=value ...] [--print-config]` -> exit status.

    No arguments or -h/--help: prints `doc` and the top-level keys of the config dataclass `schema` (status 2 / 0).
    Otherwise loads and validates the config with `load_config(yaml_path, overrides)`; with --print-config prints
    it as YAML and returns 0 without running; else prints it (if `show_config`) and returns `run(cfg)`. A
    ConfigError prints `config error: ...`, a project error (or any error of a DataLoader worker) `error: ...`,
    from loading or from `run`, and returns 2 (1 for a non-project worker error). `run` imports the heavy
    modules, so that a bad config fails fast.
    """
    argv = list(argv)
    print_only = PRINT_CONFIG in argv
    argv = [a for a in argv if a != PRINT_CONFIG]
    if not argv or argv[0] in ("-h", "--help"):
        print(doc)
        if schema is not None:
            print(config_keys_help(schema))
        print(f"\n{PRINT_CONFIG}: print the resolved config (YAML file + overrides) and exit without running.\n"
              f"{DEBUG_ENV}=1: print the tracebacks behind an error line.")
        return 0 if argv else 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("streaming").setLevel(logging.WARNING)  # per-worker INFO lines, repeated on every rank
    try:
        cfg = load_config(argv[0], argv[1:])
        if print_only:
            print(to_yaml(cfg), end="", flush=True)
            return 0
        if show_config:
            print(to_yaml(cfg), flush=True)
        return run(cfg)
    except Exception as e:
        status = report_error(e)
        if status is None:
            raise
        return status
