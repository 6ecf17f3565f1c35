"""The `conflux` command as a user runs it: exit codes and what it prints."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.cli import main as conflux

PIPELINES = Path(__file__).parents[2] / "pipelines"


def test_kept_pipeline_tests_pass(capsys: pytest.CaptureFixture[str]) -> None:
    assert conflux(["test", str(PIPELINES / "examples" / "orders.yaml")]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "2 passed, 0 failed"


def test_failing_kept_test_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = (PIPELINES / "examples" / "orders.yaml").read_text().replace("cents: 950", "cents: 951")
    broken = tmp_path / "orders.yaml"
    broken.write_text(text)
    assert conflux(["test", str(broken)]) == 1
    out = capsys.readouterr().out
    assert "FAIL paid orders get cents: paid: expected" in out
    assert out.splitlines()[-1] == "1 passed, 1 failed"


def test_plan_prints_fused_stages(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("W1_INPUT", "in.ndjson")
    monkeypatch.setenv("W1_OUTPUT", "out")
    assert conflux(["plan", str(PIPELINES / "w1_files.yaml")]) == 0
    out = capsys.readouterr().out
    assert "stage 1 (stateful, keyed by id)" in out
    assert "route6: route -> w1.out.eu, w1.out.us, w1.out.apac" in out


def test_bad_field_fails_at_load_with_its_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (PIPELINES / "examples" / "orders.yaml").read_text()
    broken = tmp_path / "orders.yaml"
    broken.write_text(text.replace("batch_size: 10000", "batch_size: 0"))
    assert conflux(["validate", str(broken)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"conflux: {broken}: Expected `int` >= 1 - at `$.source.batch_size`"
    )


def test_missing_environment_variable_is_named(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("W1_INPUT", raising=False)
    assert conflux(["validate", str(PIPELINES / "w1_files.yaml")]) == 2
    assert "environment variable W1_INPUT is not set" in capsys.readouterr().err


def test_step_needing_a_missing_field_fails_at_validate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (PIPELINES / "examples" / "orders.yaml").read_text()
    broken = tmp_path / "orders.yaml"
    broken.write_text(text.replace("by: status", "by: state"))
    assert conflux(["validate", str(broken)]) == 2
    assert "step 'route4' (route): field 'state' is not in its input" in capsys.readouterr().err
