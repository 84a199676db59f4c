"""Object storage, for real: an S3-compatible server (moto's standalone server, with authentication on) started by
the test on localhost; shards uploaded to a bucket and read with data.remote=s3://... into a per-node data.local
cache; checkpoints saved to save_folder=s3://... and autoresumed from there after a SIGKILL, to the same weights
as an uninterrupted run. Wrong credentials, a missing bucket or an unreachable endpoint stop main.py before
training with an error naming the URL, and leave a local save folder as it was."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUCKET = "mosaicbert"
pytest.importorskip("moto.server", reason="moto[server] is not installed (pip install 'moto[server]')")

# The README's object-storage commands (test_readme_lists_these_commands keeps them in the README verbatim).
README_UPLOAD = "aws s3 cp --recursive ./data/c4-mds s3://my-bucket/c4-mds"
README_TRAIN = (".venv/bin/composer main.py yamls/base.yaml data.remote=s3://my-bucket/c4-mds "
                "data.local=/local-disk/c4-mds save_folder=s3://my-bucket/runs/mosaic-bert-base")

# Short fp32 runs of the quickstart model, reading the built-in corpus's shards from the bucket.
# A checkpoint becomes resumable from the bucket (its `latest` symlink uploaded) up to 30 s after it is saved, later
# than the last batch of so short a run: the killed run is held back until then.
COMMON = ["yamls/quickstart.yaml", "device=cpu", "precision=fp32", "max_duration=32ba", "save_interval=8ba",
          "eval_interval=32ba", "eval_subset_num_batches=1", "data.num_workers=0", f"data.remote=s3://{BUCKET}/docs",
          "save_num_checkpoints_to_keep=-1", "loggers.console_log_interval=4ba"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_readme_lists_these_commands():
    text = (ROOT / "README.md").read_text()
    assert README_UPLOAD in text
    assert README_TRAIN.replace(" data.local", " \\\n    data.local") in text or README_TRAIN in text


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on localhost with authentication on: an IAM user with an s3:* policy is created in the
    first three (unauthenticated) requests, every later request needs its key. The built-in corpus's MDS shards
    are uploaded to s3://mosaicbert/docs. Yields the environment a training process needs."""
    import boto3

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("moto") / "server.log"
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"},
                              stdout=open(log, "w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert server.poll() is None and time.time() < deadline, log.read_text()[-2000:]
                time.sleep(0.2)
        admin = dict(endpoint_url=url, region_name="us-east-1", aws_access_key_id="admin",
                     aws_secret_access_key="admin")
        iam = boto3.client("iam", **admin)
        iam.create_user(UserName="trainer")
        key = iam.create_access_key(UserName="trainer")["AccessKey"]
        iam.put_user_policy(UserName="trainer", PolicyName="s3", PolicyDocument=json.dumps({
            "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        env = {**os.environ, "S3_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
               "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"], "AWS_DEFAULT_REGION": "us-east-1",
               "PYTHONPATH": str(ROOT / "src"), "PYTHONUNBUFFERED": "1",
               "MOSAICBERT_CACHE": os.environ.get("MOSAICBERT_CACHE", str(ROOT / ".cache" / "mosaicbert"))}
        client = boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id=key["AccessKeyId"],
                              aws_secret_access_key=key["SecretAccessKey"])
        client.create_bucket(Bucket=BUCKET)
        # the shards main.py would make from builtin://python-docs, uploaded as a user would upload theirs
        mds = subprocess.run([sys.executable, "-c", "from mosaicbert.pretrain.convert import ensure_builtin_mds; "
                              "print(ensure_builtin_mds(128))"], env=env, capture_output=True, text=True, timeout=900)
        assert mds.returncode == 0, mds.stderr[-3000:]
        folder = Path(mds.stdout.strip().splitlines()[-1])
        for split in ("train", "val"):
            for f in sorted((folder / split).iterdir()):
                client.upload_file(str(f), BUCKET, f"docs/{split}/{f.name}")
        yield {"env": env, "client": client, "url": url, "shards": folder}
    finally:
        server.terminate()
        server.wait(timeout=30)


def _main(*args: str) -> list[str]:
    return [sys.executable, str(ROOT / "main.py"), *[str(ROOT / a) if a.endswith(".yaml") else a for a in args]]


def _objects(s3, prefix: str) -> list[str]:
    listing = s3["client"].list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for o in listing.get("Contents", []))


