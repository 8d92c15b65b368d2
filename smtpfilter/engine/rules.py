"""Rule files → an immutable RuleSet.

```yaml
rules:
  - name: OLD_DATE        # UPPER_SNAKE: it appears in logs, headers and reply texts
    check: date           # the rule kind: see smtpfilter.engine.checks.CHECK_KINDS
    older_than: 30d       # ...and that kind's own options
    action: reject        # reject | tempfail | discard | accept | tag | warn
    score: 3              # and/or a score for the policy thresholds
    text: "5.7.1 Message too old"   # reply text for reject/tempfail; $1 = a regex group
    mode: warn            # observe only: log "would reject", deliver
```

A RuleSet is built completely before it is used; a reload builds a new one beside the old and
swaps one reference, so messages in flight finish with the rules they started with.

Problems make the whole load fail (ConfigError). Warnings (a Postfix table line skipped as
Postfix skips it, a table with nothing usable in it) do not: they travel with the RuleSet, and
whoever loaded it reports them where its log goes (``check-config`` on stderr, ``serve`` and a
reload in the log), as Postfix's daemons log a bad table line and go on.
"""

from __future__ import annotations

import difflib
import inspect
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from smtpfilter.config.options import ConfigError, Options, Problem, in_file_order
from smtpfilter.config.settings import Config, MimeConfig
from smtpfilter.config.yamlfile import Mapping, YamlError, load_bytes
from smtpfilter.config.yamlfile import Sequence as YamlList
from smtpfilter.core.message import MessageContext
from smtpfilter.core.replies import starts_with_status
from smtpfilter.core.verdict import Action, Decision, Finding, Mode, Verdict
from smtpfilter.engine.auth import Authenticator
from smtpfilter.engine.checks import CHECK_KINDS, Check
from smtpfilter.engine.resolver import DnsService
from smtpfilter.engine.state import StateService

__all__ = ["Rule", "RuleEnv", "RuleSet", "load_rules", "rule_files", "rules_for"]

_NAME = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")
_RULE_KEYS = ("name", "check", "action", "score", "text", "mode", "description")


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    kind: str
    check: Check
    where: str
    action: Action | None = None
    score: float = 0.0
    text: str | None = None
    mode: Mode = Mode.ENFORCE
    description: str = ""
    is_async: bool = False

    def verdict(self, finding: Finding) -> Verdict:
        if finding.action is not None:
            # The check decided the outcome itself (DNSBL allowlist → accept, DNS failure →
            # tempfail): the rule's score and reply text are for its listing, not for this.
            return Verdict(self.name, finding, 0.0, finding.action, self.mode, finding.text)
        return Verdict(self.name, finding, self.score, self.action, self.mode, self.text)


@dataclass(kw_only=True)
class RuleEnv:
    """What rule kinds share beyond their own options: one per process, kept across reloads.

    A kind that needs it says so with ``needs_env = True`` and gets it as
    ``from_options(opts, env)``; the other kinds keep ``from_options(opts)``.

    This is where shared services go: the DNS resolver, cache and zone health, the
    sender-authentication verifier (SPF/DKIM/DMARC, engine/auth/); next the counter store of rate
    limits (in memory or Redis, engine/state.py). Each is a field with a default that costs
    nothing until a rule uses it, built from the config by :func:`rules_for`, and closed by the
    daemon that owns the env (service/lifecycle.py closes ``dns``).
    """

    dns: DnsService = field(default_factory=DnsService)
    # The mime: limits of the MIME walk (engine/mime.py); a reload sets the new config's.
    mime: MimeConfig = field(default_factory=MimeConfig)
    state: StateService = field(default_factory=StateService)  # rate-limit counters
    # SPF, DKIM and DMARC (engine/auth/), asking through ``dns``'s cache; configured with
    # ``authentication:`` at start and reload like ``dns``.
    auth: Authenticator = None  # type: ignore[assignment]  # made in __post_init__

    def __post_init__(self) -> None:
        if self.auth is None:
            self.auth = Authenticator(self.dns.lookup)


