"""A replica's lifecycle as the front door sees it: one state, changed only along the allowed transitions.

    STARTING --> UP <--> RESTARTING --> STOPPED
                                   `-> FAILED

STARTING: its first process is loading the model (the deployment answers nothing until every replica is up).
UP: its process runs; it is routed to while its health checks pass (health is not a state: see
replica_handle.Health). RESTARTING: its process died, or the front door is ending it because it stayed
unhealthy, and a new one is on the way (back to UP once healthy). STOPPED: it exited on purpose, or the
deployment is stopping: not restarted. FAILED: out of restarts (or restarting it failed): it stays down.
"""
from __future__ import annotations

from enum import Enum


class ReplicaState(str, Enum):
    STARTING = "starting"
    UP = "up"
    RESTARTING = "restarting"
    STOPPED = "stopped"
    FAILED = "failed"

    def __str__(self) -> str:           # /health and /fastgen/stats show the value ("up")
        return self.value


TRANSITIONS: dict[ReplicaState, frozenset[ReplicaState]] = {
    ReplicaState.STARTING: frozenset({ReplicaState.UP}),
    ReplicaState.UP: frozenset({ReplicaState.RESTARTING}),
    ReplicaState.RESTARTING: frozenset({ReplicaState.UP, ReplicaState.STOPPED, ReplicaState.FAILED}),
    ReplicaState.STOPPED: frozenset(),
    ReplicaState.FAILED: frozenset(),
}


class ReplicaStateError(RuntimeError):
    """A transition the lifecycle does not allow (a bug in the front door, never a user's mistake)."""


class Lifecycle:
    """The state, what the front door is doing about it (``note``, shown by /health), and every transition made
    (``history``: (from, to) pairs, which the tests check against TRANSITIONS)."""

    def __init__(self) -> None:
        self.state = ReplicaState.STARTING
        self.note = ""
        self.history: list[tuple[ReplicaState, ReplicaState]] = []

    def to(self, new: ReplicaState, note: str = "") -> None:
        """Move to ``new`` (a ReplicaStateError naming both states and the allowed ones if it may not)."""
        new = ReplicaState(new)
        allowed = TRANSITIONS[self.state]
        if new not in allowed:
            raise ReplicaStateError(f"a replica cannot go from {self.state.value!r} to {new.value!r}; from "
                                    f"{self.state.value!r} it may go to {sorted(s.value for s in allowed) or 'nothing'}")
        self.history.append((self.state, new))
        self.state, self.note = new, note

    def explain(self, note: str) -> None:
        """What the front door is doing now, in the same state (a restart's back-off, its new process)."""
        self.note = note
