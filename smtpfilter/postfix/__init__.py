"""Postfix's own formats: header_checks tables (reading, POSIX and PCRE → RE2 translation,
the action words) and their import into smtpfilter rules."""
