"""Hosts on other machines: the ``notebookos agent`` daemon (:mod:`.daemon`) with its API (:mod:`.handlers`), and
the cluster's proxy for a joined agent (:mod:`.remote`)."""
