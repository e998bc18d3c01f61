"""The one settings layer and the one ClickHouse connect path.

Credentials: every command that reads or writes ClickHouse is pointed at an HTTP server this test binds
(a real socket on a port the OS picked) that records the requests ClickHouse's driver makes and refuses
them as ClickHouse refuses a bad login. What reached the socket proves the credentials took the connect
path; what the command printed proves the password never shows.
"""

from __future__ import annotations

import base64
import http.server
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from runstream.cli import main
from runstream.consumer.clickhouse_settings import ClickHouseSettings, with_credentials
from runstream.consumer.config import ConfigError, ConsumerOptions, load_consumer_config
from runstream.producer.settings import ProducerSettings
from runstream.producer.settings_layer import SettingsError

PASSWORD = "pa:ss/w@rd-5ecret"  # noqa: S105 - a test secret with characters a URL must escape


class Recorder(http.server.ThreadingHTTPServer):
    """Answers every request as ClickHouse answers a refused login (HTTP 516), after noting who asked."""

    daemon_threads = True

    def __init__(self) -> None:
        self.logins: list[str] = []
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: Recorder

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            login = base64.b64decode(auth[6:]).decode()
        else:  # clickhouse-connect may send X-ClickHouse-User / -Key instead
            login = f"{self.headers.get('X-ClickHouse-User', '')}:{self.headers.get('X-ClickHouse-Key', '')}"
        with self.server.lock:
            self.server.logins.append(login)
        body = b"Code: 516. DB::Exception: Authentication failed: password is incorrect. (AUTHENTICATION_FAILED)\n"
        self.send_response(516)
        self.send_header("Content-Type", "text/plain; charset=UTF-8")
        self.send_header("X-ClickHouse-Exception-Code", "516")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    server = Recorder()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


@pytest.fixture
def credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RUNSTREAM_CLICKHOUSE", "RUNSTREAM_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RUNSTREAM_CLICKHOUSE_USER", "alice")
    monkeypatch.setenv("RUNSTREAM_CLICKHOUSE_PASSWORD", PASSWORD)


COMMANDS = {
    "query": ["query", "SELECT 1"],
    "migrate": ["migrate"],
    "ingest": ["ingest", "{spool}"],
    "runs": ["runs"],
    "compare": ["compare", "r1", "r2"],
    "best": ["best", "--project", "p", "--metric", "loss"],
    "importance": ["importance", "--project", "p", "--metric", "loss"],
    "reproduce": ["reproduce", "r1"],
    "report": ["report", "--project", "p", "--out", "{tmp}/r.html"],
    "monitor": ["monitor", "--listen", "127.0.0.1:0"],
    "cost report": ["cost", "report"],
    "cost budgets": ["cost", "budgets"],
    "cost load": ["cost", "load", "{tmp}/prices.yaml"],
    "drift": ["drift"],
    "dashboards preview": ["dashboards", "preview", "--out", "{tmp}/png"],
}


def run_main(argv: list[str], timeout: float = 60.0) -> int:
    """`runstream ARGV` in this process, bounded: a connect path that hung would fail the test, not stall it."""
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(main(argv)), daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"runstream {' '.join(argv)} still running after {timeout} s"
    return result[0]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_sends_the_environment_credentials_and_never_prints_the_password(
        command: str, recorder: Recorder, credentials: None, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "spool").mkdir()
    (tmp_path / "prices.yaml").write_text("prices: []\n")
    argv = [word.format(spool=tmp_path / "spool", tmp=tmp_path) for word in COMMANDS[command]]
    code = run_main([*argv, "--clickhouse", f"{recorder.url}/rs"])
    out, err = capsys.readouterr()
    assert code == 2, (command, out, err)
    assert recorder.logins and set(recorder.logins) == {f"alice:{PASSWORD}"}, recorder.logins
    assert "cannot connect to ClickHouse at http://alice:***@127.0.0.1" in err, err
    for text in (out, err):
        assert PASSWORD not in text and "5ecret" not in text, command


def test_consume_and_the_python_client_take_the_same_path(recorder: Recorder, credentials: None,
                                                          tmp_path: Path) -> None:
    # `consume` is a process of its own (it installs signal handlers); it connects to ClickHouse before it
    # joins its group, so no broker is needed to see the login
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "RUNSTREAM_CLICKHOUSE_USER": "alice",
           "RUNSTREAM_CLICKHOUSE_PASSWORD": PASSWORD}
    done = subprocess.run([sys.executable, "-m", "runstream.cli", "-v", "consume", "--kafka", "127.0.0.1:9",
                           "--clickhouse", f"{recorder.url}/rs"],
                          capture_output=True, text=True, timeout=120, env=env, check=False)
    assert done.returncode == 2 and "cannot connect to ClickHouse at http://alice:***@" in done.stderr, done.stderr
    assert set(recorder.logins) == {f"alice:{PASSWORD}"} and PASSWORD not in done.stdout + done.stderr
    recorder.logins.clear()
    from runstream.analysis.client import Client

    with pytest.raises(ConnectionError) as caught:
        Client(f"{recorder.url}/rs")
    assert set(recorder.logins) == {f"alice:{PASSWORD}"} and PASSWORD not in str(caught.value)
    recorder.logins.clear()
    with pytest.raises(ConnectionError):
        Client(f"{recorder.url}/rs", user="bob", password="arg-pw")  # noqa: S106 - arguments win
    assert set(recorder.logins) == {"bob:arg-pw"}


