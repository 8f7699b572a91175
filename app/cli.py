"""The `histosynth` command line: serve, worker, migrate, ingest, jobs ..."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from app.settings import get_settings

cli = typer.Typer(help="histosynth: synthetic histopathology patches and their classifier, as a service.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
jobs_cli = typer.Typer(help="List, show, wait for and cancel jobs.", no_args_is_help=True)
cli.add_typer(jobs_cli, name="jobs")
keys_cli = typer.Typer(help="Create, list and revoke API keys (on the server: writes the database directly).",
                       no_args_is_help=True)
cli.add_typer(keys_cli, name="keys")


def fail(message: str, code: int = 1) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def worker_command(concurrency: int = 1, pool: str = "solo", loglevel: str = "INFO") -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", f"--pool={pool}",
            f"--concurrency={concurrency}", "-Q", "histosynth", f"--loglevel={loglevel}",
            "--without-gossip", "--without-mingle", "-n", f"histosynth-{os.getpid()}@%h"]


@cli.command()
def migrate() -> None:
    """Create or upgrade the database schema (Alembic upgrade head)."""
    from app.migrate import upgrade_head

    settings = get_settings()
    upgrade_head(settings.resolved_database_url)
    typer.echo(f"database at head: {_safe_url(settings.resolved_database_url)}")
    _install_starters(settings)


def _install_starters(settings) -> None:  # noqa: ANN001
    if not settings.starter_models:
        return
    from app.starter_models import install_starters

    for model_id in install_starters(settings):
        typer.echo(f"starter model {model_id} installed and promoted (replace it by promoting your own)")


@cli.command()
def worker(
    concurrency: Annotated[int, typer.Option(min=1)] = 1,
    pool: Annotated[str, typer.Option(help="solo (one job in the worker process) or prefork")] = "solo",
) -> None:
    """Run a Celery worker (the production shape runs these separately from the API)."""
    os.execv(sys.executable, worker_command(concurrency, pool))


@cli.command()
def serve(
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8000,
    with_worker: Annotated[bool, typer.Option("--with-worker/--no-worker",
                                              help="Start one Celery worker beside the API.")] = True,
) -> None:
    """Run migrations, the API and (by default) one worker; Ctrl-C or SIGTERM stops both."""
    import uvicorn

    from app.main import create_app
    from app.migrate import upgrade_head

    settings = get_settings()
    from app.auth import is_loopback

    if settings.auth == "open" and not is_loopback(host):
        fail(f"refusing to serve on {host} without API keys: HISTOSYNTH_AUTH=open answers loopback clients only. "
             "Set HISTOSYNTH_AUTH=keys and create a key (histosynth keys create --name NAME --role admin), "
             "or serve on 127.0.0.1.", 2)
    settings.resolved_home.mkdir(parents=True, exist_ok=True)
    upgrade_head(settings.resolved_database_url)
    _install_starters(settings)
    if settings.auth == "open":
        typer.echo("open mode: no API keys; only clients on this machine are answered (HISTOSYNTH_AUTH=keys to "
                   "require keys)", err=True)
    env = {**os.environ, "HISTOSYNTH_HOME": str(settings.resolved_home)}
    stopping = threading.Event()
    worker_proc: list[subprocess.Popen] = []

    def start_worker() -> None:
        worker_proc[:] = [subprocess.Popen(worker_command(), env=env, start_new_session=True)]

    def watch_worker() -> None:  # a worker that dies is restarted; its job is reaped and resumed
        while not stopping.wait(2):
            if worker_proc and worker_proc[0].poll() is not None:
                typer.echo(f"worker exited with {worker_proc[0].returncode}; restarting", err=True)
                start_worker()

    if with_worker:
        start_worker()
        threading.Thread(target=watch_worker, daemon=True).start()
    typer.echo(f"histosynth serving on http://{host}:{port} (database {_safe_url(settings.resolved_database_url)}, "
               f"broker {_safe_url(settings.resolved_broker_url)})")
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host=host, port=port, log_level="info"))
    # uvicorn handles SIGTERM itself, then re-raises it once the server is down; this handler
    # turns that re-raise into SystemExit so the `finally` below still stops the worker.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        server.run()  # uvicorn turns SIGINT/SIGTERM into a graceful shutdown
    finally:
        stopping.set()
        for proc in worker_proc:
            _stop(proc)


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def _stop(proc: subprocess.Popen, grace: float = 30.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)  # Celery's warm shutdown: the running job is left to the reaper
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - broker URLs are not SQLAlchemy URLs
        return url.split("@")[-1] if "@" in url else url


# -- client commands --------------------------------------------------------------------

def client() -> httpx.Client:
    settings = get_settings()
    headers = {"Authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}
    return httpx.Client(base_url=settings.api_url, timeout=60, headers=headers)


def call(method: str, path: str, **kwargs: Any) -> dict[str, Any]:
    try:
        with client() as c:
            resp = c.request(method, path, **kwargs)
    except httpx.TransportError as exc:
        fail(f"cannot reach the API at {get_settings().api_url} ({exc}); is `histosynth serve` running?", 2)
    if resp.status_code >= 400:
        try:
            body = resp.json()
            fail(f"{body.get('title', resp.status_code)}: {body.get('detail', '')}".rstrip(": "))
        except ValueError:
            fail(f"HTTP {resp.status_code}: {resp.text[:200]}")
    return resp.json()


def wait_for(job_id: str) -> dict[str, Any]:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), transient=False) as bar:
        task = bar.add_task(job_id, total=None)
        while True:
            job = call("GET", f"/v1/jobs/{job_id}")
            prog = job["progress"]
            bar.update(task, completed=prog["current"], total=prog["total"] or None,
                       description=f"{job['kind']} {job['state']} {prog['message'] or ''}")
            if job["state"] in ("succeeded", "failed", "cancelled"):
                return job
            time.sleep(0.5)


def print_job(job: dict[str, Any]) -> None:
    typer.echo(json.dumps(job, indent=2))


@cli.command()
def ingest(
    path: Annotated[Path, typer.Argument(help="Folder in the public IDC layout, or a zip of it")],
    name: Annotated[str | None, typer.Option()] = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait")] = True,
) -> None:
    """Ingest a dataset. A folder is read by the server in place; a zip file is uploaded."""
    path = path.expanduser().resolve()
    if not path.exists():
        fail(f"{path} does not exist")
    params: dict[str, Any] = {"name": name} if name else {}
    if path.is_file():
        with open(path, "rb") as fh:
            upload = call("POST", "/v1/uploads", content=fh, headers={"Content-Type": "application/zip"})
        params["upload_id"] = upload["upload_id"]
    else:
        params["path"] = str(path)
    job = call("POST", "/v1/jobs", json={"kind": "ingest", "params": params})
    typer.echo(f"job {job['id']} queued")
    if wait:
        job = wait_for(job["id"])
        print_job(job)
        if job["state"] != "succeeded":
            raise typer.Exit(1)


@jobs_cli.command("list")
def jobs_list(kind: str | None = None, state: str | None = None, limit: int = 20) -> None:
    """List jobs, newest first."""
    query = {k: v for k, v in {"kind": kind, "state": state, "limit": limit}.items() if v is not None}
    body = call("GET", "/v1/jobs", params=query)
    typer.echo(f"{'id':32}  {'kind':16} {'state':10} progress")
    for job in body["data"]:
        prog = job["progress"]
        typer.echo(f"{job['id']:32}  {job['kind']:16} {job['state']:10} {prog['current']}/{prog['total']}")
    typer.echo(f"({len(body['data'])} of {body['count']})")


@jobs_cli.command("show")
def jobs_show(job_id: str) -> None:
    """Show one job as JSON."""
    print_job(call("GET", f"/v1/jobs/{job_id}"))


@jobs_cli.command("wait")
def jobs_wait(job_id: str) -> None:
    """Wait for a job with a progress bar; exit 1 unless it succeeded."""
    job = wait_for(job_id)
    print_job(job)
    if job["state"] != "succeeded":
        raise typer.Exit(1)


@jobs_cli.command("cancel")
def jobs_cancel(job_id: str) -> None:
    """Cancel a queued job at once, or ask a running one to stop."""
    job = call("POST", f"/v1/jobs/{job_id}/cancel")
    typer.echo(f"job {job['id']}: {job['state']}{' (cancel requested)' if job['cancel_requested'] else ''}")


@keys_cli.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="who or what holds it, e.g. a lab member or a pipeline")],
    role: Annotated[str, typer.Option(help="admin (ingest server paths, promote, read the audit log) or user")] = "user",
) -> None:
    """Create a key and print its secret: shown this once, stored only as a hash."""
    from app import audit_log, auth
    from app.db import session_scope
    from app.migrate import upgrade_head

    settings = get_settings()
    upgrade_head(settings.resolved_database_url)
    with session_scope(settings.resolved_database_url) as s:
        try:
            key, secret = auth.create_key(s, name, role)
        except ValueError as exc:
            fail(str(exc), 2)
        audit_log.record(s, None, "keys.create", 201, object_type="key", object_id=key.id,
                         detail={"via": "cli", "role": key.role, "name": key.name})
        typer.echo(f"key {key.id} ({key.role}, {key.name!r}) created. Its secret, shown only now:")
        typer.echo(secret)


@keys_cli.command("list")
def keys_list() -> None:
    """Every key: id, role, name, prefix, created, last used, revoked."""
    from app import auth
    from app.db import session_scope

    with session_scope(get_settings().resolved_database_url) as s:
        for k in auth.list_keys(s):
            state = f"revoked {k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "active"
            used = f"{k.last_used_at:%Y-%m-%d %H:%M}" if k.last_used_at else "never"
            typer.echo(f"{k.id}  {k.role:5}  {k.prefix}...  {k.name}  created {k.created_at:%Y-%m-%d %H:%M}  "
                       f"last used {used}  {state}")


@keys_cli.command("revoke")
def keys_revoke(key_id: str) -> None:
    """Revoke a key: its next request is a 401."""
    from app import audit_log, auth
    from app.db import session_scope

    with session_scope(get_settings().resolved_database_url) as s:
        try:
            key = auth.revoke_key(s, key_id)
        except LookupError as exc:
            fail(str(exc), 2)
        audit_log.record(s, None, "keys.revoke", 200, object_type="key", object_id=key.id, detail={"via": "cli"})
        typer.echo(f"key {key.id} ({key.name!r}) revoked")


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
