"""The ``body`` rule kind: RE2 patterns over the decoded text of the message's text parts.

```yaml
- name: WIRE_FRAUD
  check: body
  match: ['wire transfer.*today']   # RE2, case-insensitive unless case_sensitive: true
  action: tag
  score: 4
```

- The text parts are text/plain and text/html leaves that are not attachments, wherever they
  are in the MIME tree (attached messages included); a message without MIME is one text part.
- Each part is decoded (base64, quoted-printable), its charset decoded with replacement (an
  unknown charset reads as UTF-8), HTML reduced to its visible text (engine.htmltext), and only
  the first ``mime.text_size`` bytes (default 256 KB) are read, as Postfix reads only the first
  ``body_checks_size_limit`` bytes of a body.
- At most ``mime.text_total`` (2 MB) of text is read per message, part after part; text parts
  left unread then are the parse limit ``mime`` (MIME_LIMIT for a ``limits`` rule).
- The text of one part is matched as ONE line: runs of white space, line breaks included,
  become one space, and invisible format characters (zero-width space and joiners, soft
  hyphen, BOM) are removed, so ``wire transfer`` matches however the sender wrapped or padded
  it. ``parts: [plain]`` or ``[html]`` restricts the parts.

``unless``: patterns that exempt a text (a line, in the postfix form) from ``match``; ``if``:
patterns it must all match first (a body_checks ``DUNNO`` line above, ``if``/``endif``: what
``import-header-checks --kind body`` writes).

``form: postfix`` matches instead each body line exactly as Postfix's body_checks sees it:
undecoded (base64 stays base64), MIME boundaries and the part headers' blank lines included, in
2,048-byte pieces, the first 50 KB of each body segment (engine.mime.cleanup_view, checked
against cleanup(8)); ``import-header-checks --kind body`` writes such rules.

Finding: ``MATCH`` with the pattern's groups; the reason names the part and quotes the text
around the match.
"""

from __future__ import annotations

from smtpfilter.config.options import Options
from smtpfilter.config.settings import MimeConfig
from smtpfilter.core.message import MessageContext
from smtpfilter.core.text import snippet
from smtpfilter.core.verdict import Finding
from smtpfilter.engine.mime import Part, cleanup_view, record_limit, walk_message
from smtpfilter.engine.patterns import PatternError, PatternSet

__all__ = ["BodyCheck", "part_text"]

# Cf characters senders insert between letters to break patterns (Unicode "format" characters
# that render as nothing): ZWSP, ZWNJ, ZWJ, LRM, RLM, WJ, invisible operators, BOM, soft hyphen,
# combining grapheme joiner, Mongolian vowel separator.
_INVISIBLE = dict.fromkeys(
    [0x200B, 0x200C, 0x200D, 0x200E, 0x200F, 0x2060, 0x2061, 0x2062, 0x2063, 0x2064, 0xFEFF,
     0x00AD, 0x034F, 0x180E]
)


def part_text(msg: MessageContext, part: Part) -> str:
    """The normalised text of one part, computed once per message for every body rule."""
    key = ("body_text", part.path)
    text = msg.memo.get(key)
    if text is None:
        text = part.text()
        if not text.isascii():  # the invisible characters are not ASCII; translate is slow
            text = text.translate(_INVISIBLE)
        text = " ".join(text.split())  # str.split: C speed (re.sub is ~5x slower)
        msg.memo[key] = text
    return text  # type: ignore[return-value]


class BodyCheck:
    kind = "body"
    needs_env = True
    needs_body = True

    def __init__(self, patterns: PatternSet, parts: frozenset[str], limits: MimeConfig,
                 postfix_form: bool = False, *, require: PatternSet | None = None,
                 exempt: PatternSet | None = None) -> None:
        self.patterns = patterns
        self.parts = parts
        self.limits = limits
        self.postfix_form = postfix_form
        self.require = require  # `if`: every one must match
        self.exempt = exempt  # `unless`: none may match

    @classmethod
    def from_options(cls, opts: Options, env: object = None) -> "BodyCheck":
        raw = opts.str_list("match", required=True) or []
        case_sensitive = opts.bool("case_sensitive")
        parts = opts.str_list("parts", ["plain", "html"])
        form = opts.choice("form", ("text", "postfix"), "text")
        for name in parts:
            if name not in ("plain", "html"):
                opts.problem("parts", f"{name!r} is not plain or html")
        if form == "postfix" and opts.has("parts"):
            opts.problem("parts", "form: postfix reads every body line, not text parts")
        patterns = None
        if raw:
            # In the postfix form "." matches the newline of a folded line, as in Postfix
            # tables (regexp_table(5), pcre_table(5) flag s); body lines have none anyway.
            shown = ["(?s)" + p for p in raw] if form == "postfix" else raw
            try:
                patterns = PatternSet(shown, case_sensitive=case_sensitive)
            except PatternError as error:
                opts.problem("match", str(error), index=error.index)
        limits = getattr(env, "mime", None) or MimeConfig()
        require = _patterns(opts, "if", case_sensitive, form == "postfix")
        exempt = _patterns(opts, "unless", case_sensitive, form == "postfix")
        return cls(patterns, frozenset(f"text/{p}" for p in parts), limits,  # type: ignore[arg-type]
                   postfix_form=form == "postfix", require=require, exempt=exempt)

    def describe(self) -> str:
        shown = [p.removeprefix("(?s)") for p in self.patterns.patterns]
        where = "a body line (as body_checks)" if self.postfix_form else "text"
        return f"{where} matches " + " or ".join(f"/{p}/" for p in shown)

    def _selected(self, text: str) -> bool:
        if self.exempt is not None and self.exempt.search(text) is not None:
            return False
        return self.require is None or self.require.match_all(text)

    def observe(self, msg: MessageContext) -> Finding | None:
        tree = walk_message(msg, self.limits)
        if self.postfix_form:
            for klass, line in cleanup_view(tree):
                if klass == "body" and self._selected(line):
                    match = self.patterns.search(line)
                    if match is not None:
                        return Finding(
                            "MATCH",
                            f"body line \"{snippet(line)}\" matches "
                            f"/{match.pattern.removeprefix('(?s)')}/",
                            match.groups,
                        )
            return None
        budget = self.limits.text_total
        for part in tree.text_parts():
            if part.ctype not in self.parts:
                continue
            if budget <= 0:  # mime.text_total: thousands of text parts are not read to the end
                record_limit(msg, self.limits, "text")
                break
            text = part_text(msg, part)
            budget -= len(text)
            if not self._selected(text):
                continue
            match = self.patterns.search(text)
            if match is not None:
                start = max(0, match.start - 20)
                return Finding(
                    "MATCH",
                    f"part {part.path or '0'} ({part.ctype}): "
                    f"...{snippet(text[start:start + 100])}... matches /{match.pattern}/",
                    match.groups,
                )
        return None


def _patterns(opts: Options, key: str, case_sensitive: bool, dot_nl: bool) -> PatternSet | None:
    raw = opts.str_list(key)
    if not raw:
        return None
    try:
        return PatternSet(["(?s)" + p for p in raw] if dot_nl else raw,
                          case_sensitive=case_sensitive)
    except PatternError as error:
        opts.problem(key, str(error), index=error.index)
        return None
