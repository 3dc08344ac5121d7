"""The live cluster: everything between the scheduling core and the replica processes.

The cluster service and its HTTP API (:mod:`.service`), the embedded cluster that drives the scheduling core and
carries out its decisions (:mod:`.embedded`), host agents that start replica processes (:mod:`.host_agent`), host
providers (:mod:`.providers`), GPU inventory, the event log, metrics and chart history, and the client that
provisioners and kernel fronts use to reach the service (:mod:`.client`, :mod:`.launcher`).
"""
