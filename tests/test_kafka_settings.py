"""The one Kafka client settings object: sources and their precedence, reserved options, secrets that never print.

No broker is needed: option names and values are checked by librdkafka itself (a client is built
without bootstrap servers, which connects to nothing).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, KafkaException

from runstream.cli import main
from runstream.consumer.config import ConfigError, load_consumer_config
from runstream.consumer.topics_admin import default_min_insync, ensure_topics
from runstream.producer.kafka_settings import (
    RESERVED,
    ErrorWatch,
    KafkaAuthenticationError,
    KafkaConfigError,
    KafkaSettings,
    Secret,
    is_secret,
    resolve_options,
)
from runstream.producer.settings import ProducerSettings

PASSWORD = "Pa55-w0rd-never-shown"  # noqa: S105 - a stand-in that each test checks is never shown


@pytest.fixture(autouse=True)
def _no_runstream_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings read os.environ: start every test without the caller's RUNSTREAM_* variables."""
    import os

    for name in list(os.environ):
        if name.startswith("RUNSTREAM_"):
            monkeypatch.delenv(name)


def test_secret_never_prints_but_compares_and_hashes() -> None:
    secret = Secret(PASSWORD)
    for text in (repr(secret), str(secret), f"{secret}", f"{secret!r}", f"{secret:>30}", format(secret)):
        assert PASSWORD not in text and "*" in text
    assert secret.get_secret_value() == PASSWORD
    assert secret == Secret(PASSWORD) and secret != Secret("other") and hash(secret) == hash(Secret(PASSWORD))
    assert secret != PASSWORD  # a secret is never equal to its plain text by accident
    with pytest.raises(TypeError, match="expected a string, got int"):
        Secret(3)  # type: ignore[arg-type]


def test_which_options_are_secret() -> None:
    for key in ("sasl.password", "ssl.key.password", "ssl.keystore.password", "sasl.oauthbearer.client.secret",
                "ssl.key.pem", "SASL.PASSWORD"):
        assert is_secret(key), key
    for key in ("sasl.username", "ssl.ca.location", "security.protocol", "ssl.key.location"):
        assert not is_secret(key), key


def test_settings_hold_secrets_wrapped_and_keep_them_out_of_repr_and_errors() -> None:
    settings = KafkaSettings("b1:9093,b2:9093", {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
                                                  "sasl.username": "alice", "sasl.password": PASSWORD,
                                                  "ssl.key.password": PASSWORD + "2", "socket.timeout.ms": 5000})
    options = dict(settings.options)
    assert isinstance(options["sasl.password"], Secret) and isinstance(options["ssl.key.password"], Secret)
    assert options["socket.timeout.ms"] == "5000" and options["sasl.username"] == "alice"
    for text in (repr(settings), str(settings), f"{settings}", repr(settings.options)):
        assert PASSWORD not in text and "alice" in text
    # the clients get the plain value, and only they
    assert settings.producer_config()["sasl.password"] == PASSWORD
    assert settings.redact(f"login {PASSWORD} and {PASSWORD}2 refused") == "login ********** and ********** refused"

    def failing_client(config: dict[str, object]) -> object:
        raise KafkaException(KafkaError(KafkaError._INVALID_ARG, f"bad key password {config['ssl.key.password']}"))

    with pytest.raises(KafkaConfigError) as caught:
        settings.build(failing_client, settings.producer_config(), "producer")
    assert PASSWORD not in str(caught.value) and "b1:9093" in str(caught.value) and "**********" in str(caught.value)


