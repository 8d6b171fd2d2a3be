"""No input reaches a traceback: property-based fuzzing (Hypothesis) of what users write and give.

- the study-spec reader (`selfd validate SPEC`, every shipped spec mutated: keys, types, nesting, sizes, encodings,
  overrides);
- the run-config reader (`selfd train CONFIG` up to training: the file, overrides and the offline checks);
- the local-data reader (CSV, JSON Lines and Parquet files with missing values, empty columns, odd types and huge
  fields);
- study directories (`selfd run --study-dir`).

Every case ends with success, or with a ConfigError / AssetError (what `selfd` turns into one line and exit code
2), within a few seconds. A missing value in data is refused with its file, row and column. The examples per test
are few enough for `make test`; `pytest tests/test_fuzz.py --hypothesis-profile=long` runs many more.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import assume, event, example, given
from hypothesis import strategies as st

from study.cli import error_line, main
from trainables.config import load_config
from trainables.errors import AssetError, ConfigError
from trainables.task_kinds import check_offline

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted(path for path in (ROOT / "search_spaces").glob("*.yaml") if "methods:" in path.read_text())
CONFIG = ROOT / "search_spaces" / "demo_train_cpu.yaml"
SECONDS = 10  # the most one case may take (the slowest seen: ~5 s, 30 rows of 100 kB fields read through pandas)


# ---- values a user might write anywhere ------------------------------------------------------------------------

SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**15), 10**15), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30), st.text(alphabet="abc./-_", min_size=200, max_size=400),
    st.sampled_from(["", " ", "static", "dynamic", "grid", "tpe", "asha", "none", "1e-4", "0", "-1", "nan",
                     "minilm-l6", "epistemic_reasoning", "val_accuracy", "org/model", "../..", "\x00"]))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=12)


def paths(data, prefix=()) -> list[tuple]:
    """Every key path into nested mappings and lists."""
    found = [prefix] if prefix else []
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for key, value in items:
        found += paths(value, (*prefix, key))
    return found


def set_at(data, path, value=None, delete=False):
    node = data
    for key in path[:-1]:
        node = node[key]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value


@st.composite
def mutated(draw, base: dict) -> dict:
    """``base`` with one to three mutations: a value replaced, a key deleted, an unknown key added, a value nested
    deeper or repeated into a large list."""
    data = json.loads(json.dumps(base))
    for _ in range(draw(st.integers(1, 3))):
        where = paths(data)
        if not where:
            break
        path = draw(st.sampled_from(where))
        node = data
        for key in path:
            node = node[key]
        kind = draw(st.sampled_from(["replace", "delete", "add", "nest", "grow"]))
        if kind == "replace":
            set_at(data, path, draw(VALUES))
        elif kind == "delete":
            set_at(data, path, delete=True)
        elif kind == "add" and isinstance(node, dict):
            node[draw(st.text(min_size=1, max_size=12))] = draw(VALUES)
        elif kind == "nest":
            for _ in range(draw(st.integers(1, 40))):
                node = [node]
            set_at(data, path, node)
        elif kind == "grow":
            set_at(data, path, [node] * draw(st.sampled_from([0, 2, 1000, 20000])))
            break  # growing what was grown would make the test's own copies, not the reader, the work
    return data


@st.composite
def encoded(draw, data: dict) -> bytes:
    """``data`` as YAML, in UTF-8 or another encoding, sometimes cut short or with bytes added."""
    text = yaml.safe_dump(data, allow_unicode=True, sort_keys=False)
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "utf-8", "utf-16", "latin-1", "utf-8-sig"]))
    raw = text.encode(encoding, errors="replace")
    change = draw(st.sampled_from(["none", "none", "cut", "insert"]))
    if change == "cut":
        raw = raw[:draw(st.integers(0, len(raw)))]
    elif change == "insert":
        at = draw(st.integers(0, len(raw)))
        raw = raw[:at] + draw(st.binary(min_size=1, max_size=8)) + raw[at:]
    return raw


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """``selfd ARGV`` in this process: (exit code, stdout, stderr). Any exception but what `selfd` turns into an
    exit code escapes, and fails the test with its traceback."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def assert_answered(code: int, err: str, seconds: float) -> None:
    assert code in (0, 2), err
    if code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("selfd: error: "), err
    assert seconds < SECONDS


