"""The admin dashboard's static files (HTML, CSS, ES modules, vendored uPlot), shipped as package data.

This file makes ``notebookos.frontend`` a regular package, so :func:`importlib.resources.files` gives the folder as a
plain path that Tornado's static file handler can serve; ``server_extension/dashboard.py`` serves it.
"""
