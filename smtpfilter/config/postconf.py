"""Postfix's configuration as Postfix itself reports it: postconf(1), read only.

Two users: the settings that follow Postfix (``limits.message_size: postfix`` reads
``message_size_limit``) and ``smtpfilter doctor``, which checks how Postfix is wired to us.
Both ask postconf rather than parse main.cf and master.cf themselves: postconf knows every
default of the installed version, the ``$name`` expansion, ``-o { name = value }`` and the
last-one-wins rules of both files, and ``-c DIR`` reads a non-default instance (postconf(1),
MULTI_INSTANCE_README). Nothing here writes: no ``postconf -e``, ever.

    postconf -c DIR -h NAME...   parameter values (main.cf, else Postfix's default)
    postconf -c DIR -x           every parameter, ``$name`` expanded
    postconf -c DIR -M           master.cf entries, one line each
    postconf -c DIR -P -x        every ``-o`` override as ``service/type/name = value``
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from smtpfilter.core.errors import PostconfError

__all__ = ["Postconf", "PostconfError", "Service", "find_postconf"]

# Where Debian and the Postfix sources install it; sbin is often not on a user's PATH.
_SEARCH = os.pathsep.join(["/usr/sbin", "/usr/local/sbin", "/sbin", os.environ.get("PATH", "")])
_TIMEOUT = 30.0


def find_postconf() -> str | None:
    """The postconf program, or None when Postfix is not installed here."""
    return shutil.which("postconf", path=_SEARCH)


@dataclass(frozen=True, slots=True)
class Service:
    """One master.cf entry (master(5)); ``options`` are its ``-o`` overrides, expanded."""

    name: str  # "scan", "smtp", "127.0.0.1:10026"
    type: str  # inet | unix | unix-dgram | fifo | pass
    private: str
    unpriv: str
    chroot: str
    wakeup: str
    maxproc: str  # "-": default_process_limit
    command: str  # smtp, smtpd, pipe...
    args: tuple[str, ...] = ()
    options: dict[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """``scan/unix``: how postconf -P names a service."""
        return f"{self.name}/{self.type}"


class Postconf:
    """One Postfix instance's configuration (``config_directory`` None: postconf's default,
    /etc/postfix or $MAIL_CONFIG)."""

    def __init__(self, config_directory: Path | None = None, program: str | None = None) -> None:
        self.config_directory = config_directory
        self.program = program or find_postconf()
        self._parameters: dict[str, str] | None = None

    @property
    def where(self) -> str:
        """How the commands read this instance, for messages: ``postconf -c /etc/postfix``."""
        return "postconf" + (f" -c {self.config_directory}" if self.config_directory else "")

    def main_cf(self) -> Path:
        """The main.cf postconf reads: in ``-c DIR``, else $MAIL_CONFIG, else the built-in
        config_directory (postconf(1))."""
        if self.config_directory is not None:
            return self.config_directory / "main.cf"
        directory = os.environ.get("MAIL_CONFIG") or self.value("config_directory", default=True)
        return Path(directory) / "main.cf"

    def run(self, *args: str) -> str:
        """postconf's standard output; PostconfError with what it said when it fails."""
        if self.program is None:
            raise PostconfError("postconf not found: is Postfix installed?")
        command = [self.program]
        if self.config_directory is not None:
            command += ["-c", str(self.config_directory)]
        command += list(args)
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=_TIMEOUT,
                                  errors="replace")
        except (OSError, subprocess.TimeoutExpired) as error:
            raise PostconfError(f"{' '.join(command)}: {error}") from None
        if done.returncode != 0:
            said = " ".join(done.stderr.split()) or f"exit status {done.returncode}"
            raise PostconfError(f"{' '.join(command)}: {said}")
        return done.stdout

    def value(self, name: str, *, default: bool = False) -> str:
        """One parameter as main.cf sets it (or Postfix's default); with ``default``, the
        built-in default alone (``postconf -d``, which needs no main.cf)."""
        return self.run("-dh" if default else "-h", name).rstrip("\n")

    def parameters(self) -> dict[str, str]:
        """Every parameter Postfix knows, as it is in effect, ``$name`` expanded."""
        if self._parameters is None:
            self._parameters = _name_values(self.run("-x"))
        return self._parameters

    def services(self) -> list[Service]:
        """master.cf, in file order, each entry with its ``-o`` overrides."""
        options: dict[str, dict[str, str]] = {}
        for key, value in _name_values(self.run("-P", "-x")).items():
            label, _, name = key.rpartition("/")
            options.setdefault(label, {})[name] = value
        services = []
        for line in self.run("-M").splitlines():
            fields = line.split()
            if len(fields) < 8:
                continue
            name, kind = fields[0], fields[1]
            services.append(Service(name, kind, *fields[2:8], args=tuple(fields[8:]),
                                    options=options.get(f"{name}/{kind}", {})))
        return services


def _name_values(text: str) -> dict[str, str]:
    """``name = value`` lines (postconf's output) → a dict; a value may be empty."""
    result = {}
    for line in text.splitlines():
        name, sep, value = line.partition(" =")
        if sep:
            result[name.strip()] = value.strip()
    return result