OVERRIDES = st.lists(st.one_of(
    st.text(max_size=30),
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from(["training.epochs", "distill.tau", "seeds", "search.space",
                                                        "task", "model.name", "rerun_best.seeds", "a..b", ""]),
              st.text(max_size=30))), max_size=2)


@given(data=st.data())
@example(data=None)  # each shipped spec as it is
def test_the_spec_reader_answers_every_mutated_spec_in_one_line(tmp_path_factory, data):
    for spec in SPECS:
        if data is None:
            raw, overrides = spec.read_bytes(), []
        else:
            raw = data.draw(encoded(data.draw(mutated(yaml.safe_load(spec.read_text())))))
            overrides = data.draw(OVERRIDES)
        path = tmp_path_factory.mktemp("spec") / "spec.yaml"
        path.write_bytes(raw)
        started = time.monotonic()
        code, out, err = run_cli(["validate", str(path), *(f"--override={o}" for o in overrides)])
        assert_answered(code, err, time.monotonic() - started)
        if data is None:
            assert code == 0 and "valid study" in out, err


@given(data=st.data())
def test_the_run_config_reader_answers_every_mutated_config(tmp_path_factory, data):
    raw = data.draw(encoded(data.draw(mutated(yaml.safe_load(CONFIG.read_text())))))
    path = tmp_path_factory.mktemp("config") / "config.yaml"
    path.write_bytes(raw)
    started = time.monotonic()
    try:
        check_offline(load_config(path, data.draw(OVERRIDES)))
    except (ConfigError, AssetError) as error:
        assert "\n" not in error_line(error)
    assert time.monotonic() - started < SECONDS


# a file of this repository by its absolute path: a relative one made directories wherever pytest ran from
README = str(Path(__file__).resolve().parents[1] / "README.md")


@given(name=st.text(max_size=300), inside=st.sampled_from(["", "/proc", "/dev/null", "/sys", README]))
@example(name="study", inside="/proc")
@example(name="a" * 256, inside="")
@example(name="x\x00y", inside="")
def test_a_study_directory_that_cannot_be_written_is_refused_before_any_work(tmp_path_factory, name, inside):
    """`selfd run` checks its --study-dir first: a directory it accepts can be made, one it refuses gets one line."""
    from study.cli import error_line
    from study.directory import check_writable

    folder = Path(inside or tmp_path_factory.mktemp("dirs")) / name
    try:
        check_writable(folder)
    except ConfigError as error:
        assert "\n" not in error_line(error)
        return
    folder.mkdir(parents=True, exist_ok=True)


# ---- local data files --------------------------------------------------------------------------------------------

GOOD_TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), min_size=1,
                    max_size=40).filter(str.strip)
CELLS = st.one_of(GOOD_TEXT, GOOD_TEXT, GOOD_TEXT, st.none(), st.sampled_from(["", "   "]), st.just(float("nan")),
                  st.integers(-5, 5), st.booleans(), st.lists(st.integers(), max_size=2),
                  st.dictionaries(st.text(max_size=3), st.integers(), max_size=2), st.just("x" * 100_000))
LABELS = st.one_of(st.sampled_from(["yes", "no"]), st.sampled_from(["yes", "no"]), CELLS)


# text that pandas reads as a missing value: in every CSV, and in JSON Lines where a bare NaN makes `datasets` read
# the file with pandas (pandas' default na_values)
READ_AS_MISSING = {"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>",
                   "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"}


def missing(value) -> bool:
    """What the reader must refuse: no value, NaN, blank text, a list or a mapping."""
    return (value is None or (isinstance(value, float) and math.isnan(value))
            or (isinstance(value, str) and not value.strip()) or isinstance(value, (list, dict)))


@st.composite
def tables(draw) -> tuple[list[dict], str]:
    """A table of text / pair / label rows: clean, clean but for one cell, or with any cell anything."""
    rows = draw(st.integers(0, 40))
    shape = draw(st.sampled_from(["clean", "one odd cell", "wild"]))
    text, label = (CELLS, LABELS) if shape == "wild" else (GOOD_TEXT, st.sampled_from(["yes", "no"]))
    columns = {"text": draw(st.lists(text, min_size=rows, max_size=rows)),
               "pair": draw(st.lists(text, min_size=rows, max_size=rows)),
               "label": draw(st.lists(label, min_size=rows, max_size=rows))}
    if shape == "one odd cell" and rows:
        columns[draw(st.sampled_from(list(columns)))][draw(st.integers(0, rows - 1))] = draw(CELLS)
    if draw(st.integers(0, 5)) == 0:  # an empty column
        columns[draw(st.sampled_from(list(columns)))] = [None] * rows
    table = [dict(zip(columns, values)) for values in zip(*columns.values())]
    return table, draw(st.sampled_from(["csv", "jsonl", "parquet"]))


