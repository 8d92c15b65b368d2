"""What every session of one daemon shares: the engine (config, rules and policy, swapped whole
on reload), the 10026 pool, the session count, the counters and the metrics.

Part of ``service``, the machinery every daemon shares.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from smtpfilter.config.settings import Config
from smtpfilter.core.verdict import Decision
from smtpfilter.delivery.downstream import DownstreamPool
from smtpfilter.engine.judge import Engine, outcome_of
from smtpfilter.engine.policy import Policy
from smtpfilter.engine.rules import RuleSet

if TYPE_CHECKING:  # pragma: no cover
    from smtpfilter.service.metrics import Metrics

__all__ = ["Runtime"]


class Runtime:
    """What all sessions share. ``engine`` is replaced whole on reload: one reference, so a
    message that took it keeps config, rules and policy of one generation."""

    def __init__(self, config: Config, ruleset: RuleSet, pool: DownstreamPool) -> None:
        self.pool = pool
        self.sessions = 0
        self.accepting = True
        # Counters behind systemd's STATUS and the metrics (messages by outcome and action,
        # downstream errors, refused connections...).
        self.counters: dict[str, int] = {}
        # The Prometheus side, when metrics are configured (service/metrics.py); None otherwise,
        # so a filter without metrics neither imports prometheus_client nor pays per message.
        self.metrics: Metrics | None = None
        # At limits.sessions: close the longest-idle session, True if one was (set by the server).
        self.make_room: Callable[[], bool] | None = None
        self.engine = Engine(config, ruleset, observer=self.record)

    # The current generation, for whoever needs one part of it.
    @property
    def config(self) -> Config:
        return self.engine.config

    @property
    def ruleset(self) -> RuleSet:
        return self.engine.ruleset

    @property
    def policy(self) -> Policy:
        return self.engine.policy

    def swap(self, config: Config, ruleset: RuleSet) -> None:
        """A reload: the next generation, in one assignment."""
        self.engine = Engine(config, ruleset, observer=self.record)

    def count(self, key: str) -> None:
        self.counters[key] = self.counters.get(key, 0) + 1
        if self.metrics is not None:
            self.metrics.count(key)

    def record(self, decision: Decision | None, reply: str, elapsed: float) -> None:
        """The engine's observer: once per message, after the front door answered."""
        action = decision.action.value if decision else "error"
        self.count(f"action_{action}")  # what the rules decided (metrics)
        self.count(outcome_of(decision, reply))  # what Postfix was told (systemd STATUS)
        if self.metrics is not None:
            self.metrics.message(decision, reply, elapsed)
