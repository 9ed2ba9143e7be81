"""The evaluation results file: written atomically after every answered prompt, kept whole through SIGTERM, its
path checked before any work, bad or duplicated content refused and left untouched, other grids joined only with
`merge`, and the default location outside the repository's committed results. The model is a fake runner (words
are tokens, answers are canned), so these tests exercise the file handling alone."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from raggedkv.engine.eval import needle_task, run_niah
from raggedkv.engine.eval.generation import Answer
from raggedkv.engine.eval.store import ResultStore

REPO = Path(__file__).resolve().parents[1]
GRID = {"model": "fake-model", "methods": ["full", "snapkv"], "kv_sizes": [16], "lengths": [120],
        "depths": [0, 50, 100], "max_new_tokens": 4, "progress": False}


class FakeRunner:
    """Stands in for `generation.Runner`: a prompt's tokens are its words, an answer names its cell."""

    def __init__(self, model: str, backend: str = "auto", head_scores: dict | None = None,
                 question_window: bool = True):
        self.built: list[str] = []
        self.sweeps: list[list[tuple]] = []

    def engine(self, method: str) -> str:
        self.built.append(method)
        return method

    def encode(self, text: str, chat: bool) -> list[str]:
        return text.split()

    def sweep(self, prompt, cells, max_new_tokens, chat, newline_stops=False) -> list[Answer]:
        self.sweeps.append(list(cells))
        return [Answer(f"{method} at {kv_size}", len(prompt.split()), 1.0 if kv_size is None else 0.5, 0.0)
                for method, kv_size in cells]


@pytest.fixture
def runners(monkeypatch) -> list[FakeRunner]:
    """The fake runners the needle tasks create, in order."""
    created = []

    class Recorded(FakeRunner):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            created.append(self)

    monkeypatch.setattr(needle_task, "Runner", Recorded)
    return created


def cli(argv: list[str]) -> int:
    from raggedkv.engine import cli as entry

    return entry.main(argv)


def test_every_answered_prompt_is_on_disk_before_the_next_is_computed(runners, tmp_path, monkeypatch):
    out = tmp_path / "niah.json"
    on_disk = []
    real_sweep = FakeRunner.sweep

    def checking(self, *args, **kwargs):
        on_disk.append(len(json.loads(out.read_text())["records"]) if out.exists() else 0)
        return real_sweep(self, *args, **kwargs)

    monkeypatch.setattr(FakeRunner, "sweep", checking)
    result = run_niah(**GRID, out=out)
    assert on_disk == [0, 2, 4]  # each prompt's two cells were written before the next prompt ran
    assert len(result.records) == 6 and json.loads(out.read_text())["records"] == result.records
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left behind


SIGTERM_SCRIPT = """
import sys, time
from raggedkv.engine import cli
from raggedkv.engine.eval import needle_task
from tests.test_eval_store import FakeRunner

class Slow(FakeRunner):
    def sweep(self, *args, **kwargs):
        time.sleep(0.2)
        return super().sweep(*args, **kwargs)

needle_task.Runner = Slow
sys.exit(cli.main(sys.argv[1:]))
"""


