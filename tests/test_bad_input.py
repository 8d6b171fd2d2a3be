"""Every class of bad input in docs/bad-input.md, run as written: the exit code, and one line on stderr that says
what is wrong. The table is the test's input, so the docs cannot drift from what users see."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "docs" / "bad-input.md"


def table_rows() -> list[dict]:
    lines = [line for line in TABLE.read_text().splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = []
    for line in lines[1:]:
        # cells are split on " | " so that a `|` inside a command would not cut it (there is none today)
        cells = [cell.strip() for cell in line.strip().removeprefix("| ").removesuffix(" |").split(" | ")]
        assert len(cells) == len(header), line
        rows.append(dict(zip(header, cells)))
    return rows


ROWS = table_rows()
RUN_HERE = [row for row in ROWS if row["Tested by"] == "this table"]


def test_the_table_covers_every_class_and_names_a_test_for_each_row():
    assert {row["Class"] for row in ROWS} == {"spec", "data", "overrides", "paths", "addresses", "credentials"}
    assert len(RUN_HERE) >= 25
    for row in ROWS:
        if row["Tested by"] != "this table":
            assert (ROOT / row["Tested by"]).is_file(), row


def run_row(row: dict) -> subprocess.CompletedProcess:
    command = re.fullmatch(r"`(selfd .*)`", row["Command"]).group(1)
    env = {k: v for k, v in os.environ.items()  # no login or cluster of the developer's shell
           if not k.startswith(("MLFLOW_", "RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"))}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    return subprocess.run(shlex.split(command), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def results() -> dict[str, subprocess.CompletedProcess]:
    """Every row's command, two at a time (a command is mostly one core's imports; the cache takes concurrent
    first fetches under a file lock), each row's result checked by its own test below."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip([row["Command"] for row in RUN_HERE], pool.map(run_row, RUN_HERE)))


@pytest.mark.parametrize("row", RUN_HERE, ids=[f"{r['Class']}: {r['Bad input']}" for r in RUN_HERE])
def test_bad_input_gets_one_line_and_its_exit_code(row, results):
    result = results[row["Command"]]
    # a first run on an empty cache may say what it fetches before it finds the input bad
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("selfd: downloading ")]
    assert result.returncode == int(row["Exit"]), result.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("selfd: error: "), result.stderr[-2000:]
    assert row["The line contains"] in lines[0]
    assert not Path("/tmp/selfd-bad-input").exists()  # refused before a study directory was made
