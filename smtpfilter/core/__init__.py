"""The shared vocabulary of every other package: envelope, message, wire bytes, verdicts,
replies, text, errors. Imports nothing else of smtpfilter."""
