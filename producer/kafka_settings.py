"""One Kafka client settings object for every runstream client: the SDK, `runstream run`/`sync`,
the integrations, the consumer, the dead-letter producer and the topic admin.

It owns three things no client may do on its own:

- where the settings come from: arguments, then `RUNSTREAM_KAFKA_*` environment variables
  (`RUNSTREAM_KAFKA` itself stays the bootstrap servers; `RUNSTREAM_KAFKA_SASL_PASSWORD` is the
  librdkafka option `sasl.password`), then the `[kafka]` table of a TOML file;
- secrets (`sasl.password`, `ssl.key.password`, any option whose name ends in `password` or
  `secret`, private keys in PEM): held in `Secret` (a pydantic `SecretStr`), which never prints, and scrubbed from every
  error librdkafka raises while a client is built;
- the delivery guarantees (acks=all with idempotence for producers, manual offset commits and
  the group id for the consumer): set last by the config builders, and the options that would
  override them are rejected with the key named.
"""

from __future__ import annotations

import hmac
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import SecretStr

from runstream.producer.settings_layer import CONFIG_ENV, read_config_file

log = logging.getLogger(__name__)

ENV_PREFIX = "RUNSTREAM_KAFKA_"

#: Options that would break a delivery guarantee or bypass a field, with what to do instead.
RESERVED: dict[str, str] = {
    "bootstrap.servers": "give the bootstrap servers as such (--kafka, RUNSTREAM_KAFKA, init(kafka=...))",
    "metadata.broker.list": "give the bootstrap servers as such (--kafka, RUNSTREAM_KAFKA, init(kafka=...))",
    "enable.auto.commit": "runstream commits offsets itself, only after the write",
    "auto.commit.enable": "runstream commits offsets itself, only after the write",
    "enable.auto.offset.store": "runstream stores offsets itself, only after the write",
    "group.id": "the consumer group is a setting of its own (--group, RUNSTREAM_GROUP, [consumer] group)",
    "enable.idempotence": "runstream producers are always idempotent",
    "acks": "runstream producers always wait for acks=all",
    "request.required.acks": "runstream producers always wait for acks=all",
}

#: Options whose values are secrets although their names do not end in password/secret.
SECRET_NAMES = frozenset({"ssl.key.pem", "sasl.oauthbearer.config"})

#: librdkafka error codes that mean "the credentials were refused" (local and broker-side).
_AUTH_CODES = (-169, 58)  # KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED

_MASK = "**********"

T = TypeVar("T")


class KafkaConfigError(ValueError):
    """A Kafka option that cannot be used; the message names the option and where it came from, never a secret."""


class KafkaAuthenticationError(RuntimeError):
    """The brokers refused the client's credentials (the message says which user, never the password)."""


def is_secret(key: str) -> bool:
    """Whether an option's value must never be shown."""
    key = key.lower()
    return key.endswith(("password", "secret")) or key in SECRET_NAMES


class Secret(SecretStr):
    """pydantic's `SecretStr` (the project's one secret type: repr, str and format show asterisks,
    `get_secret_value()` is the only way out), refusing a non-string at construction and compared in
    constant time; hashable because producer settings are dictionary keys."""

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError(f"secret: expected a string, got {type(value).__name__}")
        super().__init__(value)

    def __repr__(self) -> str:
        return f"Secret('{_MASK}')"

    def __str__(self) -> str:
        return _MASK

    def __format__(self, spec: str) -> str:
        return format(_MASK, spec)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SecretStr):
            return NotImplemented
        return hmac.compare_digest(self.get_secret_value().encode(), other.get_secret_value().encode())

    def __hash__(self) -> int:
        return hash((Secret, self.get_secret_value()))

    def __bool__(self) -> bool:
        return bool(self.get_secret_value())


OptionValue = str | Secret
Options = tuple[tuple[str, OptionValue], ...]


def _plain(value: OptionValue) -> str:
    return value.get_secret_value() if isinstance(value, Secret) else value


def _normalise(key: Any, value: Any, where: str) -> tuple[str, OptionValue]:
    """One option as librdkafka takes it (a string), its secret wrapped; the error names the key, never the value."""
    if not isinstance(key, str) or not key.strip():
        raise KafkaConfigError(f"{where}: a Kafka option name must be a non-empty string, got {key!r}")
    key = key.strip()
    if key in RESERVED:
        raise KafkaConfigError(f"{where}: Kafka option {key!r} is reserved: {RESERVED[key]}")
    if isinstance(value, Secret):
        return key, value
    if isinstance(value, SecretStr):  # pydantic's own, as a settings model or a caller may hold it
        return key, Secret(value.get_secret_value())
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str | int | float):
        text = str(value)
    else:
        raise KafkaConfigError(f"{where}: Kafka option {key!r} must be a string, number or boolean, "
                               f"got {type(value).__name__}")
    return key, Secret(text) if is_secret(key) else text


