"""API keys and (mutual) TLS, with certificates made by trustme in the test."""

from __future__ import annotations

import grpc
import pytest
import trustme

from contentembed.client import ApiError, Client
from contentembed.index.v1 import index_service_pb2 as index_pb
from contentembed.index.v1 import index_service_pb2_grpc as index_grpc
from contentembed.services.gateway.service import GatewayService, GatewaySettings
from contentembed.services.index.service import IndexService, IndexSettings
from contentembed.services.text_encoder.service import TextEncoderService, TextEncoderSettings
from tests.conftest import running_service, settings_for_test


@pytest.fixture(scope="module")
def keyed_gateway(text_encoder):
    with running_service(IndexService, settings_for_test(IndexSettings)) as shard:
        settings = settings_for_test(
            GatewaySettings,
            encoder_endpoints=[text_encoder.address],
            index_endpoints=[shard.address],
            api_keys=["search-key"],
            admin_api_keys=["admin-key"],
            downstream_wait_s=30.0,
        )
        with running_service(GatewayService, settings) as gateway:
            with Client(gateway.address, api_key="admin-key") as admin:
                admin.create_collection("docs")
                admin.upsert_documents("docs", [{"id": "a", "text": "a red apple"}])
            yield gateway


@pytest.mark.parametrize(
    ("key", "call", "code"),
    [
        (None, "search", "UNAUTHENTICATED"),
        ("wrong", "search", "UNAUTHENTICATED"),
        ("search-key", "search", None),
        ("admin-key", "search", None),
        (None, "admin", "UNAUTHENTICATED"),
        ("search-key", "search-with-binary-header", None),
        ("search-key", "admin", "PERMISSION_DENIED"),
        ("admin-key", "admin", None),
    ],
)
def test_keys_and_roles(keyed_gateway, key, call, code) -> None:
    with Client(keyed_gateway.address, api_key=key) as client:
        try:
            if call == "search":
                assert client.search("docs", text="fruit", top_k=1).hits[0].id == "a"
            elif call == "search-with-binary-header":
                # Tracing headers are binary; they must not break the key check.
                client._metadata = (*client._metadata, ("trace-bin", b"\xff\xfe\x00"))
                assert client.search("docs", text="fruit", top_k=1).hits[0].id == "a"
            else:
                assert client.get_collection("docs").item_count == 1
        except ApiError as error:
            assert error.code == code
        else:
            assert code is None


def test_keys_are_checked_before_the_body_is_read(keyed_gateway) -> None:
    # Bytes that are no valid message: a parsed body would fail differently.
    garbage = b"\xff\xff\xff\xff\x0f"
    with grpc.insecure_channel(keyed_gateway.address) as channel:
        call = channel.unary_unary("/contentembed.admin.v1.AdminService/DeleteCollection")
        for metadata, code in [((), grpc.StatusCode.UNAUTHENTICATED),
                               ((("x-api-key", "search-key"),), grpc.StatusCode.PERMISSION_DENIED)]:
            with pytest.raises(grpc.RpcError) as caught:
                call(garbage, metadata=metadata, timeout=5)
            assert caught.value.code() == code
        # Bearer tokens work too, and health stays open for probes without any key.
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        assert health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest()).status == 1
    # The refused delete deleted nothing.
    with Client(keyed_gateway.address, api_key="admin-key") as admin:
        assert admin.get_collection("docs").name == "docs"


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    client = ca.issue_cert("gateway.contentembed.test")
    files = {
        "ca": directory / "ca.pem",
        "server_cert": directory / "server.pem",
        "server_key": directory / "server.key",
        "client_cert": directory / "client.pem",
        "client_key": directory / "client.key",
    }
    ca.cert_pem.write_to_path(files["ca"])
    server.cert_chain_pems[0].write_to_path(files["server_cert"])
    server.private_key_pem.write_to_path(files["server_key"])
    client.cert_chain_pems[0].write_to_path(files["client_cert"])
    client.private_key_pem.write_to_path(files["client_key"])
    return files


def test_mutual_tls_between_services_and_tls_to_clients(certificates) -> None:
    pki = certificates
    mutual = {
        "tls_cert_file": pki["server_cert"],
        "tls_key_file": pki["server_key"],
        "tls_client_ca_file": pki["ca"],
    }
    with running_service(IndexService, settings_for_test(IndexSettings, **mutual)) as shard, \
            running_service(TextEncoderService, settings_for_test(TextEncoderSettings, **mutual)) as encoder:
        # Without a client certificate the shard refuses the handshake.
        credentials = grpc.ssl_channel_credentials(pki["ca"].read_bytes())
        with grpc.secure_channel(f"localhost:{shard.port}", credentials) as channel:
            with pytest.raises(grpc.RpcError) as caught:
                index_grpc.IndexServiceStub(channel).ListCollections(
                    index_pb.ListCollectionsRequest(), timeout=5
                )
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE

        gateway_settings = settings_for_test(
            GatewaySettings,
            encoder_endpoints=[f"localhost:{encoder.port}"],
            index_endpoints=[f"localhost:{shard.port}"],
            downstream_tls_ca_file=pki["ca"],
            downstream_tls_cert_file=pki["client_cert"],
            downstream_tls_key_file=pki["client_key"],
            tls_cert_file=pki["server_cert"],
            tls_key_file=pki["server_key"],
            downstream_wait_s=30.0,
        )
        with running_service(GatewayService, gateway_settings) as gateway:
            assert gateway.load_error is None, gateway.load_error
            with Client(f"localhost:{gateway.port}", tls_ca_file=pki["ca"]) as client:
                client.create_collection("secure")
                client.upsert_documents("secure", [{"id": "k", "text": "a steel kettle"}])
                assert client.search("secure", text="boil water", top_k=1).hits[0].id == "k"
            with Client(f"localhost:{gateway.port}") as plaintext:  # no TLS: refused
                with pytest.raises(ApiError) as caught:
                    plaintext.search("secure", text="kettle", top_k=1, timeout=3)
                assert caught.value.code == "UNAVAILABLE"
