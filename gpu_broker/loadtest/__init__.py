"""Driving a live lab with a slice of the production trace: ``notebookos replay`` (:mod:`.replay`) and the
JupyterLab it runs against, driven through Jupyter's REST and websocket APIs (:mod:`.lab_driver`)."""