def test_config_file_credentials_and_precedence(recorder: Recorder, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("RUNSTREAM_CLICKHOUSE", "RUNSTREAM_CLICKHOUSE_USER", "RUNSTREAM_CLICKHOUSE_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    config = tmp_path / "runstream.toml"
    config.write_text(f'[clickhouse]\ndsn = "{recorder.url}/rs"\nuser = "carol"\npassword = "file-pw"\n')
    monkeypatch.setenv("RUNSTREAM_CONFIG", str(config))
    assert run_main(["runs"]) == 2  # DSN and login from the file named by RUNSTREAM_CONFIG
    assert set(recorder.logins) == {"carol:file-pw"}
    recorder.logins.clear()
    monkeypatch.setenv("RUNSTREAM_CLICKHOUSE_PASSWORD", "env-pw")  # the environment wins over the file
    assert run_main(["query", "SELECT 1", "--config", str(config)]) == 2
    assert set(recorder.logins) == {"carol:env-pw"}
    recorder.logins.clear()
    # credentials in the variables win over ones written into the DSN
    assert run_main(["drift", "--clickhouse", recorder.url.replace("//", "//dsn-user:dsn-pw@") + "/rs"]) == 2
    assert set(recorder.logins) == {"carol:env-pw"}
    out, err = capsys.readouterr()
    for secret in ("file-pw", "env-pw", "dsn-pw"):
        assert secret not in out + err


def test_one_subprocess_end_to_end(recorder: Recorder, tmp_path: Path) -> None:
    """The installed command, not main(): nothing on stdout or stderr shows the password."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "RUNSTREAM_CLICKHOUSE": f"{recorder.url}/rs",
           "RUNSTREAM_CLICKHOUSE_USER": "alice", "RUNSTREAM_CLICKHOUSE_PASSWORD": PASSWORD}
    done = subprocess.run([sys.executable, "-m", "runstream.cli", "-v", "best", "--project", "p", "--metric", "m"],
                          capture_output=True, text=True, timeout=120, env=env, check=False)
    assert done.returncode == 2 and "Authentication failed" in done.stderr, done.stderr
    assert PASSWORD not in done.stdout + done.stderr
    assert set(recorder.logins) == {f"alice:{PASSWORD}"}


def test_clickhouse_settings_reprs_and_errors_never_show_the_password() -> None:
    settings = ClickHouseSettings.load(environ={"RUNSTREAM_CLICKHOUSE": "https://ch.example:8443/rs",
                                                "RUNSTREAM_CLICKHOUSE_USER": "alice",
                                                "RUNSTREAM_CLICKHOUSE_PASSWORD": PASSWORD})
    assert settings.authenticated_dsn() == "https://alice:pa%3Ass%2Fw%40rd-5ecret@ch.example:8443/rs"
    for text in (repr(settings), str(settings), settings.redacted(), f"{settings}", repr(settings.model_dump())):
        assert PASSWORD not in text and "5ecret" not in text, text
    assert settings.redacted() == "https://alice:***@ch.example:8443/rs"
    assert hash(settings) == hash(ClickHouseSettings(dsn="https://ch.example:8443/rs", user="alice",
                                                     password=PASSWORD))  # type: ignore[arg-type]
    with pytest.raises(Exception, match="frozen"):
        settings.user = "mallory"  # type: ignore[misc]
    # a chdb DSN has no users: the same variables are ignored there, so one environment serves every command
    embedded = ClickHouseSettings.load({"dsn": "chdb:///tmp/x"}, environ={"RUNSTREAM_CLICKHOUSE_PASSWORD": "p"})
    assert embedded.authenticated_dsn() == "chdb:///tmp/x" and embedded.embedded
    assert with_credentials("http://h:8123/db", None, None) == "http://h:8123/db"
    with pytest.raises(SettingsError, match=r"unknown clickhouse setting\(s\): passwd; known: dsn, user, password"):
        ClickHouseSettings.load({"passwd": PASSWORD})
    with pytest.raises(SettingsError, match="environment RUNSTREAM_CLICKHOUSE: clickhouse DSN 'ftp://h': "
                                            "unsupported scheme 'ftp'"):
        ClickHouseSettings.load(environ={"RUNSTREAM_CLICKHOUSE": "ftp://h"})
    with pytest.raises(SettingsError) as caught:
        ClickHouseSettings.load({"dsn": f"ftp://u:{PASSWORD}@h"})
    assert PASSWORD not in str(caught.value)
    with pytest.raises(SettingsError, match="password must be SecretStr") as caught:
        ClickHouseSettings(password=12345)  # type: ignore[arg-type]
    assert "12345" not in str(caught.value)


def test_unknown_keys_in_a_file_table_are_named(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[clickhouse]\ndsn = "chdb:///tmp/x"\npasword = "x"\n')
    with pytest.raises(SettingsError, match=r"unknown key\(s\) in \[clickhouse\]: pasword; known: dsn, user"):
        ClickHouseSettings.load(config_file=config, environ={})
    config.write_text('[consumer]\nkafka = "k:1"\nbatch_max_wait = "soon"\n')
    with pytest.raises(ConfigError, match=r"\[consumer\] batch_max_wait: batch_max_wait must be float, got 'soon'"):
        load_consumer_config({}, {}, config)
    assert ConsumerOptions.load({"group": "g"}, environ={"RUNSTREAM_GROUP": "e"}).group == "g"


def test_producer_settings_layers_arguments_environment_then_the_producer_table(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(__import__("os").environ):
        if name.startswith("RUNSTREAM_"):
            monkeypatch.delenv(name)
    config = tmp_path / "runstream.toml"
    config.write_text('[producer]\nflush_interval_s = 0.5\nsample_interval_s = 2\ntopic_prefix = "file."\n'
                      '[kafka]\n"sasl.password" = "file-pw"\n')
    monkeypatch.setenv("RUNSTREAM_CONFIG", str(config))
    monkeypatch.setenv("RUNSTREAM_SAMPLE_INTERVAL", "3")
    monkeypatch.setenv("RUNSTREAM_FLUSH_INTERVAL", "")  # set but empty: not given
    settings = ProducerSettings.resolve(topic_prefix="arg.", kafka="k:9092")
    assert (settings.topic_prefix, settings.sample_interval_s, settings.flush_interval_s) == ("arg.", 3.0, 0.5)
    assert dict(settings.kafka_options)["sasl.password"].get_secret_value() == "file-pw"
    assert "file-pw" not in repr(settings) and "file-pw" not in str(settings)
    assert settings == ProducerSettings.resolve(topic_prefix="arg.", kafka="k:9092")
    assert {settings: 1}[ProducerSettings.resolve(topic_prefix="arg.", kafka="k:9092")] == 1  # still a dict key
    with pytest.raises(Exception, match="frozen"):
        settings.spool = tmp_path  # type: ignore[misc]
    # direct construction is exactly its arguments: no environment, no file
    assert ProducerSettings().sample_interval_s == 5.0 and ProducerSettings().topic_prefix != "file."
    config.write_text('[producer]\nflush_intervall_s = 1\n')
    with pytest.raises(SettingsError,
                       match=r"unknown key\(s\) in \[producer\]: flush_intervall_s; known: topic_prefix"):
        ProducerSettings.resolve()
    config.write_text('[producer]\nmax_points_per_event = "many"\n')
    with pytest.raises(SettingsError, match=r"config file '.*runstream.toml' \[producer\] max_points_per_event: "
                                            r"max_points_per_event must be int, got 'many'"):
        ProducerSettings.resolve()
    config.write_text("")
    monkeypatch.setenv("RUNSTREAM_FLUSH_INTERVAL", "-1")
    with pytest.raises(SettingsError, match="environment RUNSTREAM_FLUSH_INTERVAL: flush_interval_s: expected a "
                                            "positive number of seconds, got -1.0"):
        ProducerSettings.resolve()


def test_every_setting_is_defined_once_with_its_variable() -> None:
    """The docs' table comes from the models: each setting has a type, a default, a variable and a doc."""
    variables: dict[str, str] = {}
    for model in (ProducerSettings, ConsumerOptions, ClickHouseSettings):
        for name, variable, _default, doc in model.describe_fields():
            assert doc, f"{model.__name__}.{name} has no description"
            if variable:
                assert variable.startswith("RUNSTREAM_"), variable
                assert variables.setdefault(variable, name) == name or variable == "RUNSTREAM_TOPIC_PREFIX", (
                    variable, name)
    assert variables["RUNSTREAM_CLICKHOUSE_USER"] == "user"
    assert variables["RUNSTREAM_SAMPLE_INTERVAL"] == "sample_interval_s"


def test_the_readme_table_is_the_generated_one(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config"]) == 0
    table = capsys.readouterr().out.strip()
    assert "`[clickhouse] password` | `RUNSTREAM_CLICKHOUSE_PASSWORD`" in table
    assert "`[producer] sample_interval_s` | `RUNSTREAM_SAMPLE_INTERVAL` | `5.0`" in table
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    start = readme.index("<!-- settings-table: generated by `runstream config` -->\n") + len(
        "<!-- settings-table: generated by `runstream config` -->\n")
    end = readme.index("\n<!-- /settings-table -->", start)
    assert readme[start:end] == table, "README's settings table is stale: paste `runstream config` into it"