@dataclass(frozen=True, slots=True)
class RuleSet:
    rules: tuple[Rule, ...]
    files: tuple[str, ...]
    # The environment the checks were built with; a reload builds the next set with the same.
    env: RuleEnv = field(default_factory=RuleEnv)
    warnings: tuple[Problem, ...] = ()  # usable, but worth telling the admin (file:line)
    # True when a rule kind declares ``needs_body = True`` (MIME, attachments, body patterns):
    # a front door that can skip collecting the body (a policy endpoint, a milter told to skip
    # it) may do so only when this is False, and only then is the MIME structure walked
    # (engine/pipeline.py), so a set of header-only rules costs nothing more.
    needs_body: bool = False
    mime: MimeConfig = field(default_factory=MimeConfig)  # the limits its checks were built with
    # The checks with a post-decision hook, ``settle(msg, decision, delivered)``: called once
    # per message after the front door answered (engine/judge.py), so a rate limit counts
    # only mail that was otherwise accepted. Empty unless such a rule is loaded.
    settlers: tuple[Check, ...] = ()

    def __len__(self) -> int:
        return len(self.rules)

    def settle(self, msg: MessageContext, decision: Decision | None, delivered: bool) -> None:
        """Tell the checks that asked what finally became of one message (``decision`` None:
        none was made, the message was deferred)."""
        for check in self.settlers:
            check.settle(msg, decision, delivered)  # type: ignore[attr-defined]


def rule_files(
    paths: Iterable[Path], problems: list[Problem], origins: Origins | None = None
) -> list[Path]:
    """Expand directories into their *.yaml/*.yml files, sorted by name (10-x before 20-y).

    A path that cannot be used is a problem at the config line that named it (``origins``:
    path → (file:line, the text written there)), as ``c.yaml:1: rules: r: Permission denied``:
    the service runs as an unprivileged user, and a rules directory only root can read is the
    first thing a newcomer meets (issue 13)."""
    files: list[Path] = []
    for path in paths:
        try:
            mode = path.stat().st_mode
            if stat.S_ISDIR(mode):
                names = sorted(os.listdir(path))
        except OSError as error:
            problems.append(_unusable(path, path, error, origins))
            continue
        if stat.S_ISDIR(mode):
            for name in names:
                entry = path / name
                if entry.suffix in (".yaml", ".yml") and entry.is_file():
                    files.append(entry)
        else:
            files.append(path)
    return files


# path → (file:line, the path as written there) of the config entry that named it.
Origins = dict[Path, tuple[str, str]]


def _unusable(named: Path, path: Path, error: OSError, origins: Origins | None) -> Problem:
    """``c.yaml:1: rules: r/10-date.yaml: Permission denied``, or without a config line to
    point at (the shipped rules, a test) ``path: Permission denied``."""
    reason = error.strerror or str(error)
    if isinstance(error, PermissionError):
        reason += f" (as uid {os.geteuid()})"
    origin = (origins or {}).get(named)
    if origin is None:
        return Problem(str(path), reason)
    where, written = origin
    shown = written if path == named else str(Path(written) / path.relative_to(named))
    return Problem(where, f"rules: {shown}: {reason}")


def _text(opts: Options, action: Action | None) -> str | None:
    text = opts.str("text")
    if text is None:
        return None
    if any(not (" " <= c <= "~") for c in text):
        opts.problem("text", "reply text must be one line of printable ASCII")
        return None
    if len(text) > 400:
        opts.problem("text", "reply text is longer than 400 characters")
        return None
    enhanced = starts_with_status(text)
    if enhanced and action is Action.REJECT and enhanced != "5":
        opts.problem("text", "a reject text starts with 5.x.x (use action: tempfail for 4.x.x)")
    if enhanced and action is Action.TEMPFAIL and enhanced != "4":
        opts.problem("text", "a tempfail text starts with 4.x.x")
    if action not in (Action.REJECT, Action.TEMPFAIL):
        opts.problem("text", "text is the reply for action reject or tempfail only")
    return text


_ACTIONS = tuple(a.value for a in Action)


def _action(opts: Options) -> Action | None:
    """``action:``, in any case: Postfix's tables write REJECT and DISCARD (access(5),
    header_checks(5)), and an admin coming from them writes it so here too."""
    text = opts.str("action")
    if text is None:
        return None
    word, _, rest = text.strip().partition(" ")
    if word.lower() in _ACTIONS and rest:
        # "REJECT go away", as in a Postfix table: the reply has a key of its own here.
        opts.problem("action", f"{text!r}: the reply goes in text:, e.g. action: "
                     f"{word.lower()} and text: \"5.7.1 {rest.strip()}\"")
        return None
    if word.lower() not in _ACTIONS:
        opts.problem("action", f"{text!r} is not one of {', '.join(_ACTIONS)}")
        return None
    return Action(word.lower())


