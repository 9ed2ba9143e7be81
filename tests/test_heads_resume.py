"""score-heads keeps every finished trial through a crash, SIGTERM or SIGINT, resumes from them, and refuses (and
leaves untouched) a trial log of other settings or one that does not parse. The trials are faked (random scores,
no model) except where the CLI loads the tiny Llama of test_heads_run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from raggedkv.engine.heads import run
from raggedkv.engine.heads.run import RunSettings, read_trial_log, run_grid

from tests.test_heads_run import HEADS, LAYERS, tiny_dir  # noqa: F401  (tiny_dir is a fixture)

REPO = Path(__file__).resolve().parents[1]
SETTINGS = RunSettings("fake", "retrieval", (0, 100), (0.0, 50.0, 100.0), chat=False, max_new_tokens=2)


def fake_record(spec) -> dict:
    """A trial record as `run_trial` returns it, with fresh random scores `[LAYERS][HEADS]`."""
    return {"id": spec.id, "needle": spec.needle, "length": spec.length, "depth": spec.depth,
            "accepted": bool(torch.rand(()) < 0.5), "scores": torch.rand(LAYERS, HEADS).tolist()}


class FakeTrials:
    """Stands in for `run_trial`: records the trials it runs and the finished trials on disk before each one."""

    def __init__(self, log: Path, fail_at: int | None = None):
        self.log, self.fail_at, self.ran, self.on_disk = log, fail_at, [], []

    def __call__(self, model, tokenizer, kind, needle, spec, chat, max_new_tokens) -> dict:
        self.on_disk.append(len(read_trial_log(self.log, SETTINGS.header())))
        if len(self.ran) == self.fail_at:
            raise RuntimeError("the trial crashed")
        self.ran.append(spec.id)
        return fake_record(spec)


def test_every_finished_trial_is_on_disk_before_the_next_runs(tmp_path, monkeypatch):
    log = tmp_path / "fake-retrieval.trials.jsonl"
    fake = FakeTrials(log)
    monkeypatch.setattr(run, "run_trial", fake)
    records = run_grid(None, None, SETTINGS, log, progress=False)
    total = len(SETTINGS.trials())
    assert fake.on_disk == list(range(total))
    assert list(read_trial_log(log, SETTINGS.header()).values()) == records
    assert [p.name for p in tmp_path.iterdir()] == [log.name]  # no temporary file left behind


def test_a_crashed_run_keeps_its_finished_trials_and_a_rerun_does_only_the_rest(tmp_path, monkeypatch):
    log = tmp_path / "fake-retrieval.trials.jsonl"
    crashing = FakeTrials(log, fail_at=4)
    monkeypatch.setattr(run, "run_trial", crashing)
    with pytest.raises(RuntimeError, match="crashed"):
        run_grid(None, None, SETTINGS, log, progress=False)
    kept = read_trial_log(log, SETTINGS.header())
    assert list(kept) == crashing.ran == [spec.id for spec in SETTINGS.trials()[:4]]

    rerun = FakeTrials(log)
    monkeypatch.setattr(run, "run_trial", rerun)
    records = run_grid(None, None, SETTINGS, log, progress=False)
    assert rerun.ran == [spec.id for spec in SETTINGS.trials()[4:]]
    assert records[:4] == list(kept.values()) and [r["id"] for r in records] == [s.id for s in SETTINGS.trials()]


def _lines(*items) -> str:
    return "".join((item if isinstance(item, str) else json.dumps(item)) + "\n" for item in items)


BROKEN_LOGS = {
    "other settings": (lambda header, trial: _lines({**header, "depths": [25.0]}, trial),
                       "was written with other settings \\(depths\\)"),
    "torn line": (lambda header, trial: _lines(header, json.dumps(trial)[:40]), "does not parse: line 2 is not JSON"),
    "not JSON at all": (lambda header, trial: "garbage\n", "does not parse: line 1 is not JSON"),
    "empty": (lambda header, trial: "", "has no settings line"),
    "no settings line": (lambda header, trial: _lines([1, 2]), "has no settings line"),
    "trial without id": (lambda header, trial: _lines(header, {"accepted": True}), "line 2 is not a trial"),
}


@pytest.mark.parametrize("case", list(BROKEN_LOGS))
def test_a_log_of_other_settings_or_that_does_not_parse_is_refused_and_left_untouched(case, tmp_path, monkeypatch):
    log = tmp_path / "fake-retrieval.trials.jsonl"
    content, reason = BROKEN_LOGS[case]
    text = content(SETTINGS.header(), fake_record(SETTINGS.trials()[0]))
    log.write_text(text)
    monkeypatch.setattr(run, "run_trial", lambda *args: pytest.fail("a trial ran despite a refused log"))
    with pytest.raises(ValueError, match=f"trial log '{log}' {reason}.*left untouched"):
        run_grid(None, None, SETTINGS, log, progress=False)
    assert log.read_text() == text


SIGNAL_SCRIPT = """
import sys, time
import torch
from raggedkv.engine import cli
from raggedkv.engine.heads import run

def slow_trial(model, tokenizer, kind, needle, spec, chat, max_new_tokens):
    time.sleep(0.3)
    config = model.config
    scores = torch.rand(config.num_hidden_layers, config.num_attention_heads).tolist()
    return {"id": spec.id, "needle": spec.needle, "length": spec.length, "depth": spec.depth, "prompt_tokens": 9,
            "accepted": True, "seconds": 0.3, "scores": scores}

run.run_trial = slow_trial
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_mid_run_keeps_every_finished_trial_and_the_same_command_resumes(signum, tiny_dir, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    log = out / f"{tiny_dir.name}-semantic.trials.jsonl"
    depths = [str(depth) for depth in range(0, 101, 10)]
    argv = ["score-heads", "--model", str(tiny_dir), "--kind", "semantic", "--lengths", "0", "--depths", *depths,
            "--out", str(out), "--max-new-tokens", "2", "--no-progress"]
    total = len(run.needles_for("semantic")) * len(depths)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    process = subprocess.Popen([sys.executable, "-c", SIGNAL_SCRIPT, *argv], cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen, deadline = 0, time.monotonic() + 240
    while seen < 3 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
        if log.exists():
            seen = len(log.read_text().splitlines()) - 1  # atomic writes: never a partial line
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signum, stderr
    assert "interrupted: every finished trial is in the trial log" in stderr
    header = json.loads(log.read_text().splitlines()[0])
    saved = read_trial_log(log, header)
    assert 3 <= seen <= len(saved) < total  # nothing finished was lost, and the run did stop early
    assert sorted(p.name for p in out.iterdir()) == [log.name]  # no temporary file, no outputs of a partial run

    resumed = subprocess.run([sys.executable, "-c", SIGNAL_SCRIPT, *argv], cwd=REPO, env=env, capture_output=True,
                             text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr
    final = read_trial_log(log, header)
    assert len(final) == total and all(final[trial_id] == record for trial_id, record in saved.items())
    scores = json.loads((out / f"{tiny_dir.name}-semantic.json").read_text())
    assert all(len(values) == total for values in scores.values())