def _check_with_librdkafka(key: str, value: OptionValue, where: str) -> None:
    """Let librdkafka say whether it knows the option and accepts the value (a secret is probed with a stand-in)."""
    from confluent_kafka import KafkaException, Producer

    probe = "x" if isinstance(value, Secret) else value
    try:
        client = Producer({key: probe, "log_level": 0})
    except KafkaException as error:
        text = error.args[0].str()
        if "No such configuration property" in text:
            raise KafkaConfigError(f"{where}: unknown Kafka (librdkafka) option {key!r}") from None
        if "Invalid value" in text:
            shown = "" if isinstance(value, Secret) else f" {value!r}"
            raise KafkaConfigError(f"{where}: invalid value{shown} for Kafka option {key!r}") from None
        return  # a construction failure (a CA file missing, ...) is reported when the real client is built
    del client


#: Variables Kubernetes (and Docker links) make for a Service named e.g. `runstream-kafka`; not options.
_SERVICE_LINK = re.compile(r"(SERVICE_HOST|SERVICE_PORT(_\w+)?|PORT(_\d+_(TCP|UDP|SCTP)(_PROTO|_PORT|_ADDR)?)?)")


def options_from_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """`RUNSTREAM_KAFKA_SASL_USERNAME=alice` -> {'sasl.username': 'alice'} (RUNSTREAM_KAFKA itself is not an option).

    Every other RUNSTREAM_KAFKA_* variable is taken as an option, so a misspelt one is rejected by name
    rather than ignored; only the service-link variables of a Service called runstream-kafka are skipped.
    """
    return {
        name[len(ENV_PREFIX):].lower().replace("_", "."): value
        for name, value in environ.items()
        if name.startswith(ENV_PREFIX) and value != "" and not _SERVICE_LINK.fullmatch(name[len(ENV_PREFIX):])
    }


def read_kafka_table(path: Path) -> dict[str, Any]:
    """The `[kafka]` table of a TOML file (the consumer's file or the SDK's `RUNSTREAM_CONFIG`)."""
    data = read_config_file(path, KafkaConfigError)
    table = data.get("kafka", {})
    if not isinstance(table, dict):
        raise KafkaConfigError(f"config file {str(path)!r}: [kafka] must be a table of librdkafka options")
    return table


def resolve_options(
    arguments: Mapping[str, Any] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    file_options: Mapping[str, Any] | None = None,
    file_name: str = "config file",
) -> Options:
    """Merge the librdkafka options of the three sources, per option: arguments > environment > file.

    Every option is checked where it came from, so an error names the variable or the table entry.
    """
    merged: dict[str, tuple[OptionValue, str]] = {}
    env = os.environ if environ is None else environ
    env_options = options_from_environment(env)
    for key, value in env_options.items():
        variable = ENV_PREFIX + key.upper().replace(".", "_")
        name, normal = _normalise(key, value, f"environment {variable}")
        merged[name] = (normal, f"environment {variable}")
    for key, value in (file_options or {}).items():
        name, normal = _normalise(key, value, f"{file_name} [kafka]")
        merged.setdefault(name, (normal, f"{file_name} [kafka] {name}"))
    for key, value in (arguments or {}).items():
        name, normal = _normalise(key, value, "argument")
        merged[name] = (normal, f"argument {name}")
    for name, (option, where) in merged.items():
        _check_with_librdkafka(name, option, where)
    return tuple(sorted((name, option) for name, (option, _where) in merged.items()))


def normalise_options(options: Mapping[str, Any] | Options, where: str = "Kafka options") -> Options:
    """Options as the settings hold them: sorted, strings, secrets wrapped, reserved keys rejected."""
    items = options.items() if isinstance(options, Mapping) else options
    return tuple(sorted(dict(_normalise(key, value, where) for key, value in items).items()))