def _weights(s3, key: str, dest: Path) -> dict:
    import torch

    s3["client"].download_file(BUCKET, key, str(dest))
    return torch.load(dest, map_location="cpu", weights_only=False)["state"]["model"]


@pytest.mark.slow
def test_remote_shards_and_checkpoints_resume_after_kill(s3, tmp_path):
    # The working directory is tmp_path: Composer downloads the checkpoint it resumes from into
    # ./s3:/<bucket>/<path>/ below it.
    full = subprocess.run(_main(*COMMON, "run_name=full", f"data.local={tmp_path / 'node-cache-a'}",
                                f"save_folder=s3://{BUCKET}/runs/full", "autoresume=true"),
                          cwd=tmp_path, env=s3["env"], capture_output=True, text=True, timeout=1200)
    assert full.returncode == 0, full.stdout[-3000:] + full.stderr[-3000:]
    assert _objects(s3, "runs/full/") == [*(f"runs/full/ep0-ba{b}-rank0.pt" for b in (16, 24, 32, 8)),
                                          "runs/full/latest-rank0.pt.symlink"]
    # the node's cache holds the downloaded shards, the same bytes as uploaded
    for split in ("train", "val"):
        for f in (s3["shards"] / split).glob("shard.*"):
            cached = tmp_path / "node-cache-a" / split / f.name
            assert hashlib.sha256(cached.read_bytes()).digest() == hashlib.sha256(f.read_bytes()).digest()
    # metrics.jsonl of a run that saves remotely stays local: runs/<run_name>/
    assert (tmp_path / "runs" / "full" / "metrics.jsonl").is_file()

    cmd = _main(*COMMON, "run_name=killed", f"data.local={tmp_path / 'node-cache-b'}",
                f"save_folder=s3://{BUCKET}/runs/killed", "autoresume=true")
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=s3["env"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    # Past the first save (batch 8) the trainer is paused, so that it cannot finish before that checkpoint is
    # resumable from the bucket. Composer uploads the checkpoint from separate processes (not paused), but the
    # trainer itself uploads the `latest` symlink, at a batch end after a check (retried every 30 s) has found the
    # checkpoint there: until the symlink is in the bucket the trainer runs in slices of 10 ms every half second.
    seen = []
    for line in proc.stdout:
        seen.append(line)
        done = re.match(r"\[batch (\d+)", line)
        if done and int(done.group(1)) >= 12:
            os.kill(proc.pid, signal.SIGSTOP)
            break
    assert proc.poll() is None, "training ended before its first checkpoint:\n" + "".join(seen)[-3000:]
    drain = threading.Thread(target=lambda: seen.extend(proc.stdout), daemon=True)  # (the pipe never fills)
    drain.start()
    deadline = time.time() + 600
    while "runs/killed/latest-rank0.pt.symlink" not in _objects(s3, "runs/killed/"):
        assert proc.poll() is None, "training ended before its first checkpoint:\n" + "".join(seen)[-3000:]
        assert time.time() < deadline, "the first checkpoint never became resumable:\n" + "".join(seen)[-3000:]
        os.kill(proc.pid, signal.SIGCONT)
        time.sleep(0.01)
        os.kill(proc.pid, signal.SIGSTOP)
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)  # the node is gone, with its uploader
    proc.wait()
    drain.join(timeout=30)
    assert "runs/killed/ep0-ba32-rank0.pt" not in _objects(s3, "runs/killed/"), "finished before the kill"

    resumed = subprocess.run(cmd, cwd=tmp_path, env=s3["env"], capture_output=True, text=True, timeout=1200)
    out = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, out[-3000:]
    assert "autoresume: run " in out
    a = _weights(s3, "runs/full/ep0-ba32-rank0.pt", tmp_path / "a.pt")
    b = _weights(s3, "runs/killed/ep0-ba32-rank0.pt", tmp_path / "b.pt")
    import torch

    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ"


