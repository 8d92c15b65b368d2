"""Text for humans: the tables and summaries the operator commands print.

Functions here return strings; only :mod:`smtpfilter.cli` prints them. Values that come from a
message (Subject, From...) are shown decoded (RFC 2047) and with control characters escaped, so
a hostile header cannot move the cursor or forge lines in an admin's terminal.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

from smtpfilter.core.message import HeaderBlock
from smtpfilter.core.text import escape

if TYPE_CHECKING:  # pragma: no cover
    from smtpfilter.delivery.quarantine import Entry, Quarantine
    from smtpfilter.tools.scan import Flagged, Judged, Source, Summary

__all__ = [
    "CSV_FIELDS",
    "clean",
    "header_value",
    "ignored_note",
    "judged_json",
    "judged_report",
    "quarantine_json",
    "quarantine_list",
    "quarantine_show",
    "scan_csv_row",
    "scan_json",
    "scan_summary",
    "table",
]


def clean(text: str, limit: int = 200) -> str:
    """One printable line: controls and bytes that are not UTF-8 (an 8-bit envelope address)
    shown escaped, ``\\x1b``, ``\\xff`` (smtpfilter.core.text); long values end in "..."."""
    text = escape(text.replace("\t", " "))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def header_value(headers: HeaderBlock, name: str, limit: int = 200) -> str:
    found = headers.get_all(name)
    return clean(found[0].decoded, limit) if found else ""


def table(rows: Iterable[Iterable[str]], header: Iterable[str]) -> str:
    """Left-aligned columns; the last column is not padded."""
    rows = [list(header)] + [list(r) for r in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths)] + [row[-1]]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


# --- quarantine ------------------------------------------------------------------------------
def _recipients(entry: "Entry") -> str:
    rcpts = [r.get("address", "") for r in entry.envelope.get("recipients", [])]
    if not rcpts:
        return "-"
    return clean(rcpts[0], 40) + (f" (+{len(rcpts) - 1})" if len(rcpts) > 1 else "")


def quarantine_list(store: "Quarantine", entries: list["Entry"]) -> str:
    if not entries:
        return f"{store.directory}: empty\n"
    rows = []
    for entry in entries:
        headers = store.header_block(entry)
        received = entry.meta.get("received_at", "")[:19].replace("T", " ")
        sender = entry.envelope.get("mail_from")
        rows.append([
            entry.id,
            received or "-",
            entry.verdict.get("rule") or "-",
            f"<{clean(sender, 40)}>" if sender is not None else "-",
            _recipients(entry),
            header_value(headers, "subject", 60),
        ])
    count = f"{len(entries)} message{'s' if len(entries) != 1 else ''} in {store.directory}\n"
    return table(rows, ["ID", "RECEIVED (UTC)", "RULE", "FROM", "TO", "SUBJECT"]) + count


def quarantine_show(store: "Quarantine", entry: "Entry") -> str:
    headers = store.header_block(entry)
    env = entry.envelope
    verdict = entry.verdict
    lines = [
        f"id:        {entry.id}",
        f"file:      {entry.path}",
        f"received:  {entry.meta.get('received_at', '-')}",
        f"queue id:  {clean(entry.meta.get('queue_id') or '-')}",
        f"client:    {clean(entry.meta.get('client') or '-')}",
        f"from:      <{clean(env.get('mail_from', ''))}>"
        + "".join(f" {clean(t)}" for t in env.get("mail_params", {}).values()),
    ]
    for rcpt in env.get("recipients", []):
        params = "".join(f" {clean(p)}" for p in rcpt.get("params", []))
        lines.append(f"to:        <{clean(rcpt.get('path', ''))}>{params}")
    for address in entry.meta.get("released_to", []):
        lines.append(f"released:  {clean(address)} (already delivered)")
    if verdict:
        lines.append(
            f"verdict:   {verdict.get('action')} by {verdict.get('rule') or 'score'}, "
            f"score {verdict.get('score', 0):g}"
        )
        lines.append(f"reason:    {clean(verdict.get('reason') or '-', 500)}")
        lines.append(f"rules:     {', '.join(verdict.get('rules', [])) or '-'}")
    lines.append(f"size:      {entry.meta.get('size', entry.path.stat().st_size)} bytes")
    lines.append("headers:")
    for header in headers:
        lines.append(f"  {header.name}: {clean(header.decoded, 300)}")
    return "\n".join(lines) + "\n\n"


def quarantine_json(store: "Quarantine", entry: "Entry") -> dict:
    """``quarantine show --json``: the stored metadata as it is, plus what ``show`` derives."""
    headers = store.header_block(entry)
    return entry.meta | {
        "id": entry.id,
        "file": str(entry.path),
        "headers": [{"name": header.name, "value": header.decoded} for header in headers],
    }


# --- test ------------------------------------------------------------------------------------
def _received_line(judged: "Judged") -> str:
    view = judged.view
    assert view is not None
    msg = view.msg
    text = f"  received: {msg.received_at:%Y-%m-%d %H:%M:%S} UTC ({view.received_by}"
    if msg.client.addr:
        text += f", client {msg.client.addr}"
    if view.cut:
        text += f"; the {view.cut} header field{'s' if view.cut > 1 else ''} above it left out"
    text += ")"
    if view.warning:
        text += f"\n  warning:  {view.warning}"
    return text


def _observe_only(judged: "Judged", dry_run: bool) -> str:
    """Why the ``would have`` did not happen: dry_run, or the rule's own mode: warn."""
    if dry_run:
        return "dry_run is on: no rule acts"
    rule = judged.decision.intended_rule if judged.decision else None
    if rule is not None:
        return f"{rule} has mode: warn"
    return "observe-only rules (mode: warn) counted as if enforced"


