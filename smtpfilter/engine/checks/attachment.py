"""The ``attachment`` rule kind: file names (globs) and true file types of attachments,
nested multiparts, attached messages and (with ``archives: true``) zip members included.

```yaml
- name: BANNED_ATTACHMENT
  check: attachment
  names: ['*.exe', '*.scr', '*.js', '*.vbs', '*.lnk']   # globs, case-insensitive
  archives: true              # also the names inside zip archives (central directory only)
  action: quarantine
- name: DISGUISED_EXECUTABLE
  check: attachment
  types: [executable]         # detected from the content (engine.filetype.FAMILIES)
  action: quarantine
```

- An attachment is a leaf with Content-Disposition attachment, or a file name, or content that
  is not text (engine.mime.Part.is_attachment).
- ``names``: shell globs (``*``, ``?``, ``[...]``) on each name the part declares (the
  Content-Disposition filename AND the Content-Type name: readers differ in which they show),
  decoded (RFC 2231, RFC 2047), without directories, control characters or trailing dots and
  spaces, compared casefolded and NFKC-folded. ``*.exe`` catches ``invoice.pdf.exe``.
- ``types``: families from engine.filetype, detected from the decoded content; never the
  declared Content-Type or the name.
- ``archives: true``: zip members count too, for names and types, down to zips in zips
  (``mime.archive_depth``, default 2). Nothing is extracted: names come from the central
  directory, types from the first 36 KB of each member, inflated within that bound.

What the walk or a listing could not see (more parts, deeper nesting or a bigger zip directory
than the ``mime:`` limits allow) is not this kind's finding: it is recorded on the message as
the parse limit ``mime``, which a ``limits`` rule turns into MIME_LIMIT (the shipped
rules/30-attachments.yaml quarantines it, so attachment rules fail closed). A ``limits`` rule
placed after the attachment rules also sees the archive limits they reached.

Findings: ``NAME`` (a name glob matched; the label is that name, ``BANNED_ATTACHMENT(
invoice.pdf.exe)``) and ``TYPE`` (a type family matched; the label is the part's name). The
reason says which part (its MIME path, as IMAP numbers parts), its name, the declared and the
detected type, and which glob or family: what ``smtpfilter test`` and ``scan`` show.
"""

from __future__ import annotations

import fnmatch
import re

from smtpfilter.config.options import Options
from smtpfilter.config.settings import MimeConfig
from smtpfilter.core.message import MessageContext
from smtpfilter.core.text import snippet
from smtpfilter.core.verdict import Finding
from smtpfilter.engine.filetype import FAMILIES, Detection, detect
from smtpfilter.engine.mime import Part, glob_forms, record_limit, walk_message

__all__ = ["AttachmentCheck", "describe_part", "detection_of", "finding_label"]


def finding_label(name: str, limit: int = 64) -> str:
    """A name as it may appear in a verdict label, a log line and a header: printable ASCII
    without spaces, parentheses or commas (they delimit labels), at most ``limit``."""
    text = "".join(c if " " < c <= "~" and c not in "()," else "?" for c in name)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def detection_of(msg: MessageContext, part: Part, archives: bool, limits: MimeConfig) -> Detection:
    """The detection of one part, shared by every attachment rule of the message
    (``msg.memo``). With ``archives`` the members are sniffed and zips in zips listed, which
    decodes the whole attachment (names alone need only its tail, but a zip inside a zip has
    no other way to show its names); a detection with archives serves rules without too."""
    for key in (("filetype", part.path, True), ("filetype", part.path, archives)):
        found = msg.memo.get(key)
        if found is not None:
            return found  # type: ignore[return-value]
    found = detect(part, archives=archives, member_types=archives, max_entries=limits.zip_entries,
                   max_depth=limits.archive_depth, content_limit=limits.content_size)
    msg.memo[("filetype", part.path, archives)] = found
    for what in found.limits:
        record_limit(msg, limits, what)
    return found


def describe_part(part: Part, detection: Detection | None = None) -> str:
    """``part 2 invoice.pdf (declared application/pdf, detected pe: Windows PE exe)``."""
    text = f"part {part.path or '0'}"
    if part.names:
        text += f" {part.names[0]!r}"
    text += f" (declared {part.ctype}"
    if detection is not None:
        found = detection.type
        text += ", detected " + (found.name + (f": {found.detail}" if found.detail else "")
                                 if found is not None else "nothing known")
    return text + ")"


class AttachmentCheck:
    kind = "attachment"
    needs_env = True
    needs_body = True

    def __init__(self, names: list[str], types: list[str], *, archives: bool,
                 limits: MimeConfig) -> None:
        self.globs = names
        self.types = frozenset(types)
        self.archives = archives
        self.limits = limits
        patterns = [fnmatch.translate(g.casefold()) for g in names]
        self.regex = re.compile("|".join(patterns)) if patterns else None

    @classmethod
    def from_options(cls, opts: Options, env: object = None) -> "AttachmentCheck":
        names = opts.str_list("names", [])
        types = opts.str_list("types", [])
        for family in types:
            if family not in FAMILIES:
                opts.problem("types", f"{family!r} is not one of {', '.join(FAMILIES)}")
        for glob in names:
            if not glob.strip():
                opts.problem("names", "an empty glob matches nothing")
        if not names and not types:
            opts.need("an attachment rule needs names (globs), types, or both")
        archives = opts.bool("archives")
        limits = getattr(env, "mime", None) or MimeConfig()
        return cls(names, types, archives=archives, limits=limits)

    def describe(self) -> str:
        what = []
        if len(self.globs) > 6:
            what.append(f"named {' or '.join(self.globs[:5])} or ... ({len(self.globs)} globs)")
        elif self.globs:
            what.append("named " + " or ".join(self.globs))
        if self.types:
            what.append("of type " + " or ".join(sorted(self.types)))
        return "an attachment " + " or ".join(what) + (" (zip members too)" if self.archives else "")

    def _glob(self, name: str) -> str | None:
        if self.regex is None:
            return None
        for form in glob_forms(name):
            if self.regex.match(form):
                for glob in self.globs:
                    if fnmatch.fnmatchcase(form, glob.casefold()):
                        return glob
        return None

    def observe(self, msg: MessageContext) -> Finding | None:
        tree = walk_message(msg, self.limits)
        for part in tree.attachments():
            for name in part.names:
                glob = self._glob(name)
                if glob is not None:
                    return Finding("NAME", f"{describe_part(part)} matches {glob}", (name,),
                                   label=finding_label(name))
            if not self.types and not self.archives:
                continue
            detection = detection_of(msg, part, self.archives, self.limits)
            if self.types:
                own = detection.type.families if detection.type else frozenset()
                hit = self.types & (detection.families if self.archives else own)
                if hit:
                    inner = [p for p, t in detection.members if t is not None and t.families & hit]
                    where = f", member {inner[0]!r}" if inner and not own & hit else ""
                    return Finding(
                        "TYPE",
                        f"{describe_part(part, detection)}{where}: {', '.join(sorted(hit))}",
                        (part.label(),),
                        detail=detection.type.name if detection.type else "",
                        label=finding_label(part.label()),
                    )
            if self.archives and self.globs:
                for path, _ in detection.members:
                    member = path.rsplit("/", 1)[-1]
                    glob = self._glob(member)
                    if glob is not None:
                        return Finding(
                            "NAME",
                            f"{describe_part(part, detection)} contains "
                            f"\"{snippet(path)}\", which "
                            f"matches {glob}",
                            (path,),
                            label=finding_label(member),
                        )
        return None
