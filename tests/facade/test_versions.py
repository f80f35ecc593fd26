"""Version constraints for routing (``facade/versions.py``) as pure logic: what each form
allows, what is refused, and that the OpenAPI pattern admits only constraints that parse."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_registry.facade.versions import MAX_CONSTRAINT_LENGTH, PATTERN, RULE, constraint

ALLOWS = [
    (">=1.4,<2", "1.4.0", True),
    (">=1.4,<2", "1.9.9", True),
    (">=1.4,<2", "2.0.0", False),
    (">=1.4,<2", "1.3.9", False),
    ("==1.4.*", "1.4.7", True),
    ("==1.4.*", "1.5.0", False),
    ("~=1.4", "1.9", True),
    ("~=1.4", "2.0", False),
    ("!=1.5.2", "1.5.2", False),
    ("^1.4", "1.99.0", True),
    ("^1.4", "2.0.0", False),
    ("^0.3", "0.3.9", True),
    ("^0.3", "0.4.0", False),
    ("^0.0.3", "0.0.4", False),
    ("~1.4", "1.4.9", True),
    ("~1.4", "1.5.0", False),
    ("~1", "1.9", True),
    ("~1", "2.0", False),
    # Semver read as PEP 440: a pre-release, a leading v, build metadata.
    (">=1.4", "v1.6.0", True),
    ("==1.4.*", "1.4.2+build.5", True),
    (">=1.4", "1.5.0-rc.1", False),  # a pre-release matches only a constraint naming one
    (">=1.5.0rc1", "1.5.0-rc.2", True),
    (">=1.4", "not a version", False),
    (" >= 1.4 , < 2 ", "1.5", True),
]


@pytest.mark.parametrize(("text", "version", "allowed"), ALLOWS)
def test_what_a_constraint_allows(text: str, version: str, allowed: bool) -> None:
    assert constraint(text).allows(version) is allowed


@pytest.mark.parametrize("text", ["", "newest", "1.4", ">=", ">=1.4,", "^x", ">=1.*", "~=1", "x" * 200])
def test_a_constraint_that_is_none_is_refused_with_the_rule(text: str) -> None:
    with pytest.raises(ValueError, match=re.escape(RULE)):
        constraint(text)
    assert re.match(PATTERN, text) is None  # and the OpenAPI pattern refuses it too


@settings(max_examples=200, deadline=None)
@given(st.from_regex(PATTERN, fullmatch=True).filter(lambda text: len(text) <= MAX_CONSTRAINT_LENGTH))
def test_every_constraint_the_pattern_admits_parses(text: str) -> None:
    constraint(text)