def write_table(table: list[dict], kind: str, path: Path) -> list[dict] | None:
    """Write ``table`` as ``kind``; returns the rows as the file holds them (None where the format cannot hold
    them: a list in a CSV cell, mixed types in a Parquet column)."""
    import csv

    import pandas as pd

    if kind == "jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in table))  # NaN is written as NaN (not JSON)
        return table
    if kind == "csv":
        if any(isinstance(v, (list, dict)) for row in table for v in row.values()):
            return None
        with path.open("w", newline="") as out:
            writer = csv.DictWriter(out, fieldnames=["text", "pair", "label"])
            writer.writeheader()
            writer.writerows(table)
        return table
    try:
        pd.DataFrame(table, columns=["text", "pair", "label"]).to_parquet(path)
    except Exception:  # pyarrow refuses mixed column types: such a file cannot be written to be read
        return None
    return table


@given(case=tables())
def test_the_data_reader_refuses_missing_values_with_file_row_and_column(tmp_path_factory, monkeypatch, case):
    from trainables.config import TaskConfig
    from trainables.tasks import load_task

    table, kind = case
    folder = tmp_path_factory.mktemp("data")
    monkeypatch.setenv("SELFD_CACHE", str(folder / "cache"))
    path = folder / f"data.{kind}"
    written = write_table(table, kind, path)
    assume(written is not None)
    config = TaskConfig(name="fuzz", files=str(path), columns={"text": "text", "text_pair": "pair", "label": "label"})
    started = time.monotonic()
    try:
        task = load_task(config)
    except (ConfigError, AssetError) as error:
        message = str(error)
        event(f"{kind}: refused: {message.split(':')[0] if ' row ' not in message else 'a missing value'}")
        assert "\n" not in error_line(error)
        if f"{path} row " in message:  # names a cell that is missing
            where = message.split(f"{path} row ", 1)[1]
            row, column = int(where.split(",")[0]), where.split("column '", 1)[1].split("'")[0]
            assert 1 <= row <= len(table) and column in ("text", "pair", "label")
            cell = table[row - 1][column]
            assert missing(cell) or str(cell).strip() in READ_AS_MISSING, (message, cell)
    else:
        event(f"{kind}: accepted")
        # a table with a missing value in a used column is never accepted
        assert not any(missing(value) for row in table for value in row.values()), table
        assert len(task.train) + len(task.validation) + len(task.test) == len(table)
    assert time.monotonic() - started < SECONDS


def test_a_missing_value_is_refused_with_its_file_row_and_column(tmp_path, monkeypatch, nli_jsonl):
    """The example of the issue: a null text in JSON Lines (it used to train as the text "None"), an empty label
    in a CSV."""
    from trainables.config import TaskConfig
    from trainables.tasks import load_task

    monkeypatch.setenv("SELFD_CACHE", str(tmp_path / "cache"))
    rows = [json.loads(line) for line in nli_jsonl.read_text().splitlines()]
    rows[6]["premise"] = None
    nulls = tmp_path / "nulls.jsonl"
    nulls.write_text("".join(json.dumps(row) + "\n" for row in rows))
    columns = {"text": "premise", "text_pair": "claim", "label": "verdict"}
    with pytest.raises(ConfigError, match=f"task data: {nulls} row 7, column 'premise': no value; fill it in or "
                                          "drop the row"):
        load_task(TaskConfig(name="nulls", files=str(nulls), columns=columns))
    empty = tmp_path / "empty.csv"
    empty.write_text("premise,claim,verdict\n" + "".join(f"{r['premise'] or 'x'},{r['claim']},"
                                                         f"{'' if i == 2 else r['verdict']}\n"
                                                         for i, r in enumerate(rows)))
    with pytest.raises(ConfigError, match=f"{empty} row 3, column 'verdict': no value"):
        load_task(TaskConfig(name="empty", files=str(empty), columns=columns))
