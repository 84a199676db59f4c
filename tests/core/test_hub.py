"""mosaicbert.core.hub: an unreachable Hub is found out at once, and hub names then load from the local HF cache
(a real cache folder, written here as huggingface_hub lays it out) or fail at once naming the reason."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from mosaicbert.core import hub

SRC = Path(__file__).resolve().parents[2] / "src"


def _closed_port() -> int:
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def endpoint(monkeypatch):
    """Set the Hub endpoint (as HF_ENDPOINT does) and probe afresh."""
    import huggingface_hub.constants as hf_constants

    for v in hub.PROXY_VARIABLES:
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)

    def set_endpoint(url: str) -> None:
        monkeypatch.setattr(hf_constants, "ENDPOINT", url)
        hub.hub_unreachable.cache_clear()

    yield set_endpoint
    hub.hub_unreachable.cache_clear()


def test_a_listening_endpoint_is_reachable(endpoint):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        endpoint(f"http://127.0.0.1:{server.getsockname()[1]}")
        assert hub.hub_unreachable() is None


def test_a_closed_port_or_unknown_host_is_unreachable(endpoint):
    url = f"http://127.0.0.1:{_closed_port()}"
    endpoint(url)
    assert hub.hub_unreachable().startswith(f"{url} is unreachable")
    assert hub.hub_local_only("org/name")
    endpoint("https://no-such-host.invalid")
    assert "https://no-such-host.invalid is unreachable" in hub.hub_unreachable()


def test_offline_mode_and_proxies(endpoint, monkeypatch):
    import huggingface_hub.constants as hf_constants

    endpoint(f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    hub.hub_unreachable.cache_clear()
    assert hub.hub_unreachable() is None  # only a request through the proxy can tell
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    hub.hub_unreachable.cache_clear()
    assert hub.hub_unreachable() == "HF_HUB_OFFLINE is set"


def _cache_repo(hub_cache: Path, repo_id: str) -> Path:
    """The snapshot folder of ``repo_id`` in a Hugging Face hub cache (refs/main names the snapshot)."""
    folder = hub_cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    return snapshot


def test_hub_names_load_from_the_local_cache_when_the_hub_is_unreachable(tmp_path):
    from transformers import BertConfig, BertForMaskedLM

    hub_cache = tmp_path / "hf" / "hub"
    tok_dir = _cache_repo(hub_cache, "org/tiny-tokenizer")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world"] + [f"w{i}" for i in range(120)]
    (tok_dir / "vocab.txt").write_text("\n".join(words) + "\n")
    (tok_dir / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer",
                                                               "do_lower_case": True}))
    (tok_dir / "config.json").write_text(json.dumps({"model_type": "bert"}))  # AutoTokenizer reads it first
    model = BertForMaskedLM(BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=1,
                                       num_attention_heads=2, intermediate_size=37))
    model_dir = _cache_repo(hub_cache, "org/tiny-bert")
    model.save_pretrained(model_dir)
    script = """
import json
from mosaicbert.core.checkpoint import read_weights
from mosaicbert.core.hub import hub_unreachable
from mosaicbert.core.tokenizer import load_tokenizer
out = {"reason": hub_unreachable()}
out["ids"] = load_tokenizer("org/tiny-tokenizer")("Hello world")["input_ids"]
out["weights"] = {k: float(v.double().sum()) for k, v in read_weights("org/tiny-bert").items()}
from mosaicbert.finetune.models import source_config  # (finetuning reads the start checkpoint's config.json)
out["config"] = source_config("org/tiny-bert")
for key, load in (("tokenizer_error", load_tokenizer), ("weights_error", read_weights)):
    try:
        load("org/absent")
    except FileNotFoundError as e:
        out[key] = str(e)
print(json.dumps(out))
"""
    env = {k: v for k, v in os.environ.items() if k not in hub.PROXY_VARIABLES and not k.startswith("HF_")}
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    env.update(HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT=endpoint, PYTHONPATH=str(SRC), TRANSFORMERS_VERBOSITY="error")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["reason"].startswith(f"{endpoint} is unreachable")
    assert out["ids"] == [2, 5, 6, 3]  # [CLS] hello world [SEP], lower-cased
    from mosaicbert.core.checkpoint import read_weights

    assert out["weights"] == {k: float(v.double().sum()) for k, v in read_weights(str(model_dir)).items()}
    assert out["config"] == json.loads((model_dir / "config.json").read_text())
    assert "'org/absent'" in out["tokenizer_error"] and f"{endpoint} is unreachable" in out["tokenizer_error"]
    assert "not in the local HF cache" in out["tokenizer_error"]
    assert "'org/absent'" in out["weights_error"] and "not in the local Hugging Face cache" in out["weights_error"]
    assert "Retrying" not in proc.stderr  # huggingface_hub's back-off never started
