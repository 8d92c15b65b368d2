"""What every daemon shares: runtime, lifecycle (bind, serve, reload, drain), listener,
workers, logs, metrics, sd_notify."""
