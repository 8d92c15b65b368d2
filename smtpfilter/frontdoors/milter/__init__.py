"""The milter front door (issue 16): Postfix's smtpd asks us during the SMTP session.

protocol.py is the Sendmail milter v6 packet codec and option negotiation (no I/O); session.py
turns the events of one milter connection into messages for the engine and the engine's
decision into milter replies; server.py listens (inet: or unix:) and plugs the sessions into
the service lifecycle.
"""
