"""Every way mail reaches the engine: SMTP (content filter and before-queue proxy), pipe(8),
the milter (inside Postfix's smtpd)."""
