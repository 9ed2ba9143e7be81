"""The reasoning needles: each needs one inference step over two stated facts, answers sit first and second
equally often, they share no person with the evaluation needles, and their version guards the trial log."""

import json
import re

import pytest
from raggedkv.engine.eval.needles import NEEDLES as EVAL_NEEDLES
from raggedkv.engine.eval.needles import REASONING_NEEDLES as EVAL_REASONING_NEEDLES
from raggedkv.engine.heads import needles, run
from raggedkv.engine.heads.needles import REASONING_NEEDLES, needles_for, needles_version
from raggedkv.engine.heads.run import RunSettings, run_grid

PLAN = re.compile(r"(\w+)'s weekend plan is [^.]*\.")
JOB = re.compile(r"(\w+) works as an? (\w+)\.")


@pytest.mark.parametrize("needle", REASONING_NEEDLES)
def test_a_reasoning_needle_answers_only_through_the_job_fact(needle):
    plans = [match.group(0) for match in PLAN.finditer(needle.text)]
    jobs = dict(JOB.findall(needle.text))
    asked = re.fullmatch(r"What is the weekend plan of the (\w+)\?", needle.question).group(1)
    assert len(plans) == 2 and needle.answer in plans  # the answer and a distractor of the same form
    owner = PLAN.match(needle.answer).group(1)
    distractor_owner = PLAN.match(next(plan for plan in plans if plan != needle.answer)).group(1)
    assert jobs[owner] == asked and jobs[distractor_owner] != asked and owner != distractor_owner
    assert asked not in needle.answer and owner not in needle.question  # the link is the job sentence


def test_reasoning_answers_sit_first_and_second_equally_often():
    first = [needle.text.startswith(needle.answer) for needle in REASONING_NEEDLES]
    assert sum(first) * 2 == len(first)


def test_reasoning_needles_share_no_person_or_job_with_the_evaluation_needles():
    ours = {word.lower() for needle in REASONING_NEEDLES for pair in JOB.findall(needle.text) for word in pair}
    theirs = " ".join(f"{n.sentence} {n.question}" for n in EVAL_NEEDLES).lower()
    theirs += " ".join(f"{n.fact} {n.distractor} {n.question}" for n in EVAL_REASONING_NEEDLES).lower()
    assert ours and not {word for word in ours if re.search(rf"\b{word}\b", theirs)}


def test_the_trial_log_records_the_needles_version_and_refuses_another(tmp_path, monkeypatch):
    settings = RunSettings("fake", "reasoning", (0,), (50.0,), chat=False)
    header = settings.header()
    assert header["needles_version"] == needles_version("reasoning") == needles.REASONING_NEEDLES_VERSION
    assert header["needles"][0]["answer"] == needles_for("reasoning")[0].answer
    log = tmp_path / "fake-reasoning.trials.jsonl"
    text = json.dumps({**header, "needles_version": header["needles_version"] - 1}) + "\n"
    log.write_text(text)
    monkeypatch.setattr(run, "run_trial", lambda *args: pytest.fail("a trial ran despite a refused log"))
    with pytest.raises(ValueError, match="other settings \\(needles_version\\)"):
        run_grid(None, None, settings, log, progress=False)
    assert log.read_text() == text
