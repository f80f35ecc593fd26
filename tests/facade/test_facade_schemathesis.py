"""Property-based fuzzing of the facade's OpenAPI document (schemathesis): for generated valid
and invalid requests, no 5xx, and every response matches its documented status, content type
and schema."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.core.parameters import ParameterLocation
from schemathesis.core.result import Ok

from accounts import Accounts
from agent_registry.localcluster.launcher import FacadeProcess
from agent_registry.schema import constants as c
from agent_registry.schema.card import MAX_CARD_BYTES

CONFIG = schemathesis.Config.from_dict(
    {
        "generation": {
            # Unknown query parameters are ignored, as most HTTP APIs do (cache busters, tracing).
            "allow-extra-parameters": False,
            # The bearer token is supplied below; its absence is covered by test_facade_auth.
            "with-security-parameters": False,
        }
    }
)


def _free_text(schema: dict[str, Any]) -> bool:
    """A parameter any string satisfies (apart from its length)."""
    if "anyOf" in schema:
        return any(_free_text(option) for option in schema["anyOf"] if option.get("type") != "null")
    if schema.get("type") == "array":
        return _free_text(schema.get("items", {}))
    return schema.get("type") == "string" and not {"pattern", "enum", "format", "const"} & schema.keys()


def invalid_on_the_wire(case: Any) -> bool:
    """Whether a negative case is unambiguously invalid once serialized.

    Query values are strings on the wire, and of a repeated parameter the last one counts: a
    string parameter "mutated" into a number, a boolean or a list arrives as a valid string,
    and an optional one "mutated" into null is not sent at all. schemathesis recognises some
    of these, not all, so invalid query parameters are left to test_facade_bad_input's table.
    Path segments are strings too: a free-text one (``/agents/type/{agent_type}``) cannot be
    invalid.
    """
    data = getattr(getattr(case.meta, "phase", None), "data", None)
    mutations = getattr(data, "mutations", None) or ()
    for mutation in mutations:
        location = mutation.parameter_location
        if location == ParameterLocation.QUERY:
            continue
        if location == ParameterLocation.PATH and mutation.parameter is not None:
            parameter = case.operation.get_parameter_set(location).get(mutation.parameter)
            if parameter is not None and _free_text(parameter.definition.get("schema", {})):
                continue
        return True
    return not mutations


def not_another_route(literal_paths: frozenset[str]) -> Callable[[Any], bool]:
    """A path parameter whose value spells a sibling route (``/agents/{agent_id}`` with the id
    ``healthy`` is ``GET /agents/healthy``) reaches that route: the request is not a case of
    this operation, valid or not."""

    def check(case: Any) -> bool:
        return case.operation.path in literal_paths or case.formatted_path not in literal_paths

    return check


def not_an_integral_float_port(case: Any) -> bool:
    """JSON Schema's ``integer`` admits ``8080.0``; the models are strict (``Port`` is
    ``strict=True``, "8080" and 8080.0 are not ports), which JSON Schema cannot say."""
    body = getattr(case, "body", None)
    return not (isinstance(body, dict) and isinstance(body.get("port"), float))


def not_an_oversized_card(case: Any) -> bool:
    """JSON Schema cannot bound a document's serialized size; a card over ``MAX_CARD_BYTES``
    is refused (400) however valid its shape (test_facade_cards covers that refusal)."""
    body = getattr(case, "body", None)
    card = body.get("agent_card") if isinstance(body, dict) else None
    return card is None or len(json.dumps(card, separators=(",", ":"))) < MAX_CARD_BYTES // 2


@pytest.fixture
def token(accounts: Accounts) -> str:
    """A service account allowed everything on agents in the test's namespace."""
    rules = [{"apiGroups": [c.GROUP], "resources": ["agents", "agents/status"], "verbs": ["*"]}]
    accounts.grant("fuzzer", rules, role="fuzzer")
    return accounts.token("fuzzer")


@pytest.fixture
def fuzzed_facade(make_facade: Callable[..., FacadeProcess], token: str) -> FacadeProcess:
    return make_facade(auth=True)


# schemathesis' own pytest integration (``from_fixture``/``parametrize``) does not run under
# pytest 9 (it writes a private node attribute pytest no longer has), so each operation's
# strategy is driven with hypothesis directly.
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
def test_openapi_contract_holds_for_generated_requests(
    fuzzed_facade: FacadeProcess, token: str, mode: GenerationMode
) -> None:
    schema = schemathesis.openapi.from_url(f"{fuzzed_facade.url}/openapi.json", config=CONFIG)
    results = list(schema.get_all_operations())
    assert all(isinstance(result, Ok) for result in results), results
    operations = [result.ok() for result in results if isinstance(result, Ok)]
    # Every route is fuzzed; /metrics is on its own port by default, outside this API.
    paths = {operation.path for operation in operations}
    assert {"/agents/register", "/agents", "/agents/route", "/health", "/ready"} <= paths, paths
    assert len(operations) >= 10 and "/metrics" not in paths
    literal_paths = frozenset(path for path in paths if "{" not in path)
    headers = {"Authorization": f"Bearer {token}"}
    failures: list[str] = []
    for operation in operations:
        if operation.path == "/agents/watch":
            # A stream that does not end by design; its bad input is tested with the watch
            # (tests/facade/test_facade_watch.py).
            continue
        strategy = (
            operation.as_strategy(generation_mode=mode)
            .filter(not_an_integral_float_port)
            .filter(not_an_oversized_card)
            .filter(not_another_route(literal_paths))
        )
        if mode is GenerationMode.NEGATIVE:
            strategy = strategy.filter(invalid_on_the_wire)

        @given(case=strategy)
        @settings(
            max_examples=40,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case: Any) -> None:
            case.call_and_validate(headers=headers)

        try:
            check()
        except Unsatisfiable:
            # No parameters and no body (/health, /ready): nothing to make invalid.
            assert mode is GenerationMode.NEGATIVE, operation.path
        except Exception as exc:  # collect every operation's failure, not just the first
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}")
    fuzzed_facade.check_alive()
    assert not failures, "\n\n".join(failures)
