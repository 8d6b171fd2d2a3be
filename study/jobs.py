"""Studies as Ray Jobs: ``selfd submit`` ships the project's code and the resolved spec to a cluster's job API
(the head's dashboard, ``http://HOST:8265``), where ``selfd run`` drives the study on the head node.

The code travels as ``py_modules`` (so the cluster runs the code that was submitted, not whatever version its
image holds); the spec travels as the job's working directory. The study directory is a path on the cluster:
``--study-dir`` or ``$SELFD_STUDIES/<name>`` on the head (``~/selfd-studies`` when unset). With token auth on,
the client sends ``RAY_AUTH_TOKEN`` (Ray's job client reads it from the environment).
"""

from __future__ import annotations

import asyncio
import os
import shlex
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from study.spec import StudySpec
from trainables.errors import ConfigError

# what the job's driver runs; a fixed module path keeps it independent of the cluster's console scripts
ENTRYPOINT = "python -m study.cli run spec.yaml --address auto --study-dir {study_dir} --if-exists {if_exists}"
FINAL = {"SUCCEEDED": 0, "STOPPED": 130, "FAILED": 1}


def job_client(address: str | None):
    """A client of the cluster's job API; bad addresses and refused tokens are bad input, said in one line."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    address = address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")
    if not address:
        raise ConfigError("name the cluster's job API with --address http://HEAD:8265 (or set RAY_API_SERVER_ADDRESS)")
    if urlsplit(address).username is not None:
        raise ConfigError("--address holds a login (user:password@); Ray's job API authenticates with RAY_AUTH_TOKEN")
    if not address.startswith(("http://", "https://")):
        raise ConfigError(f"--address must be the Ray dashboard's URL, e.g. http://127.0.0.1:8265 (got {address!r})")
    try:
        return JobSubmissionClient(address)
    except AuthenticationError:
        raise ConfigError(f"the Ray cluster at {address} refused this client's token: set RAY_AUTH_TOKEN to the "
                          "cluster's token") from None
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise ConfigError(f"cannot reach the Ray job API at {address}: {_first_line(error)}") from None


def submit(spec: StudySpec, address: str | None, study_dir: str | None = None, if_exists: str = "refuse") -> str:
    """Submit a validated spec; returns the job id. ``if_exists`` is `selfd run --if-exists` on the cluster."""
    import study
    import search_spaces
    import trainables

    client = job_client(address)
    target = shlex.quote(study_dir) if study_dir else f'"${{SELFD_STUDIES:-$HOME/selfd-studies}}"/{spec.name}'
    with tempfile.TemporaryDirectory(prefix="selfd-job-") as folder:
        Path(folder, "spec.yaml").write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
        runtime_env = {"working_dir": folder,
                       "py_modules": [str(Path(m.__file__).parent) for m in (study, trainables, search_spaces)]}
        return _call(client.submit_job, entrypoint=ENTRYPOINT.format(study_dir=target, if_exists=if_exists),
                     runtime_env=runtime_env, metadata={"selfd.study": spec.name})


def status(address: str | None, job_id: str) -> str:
    info = _call(job_client(address).get_job_info, job_id)
    line = f"{job_id}: {info.status}"
    if info.message:
        line += f" ({info.message})"
    return line


def logs(address: str | None, job_id: str, follow: bool) -> int:
    """Print the job's driver output; with ``follow``, until the job ends. Returns the job's exit code."""
    client = job_client(address)
    if not follow:
        sys.stdout.write(_call(client.get_job_logs, job_id))
        return 0

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            sys.stdout.write(chunk)
            sys.stdout.flush()

    _call(client.get_job_status, job_id)  # an unknown id is an error here, not an empty stream
    asyncio.run(tail())
    print(flush=True)  # the last chunk may end mid-line
    final = str(_call(client.get_job_status, job_id))
    print(f"selfd: job {job_id} {final}", file=sys.stderr)
    return FINAL.get(final, 1)


def stop(address: str | None, job_id: str) -> bool:
    """Ask the cluster to stop the job (SIGTERM to its driver, then SIGKILL); False when it had already ended."""
    return _call(job_client(address).stop_job, job_id)


def _call(function, *args, **kwargs):
    try:
        return function(*args, **kwargs)
    except RuntimeError as error:  # the job API answers unknown ids and refused requests with RuntimeError
        raise ConfigError(_first_line(error)) from None


def _first_line(error: BaseException) -> str:
    return next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
