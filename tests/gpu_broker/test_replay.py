"""``notebookos replay``: the time-scaled schedule (pure), and one real replay against its own ``notebookos lab``."""

from __future__ import annotations

import csv
import json
import tempfile

import psutil
import pytest

from notebookos.gpu_broker.loadtest import replay
from notebookos.gpu_broker.simulator.metrics import delay_stats
from notebookos.gpu_broker.simulator.workload import SessionModel
from notebookos.server_extension import cli

from broker_helpers import DATA

# Two sessions (the trace's rule: line 5 starts before line 4's event ends, so it begins a new one):
#   session 0: 1 GPU at minutes 0, 2, 4, one minute each
#   session 1: 4 GPUs at minute 1 for two minutes, then at minute 4 for one
TINY = DATA / "replay_tiny.csv"
MIN = 60.0


def test_replay_is_registered_in_the_notebookos_command():
    assert "notebookos.gpu_broker.loadtest.replay" in cli.SUBCOMMANDS


def test_schedule_scales_every_trace_time_and_starts_at_the_first_opening():
    model = SessionModel(open_before_s=0.5 * MIN, idle_timeout_s=5 * MIN, close_after_s=0.0)
    plans = replay.select_plans(TINY, 0.0, 10.0, None, model)
    schedule = replay.build_schedule(plans, model, time_scale=60.0)  # a trace minute lasts a replay second

    assert [s.session_id for s in schedule] == [0, 1]
    (s0,), (s1,) = (s.notebooks for s in schedule)  # gaps of a minute: one notebook per session
    # time 0 is half a trace minute (half a replay second) before the first event
    assert s0.open_s == pytest.approx(0.0) and s0.open_before_s == pytest.approx(0.5)
    assert [c.nominal_submit_s for c in s0.cells] == pytest.approx([0.5, 2.5, 4.5])
    assert [c.run_s for c in s0.cells] == pytest.approx([1.0, 1.0, 1.0])
    assert [c.think_s for c in s0.cells] == pytest.approx([0.0, 1.0, 1.0])  # from the previous event's end
    assert s0.close_after_s == 0.0 and s0.nominal_close_s == pytest.approx(5.5)

    assert s1.open_s == pytest.approx(1.0)
    assert [c.nominal_submit_s for c in s1.cells] == pytest.approx([1.5, 4.5])
    assert [c.run_s for c in s1.cells] == pytest.approx([2.0, 1.0])
    assert [c.think_s for c in s1.cells] == pytest.approx([0.0, 1.0])
    assert [c.event.gpus for c in s1.cells] == [4, 4]

    # at a tenth of the speed every replay time is ten times longer
    slow = replay.build_schedule(plans, model, time_scale=6.0)
    assert [c.nominal_submit_s for c in slow[1].notebooks[0].cells] == pytest.approx([15.0, 45.0])
    assert slow[1].notebooks[0].cells[0].run_s == pytest.approx(20.0)


def test_a_long_gap_opens_a_new_notebook_on_the_replay_clock_as_in_the_simulator():
    # a 6-second idle timeout splits session 0 at every one-minute gap (open before + timeout < think time)
    model = SessionModel(open_before_s=0.1 * MIN, idle_timeout_s=0.1 * MIN, close_after_s=0.5 * MIN)
    schedule = replay.build_schedule(replay.select_plans(TINY, 0.0, 10.0, None, model), model, time_scale=60.0)
    notebooks = schedule[0].notebooks
    assert [n.name for n in notebooks] == ["s0-n0", "s0-n1", "s0-n2"]
    assert [n.close_after_s for n in notebooks] == pytest.approx([0.1, 0.1, 0.5])  # idle timeout; the last: close after
    for before, after in zip(notebooks, notebooks[1:]):
        reply = before.cells[-1].nominal_submit_s + before.cells[-1].run_s
        assert replay.next_notebook_open_s(reply, after) == pytest.approx(after.open_s)
        assert after.open_s > reply + before.close_after_s  # the earlier one has closed by then


def test_window_and_max_sessions_take_the_earliest_sessions_of_the_window():
    model = SessionModel(open_before_s=0.0, idle_timeout_s=5 * MIN)
    # from minute 1: session 0 keeps its events at 2 and 4, session 1 both of its own; session 1 starts first
    plans = replay.select_plans(TINY, 1.0, 10.0, None, model)
    assert [p.session_id for p in plans] == [1, 0]
    assert [p.event_count for p in plans] == [2, 2]
    only = replay.select_plans(TINY, 1.0, 10.0, 1, model)
    assert [p.session_id for p in only] == [1]
    with pytest.raises(ValueError, match="no training event"):
        replay.select_plans(TINY, 100.0, 10.0, None, model)
    with pytest.raises(ValueError, match="time scale"):
        replay.build_schedule(plans, model, time_scale=0.0)


