"""How a host agent runs its replicas: as processes of its machine (``process``) or in containers (``docker``).

Laid out as jupyter_client lays out kernel provisioning: the contract in :mod:`.base`, one module per runtime, and
:func:`.factory.make_runtime` choosing one from the agent's options.
"""