def judged_report(judged: "Judged", dry_run: bool = False) -> str:
    """What ``smtpfilter test`` prints for one message: every rule, the decision, the reply."""
    view, decision = judged.view, judged.decision
    assert view is not None and decision is not None
    msg = view.msg
    lines = [
        f"{judged.label}: {msg.size} bytes, {len(msg.headers)} headers"
        + (", header section ends at a malformed line"
           if msg.headers.malformed_at is not None else "")
        + "".join(f", {e.setting} exceeded (the rest not read)" for e in msg.exceeded()),
        _received_line(judged),
    ]
    for part in judged.parts:
        lines.append(f"  part {part.path}: {clean(repr(part.name)) if part.name else '(no name)'}, "
                     f"declared {clean(part.declared)}, "
                     f"detected {clean(part.detected) or 'nothing known'}"
                     + (f" [{', '.join(part.families)}]" if part.families else "")
                     + (f", {part.members} zip members" if part.members else ""))
    width = max([len(rule.name) for rule, _ in judged.results] + [4])
    for rule, finding in judged.results:
        if finding is None:
            lines.append(f"  {rule.name:<{width}}  -")
            continue
        action = rule.action.value if rule.action else "-"
        mode = " (warn mode)" if rule.mode.value == "warn" else ""
        shown = clean(finding.label) if finding.label else finding.code  # "invoice.pdf.exe", IN_PAST
        lines.append(f"  {rule.name:<{width}}  {shown}  score={rule.score:g}  "
                     f"action={action}{mode}")
        lines.append(f"  {'':<{width}}  {clean(finding.reason, 300)}")
    # What happened, then (on its own line) what an observe-only rule would have done: under
    # dry_run the decision keeps the rule that would have acted, which did not act.
    observed = decision.intended is not None and decision.intended is not decision.action
    by = f" by {decision.rule}" if decision.rule and not (
        observed and decision.rule == decision.intended_rule) else ""
    lines.append(f"  decision: {decision.action.value}{by}, score {decision.score:g}")
    if observed:
        assert decision.intended is not None
        lines.append(f"  would have: {decision.intended.value}"
                     + (f" by {decision.intended_rule}" if decision.intended_rule else "")
                     + f" ({_observe_only(judged, dry_run)})")
    for name, value in decision.headers:
        lines.append(f"  header:   {name}: {value}")
    lines.append(f"  reply:    {judged.reply}")
    return "\n".join(lines) + "\n"