def test_delay_stats_count_started_at_once_against_the_threshold():
    # one function for the live replay (a wall-clock threshold) and the simulator (zero delay)
    stats = delay_stats([0.01, 0.2, 0.6, 2.0], at_once_s=0.5)
    assert stats["started_without_wait"] == 0.5
    assert stats["delay_max_s"] == 2.0 and stats["delay_p50_s"] == pytest.approx(0.4)
    assert delay_stats([0.0, 0.0, 30.0])["started_without_wait"] == pytest.approx(2 / 3)
    assert set(delay_stats([], 0.5).values()) == {None}
    summary = replay.summarize([], [], 0.5, 0)
    assert set(delay_stats([1.0])) <= set(summary) and summary["delay_p50_s"] is None


def _leftovers(marker: str) -> list[str]:
    found = []
    for p in psutil.process_iter():
        try:
            if marker in " ".join(p.cmdline()) or marker in p.environ().get("IPYTHONDIR", ""):
                found.append(f"{p.pid} {' '.join(p.cmdline())[:120]}")
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return found


@pytest.mark.timeout(180)
def test_replay_drives_a_real_lab_and_measures_every_cell(jupyter_env, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the lab's folder, to find leftover processes
    out = tmp_path / "out"
    code = cli.main(
        [
            "replay",
            "--trace",
            str(TINY),
            "--start-min",
            "0",
            "--minutes",
            "10",
            "--max-sessions",
            "2",
            "--time-scale",
            "60",
            "--open-before-min",
            "0.5",
            "--idle-timeout-min",
            "5",
            "--close-after-min",
            "0",
            "--out",
            str(out),
            "--compare-simulator",
            "--gpus-per-host",
            "4",
        ]
    )
    printed = capsys.readouterr()
    assert code == 0, printed.err[-3000:]

    report = json.loads((out / "replay.json").read_text())
    summary, events = report["summary"], report["events"]
    assert summary["events"] == summary["events_run"] == 5 and summary["events_failed"] == 0
    assert summary["sessions"] == 2 and summary["notebooks"] == 2
    assert [(e["session_id"], e["cell"]) for e in events] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
    for e in events:
        assert e["status"] == "ok" and e["steps"] >= 1, e
        for key in ("start_delay_s", "busy_delay_s", "reply_delay_s", "idle_delay_s", "commit_s", "late_s"):
            assert e[key] is not None and e[key] >= 0, (key, e)
        assert e["start_delay_s"] <= e["reply_delay_s"] <= e["idle_delay_s"]
        assert e["reply_delay_s"] >= e["run_s"]  # the cell trained for its scaled duration
    assert [e["run_s"] for e in events] == pytest.approx([1.0, 1.0, 1.0, 2.0, 1.0])
    for previous, following in zip(events, events[1:]):  # the think-time rule: one replay second after the reply
        if previous["notebook"] == following["notebook"]:
            reply = previous["submitted_s"] + previous["reply_delay_s"]
            assert following["planned_submit_s"] == pytest.approx(reply + 1.0, abs=1e-6)
            assert following["submitted_s"] >= following["planned_submit_s"]
    for key in ("delay_p50_s", "delay_p90_s", "delay_p99_s", "delay_max_s"):
        assert summary[key] >= 0
    assert 0.0 <= summary["started_without_wait"] <= 1.0 and summary["wait_threshold_s"] == 0.5
    assert report["simulator"]["events"] == 5 and report["simulator"]["policy"] == "notebookos"
    assert report["simulator"]["cluster"]["host_gpus"] == 4  # the same cluster as the live lab's
    # every training cell asked the scheduler for its event's GPUs (1 or 4) and was granted them, at once (lead) or
    # after moving a replica (migrate), perhaps after waiting (queued); `%gpus N` cells and the setup ask for none
    decisions = summary["gpu_decisions"]
    assert set(decisions) <= {"lead", "migrate", "queued"}, decisions
    assert decisions.get("lead", 0) + decisions.get("migrate", 0) == 5, decisions
    assert "GPU waiting" in report["note"] and "GPU waiting" in printed.out
    assert "%gpus G" == report["settings"]["gpus_code"]

    with (out / "replay.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 5
    assert (out / "delay_cdf.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert _leftovers(str(tmp_path)) == []  # the lab, its cluster and every replica are gone
