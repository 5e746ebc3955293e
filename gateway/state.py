"""`AppState`: what the handlers share, built by the app's lifespan.

The lifespan publishes it once, on the app (`publish`); handlers, operators'
tools and tests reach it the one way, `AppState.of(app)` (in a handler,
`AppState.of(request.app)`). Everything else is passed as an argument.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from starlette.applications import Starlette

from gateway.auth import Authenticator
from gateway.config import Settings
from gateway.descriptors import Descriptors
from gateway.exits import Exits
from gateway.generations import Generations
from gateway.limits import Limits
from gateway.metrics import Metrics
from gateway.routing import Router
from gateway.stores import StreamStore

__all__ = ["AppState"]


@dataclass(frozen=True)
class AppState:
    """The running gateway: its settings and the parts its lifespan opened."""

    settings: Settings
    store: StreamStore
    generations: Generations
    metrics: Metrics
    router: Router
    auth: Authenticator
    limits: Limits
    descriptors: Descriptors = field(default_factory=Descriptors)
    #: The stream responses to end when the server exits.
    exits: Exits = field(default_factory=Exits)

    @staticmethod
    def of(app: Starlette) -> AppState:
        """The state of `app`: there once its lifespan has opened everything (and kept
        after shutdown, so tests can look at what it did)."""
        state: AppState = app.state.gateway
        return state

    def publish(self, app: Starlette) -> None:
        """Make this the state of `app` (the lifespan does, once it has opened everything)."""
        app.state.gateway = self