def judged_json(judged: "Judged") -> dict:
    view, decision = judged.view, judged.decision
    assert view is not None and decision is not None
    msg = view.msg
    return {
        "file": judged.label,
        "size": msg.size,
        "received_at": msg.received_at.isoformat(),
        "received_by": view.received_by,
        "received_hop": view.hop,
        "warning": view.warning or None,
        "client": msg.client.addr,
        "rules": [
            {
                "rule": rule.name,
                "check": rule.kind,
                "finding": finding.code if finding else None,
                "label": finding.label if finding else None,
                "reason": finding.reason if finding else None,
                "score": rule.score if finding else 0,
                "action": rule.action.value if rule.action else None,
                "mode": rule.mode.value,
            }
            for rule, finding in judged.results
        ],
        "decision": {
            "action": decision.action.value,
            "intended": decision.intended.value if decision.intended else None,
            "intended_rule": decision.intended_rule,
            "rule": decision.rule,
            "score": decision.score,
            "reason": decision.reason,
            "headers": [f"{n}: {v}" for n, v in decision.headers],
        },
        "reply": judged.reply,
        "parts": [
            {"part": p.path, "name": p.name, "declared": p.declared, "detected": p.detected,
             "families": list(p.families), "members": p.members}
            for p in judged.parts
        ],
    }


# --- scan ------------------------------------------------------------------------------------
CSV_FIELDS = ["file", "received_at", "received_by", "client", "date", "from", "subject",
              "action", "would", "rule", "score", "rules", "reply"]


def scan_csv_row(judged: "Judged") -> dict:
    view, decision = judged.view, judged.decision
    assert view is not None and decision is not None
    headers = view.msg.headers
    intended = decision.intended if decision.intended is not decision.action else None
    return {
        "file": judged.label,
        "received_at": view.msg.received_at.isoformat(),
        "received_by": view.received_by,
        "client": view.msg.client.addr or "",
        "date": header_value(headers, "date"),
        "from": header_value(headers, "from"),
        "subject": header_value(headers, "subject"),
        "action": decision.action.value,
        "would": intended.value if intended else "",
        "rule": decision.rule or "",
        "score": f"{decision.score:g}",
        "rules": decision.rules_hit,
        "reply": "" if decision.delivers else judged.reply,  # delivered: 10026 would answer
    }


def _flagged_json(f: "Flagged") -> dict:
    return {"file": f.label, "date": f.date, "from": f.sender, "subject": f.subject,
            "action": f.action, "would": f.intended if f.intended != f.action else None,
            "rule": f.rule, "rules": f.rules, "reply": f.reply, "details": list(f.details)}


def scan_json(source: "Source", summary: "Summary") -> dict:
    return {
        "source": {"kind": source.kind, "path": str(source.path), "messages": source.count},
        "scanned": summary.messages,
        "skipped": [{"file": f, "reason": e} for f, e in summary.skipped],
        "ignored": [str(p) for p in source.ignored],
        "warnings": [{"file": f, "warning": w} for f, w in summary.hop_missing],
        "decisions": dict(summary.decisions),
        "would": dict(summary.would),
        "rules": {
            name: {"findings": summary.hits[name], "decided": summary.decided[name],
                   "would_decide": summary.would_decide[name]}
            for name in sorted(set(summary.hits) | set(summary.decided)
                               | set(summary.would_decide))
        },
        "received_at_from": dict(summary.received_by),
        "not_delivered": [_flagged_json(f) for f in summary.flagged],
        "would_not_deliver": [_flagged_json(f) for f in summary.would_flagged],
    }


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'s' if count != 1 else ''}"


