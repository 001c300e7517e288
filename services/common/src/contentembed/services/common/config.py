"""Typed service configuration: command-line flags, with ``CONTENTEMBED_*`` environment
variables as the fallback (flags win), then the defaults below."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, TypeVar

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, CliApp, NoDecode, SettingsConfigDict

SettingsT = TypeVar("SettingsT", bound="ServiceSettings")

# Comma-separated in flags and environment alike ("a:1,b:2"), a JSON list also works.
EndpointList = Annotated[list[str], NoDecode]
KeyList = Annotated[list[str], NoDecode]


def split_endpoints(value: object) -> object:
    """"a,b" (or a JSON list) as a list; "" is an empty list. An empty entry ("a,,b", a
    trailing comma) is refused: dropping it silently hid a key or an address lost to a
    pasting slip."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            import json

            return json.loads(text)
        if not text:
            return []
        parts = [part.strip() for part in text.split(",")]
        if not all(parts):
            raise ValueError(f"an empty entry in the comma-separated list {text!r}")
        return parts
    return value


class ServiceSettings(BaseSettings):
    """Settings every service has."""

    model_config = SettingsConfigDict(
        env_prefix="CONTENTEMBED_",
        cli_kebab_case=True,
        cli_implicit_flags=True,
        extra="forbid",
    )

    host: str = Field("127.0.0.1", description="Address to bind; 0.0.0.0 in containers.")
    port: int = Field(0, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    metrics_port: int = Field(
        0, ge=-1, le=65535, description="Prometheus /metrics port; 0 picks a free one, -1 disables."
    )
    port_file: Path | None = Field(
        None, description="Write the bound ports here as JSON once listening (for launchers)."
    )
    max_workers: int = Field(16, ge=1, le=4096, description="gRPC handler threads.")
    max_concurrent_rpcs: int = Field(
        256,
        ge=1,
        description="Calls in progress (running or waiting for a thread); beyond this the "
        "server sheds load with RESOURCE_EXHAUSTED instead of queueing without bound.",
    )
    max_queue_wait_s: float = Field(
        0.5,
        gt=0,
        description="A call is refused at arrival (RESOURCE_EXHAUSTED with a retry delay) "
        "when the calls ahead of it would keep it waiting for a handler thread longer than "
        "this; queued calls that can no longer finish before their deadline are shed too.",
    )
    max_concurrent_streams: int | None = Field(
        None,
        ge=1,
        description="Client-streaming calls (bundle uploads) running at once; each holds a "
        "handler thread while its client sends. Unset: a quarter of --max-workers; never all "
        "of them. Beyond: RESOURCE_EXHAUSTED TOO_MANY_STREAMS.",
    )
    stream_idle_timeout_s: float = Field(
        30.0,
        gt=0,
        description="A client stream that sends no message for this long is cancelled, so a "
        "stalled client cannot hold a handler thread.",
    )
    max_message_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, description="Largest gRPC message received or sent."
    )
    shutdown_grace_s: float = Field(
        10.0, ge=0, description="On SIGTERM, how long in-flight calls may finish."
    )
    drain_delay_s: float = Field(
        0.0,
        ge=0,
        description="On SIGTERM, keep accepting calls this long after health turns "
        "NOT_SERVING, so load balancers and readiness probes notice first.",
    )
    max_connection_age_s: float = Field(
        300.0,
        ge=0,
        description="Close each client connection after this long (calls in flight finish), "
        "so callers re-resolve and spread over replicas added since; 0 keeps connections.",
    )
    tls_cert_file: Path | None = Field(None, description="Serve TLS with this certificate (PEM).")
    tls_key_file: Path | None = Field(None, description="Private key of --tls-cert-file (PEM).")
    tls_client_ca_file: Path | None = Field(
        None, description="Require client certificates signed by this CA (mutual TLS)."
    )
    downstream_tls_ca_file: Path | None = Field(
        None, description="Call other services over TLS, trusting this CA."
    )
    downstream_tls_cert_file: Path | None = Field(
        None, description="Client certificate for mutual TLS to other services."
    )
    downstream_tls_key_file: Path | None = Field(None, description="Key of the client certificate.")
    api_keys: KeyList = Field(
        default_factory=list,
        description="Keys allowed to search (encoders: to embed; shards: to read), "
        "comma-separated; prefer the environment variable. None configured: no key needed.",
    )
    admin_api_keys: KeyList = Field(
        default_factory=list,
        description="Keys allowed to search and administer (shards: to write).",
    )
    downstream_api_key: str | None = Field(
        None,
        min_length=1,
        description="Key this service presents to the services it calls (the gateway to "
        "encoders and shards); needs the admin role there when they require keys.",
    )
    page_token_secret: str | None = Field(
        None,
        min_length=16,
        description="Signs the page tokens this service issues; give every replica the same "
        "one (prefer the environment variable) so that tokens survive restarts and work on "
        "any replica. Unset: a random secret per process.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_json: bool = Field(True, description="JSON lines logs (false: plain text).")
    otlp_endpoint: str | None = Field(
        None,
        description="Send trace spans to this OpenTelemetry collector over OTLP/gRPC "
        "(http://host:4317 plaintext, https://host:4317 TLS). Unset: tracing is off.",
    )
    trace_sample_ratio: float = Field(
        1.0,
        ge=0,
        le=1,
        description="Share of traces this service starts that are recorded; a call that "
        "arrives with a trace context follows its caller's decision.",
    )

    _split_keys = field_validator("api_keys", "admin_api_keys", mode="before")(split_endpoints)

    @field_validator("api_keys", "admin_api_keys")
    @classmethod
    def _real_keys(cls, keys: list[str]) -> list[str]:
        # An empty key (a JSON list [""], a stray variable) would let anyone in who sends
        # an empty header; whitespace around a key is a pasting accident.
        for key in keys:
            if not key or key != key.strip():
                raise ValueError("API keys must be non-empty, without surrounding whitespace")
        return keys

    @field_validator("otlp_endpoint")
    @classmethod
    def _endpoint_with_scheme(cls, endpoint: str | None) -> str | None:
        # The exporter reads "host:4317" as a URL whose scheme is "host" and would try TLS:
        # the scheme says plaintext or TLS explicitly.
        if endpoint is not None and not endpoint.startswith(("http://", "https://")):
            raise ValueError("--otlp-endpoint needs a scheme: http://host:4317 or https://host:4317")
        return endpoint

    @model_validator(mode="after")
    def _tls_pairs(self) -> ServiceSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("--tls-cert-file and --tls-key-file go together")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("--tls-client-ca-file needs --tls-cert-file and --tls-key-file")
        if (self.downstream_tls_cert_file is None) != (self.downstream_tls_key_file is None):
            raise ValueError("--downstream-tls-cert-file and --downstream-tls-key-file go together")
        if self.downstream_tls_cert_file is not None and self.downstream_tls_ca_file is None:
            # Without a CA the channel would be plaintext and the certificate silently unused.
            raise ValueError("--downstream-tls-cert-file needs --downstream-tls-ca-file")
        return self

    @property
    def api_key_roles(self) -> dict[str, str]:
        roles = {key: "search" for key in self.api_keys}
        roles.update({key: "admin" for key in self.admin_api_keys})
        return roles


def load_settings(settings_cls: type[SettingsT], argv: list[str] | None) -> SettingsT:
    """Parses flags (argv) over environment over defaults."""
    return CliApp.run(settings_cls, cli_args=argv or [])


__all__ = ["EndpointList", "KeyList", "ServiceSettings", "load_settings", "split_endpoints"]
