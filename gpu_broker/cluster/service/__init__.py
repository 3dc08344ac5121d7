"""The cluster service: the embedded cluster behind a small authenticated HTTP/JSON API on loopback.

Kernel provisioners and kernel fronts, possibly in several Jupyter processes, share one cluster through it. Its
address and token are written to a discovery file (mode 0600) that clients read; see :mod:`..client`.
:mod:`.handlers` is the API, :mod:`.cluster_service` the service, :mod:`.main` the command line.

Run: ``python -m notebookos.gpu_broker.cluster.service --state-dir DIR --hosts 4 [--ephemeral]``. An ephemeral cluster
(started on demand by the provisioner) exits once its last kernel is gone.
"""

from .cluster_service import ClusterService

__all__ = ["ClusterService"]
