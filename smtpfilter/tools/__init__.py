"""Operator commands on stored mail: scan and test, and the text reports they print."""
