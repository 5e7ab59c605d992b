"""Configuration: file < environment < option, and one clear line (exit 2) for every mistake."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml

from asynchy.config import load_settings
from asynchy.errors import ConfigError


def settings_from(path: Path | None, env: dict[str, str] | None = None, **options: Any) -> Any:
    return load_settings(config_path=path, env=env or {}, options=options)


def test_original_keys_are_read(write_config: Any) -> None:
    """A MeRC asynchy ~/.as.yaml (host, port, user, keypath, db) works unchanged."""
    path = write_config(
        {
            "host": "sftp.example.org",
            "port": "22",
            "user": "me",
            "keypath": "~/.ssh/k",
            "db": "x.db",
        }
    )
    s = settings_from(path)
    assert (s.host, s.port, s.user, s.keypath, s.db) == (
        "sftp.example.org",
        22,
        "me",
        "~/.ssh/k",
        "x.db",
    )
    assert s.known_hosts == "~/.ssh/known_hosts"  # the default of a new key


def test_precedence_option_over_environment_over_file(write_config: Any) -> None:
    path = write_config({"host": "file-host", "port": 2200, "user": "file-user", "db": "file.db"})
    env = {"ASYNCHY_HOST": "env-host", "ASYNCHY_PORT": "2201", "ASYNCHY_DB": "env.db"}
    s = settings_from(path, env, host="option-host")
    assert (s.host, s.port, s.user, s.db) == ("option-host", 2201, "file-user", "env.db")
    assert s.where("host") == "option --host"
    assert s.where("port") == "environment variable ASYNCHY_PORT"
    assert s.where("user") == f"config file {path}"


def test_every_key_has_an_environment_variable(write_config: Any) -> None:
    path = write_config({})
    env = {
        "ASYNCHY_HOST": "h",
        "ASYNCHY_PORT": "23",
        "ASYNCHY_USER": "u",
        "ASYNCHY_KEYPATH": "/k",
        "ASYNCHY_KNOWN_HOSTS": "/kh",
        "ASYNCHY_DB": "d.db",
        "ASYNCHY_SRC_PREFIX": "/data/mx",
        "ASYNCHY_DEST": "/dest",
        "ASYNCHY_LOG_FILE": "/l.log",
        "ASYNCHY_LOG_LEVEL": "debug",
        "ASYNCHY_TIMEOUT": "7.5",
    }
    s = settings_from(path, env)
    assert (
        s.host,
        s.port,
        s.user,
        s.keypath,
        s.known_hosts,
        s.db,
        s.src_prefix,
        s.dest,
        s.log_file,
        s.log_level,
        s.timeout,
    ) == ("h", 23, "u", "/k", "/kh", "d.db", "/data/mx", "/dest", "/l.log", "DEBUG", 7.5)


def test_config_file_from_environment(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("host: from-env-file\n")
    s = settings_from(None, {"ASYNCHY_CONFIG": str(path)})
    assert s.host == "from-env-file"


def test_default_file_may_be_absent() -> None:
    """Without --config or ASYNCHY_CONFIG, a missing ~/.as.yaml just means defaults."""
    s = settings_from(None)
    assert s.config_path == Path(os.environ["HOME"]) / ".as.yaml"
    assert not s.config_exists
    assert s.db == "files.db"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("host: [unclosed\n", "is not valid YAML at line 2"),
        ("- a\n- b\n", "must hold 'key: value' lines"),
        ("hots: x\n", "unknown key 'hots' (did you mean 'host'?)"),
        ("colour: blue\n", "unknown key 'colour' (known keys: host, port"),
        ("port: abc\n", "key 'port' must be an integer from 1 to 65535, got 'abc'"),
        ("port: 70000\n", "key 'port' must be an integer from 1 to 65535, got 70000"),
        ("port: true\n", "key 'port' must be an integer from 1 to 65535, got True"),
        ("host: [a, b]\n", "key 'host' must be a string, got ['a', 'b']"),
        ("timeout: -1\n", "key 'timeout' must be a number of seconds greater than 0, got -1"),
        (
            "log_level: loud\n",
            "key 'log_level' must be one of DEBUG, INFO, WARNING, ERROR, got 'loud'",
        ),
    ],
)
def test_bad_file_names_file_and_key(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError) as info:
        settings_from(path)
    assert str(path) in str(info.value)
    assert message in str(info.value)


def test_bad_environment_value_names_the_variable(write_config: Any) -> None:
    with pytest.raises(ConfigError, match="environment variable ASYNCHY_PORT must be an integer"):
        settings_from(write_config({}), {"ASYNCHY_PORT": "twenty-two"})


def test_missing_keypath_file_is_a_config_error(write_config: Any, tmp_path: Path) -> None:
    s = settings_from(write_config({"host": "h", "keypath": str(tmp_path / "no-such-key")}))
    with pytest.raises(ConfigError, match=r"key file .*no-such-key \(keypath, from config file"):
        s.ssh_target()


def test_require_says_how_to_set_a_key() -> None:
    s = settings_from(None)
    with pytest.raises(ConfigError) as info:
        s.require("src_prefix")
    assert str(info.value) == (
        f"src_prefix is not set: add 'src_prefix: ...' to {os.environ['HOME']}/.as.yaml"
        " (missing; `asynchy init` writes it), set ASYNCHY_SRC_PREFIX or pass --src-prefix"
    )


# ---------------------------------------------------------------- through the CLI: one line, exit 2
@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("host: [unclosed\n", "is not valid YAML"),
        ("hots: x\n", "unknown key 'hots'"),
        ("port: abc\n", "key 'port' must be an integer"),
    ],
)
def test_cli_bad_config_one_line_exit_2(
    cli: Any, tmp_path: Path, content: str, expected: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    result = cli("--config", str(path), "walk", "--src-prefix", str(tmp_path))
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("Error: config file " + str(path))
    assert expected in lines[0]
    assert "Traceback" not in result.stderr


def test_cli_missing_explicit_config(cli: Any, tmp_path: Path) -> None:
    result = cli("--config", str(tmp_path / "absent.yaml"), "walk")
    assert result.exit_code == 2
    assert result.stderr == (
        f"Error: config file {tmp_path / 'absent.yaml'} does not exist: create it with "
        f"`asynchy init --config_path {tmp_path / 'absent.yaml'}`\n"
    )


def test_cli_missing_src_prefix(cli: Any, tmp_path: Path) -> None:
    result = cli("--db", str(tmp_path / "x.db"), "walk")
    assert result.exit_code == 2
    assert "src_prefix is not set" in result.stderr
    assert "ASYNCHY_SRC_PREFIX" in result.stderr
    assert not (tmp_path / "x.db").exists()


def test_cli_bad_option_value_is_a_usage_error(cli: Any) -> None:
    result = cli("--port", "0", "walk")
    assert result.exit_code == 2
    assert "Invalid value for '--port'" in result.stderr


# ---------------------------------------------------------------- asynchy init
def test_init_from_options_writes_private_yaml(cli: Any, tmp_path: Path) -> None:
    path = tmp_path / "as.yaml"
    result = cli(
        "init",
        "--config_path",
        str(path),
        "--host",
        "sftp.example.org",
        "--user",
        "me",
        "--keypath",
        "/keys/k",
        "--db",
        str(tmp_path / "files.db"),
        "--src-prefix",
        "/data/mx",
        "--dest",
        "/srv/vault",
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == f"wrote {path}\n"
    data = yaml.safe_load(path.read_text())
    assert data == {
        "host": "sftp.example.org",
        "user": "me",
        "keypath": "/keys/k",
        "db": str(tmp_path / "files.db"),
        "src_prefix": "/data/mx",
        "dest": "/srv/vault",
    }
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # ... and it is read back as the settings.
    s = settings_from(path)
    assert s.host == "sftp.example.org" and s.port == 22


def test_init_refuses_to_overwrite_silently(cli: Any, tmp_path: Path) -> None:
    path = tmp_path / "as.yaml"
    path.write_text("host: keep-me\n")
    result = cli("init", "--config_path", str(path), "--host", "new")
    assert result.exit_code == 2
    assert (
        result.stderr
        == f"Error: config file {path} already exists: pass --overwrite to replace it\n"
    )
    assert path.read_text() == "host: keep-me\n"
    result = cli("init", "--config_path", str(path), "--host", "new", "--overwrite")
    assert (
        result.exit_code == 2
    )  # the file has no src_prefix, dest or db: walk and sync could not run
    assert result.stderr == (
        f"Error: not writing {path}: give --src-prefix, --dest, --db (asynchy walk and sync need them)\n"
    )
    path.write_text(
        "host: keep-me\nsrc_prefix: /data/mx\ndest: /srv/vault\ndb: /srv/f.db\n"
        "destinations: {'12282': ny79}\n"
    )
    result = cli("init", "--config_path", str(path), "--host", "new", "--overwrite")
    assert result.exit_code == 0, result.stderr
    assert yaml.safe_load(path.read_text()) == {  # --overwrite keeps what it is not given
        "host": "new",
        "db": "/srv/f.db",
        "src_prefix": "/data/mx",
        "dest": "/srv/vault",
        "destinations": {"12282": "ny79"},
    }


def test_init_prompts_on_a_terminal(cli: Any, tmp_path: Path) -> None:
    """Interactive init asks for every key; empty answers keep defaults or leave keys out."""
    path = tmp_path / "as.yaml"
    answers = (
        "\n".join(["sftp.example.org", "2222", "me", "/keys/k", "", "", "/data/mx", "/srv/vault"])
        + "\nn\n"  # and no check of the new setup now
    )
    result = cli("init", "--config_path", str(path), "--interactive", input=answers)
    assert result.exit_code == 0, result.output
    assert "Check the setup now? [Y/n]: n" in result.output
    data = yaml.safe_load(path.read_text())
    assert data["host"] == "sftp.example.org"
    assert data["port"] == 2222
    assert data["known_hosts"] == str(Path(os.environ["HOME"]) / ".ssh" / "known_hosts")
    assert data["db"] == str(Path.cwd() / "files.db")
    assert data["src_prefix"] == "/data/mx"


def test_init_prompt_confirms_overwrite(cli: Any, tmp_path: Path) -> None:
    path = tmp_path / "as.yaml"
    path.write_text("host: keep-me\n")
    answers = "\n".join(["h", "22", "me", "", "", "", "", ""]) + "\nn\n"
    result = cli("init", "--config_path", str(path), "--interactive", input=answers)
    assert result.exit_code == 2
    assert path.read_text() == "host: keep-me\n"


def test_init_uses_global_config_option(cli: Any, tmp_path: Path) -> None:
    path = tmp_path / "via-global.yaml"
    result = cli("--config", str(path), "--host", "global-host", "init")
    assert result.exit_code == 2  # an empty config is not written
    assert not path.exists()
    result = cli(
        "--config",
        str(path),
        "--host",
        "global-host",
        "--db",
        str(tmp_path / "f.db"),
        "init",
        "--src-prefix",
        "/data/mx",
        "--dest",
        str(tmp_path),
    )
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(path.read_text())["host"] == "global-host"


def test_new_keys_from_the_environment(write_config: Any) -> None:
    env = {
        "ASYNCHY_THREADS": "4",
        "ASYNCHY_EVERY": "30m",
        "ASYNCHY_SETTLE": "1h30m",
        "ASYNCHY_ALERT_TO": "a@x.example, b@x.example",
        "ASYNCHY_ALERT_FROM": "Asynchy <asynchy@x.example>",
        "ASYNCHY_REALERT_DAYS": "7",
        "ASYNCHY_SMTP_HOST": "mail.x.example",
        "ASYNCHY_SMTP_PORT": "587",
        "ASYNCHY_SMTP_STARTTLS": "yes",
        "ASYNCHY_PORTAL": "{base_url: 'https://portal.x.example/', equipment: [{id: 3, username: u, "
        "password_env: PORTAL_PW, client_name: c, client_password_file: /run/secret}]}",
    }
    s = settings_from(write_config({}), env)
    assert (s.threads, s.every, s.settle, s.realert_days) == (4, 1800.0, 5400.0, 7.0)
    assert s.alert_to == ("a@x.example", "b@x.example")
    assert (s.alert_from, s.smtp_host, s.smtp_port, s.smtp_starttls) == (
        "Asynchy <asynchy@x.example>",
        "mail.x.example",
        587,
        True,
    )
    assert s.portal is not None and s.portal["base_url"] == "https://portal.x.example"
    assert s.portal["visit_days"] == 30 and s.portal["equipment"][0]["password_env"] == "PORTAL_PW"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90),
        ("90s", 90),
        ("30m", 1800),
        ("1h", 3600),
        ("1h30m", 5400),
        ("2d", 172800),
        ("1w", 604800),
        ("0", 0),
        (45, 45),
        ("1.5h", 5400),
    ],
)
def test_durations(text: Any, seconds: float) -> None:
    from asynchy.config import parse_duration

    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "1x", "h", "-5", "1h soon", "nan"])
def test_bad_durations(text: str) -> None:
    from asynchy.config import parse_duration

    with pytest.raises(ValueError, match="must be a duration such as 90s, 30m, 1h or 2d"):
        parse_duration(text)


def test_an_hpc_assyncy_config_keeps_working(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """mxsync / epnalert's YAML, unchanged: read as asynchy keys, the unused ones named."""
    path = tmp_path / "assyncy.yml"
    path.write_text(
        """
host: sftp.synchrotron.example
key-file: /home/mx/.ssh/id_ed25519
beamline: mx2
destination-root-path: /srv/vault
epn_cap_map:
  "12282": ny79
  "12283": ab12
sync-frequency-hours: 6
max-tasks: 4
log-level: debug
log-files: {sync: /var/log/mxsync.log, epnalert: /var/log/epnalert.log, email: /var/log/email.log}
ignore: /etc/assyncy/ignore.yml
base-url: https://portal.synchrotron.example
visit-day-range: 14
equipment:
  - {id: 7, username: mxuser, password: pw, client_name: assyncy, client_password: cpw}
epnalert-email-to: [ops@uni.example]
epnalert-email-from: assyncy@uni.example
epnalert-smtp: smtp.uni.example:587
epnalert-template-folder: /etc/assyncy/templates
epnalert-template-text: alert.txt
"""
    )
    os.chmod(path, 0o600)
    s = load_settings(config_path=path, env={}, options={})
    assert (s.host, s.keypath, s.src_prefix, s.dest) == (
        "sftp.synchrotron.example",
        "/home/mx/.ssh/id_ed25519",
        "/data/mx2",
        "/srv/vault",
    )
    assert s.destinations == {"12282": "ny79", "12283": "ab12"}
    assert (s.every, s.threads, s.log_level, s.log_file) == (
        21600.0,
        4,
        "DEBUG",
        "/var/log/mxsync.log",
    )
    assert (s.alert_to, s.alert_from, s.smtp_host, s.smtp_port) == (
        ("ops@uni.example",),
        "assyncy@uni.example",
        "smtp.uni.example",
        587,
    )
    assert s.alert_templates == "/etc/assyncy/templates"
    assert (
        s.portal is not None
        and s.portal["visit_days"] == 14
        and s.portal["equipment"][0]["id"] == 7
    )
    notes = [text for _, text in s.notes]
    assert f"config file {path}: HPC ASSyncy key 'epn_cap_map' read as 'destinations'" in notes
    assert f"config file {path}: HPC ASSyncy key 'ignore' read as 'ignore_file'" in notes
    assert s.ignore_file == "/etc/assyncy/ignore.yml"  # honoured: its EPNs count as copied
    assert s.alert_template_text == "alert.txt"
    assert s.layout == "{project}/{epn}/data" and s.alert_only_with_details  # as HPC ASSyncy did
    assert not any("can be read by other users" in n for n in notes)  # mode 0600
    os.chmod(path, 0o644)
    s = load_settings(config_path=path, env={}, options={})
    assert any(
        "holds portal passwords and can be read by other users: chmod 600" in n for _, n in s.notes
    )


