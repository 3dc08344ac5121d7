"""Names shared by the kernel front and its replicas on top of the Jupyter messaging protocol.

The front talks to replicas with ordinary Jupyter messages; what notebookos adds travels in ``metadata.notebookos``
of execute requests and replies, in IOPub message types that the front consumes and never forwards, and in
control messages of the front's own (the ``%gpus`` question, an abandoned attempt, a cell after a pause) and one
a monitor may send (announce applied state).
"""

from __future__ import annotations

import enum

# Key under a message's metadata that carries notebookos fields.
NOTEBOOKOS_META = "notebookos"

# IOPub message by which the elected executor of an attempt announces itself, so that the front knows whose
# output to forward to the client. Never forwarded to clients. A cell run without an election (``solo``) is not
# announced: the front sent it to that replica alone and took it for the executor when it did.
EXECUTOR_ANNOUNCEMENT = "notebookos_executor"

# IOPub message a standby publishes after applying a cell's committed state (content: replica, attempt, applied_at
# as wall-clock seconds), once asked to (ANNOUNCE_APPLIED). The front never forwards it; benchmarks and monitors
# subscribe to a replica to time sync.
STATE_APPLIED = "notebookos_state_applied"
# Control-channel message (no reply; content: on, a bool) by which a benchmark or monitor asks a replica to publish
# STATE_APPLIED from now on, or no longer; signed with the kernel's key, like the front's own. Off by default: the
# announcement of every applied record cost a standby about half the CPU it spends applying a trivial cell.
ANNOUNCE_APPLIED = "notebookos_announce_applied"

# IOPub message the executor publishes once a cell's GPUs are released (content: bind_s, release_s, seconds), before
# its idle; the front passes the times to the cluster with the release. Not sent for a cell that had no GPUs. Never
# forwarded to clients.
GPU_RELEASED = "notebookos_gpu_released"


# Control-channel request by which the front asks a replica, before it asks the scheduler for a cell's GPUs, what the
# cell asks for: the replica owns the `%gpus` magic (content: code, gpus = the kernel's request so far). The reply
# (content: cell = GPUs this cell asks for, kernel = the kernel's request from then on) is the front's own. Answered
# ahead of ipykernel's control dispatch (kernels/gpu_request.py), so it publishes no busy or idle on IOPub.
GPUS_REQUEST = "notebookos_gpus_request"
# The magic a cell asks for GPUs with. The replica parses it (gpu_request.py); the front only knows that a cell whose
# source does not contain it asks for the kernel's request, and skips the question for such cells.
GPUS_MAGIC = "%gpus"
GPUS_REPLY = "notebookos_gpus_reply"

# Control-channel message (no reply) by which the front tells the replicas it has given up on an attempt of a cell
# (content: msg_id, attempt): its invited lead died or was cut off before the election decided. The others wait for
# that decision in their execute_request handler, and ipykernel runs one shell request at a time, so without this the
# next attempt would queue behind the wait until it timed out (replica.COMMIT_TIMEOUT_S).
ATTEMPT_ABANDONED = "notebookos_attempt_abandoned"

# Control-channel message (no reply, no content) by which the front tells a replica that a cell comes after a pause:
# its Raft goes back to the busy pace (replication/raft_log.py, KernelLog.quicken). A cell's request goes to its
# executor only, so without this the other replicas would notice their leader's loss at the idle pace.
QUICKEN = "notebookos_quicken"


# A replica's exit statuses that mean something to the cluster, with the reason an operator reads (the cluster's
# replica_exited event, the API's exit_reason). 75 is sysexits' EX_TEMPFAIL: the same replica elsewhere would work.
EXIT_STATE_FOLDER_FULL = 75
REPLICA_EXIT_REASONS = {
    EXIT_STATE_FOLDER_FULL: "its state folder was full, so it left to be replaced on another host",
}


class ReplicaRole(str, enum.Enum):
    """A replica's part in one attempt, reported in ``metadata.notebookos.role`` of its execute_reply."""

    EXECUTOR = "executor"
    STANDBY = "standby"
    ALL_YIELD = "all_yield"
