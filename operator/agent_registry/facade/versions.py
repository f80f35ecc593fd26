"""Version constraints for ``GET /agents/route?version=...``.

A constraint is a comma-separated list of clauses, all of which must hold:

* PEP 440 specifiers: ``>=1.4``, ``<2``, ``==1.4.*``, ``!=1.5.2``, ``~=1.4``;
* semver shorthands: ``^1.4`` (same major: ``>=1.4,<2``; for 0.x, same minor: ``^0.3``
  is ``>=0.3,<0.4``) and ``~1.4`` (same minor: ``>=1.4,<1.5``; ``~1`` is ``>=1,<2``).

Agent versions are read as PEP 440, which also reads most semver (``1.4.0-rc.1`` is
``1.4.0rc1``, ``v2.0.1`` is ``2.0.1``, ``+build`` is a local label). An agent whose version
cannot be read matches no constraint. As PEP 440 says, a pre-release matches only a
constraint that names one (``>=1.5.0rc1``).
"""

from __future__ import annotations

import functools

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

MAX_CONSTRAINT_LENGTH = 128

# The grammar above as one regular expression, for the OpenAPI document: a client (or a
# fuzzer) can tell a constraint from its schema. Every string it matches parses; ``===``
# (arbitrary equality) and a leading ``v`` are left out, and the parser decides the rest.
_RELEASE = r"[0-9]+(\.[0-9]+)*"
_SUFFIXES = (
    r"([-_.]?(a|b|c|rc|alpha|beta|pre|preview)[-_.]?[0-9]*)?([-_.]?(post|rev|r)[-_.]?[0-9]*)?([-_.]?dev[-_.]?[0-9]*)?"
)
_LOCAL = r"(\+[a-z0-9]+([-_.][a-z0-9]+)*)?"
_CLAUSE = (
    rf"((==|!=) *{_RELEASE}(\.\*|{_SUFFIXES}{_LOCAL})"
    rf"|(<=|>=|<|>) *{_RELEASE}{_SUFFIXES}"
    rf"|~= *[0-9]+(\.[0-9]+)+{_SUFFIXES}"
    rf"|[\^~] *{_RELEASE}{_SUFFIXES})"
)
PATTERN = rf"^ *{_CLAUSE} *(, *{_CLAUSE} *)*$"
RULE = (
    "must be PEP 440 version specifiers separated by commas (such as '>=1.4,<2' or '==1.4.*'), "
    "or a semver range '^1.4' / '~1.4'"
)


class VersionConstraint:
    """A parsed constraint; ``allows`` answers for one agent version."""

    def __init__(self, text: str) -> None:
        self.text = text
        self._specifiers = _parse(text)
        # Stated, not left to the library's default, which has changed between releases.
        self._prereleases = bool(self._specifiers.prereleases)

    def allows(self, version: str) -> bool:
        parsed = _version(version)
        return parsed is not None and self._specifiers.contains(parsed, prereleases=self._prereleases)


@functools.lru_cache(maxsize=256)
def constraint(text: str) -> VersionConstraint:
    """The constraint ``text`` spells; ValueError with the rule when it spells none."""
    return VersionConstraint(text)


def _parse(text: str) -> SpecifierSet:
    clauses = [clause.strip() for clause in text.split(",")]
    if not text.strip() or len(text) > MAX_CONSTRAINT_LENGTH or not all(clauses):
        raise ValueError(f"{text!r} {RULE}")
    translated: list[str] = []
    for clause in clauses:
        if clause[0] in "^~" and not clause.startswith("~="):
            translated.extend(_semver_range(clause, text))
        else:
            translated.append(clause)
    try:
        return SpecifierSet(",".join(translated))
    except InvalidSpecifier as exc:
        raise ValueError(f"{text!r} {RULE}") from exc


def _semver_range(clause: str, text: str) -> list[str]:
    operator, rest = clause[0], clause[1:].strip()
    try:
        base = Version(rest)
    except InvalidVersion as exc:
        raise ValueError(f"{text!r} {RULE}") from exc
    parts = [*base.release, 0, 0]
    major, minor = parts[0], parts[1]
    if operator == "~":
        upper = f"{major + 1}" if len(base.release) == 1 else f"{major}.{minor + 1}"
    elif major > 0 or len(base.release) == 1:
        upper = f"{major + 1}"
    elif minor > 0 or len(base.release) == 2:
        upper = f"0.{minor + 1}"
    else:
        upper = f"0.0.{parts[2] + 1}"
    return [f">={rest}", f"<{upper}"]


@functools.lru_cache(maxsize=4096)
def _version(text: str) -> Version | None:
    try:
        return Version(text)
    except InvalidVersion:
        return None
