"""Training-event traces: load a CSV in the Sensei June format and rebuild its notebook sessions.

The format (the production trace of the NotebookOS paper, bundled in gpu_broker/simulator/data/): one row per
training event
with ``job_id``, ``num_gpu``, ``submit_time`` (minutes from the start of the trace) and ``duration`` (minutes);
``iterations``, ``model_name``
and ``interval`` are carried but unused. There is no session column: a session is a run of consecutive rows whose
events do not overlap and move forward in time, and a row that starts before the previous row's end begins a new
session. Times are converted to seconds here, the unit of the scheduling core.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

REQUIRED_COLUMNS = ("job_id", "num_gpu", "submit_time", "duration")


class TraceError(ValueError):
    """A trace file that cannot be used; the message names the file and the line."""


@dataclass(frozen=True, slots=True)
class TraceEvent:
    line: int  # line number in the file (the header is line 1)
    job_id: str
    gpus: int
    submit_s: float
    duration_s: float

    @property
    def end_s(self) -> float:
        return self.submit_s + self.duration_s


@dataclass(frozen=True, slots=True)
class Session:
    session_id: int
    events: tuple[TraceEvent, ...]


def load_trace(path: str | Path) -> list[TraceEvent]:
    """Read every row of a trace file, in file order, checking each field."""
    path = Path(path)
    try:
        handle = path.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise TraceError(f"{path}: cannot open trace: {exc.strerror}") from exc
    with handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise TraceError(f"{path} line 1: empty file, expected a header with {', '.join(REQUIRED_COLUMNS)}")
        columns = [name.strip() for name in header]
        missing = [name for name in REQUIRED_COLUMNS if name not in columns]
        if missing:
            raise TraceError(f"{path} line 1: missing column(s) {', '.join(missing)} (found: {', '.join(columns)})")
        index = {name: columns.index(name) for name in REQUIRED_COLUMNS}
        events = []
        for row in reader:
            line = reader.line_num
            if not any(field.strip() for field in row):
                continue  # blank line
            if len(row) != len(columns):
                raise TraceError(f"{path} line {line}: {len(row)} field(s), the header has {len(columns)}")
            events.append(_parse_row(path, line, {name: row[i].strip() for name, i in index.items()}))
    return events


def _parse_row(path: Path, line: int, fields: dict[str, str]) -> TraceEvent:
    def number(name: str) -> float:
        text = fields[name]
        try:
            value = float(text)
        except ValueError:
            raise TraceError(f"{path} line {line}: {name} {text!r} is not a number") from None
        if not math.isfinite(value):
            raise TraceError(f"{path} line {line}: {name} {text!r} is not a finite number")
        return value

    gpus = number("num_gpu")
    if gpus != int(gpus) or gpus < 1:
        raise TraceError(f"{path} line {line}: num_gpu {fields['num_gpu']!r} must be a whole number of at least 1")
    submit = number("submit_time")
    if submit < 0:
        raise TraceError(f"{path} line {line}: submit_time {fields['submit_time']!r} is negative")
    duration = number("duration")
    if duration < 0:
        raise TraceError(f"{path} line {line}: duration {fields['duration']!r} is negative")
    if duration == 0:
        raise TraceError(f"{path} line {line}: duration is 0; a training event lasts at least some time")
    return TraceEvent(line, fields["job_id"], int(gpus), submit * 60.0, duration * 60.0)


def reconstruct_sessions(events: list[TraceEvent]) -> list[Session]:
    """Split rows into sessions: a row that starts before the previous row's end begins a new session."""
    sessions: list[Session] = []
    current: list[TraceEvent] = []
    for event in events:
        if current and event.submit_s < current[-1].end_s:
            sessions.append(Session(len(sessions), tuple(current)))
            current = []
        current.append(event)
    if current:
        sessions.append(Session(len(sessions), tuple(current)))
    return sessions


def select_window(sessions: list[Session], start_s: float, end_s: float | None) -> list[Session]:
    """Keep the events submitted in [start_s, end_s) (end None: to the end), and the sessions that have any.

    Session identity comes from the whole trace, so a session cut by the window keeps its id.
    """
    selected = []
    for session in sessions:
        kept = tuple(e for e in session.events if e.submit_s >= start_s and (end_s is None or e.submit_s < end_s))
        if kept:
            selected.append(Session(session.session_id, kept))
    return selected
