"""The SMTP front door: after-queue content filter and before-queue proxy (aiosmtpd glue,
ESMTP grammar, the transaction handler in lockstep with 10026)."""
