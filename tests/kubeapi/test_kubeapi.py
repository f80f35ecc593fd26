"""The client layer: credential precedence and error mapping as pure logic, both
transports against the real API server."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from agent_registry import kubeapi
from agent_registry.kubeapi import errors, objects, paths, wire
from agent_registry.kubeapi.aio import AsyncApi
from agent_registry.kubeapi.sync import SyncApi
from agent_registry.localcluster.controlplane import LocalControlPlane
from agent_registry.schema import constants as c

# --- credential precedence -------------------------------------------------------------------


@pytest.fixture
def service_account(tmp_path: Path) -> Path:
    directory = tmp_path / "sa"
    directory.mkdir()
    (directory / "token").write_text("t")
    return directory


def test_an_explicit_kubeconfig_wins_over_everything(tmp_path: Path, service_account: Path) -> None:
    explicit = tmp_path / "explicit"
    explicit.write_text("{}")
    env = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443", "KUBECONFIG": "/elsewhere"}
    assert kubeapi.resolve(explicit, env, service_account) == kubeapi.Source(kubeconfig=explicit)


def test_in_a_pod_the_service_account_wins_over_kubeconfig(tmp_path: Path, service_account: Path) -> None:
    named = tmp_path / "named"
    named.write_text("{}")
    env = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443", "KUBECONFIG": str(named)}
    assert kubeapi.resolve(None, env, service_account) == kubeapi.Source(service_account_dir=service_account)


def test_outside_a_pod_the_first_kubeconfig_file_is_used(tmp_path: Path, service_account: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.write_text("{}")
    second.write_text("{}")
    env = {"KUBECONFIG": f"{first}:{second}"}  # no KUBERNETES_SERVICE_HOST: not in a pod
    assert kubeapi.resolve(None, env, service_account) == kubeapi.Source(kubeconfig=first)


def test_no_credentials_names_what_was_tried(tmp_path: Path) -> None:
    with pytest.raises(kubeapi.ConfigError, match=r"\$KUBECONFIG \(/nowhere\)"):
        kubeapi.resolve(None, {"KUBECONFIG": "/nowhere"}, tmp_path / "none")
    with pytest.raises(kubeapi.ConfigError, match="no such file"):
        kubeapi.resolve(tmp_path / "missing", {}, tmp_path / "none")


# --- errors and the retry rule -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (404, errors.NotFound),
        (409, errors.Conflict),
        (410, errors.Gone),
        (403, errors.Forbidden),
        (422, errors.Invalid),
        (429, errors.TooManyRequests),
        (503, errors.Unavailable),
    ],
)
def test_each_status_has_its_error(status: int, kind: type[errors.ApiError]) -> None:
    body = b'{"kind":"Status","reason":"R","message":"m","details":{"causes":[{"field":"spec.port","message":"bad"}]}}'
    error = errors.from_response(status, body, "3")
    assert type(error) is kind and error.status == status and error.message == "m"
    assert error.transient == (status in (429, 503))
    assert error.describe() == "spec.port: bad"
    if status == 429:
        assert error.retry_after == 3.0


def test_writes_are_repeated_only_when_the_server_says_they_were_not_processed() -> None:
    assert wire.retry_wait(429, "1", "POST") == 1.0
    assert wire.retry_wait(503, "1", "GET") == 1.0
    assert wire.retry_wait(503, "1", "PATCH") is None
    assert wire.retry_wait(503, None, "GET") is None
    assert wire.retry_wait(429, "60", "GET") == wire.MAX_RETRY_AFTER_SECONDS


def test_delete_options_carry_only_the_preconditions_given() -> None:
    assert objects.delete_options("u", "7")["preconditions"] == {"uid": "u", "resourceVersion": "7"}
    assert "preconditions" not in objects.delete_options()


# --- both transports against the real API server ----------------------------------------------


def _agent(name: str) -> dict[str, Any]:
    return {
        "apiVersion": c.API_VERSION,
        "kind": c.KIND,
        "metadata": {"name": name, "labels": {c.AGENT_ID_LABEL: "123e4567-e89b-12d3-a456-426614174000"}},
        "spec": {"type": "cost", "host": "10.0.0.1", "port": 8000},
    }


def test_sync_transport_creates_reads_patches_deletes(controlplane: LocalControlPlane, namespace: str) -> None:
    with SyncApi(kubeapi.load(controlplane.kubeconfig)) as api:
        created = api.create(paths.agents(namespace), _agent("one"))
        assert objects.uid(created) and objects.agent_id(created) == "123e4567-e89b-12d3-a456-426614174000"
        with pytest.raises(errors.Conflict):
            api.create(paths.agents(namespace), _agent("one"))
        patched = api.merge_patch(paths.agents(namespace, "one", "status"), {"status": {"reportedStatus": "degraded"}})
        assert patched["status"]["reportedStatus"] == "degraded"
        assert [objects.name(a) for a in api.list(paths.agents(namespace))] == ["one"]
        with pytest.raises(errors.Conflict):  # a precondition on an old resourceVersion
            api.delete(paths.agents(namespace, "one"), objects.delete_options(resource_version="1"))
        with pytest.raises(errors.Invalid) as invalid:
            api.merge_patch(paths.agents(namespace, "one"), {"spec": {"port": 0}})
        assert "spec.port" in invalid.value.describe()
        api.delete(paths.agents(namespace, "one"), objects.delete_options(uid=objects.uid(created)))
        assert api.get(paths.agents(namespace, "one")) is None


def test_async_transport_and_a_stalled_server_that_times_out(controlplane: LocalControlPlane, namespace: str) -> None:
    async def scenario() -> None:
        api = AsyncApi(kubeapi.load(controlplane.kubeconfig), timeout=1.0)
        try:
            await api.create(paths.agents(namespace), _agent("two"))
            assert objects.name(await api.get(paths.agents(namespace, "two")) or {}) == "two"
            with pytest.raises(errors.NotFound):
                await api.request("GET", paths.agents(namespace, "absent"))
            controlplane.pause("kube-apiserver")
            try:
                with pytest.raises(errors.Unavailable) as stalled:
                    await api.request("GET", paths.agents(namespace, "two"))
                assert stalled.value.status is None and stalled.value.transient
            finally:
                controlplane.resume("kube-apiserver")
            assert len(await api.list(paths.agents(namespace))) == 1
        finally:
            await api.aclose()

    asyncio.run(scenario())


def test_calls_beyond_the_pool_wait_within_their_timeout_and_free_their_slots(
    controlplane: LocalControlPlane, namespace: str
) -> None:
    async def scenario() -> None:
        api = AsyncApi(kubeapi.load(controlplane.kubeconfig), timeout=1.0, connections=2)
        try:
            await api.create(paths.agents(namespace), _agent("three"))
            controlplane.pause("kube-apiserver")
            try:
                started = time.monotonic()
                outcomes = await asyncio.gather(
                    *(api.request("GET", paths.agents(namespace, "three")) for _ in range(6)),
                    return_exceptions=True,
                )
                elapsed = time.monotonic() - started
            finally:
                controlplane.resume("kube-apiserver")
            assert all(isinstance(outcome, errors.Unavailable) for outcome in outcomes), outcomes
            # Two calls had the connections; the other four waited for one and gave up when
            # their own timeout ran out, not after the first two's.
            waited = [o for o in outcomes if "no free connection" in str(o)]
            assert len(waited) == 4, outcomes
            assert elapsed < 5, elapsed
            # Every slot came back: more calls than the pool holds all succeed.
            answers = await asyncio.gather(*(api.get(paths.agents(namespace, "three")) for _ in range(6)))
            assert [objects.name(a or {}) for a in answers] == ["three"] * 6
        finally:
            await api.aclose()

    asyncio.run(scenario())


def test_kopf_watches_with_the_same_credentials(
    controlplane: LocalControlPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agent_registry.controller.handlers import login  # noqa: PLC0415 - registers kopf handlers

    monkeypatch.setenv("KUBECONFIG", str(controlplane.kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    info = login()
    connection = kubeapi.load(controlplane.kubeconfig)
    assert info is not None and info.server == connection.server
    # The local control plane's admin is a client certificate embedded in the kubeconfig:
    # kopf gets it as files, the way it loads them.
    assert info.certificate_path and Path(str(info.certificate_path)).is_file()
    assert info.private_key_path and info.ca_data