def _rule(
    item: object, where: str, problems: list[Problem], env: RuleEnv, warnings: list[Problem]
) -> Rule | None:
    if not isinstance(item, Mapping):
        problems.append(Problem(where, "each rule is a mapping with at least name and check"))
        return None
    name = item.get("name")
    label = name if isinstance(name, str) else None
    opts = Options(item, problems, rule=label, warnings=warnings)
    before = len(problems)
    name = opts.str("name")
    if name is None:
        opts.need("name: is required")
    elif not _NAME.match(name):
        opts.problem("name", f"{name!r}: use UPPER_SNAKE_CASE (A-Z, 0-9, _), up to 64 characters")
    kind = opts.str("check")
    if kind is None:
        opts.need("check: is required (the rule kind)")
    check_class = CHECK_KINDS.get(kind) if kind else None
    if kind is not None and check_class is None:
        close = difflib.get_close_matches(kind, list(CHECK_KINDS), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        opts.problem("check", f"unknown rule kind {kind!r}; {hint}known: {', '.join(CHECK_KINDS)}")
    action = _action(opts)
    score = opts.number("score", 0.0)
    mode = Mode(opts.choice("mode", [m.value for m in Mode], Mode.ENFORCE.value))
    text = _text(opts, action)
    description = opts.str("description", "")
    table_actions = getattr(check_class, "table_actions", False)  # its table's lines decide
    if action is None and not opts.has("score") and not table_actions:
        opts.need("a rule needs an action, a score, or both")
    check = None
    if check_class is not None:
        if getattr(check_class, "needs_env", False):
            check = check_class.from_options(opts, env)
        else:
            check = check_class.from_options(opts)
    else:
        opts.ignore_rest(_RULE_KEYS)  # the kind's own options are unknown to us: not errors
    opts.finish(_RULE_KEYS)
    if len(problems) > before or check is None or name is None or kind is None:
        return None
    return Rule(
        name=name,
        kind=kind,
        check=check,
        where=item.where(),
        action=action,
        score=float(score),
        text=text,
        mode=mode,
        description=description,
        is_async=inspect.iscoroutinefunction(check.observe),
    )


def load_rules(
    paths: Iterable[Path], env: RuleEnv | None = None, origins: Origins | None = None
) -> RuleSet:
    """Load every rule file; raise ConfigError listing every problem in every file.

    ``env`` holds what the checks share (the DNS resolver and cache); a fresh one with default
    settings when not given. A server reloads with the env of its first rule set.
    """
    env = env if env is not None else RuleEnv()
    problems: list[Problem] = []
    warnings: list[Problem] = []
    paths = list(paths)
    files = rule_files(paths, problems, origins)
    rules: list[Rule] = []
    seen: dict[str, str] = {}
    for path in files:
        try:
            raw = path.read_bytes()
        except OSError as error:
            named = next((p for p in paths if p == path or p in path.parents), path)
            problems.append(_unusable(named, path, error, origins))
            continue
        try:
            data = load_bytes(raw, path)
        except YamlError as error:
            problems.append(Problem(error.where, error.problem))
            continue
        if data is None:
            # Usable (a file with no rules), but an empty file is more often a copy or an
            # editor's save gone wrong than a decision; "rules: []" says it on purpose.
            warnings.append(Problem(f"{path}:1", "empty file: no rules in it"))
            continue
        if not isinstance(data, Mapping) or set(data) - {"rules"}:
            problems.append(Problem(f"{path}:1", "a rule file has one top-level key: rules"))
            continue
        items = data.get("rules") or YamlList(source=str(path))
        if not isinstance(items, YamlList):
            problems.append(Problem(data.where("rules"), "rules: expected a list of rules"))
            continue
        for index, item in enumerate(items):
            where = item.where() if isinstance(item, Mapping) else items.where(index)
            rule = _rule(item, where, problems, env, warnings)
            if rule is None:
                continue
            if rule.name in seen:
                problems.append(
                    Problem(rule.where, f"duplicate rule name (first at {seen[rule.name]})", rule.name)
                )
                continue
            seen[rule.name] = rule.where
            rules.append(rule)
    if problems:
        raise ConfigError(in_file_order(problems))
    return RuleSet(
        tuple(rules),
        tuple(str(p) for p in files),
        env,
        tuple(warnings),
        needs_body=any(getattr(rule.check, "needs_body", False) for rule in rules),
        settlers=tuple(rule.check for rule in rules if hasattr(rule.check, "settle")),
        mime=env.mime,
    )


def rules_for(
    config: Config, env: RuleEnv | None = None, *, private_state: bool = False
) -> RuleSet:
    """The rules ``config`` names, their DNS lists using ``config.dns`` and their counters
    ``config.state`` (a fresh environment unless a running server passes the one it keeps
    across reloads; ``private_state``: counters in memory whatever ``state.redis`` says)."""
    if env is None:
        env = RuleEnv(
            dns=DnsService(config.dns), state=StateService(config.state, private=private_state)
        )
        env.auth.configure(config.authentication)
    env.mime = config.mime  # the checks built now keep these; a set in use keeps its own
    return load_rules(config.rules, env, dict(zip(config.rules, config.rules_written)))
