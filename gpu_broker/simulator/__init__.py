"""The trace simulator: replays a training-event trace through the scheduling core on a virtual clock.

trace.py loads and splits the trace into sessions, workload.py applies the session model, engine.py drives the
core, costs.py and metrics.py say what things cost and what is measured, experiment.py runs several policies,
report.py writes the results, and cli.py is ``notebookos simulate``.
"""