@pytest.mark.parametrize("key", sorted(RESERVED))
def test_reserved_options_are_refused_from_every_source(key: str, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(KafkaConfigError, match=f"Kafka option '{key}' is reserved"):
        KafkaSettings("k:9092", {key: "x"})
    with pytest.raises(KafkaConfigError, match=f"argument: Kafka option '{key}' is reserved"):
        resolve_options({key: "x"}, environ={})
    variable = "RUNSTREAM_KAFKA_" + key.upper().replace(".", "_")
    with pytest.raises(KafkaConfigError, match=f"environment {variable}: Kafka option '{key}' is reserved"):
        resolve_options(environ={variable: "false"})
    config = tmp_path / "c.toml"
    config.write_text(f'[consumer]\nkafka = "k:9092"\n[kafka]\n"{key}" = "x"\n')
    with pytest.raises(ConfigError, match=f"Kafka option '{key}' is reserved"):
        load_consumer_config({}, {}, config)
    with pytest.raises(KafkaConfigError, match=f"Kafka option '{key}' is reserved"):
        ProducerSettings.resolve(kafka="k:9092", kafka_options={key: "x"})
    monkeypatch.setenv("RUNSTREAM_CONFIG", str(config))
    with pytest.raises(KafkaConfigError, match=f"Kafka option '{key}' is reserved"):
        ProducerSettings.resolve(kafka="k:9092")


def test_the_guarantees_are_set_last_and_the_tuning_can_be_changed() -> None:
    settings = KafkaSettings("k:9092", {"linger.ms": "5", "client.id": "mine"})
    producer = settings.producer_config({"linger.ms": 50, "compression.type": "zstd", "client.id": "runstream-x"})
    assert producer["linger.ms"] == "5" and producer["client.id"] == "mine" and producer["compression.type"] == "zstd"
    assert (producer["acks"], producer["enable.idempotence"], producer["bootstrap.servers"]) == ("all", True, "k:9092")
    consumer = settings.consumer_config("the-group", {"auto.offset.reset": "earliest"})
    assert consumer["group.id"] == "the-group"
    assert consumer["enable.auto.commit"] is False and consumer["enable.auto.offset.store"] is False
    # a tuning dict handed in by a client cannot smuggle a guarantee away either
    assert settings.producer_config({"acks": "1", "enable.idempotence": False})["acks"] == "all"
    assert settings.consumer_config("g", {"enable.auto.commit": True})["enable.auto.commit"] is False
    assert settings.admin_config()["bootstrap.servers"] == "k:9092"


def test_unknown_options_and_bad_values_are_named_never_the_secret(tmp_path: Path) -> None:
    with pytest.raises(KafkaConfigError,
                       match=r"environment RUNSTREAM_KAFKA_SASL_PASSWROD: unknown Kafka \(librdkafka\) option "
                             r"'sasl.passwrod'") as caught:
        resolve_options(environ={"RUNSTREAM_KAFKA_SASL_PASSWROD": PASSWORD})
    assert PASSWORD not in str(caught.value)
    with pytest.raises(KafkaConfigError, match="invalid value 'bogus' for Kafka option 'security.protocol'"):
        resolve_options({"security.protocol": "bogus"}, environ={})
    with pytest.raises(KafkaConfigError, match="must be a string, number or boolean, got list"):
        resolve_options({"socket.timeout.ms": [1]}, environ={})
    config = tmp_path / "c.toml"
    config.write_text('[consumer]\nkafka = "k:9092"\n[kafka]\n"no.such.option" = 1\n')
    with pytest.raises(ConfigError, match=r"\[kafka\] no.such.option: unknown Kafka \(librdkafka\) option"):
        load_consumer_config({}, {}, config)
    with pytest.raises(KafkaConfigError, match="bootstrap servers must be a non-empty"):
        KafkaSettings("  ")
    # the service-link variables Kubernetes makes for a Service called runstream-kafka are not options
    assert resolve_options(environ={"RUNSTREAM_KAFKA_PORT": "tcp://10.0.0.1:9092",
                                    "RUNSTREAM_KAFKA_SERVICE_HOST": "10.0.0.1",
                                    "RUNSTREAM_KAFKA_PORT_9092_TCP_ADDR": "10.0.0.1"}) == ()


def test_precedence_arguments_then_environment_then_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "sdk.toml"
    config.write_text('[kafka]\n"sasl.username" = "from-file"\n"sasl.password" = "file-pw"\n'
                      '"socket.timeout.ms" = 1000\n"enable.ssl.certificate.verification" = false\n')
    env = {"RUNSTREAM_KAFKA": "env:9092", "RUNSTREAM_KAFKA_SASL_USERNAME": "from-env",
           "RUNSTREAM_KAFKA_SOCKET_TIMEOUT_MS": "2000", "RUNSTREAM_CONFIG": str(config)}
    resolved = KafkaSettings.resolve(None, {"socket.timeout.ms": 3000}, environ=env)
    assert resolved is not None
    options = dict(resolved.options)
    assert resolved.bootstrap_servers == "env:9092"
    assert options["socket.timeout.ms"] == "3000"  # argument over environment over file
    assert options["sasl.username"] == "from-env"  # environment over file
    assert options["sasl.password"] == Secret("file-pw")  # file when nothing else gives it
    assert options["enable.ssl.certificate.verification"] == "false"
    assert KafkaSettings.resolve("arg:9092", environ=env).bootstrap_servers == "arg:9092"  # type: ignore[union-attr]
    assert KafkaSettings.resolve(environ={}) is None  # no bootstrap servers anywhere: offline
    # the SDK's settings take the same route, from the real environment
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = ProducerSettings.resolve(kafka_options={"sasl.username": "from-arg"})
    assert settings.kafka == "env:9092"
    assert dict(settings.kafka_options)["sasl.username"] == "from-arg"
    assert dict(settings.kafka_options)["sasl.password"] == Secret("file-pw")
    assert settings.kafka_settings == KafkaSettings("env:9092", settings.kafka_options)
    assert "file-pw" not in repr(settings)
    # the consumer's own file keeps working, its [kafka] table under the same rules
    consumer = tmp_path / "consumer.toml"
    consumer.write_text('[consumer]\nkafka = "file:9092"\nreplication_factor = 3\n'
                        '[kafka]\n"sasl.username" = "from-file"\n"sasl.password" = "file-pw"\n')
    loaded = load_consumer_config({"min_insync_replicas": 2}, {"RUNSTREAM_KAFKA_SASL_USERNAME": "from-env"}, consumer,
                                  {"sasl.password": "arg-pw"})
    assert dict(loaded.settings.kafka_options) == {"sasl.username": "from-env", "sasl.password": Secret("arg-pw")}
    assert (loaded.settings.replication_factor, loaded.settings.min_insync_replicas) == (3, 2)
    assert "arg-pw" not in loaded.describe() and "arg-pw" not in repr(loaded)


def test_producer_settings_stay_hashable_and_distinct_per_credentials() -> None:
    one = ProducerSettings(kafka="k:9092", kafka_options={"sasl.password": "a"})  # type: ignore[arg-type]
    same = ProducerSettings(kafka="k:9092", kafka_options=(("sasl.password", "a"),))
    other = ProducerSettings(kafka="k:9092", kafka_options={"sasl.password": "b"})  # type: ignore[arg-type]
    workers = {one: 1}
    assert workers[same] == 1 and other not in workers
    assert ProducerSettings(kafka=KafkaSettings("k:9092").bootstrap_servers) == ProducerSettings(kafka="k:9092")
    assert "'a'" not in repr(one)
    from_settings = ProducerSettings.resolve(kafka=KafkaSettings("k:1", {"sasl.username": "u"}),
                                             kafka_options={"sasl.password": "p"})
    assert dict(from_settings.kafka_options) == {"sasl.username": "u", "sasl.password": Secret("p")}


def test_help_never_shows_a_secret(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("RUNSTREAM_KAFKA_SASL_PASSWORD", PASSWORD)
    monkeypatch.setenv("RUNSTREAM_KAFKA", "k:9092")
    for command in ("run", "sync", "consume", "migrate"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        out = capsys.readouterr().out
        assert PASSWORD not in out and "--kafka-option" in out, command


def test_cli_errors_name_the_option_not_the_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("RUNSTREAM_KAFKA_SASL_PASSWORD", PASSWORD)
    assert main(["sync", str(tmp_path), "--kafka", "k:9092", "--kafka-option", "acks=0"]) == 2
    err = capsys.readouterr().err
    assert "'acks' is reserved" in err and PASSWORD not in err
    monkeypatch.setenv("RUNSTREAM_KAFKA_ENABLE_AUTO_COMMIT", "true")
    assert main(["consume", "--kafka", "k:9092", "--clickhouse", f"chdb://{tmp_path / 'ch'}"]) == 2
    err = capsys.readouterr().err
    assert "RUNSTREAM_KAFKA_ENABLE_AUTO_COMMIT" in err and "'enable.auto.commit' is reserved" in err
    assert PASSWORD not in err


def test_topic_durability_defaults_and_checks() -> None:
    assert default_min_insync(None) is None and default_min_insync(1) is None and default_min_insync(2) is None
    assert default_min_insync(3) == 2 and default_min_insync(5) == 2
    with pytest.raises(ValueError, match="min_insync_replicas: 3 is more than replication_factor 2"):
        ensure_topics("127.0.0.1:1", "t.", replication_factor=2, min_insync_replicas=3)
    with pytest.raises(ValueError, match="replication_factor: expected at least 1"):
        ensure_topics("127.0.0.1:1", "t.", replication_factor=0)


class _Error:
    """The two methods of confluent_kafka.KafkaError the error callback reads."""

    def __init__(self, code: int, text: str) -> None:
        self._code, self._text = code, text

    def code(self) -> int:
        return self._code

    def str(self) -> str:
        return self._text


def test_error_watch_reports_a_refused_login_without_the_password(caplog: pytest.LogCaptureFixture) -> None:
    settings = KafkaSettings("k:9093", {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
                                        "sasl.username": "alice", "sasl.password": PASSWORD})
    watch = ErrorWatch(settings, "sync")
    watch.check()  # nothing refused yet
    with caplog.at_level(logging.DEBUG):
        watch(_Error(KafkaError._TRANSPORT, "broker down"))
        watch.check()
        watch(_Error(KafkaError._AUTHENTICATION, f"SASL authentication error: bad credentials ({PASSWORD})"))
    with pytest.raises(KafkaAuthenticationError, match="authentication failed at k:9093 as user 'alice'") as caught:
        watch.check()
    assert PASSWORD not in str(caught.value)
    assert PASSWORD not in caplog.text and "authentication failed" in caplog.text