@dataclass(frozen=True)
class KafkaSettings:
    """Bootstrap servers plus librdkafka options (security and any other pass-through option).

    Build it with `resolve()` (arguments, environment, file) or directly; either way reserved options
    are rejected and secrets wrapped. The `*_config()` methods are the only place a client's librdkafka
    configuration is made.
    """

    bootstrap_servers: str
    options: Options = ()

    def __post_init__(self) -> None:
        if not isinstance(self.bootstrap_servers, str) or not self.bootstrap_servers.strip():
            raise KafkaConfigError(f"kafka: bootstrap servers must be a non-empty 'host:port[,host:port]' string, "
                                   f"got {self.bootstrap_servers!r}")
        object.__setattr__(self, "options", normalise_options(self.options))

    def __repr__(self) -> str:
        shown = ", ".join(f"{key}={value}" for key, value in self.options)
        return f"KafkaSettings(bootstrap_servers={self.bootstrap_servers!r}, options={{{shown}}})"

    __str__ = __repr__

    @classmethod
    def resolve(
        cls,
        bootstrap_servers: str | None = None,
        options: Mapping[str, Any] | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        config_file: Path | str | None = None,
    ) -> KafkaSettings | None:
        """Arguments > `RUNSTREAM_KAFKA`/`RUNSTREAM_KAFKA_*` > the file's `[kafka]` table (`config_file`,
        else `RUNSTREAM_CONFIG`). None when no bootstrap servers are given anywhere (an offline run)."""
        env = os.environ if environ is None else environ
        path = config_file or env.get(CONFIG_ENV) or None
        file_options = read_kafka_table(Path(path)) if path else {}
        resolved = resolve_options(options, environ=env, file_options=file_options,
                                   file_name=f"config file {str(path)!r}" if path else "config file")
        bootstrap = bootstrap_servers or env.get("RUNSTREAM_KAFKA") or None
        return cls(bootstrap, resolved) if bootstrap else None

    @classmethod
    def of(cls, kafka: str | KafkaSettings, extra_config: Mapping[str, Any] | None = None) -> KafkaSettings:
        """Accept either settings or the older (bootstrap servers, options) pair that clients still take."""
        if isinstance(kafka, KafkaSettings):
            if extra_config:
                return cls(kafka.bootstrap_servers, (*kafka.options, *tuple(extra_config.items())))
            return kafka
        return cls(kafka, tuple((extra_config or {}).items()))

    # -- what the clients get ---------------------------------------------------------------

    @property
    def security_protocol(self) -> str:
        return _plain(dict(self.options).get("security.protocol", "plaintext"))

    @property
    def username(self) -> str | None:
        value = dict(self.options).get("sasl.username")
        return None if value is None else _plain(value)

    def secrets(self) -> list[str]:
        return [value.get_secret_value() for _key, value in self.options
                if isinstance(value, Secret) and value.get_secret_value()]

    def redact(self, text: str) -> str:
        """`text` with every secret value of these settings masked (for librdkafka's own error strings)."""
        for secret in sorted(self.secrets(), key=len, reverse=True):
            text = text.replace(secret, _MASK)
        return text

    def _config(self, tuning: Mapping[str, Any] | None, fixed: Mapping[str, Any]) -> dict[str, Any]:
        config: dict[str, Any] = dict(tuning or {})
        config.update((key, _plain(value)) for key, value in self.options)
        config.update(fixed)
        config["bootstrap.servers"] = self.bootstrap_servers
        return config

    def producer_config(self, tuning: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Every runstream producer (SDK, sync, dead letters): the client's tuning, the user's options, and
        acks=all with idempotence, which nothing overrides."""
        return self._config(tuning, {"enable.idempotence": True, "acks": "all"})

    def consumer_config(self, group_id: str, tuning: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The consumer: offsets are stored and committed only by runstream, after the write."""
        return self._config(tuning, {"group.id": group_id, "enable.auto.commit": False,
                                     "enable.auto.offset.store": False})

    def admin_config(self, tuning: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return self._config(tuning, {})

    def build(self, factory: Callable[[dict[str, Any]], T], config: dict[str, Any], what: str) -> T:
        """Construct a confluent-kafka client; its construction error is re-raised with every secret masked."""
        from confluent_kafka import KafkaException

        try:
            return factory(config)
        except KafkaException as error:
            text = error.args[0].str() if error.args and hasattr(error.args[0], "str") else str(error)
            raise KafkaConfigError(f"Kafka {what} for {self.bootstrap_servers}: {self.redact(text)}") from None


class ErrorWatch:
    """librdkafka's `error_cb` for a client: logs client errors with secrets masked and remembers an
    authentication failure, so a command can stop with a clear error instead of retrying forever."""

    def __init__(self, settings: KafkaSettings, what: str) -> None:
        self.settings = settings
        self.what = what
        self.auth_error: str | None = None

    def __call__(self, error: Any) -> None:
        text = self.settings.redact(str(error.str()) if hasattr(error, "str") else str(error))
        if error.code() in _AUTH_CODES:
            if self.auth_error is None:
                log.error("Kafka %s: %s", self.what, self.describe_auth_failure(text))
            self.auth_error = text
        else:  # librdkafka logs these itself (broker down, retrying); kept here for debugging only
            log.debug("Kafka %s: %s", self.what, text)

    def describe_auth_failure(self, detail: str) -> str:
        mechanism = _plain(dict(self.settings.options).get("sasl.mechanism",
                                                           dict(self.settings.options).get("sasl.mechanisms", "?")))
        return (f"authentication failed at {self.settings.bootstrap_servers} as user {self.settings.username!r} "
                f"({self.settings.security_protocol} {mechanism}); check sasl.username / sasl.password "
                f"(RUNSTREAM_KAFKA_SASL_USERNAME, RUNSTREAM_KAFKA_SASL_PASSWORD): {detail}")

    def check(self) -> None:
        """Raise if the brokers refused the credentials."""
        if self.auth_error is not None:
            raise KafkaAuthenticationError(f"Kafka {self.what}: {self.describe_auth_failure(self.auth_error)}")