def test_an_hpc_assyncy_key_and_its_asynchy_key_together(write_config: Any) -> None:
    path = write_config({"epn_cap_map": {"1": "a"}, "destinations": {"2": "b"}})
    with pytest.raises(
        ConfigError, match="both 'epn_cap_map' \\(HPC ASSyncy\\) and 'destinations' are set"
    ):
        load_settings(config_path=path, env={}, options={})


@pytest.mark.parametrize(
    ("portal", "message"),
    [
        ({"equipment": []}, "needs base_url"),
        ({"base_url": "ftp://x", "equipment": [{}]}, "needs base_url"),
        ({"base_url": "https://x"}, "needs a list of equipment entries"),
        (
            {
                "base_url": "https://x",
                "equipment": [{"id": 1, "username": "u", "client_name": "c"}],
            },
            "equipment entry 1 needs exactly one of password, password_file, password_env",
        ),
        (
            {
                "base_url": "https://x",
                "equipment": [
                    {
                        "id": 1,
                        "username": "u",
                        "client_name": "c",
                        "password": "p",
                        "password_env": "P",
                        "client_password": "c",
                    }
                ],
            },
            "needs exactly one of password",
        ),
        ({"base_url": "https://x", "equipment": [], "colour": 1}, "unknown entries \\['colour'\\]"),
    ],
)
def test_bad_portal_config(write_config: Any, portal: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(config_path=write_config({"portal": portal}), env={}, options={})
