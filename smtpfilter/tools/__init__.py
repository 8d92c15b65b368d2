"""Operator commands: scan and test of stored mail and the text reports they print; doctor,
which checks how Postfix is wired to us."""
