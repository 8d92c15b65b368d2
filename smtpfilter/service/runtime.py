"""What every session of one daemon shares: config, rules and policy (swapped whole on reload),
the 10026 pool, session count, counters and metrics.

Part of ``service``, the machinery every daemon shares.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from smtpfilter.config.settings import Config
from smtpfilter.delivery.downstream import DownstreamPool
from smtpfilter.engine.policy import Policy
from smtpfilter.engine.rules import RuleSet
from smtpfilter.service.metrics import Metrics

__all__ = ["Runtime", "make_policy"]


@dataclass
class Runtime:
    """What all sessions share. ``ruleset`` and ``policy`` are swapped whole on reload."""

    config: Config
    ruleset: RuleSet
    pool: DownstreamPool
    policy: Policy = field(init=False)
    sessions: int = 0
    accepting: bool = True
    counters: dict[str, int] = field(default_factory=dict)
    metrics: Metrics = field(default_factory=Metrics)  # per-rule tallies, latency, reply codes
    # At limits.sessions: close the longest-idle session, True if one was (set by the server).
    make_room: Callable[[], bool] | None = None

    def __post_init__(self) -> None:
        self.policy = make_policy(self.config)

    def count(self, key: str) -> None:
        self.counters[key] = self.counters.get(key, 0) + 1


def make_policy(config: Config) -> Policy:
    return Policy(config.policy, config.headers, dry_run=config.dry_run)
