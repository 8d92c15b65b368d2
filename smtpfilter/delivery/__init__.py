"""The way back into Postfix: the 10026 connection and pool, one deliver routine, the
quarantine."""
