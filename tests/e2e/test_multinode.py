"""Two nodes on one host: the composer launcher started twice, as node 0 and node 1 (one process each, gloo on CPU),
each node with its own shard cache; trained, killed mid-run (both nodes), relaunched, and resumed to the same
weights as an uninterrupted two-node run. A node that never starts, or dies, makes the other stop with an error
within dist_timeout.

Separate hosts each have their own /dev/shm and /tmp, where streaming keeps the shared memory and file locks of a
node's ranks, keyed by the first free prefix. Two launchers on one host would share them: both nodes' local rank 0
register the same prefix at the same moment and one of them fails. So each node here runs in its own mount
namespace with a private /dev/shm (`unshare`), and its own TMPDIR, as a separate host would.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
COMPOSER = str(Path(sys.executable).parent / "composer")

# The README's "Many nodes" commands (on two hosts; here both on 127.0.0.1), kept there verbatim by the fast test.
README_NODE = (".venv/bin/composer -n 1 --world_size 2 --node_rank {rank} --master_addr 127.0.0.1 "
               "--master_port {port} main.py yamls/quickstart.yaml")
# Short fp32 runs of the quickstart model: 8 batches, a checkpoint every 4.
COMMON = ["device=cpu", "precision=fp32", "max_duration=8ba", "save_interval=4ba", "eval_interval=8ba",
          "eval_subset_num_batches=1", "data.num_workers=0", "save_num_checkpoints_to_keep=-1",
          "loggers.console_log_interval=4ba", "autoresume=true"]


def test_readme_shows_the_two_node_commands():
    text = (ROOT / "README.md").read_text()
    for rank in (0, 1):
        assert README_NODE.format(rank=rank, port=29500) in text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _private_shm_prefix() -> list[str]:
    """A command prefix that runs its command with a private /dev/shm, as on its own host; skip if impossible."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed: two nodes on one host need private /dev/shm")
    inner = ["sh", "-c", 'mount -t tmpfs tmpfs /dev/shm && exec "$@"', "node"]
    for outer in (["unshare", "--mount", "--propagation", "private"],
                  ["unshare", "--user", "--map-root-user", "--mount", "--propagation", "private"]):
        probe = subprocess.run([*outer, *inner, "true"], capture_output=True, text=True)
        if probe.returncode == 0:
            return [*outer, *inner]
    pytest.skip(f"cannot give a process a private /dev/shm here (unshare: {probe.stderr.strip()[:200]})")


@pytest.fixture(scope="module")
def node_caches(tmp_path_factory):
    """One MOSAICBERT_CACHE per node, each holding the built-in corpus's shards and tokenizer (built once)."""
    base = tmp_path_factory.mktemp("nodes")
    source = base / "built"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "MOSAICBERT_CACHE": str(source)}
    shared = Path(os.environ.get("MOSAICBERT_CACHE", ROOT / ".cache" / "mosaicbert")) / "builtin"
    if shared.is_dir():
        shutil.copytree(shared, source / "builtin", ignore=shutil.ignore_patterns("*.lock", "*.tmp*"))
    proc = subprocess.run([sys.executable, "-c", "from mosaicbert.pretrain.convert import ensure_builtin_mds; "
                           "ensure_builtin_mds(128)"], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    caches = []
    for rank in (0, 1):
        shutil.copytree(source, base / f"node{rank}" / "cache")
        (base / f"node{rank}" / "tmp").mkdir()
        caches.append(base / f"node{rank}")
    return caches


class Nodes:
    """The two launchers of one two-node run."""

    def __init__(self, node_dirs, save: Path, log_dir: Path, *extra: str, ranks=(0, 1), dist_timeout: float = 120):
        self.port = _free_port()
        self.procs, self.logs = {}, {}
        prefix = _private_shm_prefix()
        for rank in ranks:
            env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PYTHONUNBUFFERED": "1",
                   "MOSAICBERT_CACHE": str(node_dirs[rank] / "cache"), "TMPDIR": str(node_dirs[rank] / "tmp")}
            cmd = [*prefix, COMPOSER, *README_NODE.format(rank=rank, port=self.port).split()[1:], *COMMON,
                   f"save_folder={save}", f"dist_timeout={dist_timeout}", *extra]
            self.logs[rank] = log_dir / f"node{rank}-{int(time.time() * 1000)}.log"
            self.procs[rank] = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=open(self.logs[rank], "w"),
                                                stderr=subprocess.STDOUT, start_new_session=True)

    def wait(self, timeout: float) -> dict:
        deadline = time.time() + timeout
        codes = {}
        for rank, proc in self.procs.items():
            try:
                codes[rank] = proc.wait(timeout=max(1.0, deadline - time.time()))
            except subprocess.TimeoutExpired:
                self.kill()
                pytest.fail(f"node {rank} still running after {timeout:.0f} s:\n{self.output(rank)[-3000:]}")
        return codes

    def kill(self, ranks=(0, 1)) -> None:
        for rank in ranks:
            if rank in self.procs and self.procs[rank].poll() is None:
                os.killpg(self.procs[rank].pid, signal.SIGKILL)  # the launcher and its trainer: a lost node
                self.procs[rank].wait()

    def output(self, rank: int) -> str:
        return self.logs[rank].read_text(errors="replace")