def test_sigterm_mid_run_keeps_every_finished_answer(runners, tmp_path):
    out = tmp_path / "niah.json"
    argv = ["eval", "niah", "--model", "fake-model", "--methods", "full,snapkv", "--kv-sizes", "16", "--lengths",
            "120", "--depths", "0:100:5", "--max-new-tokens", "4", "--out", str(out), "--no-progress"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    process = subprocess.Popen([sys.executable, "-c", SIGTERM_SCRIPT, *argv], cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen, deadline = 0, time.monotonic() + 240
    while seen < 4 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
        if out.exists():
            seen = len(json.loads(out.read_text())["records"])  # atomic writes: never a partial file
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert "interrupted: every finished answer is in the results file" in stderr
    saved = json.loads(out.read_text())["records"]
    assert 4 <= seen <= len(saved) < 2 * 21  # nothing stored was lost, and the run did stop early
    assert [p.name for p in tmp_path.iterdir()] == ["niah.json"]  # no temporary file, no plots of a partial run

    grid = {**GRID, "depths": list(range(0, 101, 5))}
    resumed = run_niah(**grid, out=out)  # resuming runs exactly the prompts that were not finished
    assert sum(map(len, runners[-1].sweeps)) == 2 * 21 - len(saved)
    assert resumed.records[: len(saved)] == saved and len(resumed.records) == 2 * 21


@pytest.mark.parametrize("case", ["directory", "parent is a file", "unwritable folder"])
def test_a_bad_out_is_refused_before_any_work(case, runners, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    out, reason = {
        "directory": (tmp_path, "is a directory"),
        "parent is a file": (blocker / "niah.json", f"cannot be created: {str(blocker)!r} is a file"),
        "unwritable folder": (Path("/sys/niah.json"), "is not writable"),
    }[case]
    with pytest.raises(SystemExit) as exit_:
        cli(["eval", "niah", "--model", "fake-model", "--methods", "full", "--lengths", "120", "--depths", "0",
             "--out", str(out), "--no-progress"])
    assert exit_.value.code == 2
    message = capsys.readouterr().err
    assert f"out={str(out)!r} {reason}" in message and "--out" in message
    assert [runner.built + runner.sweeps for runner in runners] == [[]]  # no method built, no prompt answered


def _complete_file(tmp_path: Path) -> Path:
    out = tmp_path / "niah.json"
    run_niah(**GRID, out=out)
    return out


BROKEN = {
    "truncated": (lambda text: text[: len(text) // 2], "invalid JSON at line"),
    "not an object": (lambda text: "[]", "it holds a JSON list, not an object"),
    "other schema": (lambda text: text.replace("raggedkv-eval/1", "raggedkv-eval/0"), "schema is 'raggedkv-eval/0'"),
    "records not a list": (lambda text: json.dumps({**json.loads(text), "records": {}}), "'records' is missing"),
    "record without a key field": (lambda text: text.replace('"depth": 50, ', "", 1), "has no 'depth'"),
    "grid of lists": (lambda text: json.dumps({**json.loads(text), "grid": {"length": [[120]]}}), "'grid' is not"),
    "unhashable key": (lambda text: text.replace('"depth": 50,', '"depth": [50],', 1), "depth=[50], not a number"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_results_file_is_refused_with_its_path_and_reason_and_left_untouched(case, runners, tmp_path):
    out = _complete_file(tmp_path)
    corrupt, reason = BROKEN[case]
    out.write_text(corrupt(out.read_text()))
    before = out.read_bytes()
    with pytest.raises(ValueError, match="not a usable results file") as error:
        run_niah(**GRID, out=out)
    assert str(out) in str(error.value) and reason in str(error.value), str(error.value)
    assert out.read_bytes() == before and len(runners) == 2 and runners[1].sweeps == []


def test_a_file_that_is_not_utf8_is_refused(runners, tmp_path):
    out = tmp_path / "niah.json"
    out.write_bytes(b'{"schema": "\xff"}')
    with pytest.raises(ValueError, match=r"not UTF-8 text"):
        run_niah(**GRID, out=out)
    assert out.read_bytes() == b'{"schema": "\xff"}'


def test_a_duplicated_record_is_refused_not_counted_twice(runners, tmp_path):
    out = _complete_file(tmp_path)
    data = json.loads(out.read_text())
    data["records"].append(dict(data["records"][1]))
    out.write_text(json.dumps(data))
    before = out.read_bytes()
    with pytest.raises(ValueError) as error:
        run_niah(**GRID, out=out)
    first = data["records"][1]
    assert str(out) in str(error.value)
    assert (f"record 7 repeats the key (method={first['method']!r}, kv_size={first['kv_size']!r}, length=120, "
            f"depth={first['depth']}, needle={first['needle']!r}) of record 2") in str(error.value)
    assert out.read_bytes() == before


def test_repeated_grid_values_give_one_record_per_cell(runners, tmp_path):
    result = run_niah(**{**GRID, "methods": ["snapkv", "snapkv", "full"], "kv_sizes": [16, 16],
                         "depths": [0, 0]}, out=tmp_path / "niah.json")
    assert [(r["method"], r["kv_size"], r["depth"]) for r in result.records] == [("snapkv", 16, 0), ("full", None, 0)]
    assert [row[:3] for row in result.rows] == [["snapkv", 16, 1], ["full", None, 1]]
    store = ResultStore(None, "niah", {}, ("method",))
    store.add([{"method": "full"}])
    with pytest.raises(ValueError, match="already stored"):
        store.add([{"method": "full"}])
    assert store.records == [{"method": "full"}]


def test_another_grid_is_merged_only_when_asked(runners, tmp_path):
    out = _complete_file(tmp_path)
    before = out.read_bytes()
    with pytest.raises(ValueError) as error:
        run_niah(**{**GRID, "kv_sizes": [32], "depths": [0, 50]}, out=out)
    assert str(out) in str(error.value) and "another grid" in str(error.value) and "--merge" in str(error.value)
    assert "kv_size: 16 only in the file; 32 only in this run. depth: 100 only in the file" in str(error.value)
    assert out.read_bytes() == before and runners[-1].sweeps == []

    merged = run_niah(**{**GRID, "kv_sizes": [32], "depths": [0, 50]}, out=out, merge=True)
    assert runners[-1].sweeps == [[("snapkv", 32)]] * 2  # full's cells were already there
    saved = json.loads(out.read_text())
    assert saved["grid"] == {"method": ["full", "snapkv"], "kv_size": [None, 16, 32], "length": [120],
                             "depth": [0, 50, 100], "needle": ["stew"]}
    assert len(merged.records) == 8 and saved["records"] == merged.records
    assert [row[:3] for row in merged.rows] == [["full", None, 3], ["snapkv", 16, 3], ["snapkv", 32, 2]]
    assert saved["summary"]["rows"] == merged.rows

    union = {**GRID, "kv_sizes": [16, 32]}
    run_niah(**union, out=out)  # the file's grid now is the union: rerunning it resumes, filling the missing cell
    assert runners[-1].sweeps == [[("snapkv", 32)]]


def test_other_settings_are_refused_even_with_merge(runners, tmp_path):
    out = _complete_file(tmp_path)
    with pytest.raises(ValueError, match=r"other settings \(max_new_tokens: 4 in the file, 8 in this run\)"):
        run_niah(**{**GRID, "max_new_tokens": 8}, out=out, merge=True)


def test_a_file_without_a_recorded_grid_resumes_under_a_grid_that_covers_it(runners, tmp_path):
    out = _complete_file(tmp_path)
    data = json.loads(out.read_text())
    del data["grid"]  # as files written before grids were recorded
    data["records"] = data["records"][:4]
    out.write_text(json.dumps(data))
    run_niah(**GRID, out=out)
    assert runners[-1].sweeps == [[("full", None), ("snapkv", 16)]]
    out.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="depth: 50 only in the file"):
        run_niah(**{**GRID, "depths": [0]}, out=out)


def _readme_command(prefix: str) -> list[str]:
    """The README's command line that starts with `prefix`, without `raggedkv` and `--threads N` (which would change
    this test process's torch threads)."""
    line = next(line for line in (REPO / "README.md").read_text().splitlines() if line.startswith(prefix))
    argv = shlex.split(line.split("#")[0])[1:]
    if "--threads" in argv:
        del argv[argv.index("--threads"): argv.index("--threads") + 2]
    return argv


def test_the_readme_commands_leave_the_committed_results_alone(runners, tmp_path, monkeypatch):
    committed = REPO / "eval-results" / "niah-smollm2-135m-instruct.json"
    copy = tmp_path / "eval-results" / committed.name
    copy.parent.mkdir()
    copy.write_bytes(committed.read_bytes())
    monkeypatch.chdir(tmp_path)  # the README's commands, run where a checkout's eval-results/ would be

    small = _readme_command("raggedkv eval reasoning --kv-sizes")
    assert "--out" not in small
    assert cli([*small, "--lengths", "120", "--depths", "0", "--needles", "1", "--no-progress"]) == 0
    assert (tmp_path / "raggedkv-eval" / "reasoning-smollm2-135m-instruct.json").exists()
    assert sorted(p.name for p in copy.parent.iterdir()) == [committed.name]  # no plot redrawn there

    reproduce = _readme_command("raggedkv eval niah --lengths 1000 2000 4000 --depths 10 50 90")
    assert reproduce[reproduce.index("--out") + 1] == f"eval-results/{committed.name}"
    assert cli([*reproduce, "--no-progress"]) == 0  # the committed file resumes: nothing left to answer
    assert runners[-1].sweeps == [] and json.loads(copy.read_text())["records"] == json.loads(committed.read_text())[
        "records"]
    with pytest.raises(SystemExit):  # a smaller grid into the committed file needs --merge
        cli(["eval", "niah", "--kv-sizes", "64", "--lengths", "1000", "--out", str(copy), "--no-progress"])