def ignored_note(source: "Source") -> str:
    """Files of a directory that were not read (not *.eml), named: they are not messages
    for this command, but a mailbox folder given by mistake shows up here."""
    names = ", ".join(p.name for p in source.ignored[:3]) + (
        ", ..." if len(source.ignored) > 3 else "")
    return (f"{source.path}: {_plural(len(source.ignored), 'file')} not named *.eml, not "
            f"read ({names}); a Maildir's new/ or cur/ is read whole")


def _flagged_rows(flagged: list["Flagged"], what: str) -> list[list[str]]:
    return [[f.label, clean(f.date, 31), clean(f.sender, 40), getattr(f, what), f.rules,
             clean(f.subject, 60)] for f in flagged]


def scan_summary(source: "Source", summary: "Summary") -> str:
    out = [f"{source.kind} {source.path}: {_plural(summary.messages, 'message')} scanned"
           + (f", {len(summary.skipped)} skipped (below)" if summary.skipped else "")]
    if source.ignored:
        out.append(ignored_note(source))
    if summary.received_by:
        out.append("receipt time from: " + ", ".join(
            f"{what} {count}" for what, count in summary.received_by.most_common()))
    if summary.hop_missing:
        out.append(f"--received-hop beyond the Received: headers of "
                   f"{_plural(len(summary.hop_missing), 'message')} (judged as they are)")
    out.append("")
    total = max(summary.messages, 1)
    rows = [[action, str(count), f"{100 * count / total:.1f}%"]
            for action, count in summary.decisions.most_common()]
    out.append(table(rows, ["DECISION", "MESSAGES", "SHARE"]).rstrip("\n"))
    if summary.would:
        out.append("observe-only (mode: warn or dry_run), would have been: " + ", ".join(
            f"{action} {count}" for action, count in summary.would.most_common()))
    out.append("")
    names = sorted(set(summary.hits) | set(summary.decided) | set(summary.would_decide),
                   key=lambda n: (-summary.hits[n], n))
    if names:
        header = ["RULE", "FINDINGS", "DECIDED"]
        if summary.would_decide:
            header.append("WOULD DECIDE")
        rows = [[name, str(summary.hits[name]), str(summary.decided[name])]
                + ([str(summary.would_decide[name])] if summary.would_decide else [])
                for name in names]
        out.append(table(rows, header).rstrip("\n"))
    else:
        out.append("no rule found anything")
    out.append("")
    if summary.flagged:
        out.append(f"Not delivered ({len(summary.flagged)}):")
        out.append(table(_flagged_rows(summary.flagged, "action"),
                         ["FILE", "DATE", "FROM", "ACTION", "RULES", "SUBJECT"]).rstrip("\n"))
    else:
        out.append("Every message would be delivered.")
    if summary.would_flagged:
        # Delivered all the same: kept apart so that what happened is not read as done.
        out.append("")
        out.append(f"Delivered, but would not have been if the observe-only rules (mode: warn, "
                   f"dry_run) were enforced ({len(summary.would_flagged)}):")
        out.append(table(_flagged_rows(summary.would_flagged, "intended"),
                         ["FILE", "DATE", "FROM", "WOULD", "RULES", "SUBJECT"]).rstrip("\n"))
    detailed = [f for f in summary.flagged + summary.would_flagged if f.details]
    if detailed:
        out.append("")
        out.append("Part findings (which part, its name, its type):")
        for f in detailed:
            out.append(f"{f.label}")
            out.extend(f"  {clean(detail, 300)}" for detail in f.details)
    if summary.skipped:
        out.append("")
        out.append(f"Skipped, not judged ({len(summary.skipped)}):")
        out.append(table([[label, clean(why, 300)] for label, why in summary.skipped],
                         ["FILE", "WHY"]).rstrip("\n"))
    return "\n".join(out) + "\n"
