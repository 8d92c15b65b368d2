"""The ``header`` rule kind: regexes over header values, or a header that is missing.

```yaml
- name: SPAM_MAILER
  check: header
  header: X-Mailer             # one name, a list of names, or "*" for every header
  match: ['^MaxBulk\\.Mailer', '^Avalanche']
```

- Every occurrence of the header is tried, not only the first.
- A value is matched unfolded (RFC 5322 §2.2.3), both as written and with RFC 2047 encoded words
  decoded (``=?UTF-8?B?...?=``), so a spammer cannot hide a word by encoding it. ``decode: raw``
  or ``decode: decoded`` restrict that.
- ``header: "*"`` matches each whole logical header line, ``Name: value``, the way a Postfix
  header_checks table does (header_checks(5)); patterns then start with the name: ``^Subject:``.
- Case-insensitive unless ``case_sensitive: true``, like Postfix regexp/pcre tables.
- ``missing: true`` instead of ``match``: the finding is that no such header exists.

Findings: ``MATCH`` (the groups of the matching pattern are kept for the reply text) and
``MISSING``.
"""

from __future__ import annotations

from ..message import Header, MessageContext
from ..options import Options
from ..patterns import PatternError, PatternSet
from ..verdict import Finding

__all__ = ["HeaderCheck"]

_DECODE_CHOICES = ("both", "raw", "decoded")


def _snippet(text: str, limit: int = 100) -> str:
    text = "".join(c if c.isprintable() else "?" for c in text[: limit + 1])
    return text if len(text) <= limit else text[:limit] + "..."


class HeaderCheck:
    kind = "header"

    def __init__(
        self,
        names: list[str],
        patterns: PatternSet | None,
        *,
        missing: bool = False,
        decode: str = "both",
    ) -> None:
        self.names = [n.lower() for n in names]
        self.display = names
        self.every = names == ["*"]
        self.patterns = patterns
        self.missing = missing
        self.raw = decode in ("both", "raw")
        self.decoded = decode in ("both", "decoded")

    @classmethod
    def from_options(cls, opts: Options) -> "HeaderCheck":
        names = opts.str_list("header", ["*"], required=True) or ["*"]
        if "*" in names and len(names) > 1:
            opts.problem("header", '"*" (every header) cannot be combined with names')
        for name in names:
            if name != "*" and (not name or ":" in name or any(c <= " " for c in name)):
                opts.problem("header", f"{name!r} is not a header name (no colon, no spaces)")
        missing = opts.bool("missing")
        raw_patterns = opts.str_list("match")
        case_sensitive = opts.bool("case_sensitive")
        decode = opts.choice("decode", _DECODE_CHOICES, "both")
        patterns = None
        if missing and raw_patterns:
            opts.problem("match", "use either match or missing: true, not both")
        elif missing:
            if names == ["*"]:
                opts.problem("missing", 'missing: true needs a header name, not "*"')
        elif not raw_patterns:
            opts.problem(None, "a header rule needs match (a regex or a list) or missing: true")
        else:
            try:
                patterns = PatternSet(raw_patterns, case_sensitive=case_sensitive)
            except PatternError as error:
                opts.problem("match", str(error))
        return cls(names, patterns, missing=missing, decode=decode)

    def describe(self) -> str:
        names = ", ".join(self.display)
        if self.missing:
            return f"no {names} header"
        assert self.patterns is not None
        return f"{names} matches " + " or ".join(f"/{p}/" for p in self.patterns.patterns)

    def _candidates(self, msg: MessageContext) -> list[Header]:
        if self.every:
            return msg.headers.headers
        found: list[Header] = []
        for name in self.names:
            found.extend(msg.headers.get_all(name))
        return found

    def observe(self, msg: MessageContext) -> Finding | None:
        headers = self._candidates(msg)
        if self.missing:
            if headers:
                return None
            return Finding("MISSING", f"message has no {', '.join(self.display)} header")
        patterns = self.patterns
        assert patterns is not None
        for header in headers:
            forms = []
            if self.raw:
                forms.append(header.line if self.every else header.text)
            if self.decoded and "=?" in header.text:
                decoded = header.decoded
                forms.append(f"{header.name}: {decoded}" if self.every else decoded)
            for text in forms:
                match = patterns.search(text)
                if match is not None:
                    shown = text if self.every else f"{header.name}: {text}"
                    return Finding(
                        "MATCH",
                        f"{_snippet(shown)} matches /{match.pattern}/",
                        match.groups,
                    )
        return None
