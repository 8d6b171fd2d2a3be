"""``selfd ui``: the MLflow UI on a study's own store, reachable from this machine only unless asked otherwise.

Loopback addresses serve without authentication. Any other address (``0.0.0.0``, a LAN address) needs
``--allow-remote`` and MLflow's ``basic-auth`` app: the admin is ``MLFLOW_TRACKING_USERNAME`` /
``MLFLOW_TRACKING_PASSWORD`` (the pair MLflow's clients send), created in ``<study>/mlflow-auth.db`` at the first
such start; later starts check the pair against it before serving. Credentials travel in environment variables only,
never on a command line or in a file.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

from study import net
from trainables.errors import ConfigError

CREDENTIALS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
AUTH_DB = "mlflow-auth.db"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, allow_remote: bool) -> tuple[str, str] | None:
    """The credentials a server on ``host`` must require (None on loopback); bad combinations are bad input."""
    if is_loopback(host):
        return None
    if not allow_remote:
        raise ConfigError(f"--host {host} would let anyone on the network read and change this study's runs; "
                          "add --allow-remote (with MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD set) "
                          "to serve it with MLflow authentication, or leave --host at 127.0.0.1")
    missing = [name for name in CREDENTIALS if not os.environ.get(name)]
    if missing:
        raise ConfigError(f"--allow-remote serves with MLflow authentication: set {' and '.join(missing)} "
                          "(the admin's user name and password)")
    return os.environ[CREDENTIALS[0]], os.environ[CREDENTIALS[1]]


def check_login(study_dir: Path, credentials: tuple[str, str]) -> None:
    """Before serving: a study whose admin exists must be opened with that admin's password."""
    database = study_dir / AUTH_DB
    if not database.is_file():
        return  # the first authenticated start creates the admin
    with warnings.catch_warnings():  # MLflow's server modules warn about their own dependencies on import
        warnings.simplefilter("ignore")
        from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore
    store = SqlAlchemyStore()
    store.init_db(f"sqlite:///{database.resolve()}")
    if store.has_user(credentials[0]) and not store.authenticate_user(*credentials):
        raise ConfigError(f"MLFLOW_TRACKING_PASSWORD is not the password of {credentials[0]} in {database} (set at "
                          "the first --allow-remote start): use that password, or delete the file to start over")


def server_command(tracking_uri: str, artifacts: Path, host: str, port: int) -> list[str]:
    """One worker process, not MLflow's 4: one person browses one study, and on a 2-core machine the server answers
    in about 9 s instead of 15 (the other 3 workers would still be importing MLflow)."""
    return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", tracking_uri, "--serve-artifacts",
            "--artifacts-destination", str(artifacts), "--host", host, "--port", str(port), "--workers", "1"]


@contextlib.contextmanager
def serve(study_dir: Path, tracking_uri: str, host: str = "127.0.0.1", port: int = 5000,
          credentials: tuple[str, str] | None = None, quiet: bool = False):
    """Run ``mlflow server`` on the study's store until the block ends; yields the server process once healthy.
    With ``credentials`` it runs MLflow's basic-auth app with them as its admin."""
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job workers: ~0.5 GB, not ~2 GB
    command = server_command(tracking_uri, study_dir / "mlartifacts", host, port)
    with tempfile.TemporaryDirectory(prefix="selfd-ui-") as folder:
        if credentials:
            config = Path(folder) / "basic_auth.ini"  # no secret in it: the admin comes from the environment
            config.write_text("[mlflow]\ndefault_permission = READ\n"
                              f"database_uri = sqlite:///{(study_dir / AUTH_DB).resolve()}\n"
                              "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
            env |= {"MLFLOW_AUTH_CONFIG_PATH": str(config), "MLFLOW_AUTH_ADMIN_USERNAME": credentials[0],
                    "MLFLOW_AUTH_ADMIN_PASSWORD": credentials[1],
                    "MLFLOW_FLASK_SERVER_SECRET_KEY": env.get("MLFLOW_FLASK_SERVER_SECRET_KEY") or secrets.token_hex(16)}
            command += ["--app-name", "basic-auth"]
        output = subprocess.DEVNULL if quiet else None
        server = subprocess.Popen(command, env=env, start_new_session=True, stdout=output, stderr=output)
        # the server has its own process group: a SIGTERM to ours must still stop it, through the finally below
        previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
        try:
            local = f"http://127.0.0.1:{port}" if host in ("0.0.0.0", "::") else f"http://{host}:{port}"
            net.wait_until_healthy(local, server)
            yield server
        finally:
            if server.poll() is None:
                os.killpg(server.pid, 15)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    server.wait(timeout=20)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, 9)  # gunicorn / uvicorn workers share the group
            signal.signal(signal.SIGTERM, previous)


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)
