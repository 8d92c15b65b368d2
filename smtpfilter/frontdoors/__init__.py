"""Every way mail reaches the engine: SMTP (content filter and before-queue proxy), pipe(8)."""
