"""`RelayContext`: what every upload on this relay shares (settings, bus, registry, metrics, upstreams, the caps).

Built once by the app's lifespan (relay/app.py) and handed to every request: plain uploads (relay/proxy.py),
resumable ones (relay/resumable/), the admin endpoints (relay/admin.py) and the webhooks. `emit` is the one door
an upload's events go through: the registry first (so a client that asks finds the new state), then the bus.
The caps' counters (`in_flight`, `per_client`) are this process's; across relays they live in `state`
(relay/state/), reached only on the head of a request, never per chunk.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from relay.bus import EventBus
from relay.core.events import Event
from relay.metrics import RelayMetrics
from relay.settings import Settings
from relay.state import MemoryState, SharedState
from relay.uploads import UploadRegistry
from relay.upstream import Upstream

__all__ = ["RelayContext"]


@dataclass
class RelayContext:
    """What every upload shares; built by the app's lifespan."""

    settings: Settings
    bus: EventBus
    registry: UploadRegistry
    metrics: RelayMetrics
    upstreams: dict[str, Upstream]
    in_flight: int = 0
    per_client: dict[str, int] = field(default_factory=dict)
    state: SharedState | None = None  # None: this process only, over `bus` and `registry`

    @property
    def shared(self) -> SharedState:
        """Reads the admin endpoints may await, and the caps across relays (relay/state/)."""
        if self.state is None:
            self.state = MemoryState(self.bus, self.registry)
        return self.state

    def emit(self, event: Event) -> None:
        self.registry.apply(event)
        self.bus.publish(event)
