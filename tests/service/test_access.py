"""The access table in docs/security.md, checked against running services: every RPC of
every service is listed, and each answers no key, a wrong key, a search key and an admin
key as the table says — on the gateway, an index shard and an encoder alike."""

from __future__ import annotations

import re
import time
from contextlib import ExitStack
from pathlib import Path

import grpc
import pytest

from contentembed.admin.v1 import admin_service_pb2
from contentembed.client import ApiError, Client
from contentembed.encoder.v1 import encoder_service_pb2
from contentembed.index.v1 import index_service_pb2, replication_service_pb2
from contentembed.search.v1 import search_service_pb2
from contentembed.services.gateway.service import GatewayService, GatewaySettings
from contentembed.services.image_encoder.service import (
    ImageEncoderService,
    ImageEncoderSettings,
)
from contentembed.services.index.service import IndexService, IndexSettings
from tests.conftest import error_reason, running_service, settings_for_test
from tests.support.images import encoded, photo_like

TABLE = Path(__file__).resolve().parents[2] / "docs" / "security.md"
ROW = re.compile(r"^\| `([\w.]+)` \| `(\w+)`(?:, `\w+`)* \| (none|search|admin) \|$")
CREDENTIALS = {"none": None, "wrong": "not-a-key", "search": "search-key", "admin": "admin-key"}
AUTH_CODES = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}


def documented_roles() -> dict[tuple[str, str], str]:
    rows = [ROW.match(line) for line in TABLE.read_text().splitlines()]
    return {(m[1], m[2]): m[3] for m in rows if m}


def product_methods() -> set[tuple[str, str]]:
    modules = (search_service_pb2, admin_service_pb2, index_service_pb2, replication_service_pb2,
               encoder_service_pb2)
    return {
        (service.full_name, method.name)
        for module in modules
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }


def keyed(settings_cls, **overrides):
    return settings_for_test(
        settings_cls, api_keys=["search-key"], admin_api_keys=["admin-key"], **overrides
    )


@pytest.fixture(scope="module")
def keyed_services(tmp_path_factory):
    replica = tmp_path_factory.mktemp("replica")
    with ExitStack() as stack:
        # A replica (of a group whose other member never answers): it serves
        # ReplicationService beside IndexService, and leads (replica 0 starts the lease).
        shard = stack.enter_context(running_service(IndexService, keyed(
            IndexSettings, data_dir=replica / "data", replica_id="0",
            replica_peers=["1=127.0.0.1:9"], replica_lease_file=replica / "lease.json")))
        encoder = stack.enter_context(
            running_service(ImageEncoderService, keyed(ImageEncoderSettings))
        )
        gateway = stack.enter_context(running_service(GatewayService, keyed(
            GatewaySettings,
            encoder_endpoints=[encoder.address],
            index_endpoints=[shard.address],
            downstream_api_key="admin-key",
            downstream_wait_s=30.0,
        )))
        for runtime in (shard, encoder, gateway):
            assert runtime.load_error is None, runtime.load_error
        yield {
            "contentembed.search.v1.SearchService": gateway,
            "contentembed.admin.v1.AdminService": gateway,
            "contentembed.index.v1.IndexService": shard,
            "contentembed.index.v1.ReplicationService": shard,
            "contentembed.encoder.v1.EncoderService": encoder,
        }


def test_the_table_lists_every_rpc_of_every_service() -> None:
    documented = {key for key, role in documented_roles().items() if role != "none"}
    assert documented == product_methods()


@pytest.mark.parametrize(("service", "method"), sorted(product_methods()))
def test_each_rpc_answers_each_credential_as_documented(keyed_services, service, method) -> None:
    role = documented_roles()[(service, method)]
    runtime = keyed_services[service]
    assert runtime.service.required_role(f"/{service}/{method}") == role
    outcomes = {}
    with grpc.insecure_channel(runtime.address) as channel:
        call = channel.unary_unary(f"/{service}/{method}")
        for credential, key in CREDENTIALS.items():
            metadata = () if key is None else (("x-api-key", key),)
            try:
                call(b"", metadata=metadata, timeout=10)  # an empty request: harmless
                outcomes[credential] = "allowed"
            except grpc.RpcError as error:
                if error.code() in AUTH_CODES:
                    outcomes[credential] = f"{error.code().name}/{error_reason(error)}"
                else:
                    assert error.code() != grpc.StatusCode.UNKNOWN
                    outcomes[credential] = "allowed"  # past the key check, refused on content
    expected = {
        "none": "UNAUTHENTICATED/API_KEY_MISSING",
        "wrong": "UNAUTHENTICATED/API_KEY_UNKNOWN",
        "search": "allowed" if role == "search" else "PERMISSION_DENIED/PERMISSION_MISSING",
        "admin": "allowed",
    }
    assert outcomes == expected
    denied = runtime.registry.get_sample_value(
        "contentembed_rpc_duration_seconds_count",
        {"service": runtime.service.name, "method": method, "code": "UNAUTHENTICATED"},
    )
    assert denied is not None and denied >= 2  # refusals are counted like every call


def test_the_gateway_reaches_keyed_encoders_and_shards_with_its_downstream_key(
    keyed_services,
) -> None:
    gateway = keyed_services["contentembed.search.v1.SearchService"]
    encoder = keyed_services["contentembed.encoder.v1.EncoderService"]
    with grpc.insecure_channel(encoder.address) as channel:
        from contentembed.encoder.v1 import encoder_service_pb2_grpc

        space = encoder_service_pb2_grpc.EncoderServiceStub(channel).GetEncoderInfo(
            encoder_service_pb2.GetEncoderInfoRequest(), metadata=(("x-api-key", "search-key"),)
        ).space.space_id
    picture = encoded(photo_like(3))
    with Client(gateway.address, api_key="admin-key") as admin:
        admin.create_collection("pictures", space_id=space)
        admin.upsert_documents("pictures", [{"id": "p3", "image": picture}])
    with Client(gateway.address, api_key="search-key") as searcher:
        assert searcher.search("pictures", image=picture, top_k=1).hits[0].id == "p3"
        with pytest.raises(ApiError) as caught:
            searcher.create_collection("nope", space_id=space)
        assert (caught.value.code, caught.value.reason) == ("PERMISSION_DENIED", "PERMISSION_MISSING")


def test_a_gateway_without_the_downstream_key_fails_its_load_at_once(keyed_services) -> None:
    shard = keyed_services["contentembed.index.v1.IndexService"]
    encoder = keyed_services["contentembed.encoder.v1.EncoderService"]
    settings = settings_for_test(
        GatewaySettings,
        encoder_endpoints=[encoder.address],
        index_endpoints=[shard.address],
        downstream_wait_s=120.0,
    )
    started = time.monotonic()
    with running_service(GatewayService, settings) as gateway:
        assert time.monotonic() - started < 60, "it waited for a key that will never work"
        assert "UNAUTHENTICATED" in str(gateway.load_error) or "API key" in str(gateway.load_error)
        with Client(gateway.address) as client:
            with pytest.raises(ApiError) as caught:
                client.search("pictures", text="anything", top_k=1)
        assert (caught.value.code, caught.value.reason) == ("UNAVAILABLE", "LOAD_FAILED")


@pytest.mark.parametrize("keys", ['[""]', '["ok", " padded "]'])
def test_empty_or_padded_keys_are_refused_at_start_up(keys: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="non-empty"):
        IndexSettings(api_keys=keys)
