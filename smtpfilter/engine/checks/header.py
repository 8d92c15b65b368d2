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
- ``unless``: patterns that exempt a header: one matching any of them is not tried (a Postfix
  table's ``DUNNO`` line above, or a negated ``!/pattern/``). ``if``: patterns a header must all
  match before it is tried (a header_checks ``if /pattern/ ... endif`` block).
- ``form: postfix`` matches a header exactly as header_checks(5) sees it: ``Name:`` and the value
  as written, folded lines joined by a newline (cleanup's mime_state does that), encoded words
  left encoded; ``.`` matches that newline as it does in regexp and pcre tables by default
  (regexp_table(5) "newlines are not treated as special", pcre_table(5) flag ``s`` on). The
  default form, ``unfolded``, is friendlier for rules written by hand. Rules made by
  ``smtpfilter import-header-checks`` use ``postfix``.

Findings: ``MATCH`` (the groups of the matching pattern are kept for the reply text) and
``MISSING``.
"""

from __future__ import annotations

from smtpfilter.config.options import Options
from smtpfilter.core.message import Header, MessageContext
from smtpfilter.core.text import snippet
from smtpfilter.core.verdict import Finding
from smtpfilter.engine.patterns import PatternError, PatternSet

__all__ = ["HeaderCheck"]

_DECODE_CHOICES = ("both", "raw", "decoded")
_FORMS = ("unfolded", "postfix")


class HeaderCheck:
    kind = "header"

    def __init__(
        self,
        names: list[str],
        patterns: PatternSet | None,
        *,
        missing: bool = False,
        decode: str = "both",
        form: str = "unfolded",
        require: PatternSet | None = None,
        exempt: PatternSet | None = None,
    ) -> None:
        self.names = [n.lower() for n in names]
        self.display = names
        self.every = names == ["*"]
        self.patterns = patterns
        self.missing = missing
        self.raw = decode in ("both", "raw")
        self.decoded = decode in ("both", "decoded")
        self.postfix_form = form == "postfix"
        self.require = require  # `if`: every one must match
        self.exempt = exempt  # `unless`: none may match

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
        form = opts.choice("form", _FORMS, "unfolded")
        if form == "postfix" and opts.has("decode") and decode != "raw":
            opts.problem("decode", "form: postfix matches the header as written (decode: raw)")
        if form == "postfix":
            decode = "raw"
        require = _patterns(opts, "if", case_sensitive, dot_nl=form == "postfix")
        exempt = _patterns(opts, "unless", case_sensitive, dot_nl=form == "postfix")
        if missing and (require or exempt):
            opts.problem("missing", "if and unless select headers to match; not with missing")
        patterns = None
        if missing and raw_patterns:
            opts.problem("match", "use either match or missing: true, not both")
        elif missing:
            if names == ["*"]:
                opts.problem("missing", 'missing: true needs a header name, not "*"')
        elif not raw_patterns:
            opts.need("a header rule needs match (a regex or a list) or missing: true")
        else:
            try:
                patterns = PatternSet(
                    _dot_nl(raw_patterns, form == "postfix"), case_sensitive=case_sensitive
                )
            except PatternError as error:
                opts.problem("match", str(error), index=error.index)
        return cls(
            names,
            patterns,
            missing=missing,
            decode=decode,
            form=form,
            require=require,
            exempt=exempt,
        )

    def describe(self) -> str:
        names = ", ".join(self.display)
        if self.missing:
            return f"no {names} header"
        assert self.patterns is not None
        text = f"{names} matches " + " or ".join(f"/{p}/" for p in self._shown(self.patterns))
        if self.require:
            text += " if " + " and ".join(f"/{p}/" for p in self._shown(self.require))
        if self.exempt:
            text += " unless " + " or ".join(f"/{p}/" for p in self._shown(self.exempt))
        return text

    def _shown(self, patterns: PatternSet) -> list[str]:
        return [p.removeprefix(_DOT_NL) for p in patterns.patterns]

    def _selected(self, text: str) -> bool:
        """Whether ``if``/``unless`` let this header be tried at all."""
        if self.exempt is not None and self.exempt.search(text) is not None:
            return False
        if self.require is not None:
            return self.require.match_all(text)
        return True

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
            if self.postfix_form:
                text = postfix_line(header) if self.every else postfix_value(header)
                if not self._selected(text):
                    continue
                match = patterns.search(text)
                if match is not None:
                    return Finding(
                        "MATCH",
                        f"{snippet(text)} matches /{match.pattern.removeprefix(_DOT_NL)}/",
                        match.groups,
                    )
                continue
            forms = []
            if self.raw:
                forms.append(header.line if self.every else header.text)
            if self.decoded:
                # A value without encoded words is its own decoded form: with decode: decoded
                # it is tried as written (issue 10: skipping it let plain spam through); with
                # decode: both only a value that decoding changed is worth a second try.
                decoded = header.decoded
                if not self.raw or decoded != header.text:
                    forms.append(f"{header.name}: {decoded}" if self.every else decoded)
            for text in forms:
                if not self._selected(text):
                    continue
                match = patterns.search(text)
                if match is not None:
                    shown = text if self.every else f"{header.name}: {text}"
                    return Finding(
                        "MATCH",
                        f"{snippet(shown)} matches /{match.pattern}/",
                        match.groups,
                    )
        return None


# --- Postfix's view of a header ------------------------------------------------------------
_DOT_NL = "(?s)"


def _dot_nl(patterns: list[str], on: bool) -> list[str]:
    """In the postfix form "." matches the newline between folded lines, as in Postfix tables.
    An inline flag per pattern keeps PatternSet unchanged; ``(?-s)`` in a pattern turns it off."""
    return [_DOT_NL + p for p in patterns] if on else patterns


def _patterns(opts: Options, key: str, case_sensitive: bool, *, dot_nl: bool) -> PatternSet | None:
    raw = opts.str_list(key)
    if not raw:
        return None
    try:
        return PatternSet(_dot_nl(raw, dot_nl), case_sensitive=case_sensitive)
    except PatternError as error:
        opts.problem(key, str(error), index=error.index)
        return None


def postfix_value(header: Header) -> str:
    """The value as written after the colon, folded lines joined by LF (no CR), not trimmed."""
    return header.raw.replace(b"\r\n", b"\n").decode("utf-8", "replace")


def postfix_line(header: Header) -> str:
    """``Name:value`` exactly as header_checks(5) patterns see one logical header."""
    return f"{header.name}:{postfix_value(header)}"
