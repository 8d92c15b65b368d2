"""Configuration: YAML with line numbers, typed option reading, and the validated settings.

The settings' public names are re-exported here (``from smtpfilter.config import Config``).
"""

from smtpfilter.config.settings import (
    DEFAULT_FORWARD,
    DEFAULT_LISTEN,
    Config,
    ConfigError,
    DnsConfig,
    HeadersConfig,
    HostPort,
    Limits,
    LogConfig,
    MetricsConfig,
    PolicyConfig,
    QuarantineConfig,
    TlsConfig,
    load_config,
    parse_hostport,
    shipped_rules_dir,
)

__all__ = [
    "DEFAULT_FORWARD",
    "DEFAULT_LISTEN",
    "Config",
    "ConfigError",
    "DnsConfig",
    "HeadersConfig",
    "HostPort",
    "Limits",
    "LogConfig",
    "MetricsConfig",
    "PolicyConfig",
    "QuarantineConfig",
    "TlsConfig",
    "load_config",
    "parse_hostport",
    "shipped_rules_dir",
]
