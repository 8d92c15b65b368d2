"""HTML reduced to the text a reader sees, for body rules: fast, linear, never an exception.

Not a renderer: tags go, entities are decoded, the content of script/style/head/template and
comments is dropped, block elements become line breaks and inline elements vanish without a
space (so ``wi<b>re</b>`` reads ``wire``, as on screen). Everything is done with ``str.find``
and regexes that cannot backtrack across the text: ``<[^<>]*>`` stops at the next ``<``, so 256 KB
of ``<<<<`` costs one pass, and an unclosed ``<script>`` swallows the rest, as in a browser.

Measured (issue 14 research): about 4x faster than html.parser (stdlib) on a 150 KB newsletter with the
same words out, and linear on hostile input (256 KB of unclosed tags: ~25 ms).
"""

from __future__ import annotations

import html
import re

__all__ = ["html_to_text"]

# Elements whose content is never shown as text.
_HIDDEN = ("script", "style", "head", "template", "noscript", "title", "xml")
_OPEN_HIDDEN = re.compile(r"<(script|style|head|template|noscript|title|xml)\b", re.IGNORECASE)
_COMMENT = "<!--"
# A tag: "<" then a letter, "/", "!" or "?" (else "<" is text, as in "a < b"), up to ">",
# never across another "<". Block elements first (they become a line break), then the rest
# (they vanish): two substitutions with constant replacements, no Python call per tag.
_BLOCK = (
    "address article aside blockquote br center dd details dialog div dl dt fieldset figcaption "
    "figure footer form h1 h2 h3 h4 h5 h6 header hr li main nav ol p pre section summary table "
    "tbody td tfoot th thead tr ul".split()
)
# The lookahead rejects "<<<" and "< " before the 40-way alternation is tried: 256 KB of "<"
# costs 11 ms instead of 94 ms (re does not turn an alternation into a trie).
_BLOCK_TAG = re.compile(r"<(?=/?[a-zA-Z])/?(?:%s)(?![a-zA-Z0-9:-])[^<>]*>" % "|".join(_BLOCK), re.IGNORECASE)
_TAG = re.compile(r"<[/!?]?[a-zA-Z][^<>]*>|<[!?][^<>]*>")


def _drop_hidden(text: str) -> str:
    """Remove comments and hidden elements with their content, in one left-to-right pass."""
    out: list[str] = []
    position = 0
    lower = None
    while True:
        comment = text.find(_COMMENT, position)
        match = _OPEN_HIDDEN.search(text, position)
        element = match.start() if match else -1
        if comment < 0 and element < 0:
            out.append(text[position:])
            break
        if comment >= 0 and (element < 0 or comment < element):
            out.append(text[position:comment])
            end = text.find("-->", comment + 4)
            if end < 0:
                break  # an unclosed comment hides the rest
            position = end + 3
            continue
        assert match is not None
        out.append(text[position:element])
        if lower is None:
            lower = text.lower()  # closing tags are found case-insensitively
        name = match.group(1).lower()
        end = lower.find(f"</{name}", match.end())
        if end < 0:
            break  # unclosed: the browser swallows the rest too
        close = text.find(">", end)
        position = len(text) if close < 0 else close + 1
    return "".join(out)


def html_to_text(text: str) -> str:
    """The visible text of an HTML document or fragment."""
    text = _drop_hidden(text)
    text = _TAG.sub("", _BLOCK_TAG.sub("\n", text))
    return html.unescape(text)
