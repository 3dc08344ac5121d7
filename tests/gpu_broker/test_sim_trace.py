"""Trace loading, session reconstruction as the trace README states it, windows, and clear errors."""

from __future__ import annotations

import pytest

from notebookos.gpu_broker.simulator.trace import TraceError, load_trace, reconstruct_sessions, select_window

from broker_helpers import DATA


def test_rows_are_read_in_file_order_with_times_in_seconds():
    events = load_trace(DATA / "session_rules.csv")
    assert [e.job_id for e in events] == ["0", "1", "2", "3", "4", "5"]
    first = events[0]
    assert (first.line, first.gpus, first.submit_s, first.duration_s, first.end_s) == (2, 1, 6000.0, 600.0, 6600.0)
    assert [e.gpus for e in events] == [1, 4, 4, 8, 1, 1]


def test_a_row_starting_before_the_previous_rows_end_begins_a_new_session():
    sessions = reconstruct_sessions(load_trace(DATA / "session_rules.csv"))
    # 100-110, 110-115 (starts exactly at the end: same session), 200-230 | 220 overlaps | 50 goes back in time, 60
    assert [[e.job_id for e in s.events] for s in sessions] == [["0", "1", "2"], ["3"], ["4", "5"]]
    assert [s.session_id for s in sessions] == [0, 1, 2]


def test_window_keeps_events_submitted_inside_it_and_session_ids():
    sessions = reconstruct_sessions(load_trace(DATA / "session_rules.csv"))
    kept = select_window(sessions, start_s=100 * 60, end_s=210 * 60)
    assert [(s.session_id, [e.job_id for e in s.events]) for s in kept] == [(0, ["0", "1", "2"])]
    later = select_window(sessions, start_s=205 * 60, end_s=None)
    assert [(s.session_id, [e.job_id for e in s.events]) for s in later] == [(1, ["3"])]


def test_the_bundled_june_trace_has_the_documented_shape():
    from notebookos.gpu_broker.simulator.experiment import BUNDLED_TRACE

    events = load_trace(BUNDLED_TRACE)
    assert len(events) == 30_909
    assert {e.gpus for e in events} == {1, 4, 8}
    assert min(e.duration_s for e in events) >= 60


@pytest.mark.parametrize(
    ("name", "line", "words"),
    [
        ("missing_column.csv", 1, "missing column(s) duration"),
        ("non_numeric.csv", 3, "submit_time 'twenty' is not a number"),
        ("negative_duration.csv", 4, "duration '-3' is negative"),
    ],
)
def test_bad_files_name_the_line(name, line, words):
    with pytest.raises(TraceError) as caught:
        load_trace(DATA / name)
    assert f"{name} line {line}:" in str(caught.value)
    assert words in str(caught.value)


@pytest.mark.parametrize(
    ("row", "words"),
    [
        ("1,0,10,0,m,5,0", "num_gpu '0' must be a whole number of at least 1"),
        ("1,2.5,10,0,m,5,0", "num_gpu '2.5' must be a whole number"),
        ("1,1,-4,0,m,5,0", "submit_time '-4' is negative"),
        ("1,1,10,0,m,0,0", "duration is 0"),
        ("1,1,10,0,m,nan,0", "duration 'nan' is not a finite number"),
        ("1,1,10,0", "4 field(s), the header has 7"),
    ],
)
def test_each_bad_field_is_reported_with_its_line(tmp_path, row, words):
    path = tmp_path / "trace.csv"
    path.write_text("job_id,num_gpu,submit_time,iterations,model_name,duration,interval\n0,1,1,0,m,1,0\n" + row + "\n")
    with pytest.raises(TraceError, match="line 3: ") as caught:
        load_trace(path)
    assert words in str(caught.value)


def test_empty_and_missing_files(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(TraceError, match="line 1: empty file"):
        load_trace(empty)
    with pytest.raises(TraceError, match="cannot open trace"):
        load_trace(tmp_path / "absent.csv")


def test_extra_columns_and_column_order_do_not_matter(tmp_path):
    path = tmp_path / "reordered.csv"
    path.write_text("duration,note,submit_time,num_gpu,job_id\n5,x,10,4,a\n\n3,y,20,1,b\n")
    events = load_trace(path)
    assert [(e.job_id, e.gpus, e.submit_s, e.duration_s, e.line) for e in events] == [
        ("a", 4, 600.0, 300.0, 2),
        ("b", 1, 1200.0, 180.0, 4),
    ]
