"""What the service sends an agent, and keeps of a replica, is the replica's whole configuration."""

from __future__ import annotations

import dataclasses
import json

from notebookos.gpu_broker.cluster.agent.remote import config_json
from notebookos.kernels.replica_config import ReplicaConfig


def test_a_replica_config_crosses_the_wire_as_the_json_of_all_its_fields():
    peers = ("10.0.0.1:7000", "10.0.0.2:7000", "10.0.0.3:7000")
    config = ReplicaConfig(
        "k", 1, "h1", peers[1], peers, "secret", "", "", cwd=None, peer_urls=tuple(f"http://{p}" for p in peers)
    )
    sent = json.loads(json.dumps(config_json(config)))
    assert sent == json.loads(json.dumps(dataclasses.asdict(config)))
    assert ReplicaConfig.from_json(sent) == config
