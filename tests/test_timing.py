import json
import subprocess
import sys

from mnist_pipeline.timing import TIMINGS_ENV, StageClock


def test_phases_split_the_time_since_the_process_started_and_repeat_names_add_up():
    clock = StageClock("train")
    clock.mark("start-up")
    clock.mark("work")
    clock.mark("work")
    assert list(clock.phases) == ["start-up", "work"]
    assert all(seconds >= 0 for seconds in clock.phases.values())
    assert sum(clock.phases.values()) <= clock.total()


def test_the_first_phase_holds_what_the_process_did_before_the_clock_existed():
    """Interpreter start-up and imports count: a process that waits 0.5 s before timing shows them."""
    probe = (
        "import time; time.sleep(0.5); from mnist_pipeline.timing import StageClock; "
        "clock = StageClock('probe'); clock.mark('before'); print(clock.phases['before'])"
    )
    done = subprocess.run([sys.executable, "-c", probe], env={}, capture_output=True, text=True, check=True)
    assert 0.5 <= float(done.stdout) < 30


def test_report_appends_one_json_line_only_when_asked(tmp_path, monkeypatch):
    monkeypatch.delenv(TIMINGS_ENV, raising=False)
    clock = StageClock("plot")
    clock.mark("plotting")
    clock.report()  # no file named: nothing written anywhere
    target = tmp_path / "timings.jsonl"
    monkeypatch.setenv(TIMINGS_ENV, str(target))
    clock.report()
    clock.report()
    records = [json.loads(line) for line in target.read_text().splitlines()]
    assert len(records) == 2
    assert records[0]["stage"] == "plot" and set(records[0]["phases"]) == {"plotting"}
    assert records[0]["total"] >= records[0]["phases"]["plotting"]