def _weights(checkpoint: Path) -> dict:
    return torch.load(checkpoint, map_location="cpu", weights_only=False)["state"]["model"]


@pytest.mark.slow
def test_two_nodes_resume_after_both_are_killed(node_caches, tmp_path):
    full = tmp_path / "full"
    run = Nodes(node_caches, full, tmp_path, "run_name=full")
    codes = run.wait(1200)
    assert codes == {0: 0, 1: 0}, run.output(0)[-3000:] + run.output(1)[-3000:]
    state = torch.load(full / "ep0-ba8-rank0.pt", map_location="cpu", weights_only=False)["state"]
    assert int(state["timestamp"]["Timestamp"]["sample"]) == 8 * 32  # 16 samples per node per batch

    killed = tmp_path / "killed"
    run = Nodes(node_caches, killed, tmp_path, "run_name=killed")
    deadline = time.time() + 900
    while not (killed / "latest-rank0.pt").exists():
        assert all(p.poll() is None for p in run.procs.values()) and time.time() < deadline, \
            run.output(0)[-3000:] + run.output(1)[-3000:]
        time.sleep(0.2)
    run.kill()
    assert not (killed / "ep0-ba8-rank0.pt").exists(), "the run finished before it was killed"

    run = Nodes(node_caches, killed, tmp_path, "run_name=killed")
    codes = run.wait(1200)
    assert codes == {0: 0, 1: 0}, run.output(0)[-3000:] + run.output(1)[-3000:]
    assert "autoresume: resuming from" in run.output(0)
    a, b = _weights(full / "ep0-ba8-rank0.pt"), _weights(killed / "ep0-ba8-rank0.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ"


@pytest.mark.slow
def test_a_node_that_never_starts_stops_the_other_within_dist_timeout(node_caches, tmp_path):
    t0 = time.time()
    run = Nodes(node_caches, tmp_path / "alone", tmp_path, "run_name=alone", ranks=(0,), dist_timeout=20)
    codes = run.wait(300)
    out = run.output(0)
    assert codes[0] != 0, out[-3000:]
    assert "did not join within dist_timeout=20" in out, out[-3000:]
    assert time.time() - t0 < 300


@pytest.mark.slow
def test_a_node_that_dies_stops_the_other(node_caches, tmp_path):
    save = tmp_path / "dies"
    run = Nodes(node_caches, save, tmp_path, "run_name=dies", "max_duration=400ba", dist_timeout=30)
    deadline = time.time() + 900
    while not (save / "latest-rank0.pt").exists():  # training is under way on both nodes
        assert all(p.poll() is None for p in run.procs.values()) and time.time() < deadline, \
            run.output(0)[-3000:] + run.output(1)[-3000:]
        time.sleep(0.2)
    run.kill(ranks=(1,))
    t0 = time.time()
    codes = run.wait(300)
    assert codes[0] != 0, run.output(0)[-3000:]
    assert time.time() - t0 < 120, f"node 0 took {time.time() - t0:.0f} s to stop"
