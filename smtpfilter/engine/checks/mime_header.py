"""The ``mime_header`` rule kind: the header kind's matching over the headers Postfix gives
mime_header_checks: the MIME headers of the message (Content-Description, -Disposition, -ID,
-Transfer-Encoding, -Type, MIME-Version: src/global/header_opts.c HDR_OPT_MIME) and EVERY header
of every multipart body part (cleanup_message.c), at any depth.

```yaml
- name: PART_HEADER
  check: mime_header
  header: Content-Type
  match: ['application/x-msdownload']
  action: reject
```

Every option of ``check: header`` applies (one name, a list or "*", ``match``, ``if``,
``unless``, ``decode``, ``form: postfix``, ``missing``: no such header in any part). Every
occurrence is tried; values are unfolded and tried both as written and with RFC 2047 words
decoded. ``classes`` picks Postfix's table classes to read (default ``[mime_header]``):
``nested_header`` is the other headers of attached messages (nested_header_checks), ``header``
the other top-level headers (header_checks); ``import-header-checks --kind nested_header``
writes ``classes: [nested_header]`` with ``form: postfix``.

Findings: ``MATCH`` and ``MISSING``, as for ``check: header``.
"""

from __future__ import annotations

from smtpfilter.config.options import Options
from smtpfilter.config.settings import MimeConfig
from smtpfilter.core.message import Header, MessageContext
from smtpfilter.engine.checks.header import HeaderCheck
from smtpfilter.engine.mime import postfix_class, walk_message

__all__ = ["CLASSES", "MimeHeaderCheck"]

CLASSES = ("mime_header", "nested_header", "header")


class MimeHeaderCheck(HeaderCheck):
    kind = "mime_header"
    needs_env = True
    needs_body = True
    classes: tuple[str, ...] = ("mime_header",)
    limits = MimeConfig()

    @classmethod
    def from_options(cls, opts: Options, env: object = None) -> "MimeHeaderCheck":  # type: ignore[override]
        classes = opts.str_list("classes", ["mime_header"])
        for name in classes:
            if name not in CLASSES:
                opts.problem("classes", f"{name!r} is not one of {', '.join(CLASSES)}")
        check = super().from_options(opts)
        check.classes = tuple(classes)  # type: ignore[attr-defined]
        check.limits = getattr(env, "mime", None) or MimeConfig()  # type: ignore[attr-defined]
        return check  # type: ignore[return-value]

    def describe(self) -> str:
        return f"a MIME part header ({', '.join(self.classes)}): {super().describe()}"

    def _candidates(self, msg: MessageContext) -> list[Header]:
        tree = walk_message(msg, self.limits)
        wanted = self.classes
        found = []
        for part in tree.parts:
            for header in part.headers:
                if postfix_class(part, header) not in wanted:
                    continue
                if self.every or header.lname in self.names:
                    found.append(header)
        return found
