"""From one message to ONE Decision: rules, checks, pipeline, policy, DNS lists."""