def test_check_remote_folder_names_the_url_and_the_fix(s3, monkeypatch):
    from mosaicbert.core.config import ConfigError
    from mosaicbert.core.storage import check_remote_folder

    for name in ("S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        monkeypatch.setenv(name, s3["env"][name])
    check_remote_folder(f"s3://{BUCKET}/docs", "data.remote")
    check_remote_folder(f"s3://{BUCKET}/runs/check", "save_folder", write=True)
    assert _objects(s3, "runs/check") == []  # the write check leaves nothing behind
    check_remote_folder("/local/folder", "save_folder", write=True)  # local: nothing to check

    with pytest.raises(ConfigError, match=r"'save_folder' = 's3://no-such-bucket/x'.*bucket 'no-such-bucket' "
                                          r"does not exist"):
        check_remote_folder("s3://no-such-bucket/x", "save_folder", write=True)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    with pytest.raises(ConfigError, match=rf"'data.remote' = 's3://{BUCKET}/docs'.*credentials were rejected.*"
                                          r"AWS_SECRET_ACCESS_KEY"):
        check_remote_folder(f"s3://{BUCKET}/docs", "data.remote")
    monkeypatch.setenv("S3_ENDPOINT_URL", f"http://127.0.0.1:{_free_port()}")
    t0 = time.time()
    with pytest.raises(ConfigError, match=r"cannot reach the endpoint.*S3_ENDPOINT_URL"):
        check_remote_folder(f"s3://{BUCKET}/docs", "data.remote")
    assert time.time() - t0 < 60


@pytest.mark.slow
@pytest.mark.parametrize("problem", ["wrong credentials", "missing bucket", "unreachable endpoint"])
def test_bad_remote_stops_before_training_and_keeps_local_checkpoints(s3, tmp_path, problem):
    # a local save folder whose latest checkpoint is damaged: tidying it for autoresume would rename it *.corrupt,
    # so it stays as it is only if the remote is checked before anything else
    save = tmp_path / "save"
    save.mkdir()
    (save / "ep0-ba4-rank0.pt").write_bytes(b"PK\x03\x04 a checkpoint cut short")
    (save / "latest-rank0.pt").symlink_to("ep0-ba4-rank0.pt")
    before = {p.name: p.read_bytes() for p in save.iterdir()}
    env = dict(s3["env"])
    remote = f"s3://{BUCKET}/docs"
    if problem == "wrong credentials":
        env["AWS_ACCESS_KEY_ID"] = "AKIAWRONGWRONGWRONG1"
    elif problem == "missing bucket":
        remote = "s3://no-such-bucket/docs"
    else:
        env["S3_ENDPOINT_URL"] = f"http://127.0.0.1:{_free_port()}"
    proc = subprocess.run(_main(*COMMON, "run_name=bad", f"data.remote={remote}",
                                f"data.local={tmp_path / 'cache'}", f"save_folder={save}", "autoresume=true"),
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("config error: config key 'data.remote' = " + repr(remote)), last
    assert {"wrong credentials": "credentials were rejected", "missing bucket": "does not exist",
            "unreachable endpoint": "cannot reach the endpoint"}[problem] in last
    assert "Stepping schedulers" not in proc.stdout + proc.stderr  # no Trainer was built
    assert {p.name: p.read_bytes() for p in save.iterdir() if not p.name.startswith(".run-")} == before
