"""Config (flags > environment > TOML > defaults, and Config built in Python), the CLI's exit status for bad
config, auth and the admin token.

load_config always gets an explicit environment here, never the real os.environ.
"""

import logging
import os
import stat

import pytest

from schedserver import Auth, Config, ConfigError, Forbidden, Unauthorized, load_config, main, resolve_admin_tokens


@pytest.fixture(autouse=True)
def restore_logging():
    """main() configures the schedserver logger for a real run; put it back so caplog keeps working."""
    logger = logging.getLogger("schedserver")
    waitress = logging.getLogger("waitress")
    saved = (logger.handlers[:], logger.level, logger.propagate, waitress.level)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved[0], saved[1], saved[2]
    waitress.setLevel(saved[3])


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """An empty current directory, so that defaults like ./data land in tmp_path."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


def write_toml(directory, text: str, name: str = "schedserver.toml") -> str:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text)
    return str(path)


###############################################################################
# Defaults and precedence
###############################################################################

def test_with_nothing_configured_it_uses_the_embedded_defaults(workdir):
    config = load_config({}, environ={})
    assert (config.host, config.port, config.timezone) == ("127.0.0.1", 8080, "UTC")
    assert config.data_dir == str(workdir / "data")
    assert config.scripts_dir == str(workdir / "scripts")
    assert (config.workers, config.misfire_grace_seconds) == (8, 30)
    assert (config.connection_limit, config.idle_timeout_seconds, config.log_format) == (1000, 20, "text")
    assert (config.tokens, config.read_tokens, config.token_file) == ((), (), None)
    assert config.config_file is None


def test_the_defaults_are_the_same_from_load_config_and_from_config_built_in_python(workdir):
    assert load_config({}, environ={}) == Config()


def test_flags_beat_the_environment_which_beats_the_file_which_beats_the_defaults(tmp_path, workdir):
    toml = write_toml(tmp_path / "etc", '[server]\nport = 9000\nhost = "0.0.0.0"\n[scheduler]\nworkers = 3\n')
    env = {"SCHEDSERVER_PORT": "9100", "SCHEDSERVER_HOST": "10.0.0.1"}
    assert load_config({}, environ={}).port == 8080
    from_file = load_config({"config": toml}, environ={})
    assert (from_file.port, from_file.host, from_file.workers) == (9000, "0.0.0.0", 3)
    from_env = load_config({"config": toml}, environ=env)
    assert (from_env.port, from_env.host, from_env.workers) == (9100, "10.0.0.1", 3)
    from_flags = load_config({"config": toml, "port": "9200"}, environ=env)
    assert (from_flags.port, from_flags.host, from_flags.workers) == (9200, "10.0.0.1", 3)


def test_a_flag_left_out_by_argparse_as_none_does_not_hide_the_environment(workdir):
    config = load_config({"port": None, "host": None}, environ={"SCHEDSERVER_PORT": "9100"})
    assert (config.port, config.host) == (9100, "127.0.0.1")


def test_the_config_file_can_come_from_the_environment_and_the_flag_wins(tmp_path, workdir):
    from_env = write_toml(tmp_path / "a", "[server]\nport = 9001\n")
    from_flag = write_toml(tmp_path / "b", "[server]\nport = 9002\n")
    assert load_config({}, environ={"SCHEDSERVER_CONFIG": from_env}).port == 9001
    config = load_config({"config": from_flag}, environ={"SCHEDSERVER_CONFIG": from_env})
    assert config.port == 9002
    assert config.config_file == from_flag


def test_relative_paths_in_the_file_are_resolved_against_the_files_directory(tmp_path, workdir):
    toml = write_toml(tmp_path / "etc" / "schedserver",
                      '[server]\ndata_dir = "state"\nscripts_dir = "../jobs"\n[auth]\ntoken_file = "secret/token"\n')
    config = load_config({"config": toml}, environ={})
    assert config.data_dir == str(tmp_path / "etc" / "schedserver" / "state")
    assert config.scripts_dir == str(tmp_path / "etc" / "jobs")
    assert config.token_file == str(tmp_path / "etc" / "schedserver" / "secret" / "token")


def test_relative_paths_from_flags_and_environment_are_resolved_against_the_current_directory(tmp_path, workdir):
    toml = write_toml(tmp_path / "etc", '[server]\ndata_dir = "state"\n')
    config = load_config({"config": toml, "scripts_dir": "s"}, environ={"SCHEDSERVER_DATA_DIR": "d"})
    assert config.data_dir == str(workdir / "d")
    assert config.scripts_dir == str(workdir / "s")


def test_a_relative_config_path_is_made_absolute(tmp_path, workdir):
    write_toml(workdir, "[server]\nport = 9003\n", name="local.toml")
    config = load_config({"config": "local.toml"}, environ={})
    assert config.config_file == str(workdir / "local.toml")
    assert config.port == 9003


def test_tokens_come_from_a_comma_separated_environment_variable_or_a_toml_list(tmp_path, workdir):
    config = load_config({}, environ={"SCHEDSERVER_TOKEN": " a, b,,c ", "SCHEDSERVER_READ_TOKEN": "r1"})
    assert (config.tokens, config.read_tokens) == (("a", "b", "c"), ("r1",))
    toml = write_toml(tmp_path / "etc", '[auth]\ntokens = ["x", "y"]\nread_tokens = ["z"]\n')
    config = load_config({"config": toml}, environ={})
    assert (config.tokens, config.read_tokens) == (("x", "y"), ("z",))


def test_every_documented_section_and_key_is_accepted_from_the_file(tmp_path, workdir):
    toml = write_toml(tmp_path / "etc", """
        [server]
        host = "::1"
        port = 0
        data_dir = "d"
        scripts_dir = "s"
        threads = 4
        connection_limit = 50
        idle_timeout_seconds = 5
        log_level = "debug"
        log_format = "JSON"
        access_log = true
        shutdown_grace_seconds = 3
        [scheduler]
        timezone = "Europe/Berlin"
        workers = 2
        misfire_grace_seconds = 1
        [auth]
        tokens = ["t"]
        read_tokens = ["r"]
        token_file = "tokens"
        [curl]
        runs_log_max_bytes = 4096
        runs_log_backups = 0
        allow_networks = ["10.0.0.0/8"]
        deny_networks = ["10.1.0.0/16", "::1"]
        [exec]
        default_timeout_ms = 1500
        fires_log_max_bytes = 8192
        fires_log_backups = 2
        return_preview_chars = 50
        [exec.interpreters]
        ".rb" = "ruby -W0"
        [exec.preflight]
        ".rb" = ["ruby", "-c"]
    """.replace("\n        ", "\n"))
    config = load_config({"config": toml}, environ={})
    etc = tmp_path / "etc"
    assert (config.host, config.port, config.threads, config.log_level) == ("::1", 0, 4, "DEBUG")
    assert (config.data_dir, config.scripts_dir, config.token_file) == (str(etc / "d"), str(etc / "s"),
                                                                       str(etc / "tokens"))
    assert (config.connection_limit, config.idle_timeout_seconds, config.log_format) == (50, 5, "json")
    assert (config.access_log, config.shutdown_grace_seconds) == (True, 3)
    assert (config.timezone, config.workers, config.misfire_grace_seconds) == ("Europe/Berlin", 2, 1)
    assert (config.tokens, config.read_tokens) == (("t",), ("r",))
    assert (config.runs_log_max_bytes, config.runs_log_backups) == (4096, 0)
    assert (config.allow_networks, config.deny_networks) == (("10.0.0.0/8",), ("10.1.0.0/16", "::1"))
    assert (config.default_timeout_ms, config.fires_log_max_bytes, config.fires_log_backups,
            config.return_preview_chars) == (1500, 8192, 2, 50)
    assert config.interpreters == {".rb": ("ruby", "-W0")}
    assert config.preflight == {".rb": ("ruby", "-c")}


@pytest.mark.parametrize("name, raw, key, value", [
    ("SCHEDSERVER_CONNECTION_LIMIT", "20", "connection_limit", 20),
    ("SCHEDSERVER_IDLE_TIMEOUT_SECONDS", "60", "idle_timeout_seconds", 60),
    ("SCHEDSERVER_LOG_FORMAT", "json", "log_format", "json"),
    ("SCHEDSERVER_ACCESS_LOG", "yes", "access_log", True),
    ("SCHEDSERVER_CURL_DENY_NETWORKS", "10.0.0.0/8,192.168.0.0/16", "deny_networks",
     ("10.0.0.0/8", "192.168.0.0/16")),
    ("SCHEDSERVER_EXEC_RETURN_PREVIEW_CHARS", "80", "return_preview_chars", 80),
])
def test_the_newer_keys_come_from_the_environment_too(workdir, name, raw, key, value):
    assert getattr(load_config({}, environ={name: raw}), key) == value


###############################################################################
# Bad config: ConfigError naming the file (or variable, or flag) and the key
###############################################################################

@pytest.mark.parametrize("text, key, problem", [
    ("[server]\ncolour = 1\n", "server.colour", "unknown key"),
    ("[nonsense]\nx = 1\n", "nonsense.x", "unknown key"),
    ("[server]\nport = \"high\"\n", "server.port", "expected an integer from 0 to 65535"),
    ("[server]\nport = 70000\n", "server.port", "expected an integer from 0 to 65535"),
    ("[server]\nport = true\n", "server.port", "expected an integer"),
    ("[server]\nhost = 5\n", "server.host", "expected a non-empty string"),
    ("[scheduler]\nworkers = 0\n", "scheduler.workers", "expected an integer from 1 to 1024"),
    ("[scheduler]\ntimezone = \"Mars/Olympus\"\n", "scheduler.timezone", "unknown timezone 'Mars/Olympus'"),
    ("[auth]\ntokens = [1, 2]\n", "auth.tokens", "expected a list of strings"),
    ("[server]\nlog_level = \"LOUD\"\n", "server.log_level", "expected one of DEBUG, INFO, WARNING, ERROR"),
    ("[server]\nlog_format = \"xml\"\n", "server.log_format", "expected text or json"),
    ("[server]\nconnection_limit = 5\n", "server.connection_limit", "expected an integer from 10 to 100000"),
    ("[server]\nidle_timeout_seconds = 0\n", "server.idle_timeout_seconds", "expected an integer from 1 to 3600"),
    ("[curl]\nallow_networks = [\"intranet\"]\n", "curl.allow_networks", "is not a network"),
    ("[exec.interpreters]\nrb = \"ruby\"\n", "exec.interpreters", "must be a file extension"),
    ("server = 1\n", "[server]", "must be a table"),
])
def test_a_bad_value_in_the_file_is_a_config_error_naming_the_file_and_the_key(tmp_path, workdir, text, key,
                                                                                 problem):
    toml = write_toml(tmp_path / "etc", text)
    with pytest.raises(ConfigError) as caught:
        load_config({"config": toml}, environ={})
    message = str(caught.value)
    assert message.startswith(toml)
    assert key in message
    assert problem in message
    assert "\n" not in message


def test_an_unparsable_file_is_a_config_error_naming_the_file(tmp_path, workdir):
    toml = write_toml(tmp_path / "etc", "[server\nport = \n")
    with pytest.raises(ConfigError) as caught:
        load_config({"config": toml}, environ={})
    assert str(caught.value).startswith(f"{toml}: not valid TOML")


def test_a_missing_file_is_a_config_error_naming_the_file(tmp_path, workdir):
    missing = str(tmp_path / "nowhere.toml")
    with pytest.raises(ConfigError) as caught:
        load_config({"config": missing}, environ={})
    assert str(caught.value).startswith(f"{missing}: cannot read config file")


def test_a_bad_environment_variable_or_flag_is_named_in_the_error(workdir):
    with pytest.raises(ConfigError) as caught:
        load_config({}, environ={"SCHEDSERVER_TIMEZONE": "Nowhere/Town"})
    assert "environment SCHEDSERVER_TIMEZONE" in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        load_config({"port": "eighty"}, environ={})
    assert str(caught.value).startswith("--port: expected an integer")
    assert isinstance(caught.value, ValueError)


HUGE = "9" * 5000                   # int() refuses strings of over 4,300 digits


@pytest.mark.parametrize("flags, environ, where", [
    ({}, {"SCHEDSERVER_PORT": HUGE}, "environment SCHEDSERVER_PORT"),
    ({}, {"SCHEDSERVER_PORT": "-" + HUGE}, "environment SCHEDSERVER_PORT"),
    ({}, {"SCHEDSERVER_WORKERS": HUGE}, "environment SCHEDSERVER_WORKERS"),
    ({"port": HUGE}, {}, "--port"),
])
def test_a_5000_digit_number_from_the_environment_or_a_flag_is_a_config_error(workdir, flags, environ, where):
    with pytest.raises(ConfigError) as caught:
        load_config(flags, environ=environ)
    message = str(caught.value)
    assert message.startswith(f"{where}: expected an integer")
    assert "\n" not in message
    assert len(message) < 300               # the value is shown cut short, not all 5,000 digits


def test_a_5000_digit_number_in_the_file_is_a_config_error_naming_the_file(tmp_path, workdir):
    toml = write_toml(tmp_path / "etc", f"[server]\nport = {HUGE}\n")
    with pytest.raises(ConfigError) as caught:
        load_config({"config": toml}, environ={})
    message = str(caught.value)
    assert message.startswith(toml)
    assert "\n" not in message
    assert len(message) < 500


###############################################################################
# Time zones: canonical IANA names only
###############################################################################

NOT_ZONES = ["right/Europe/Berlin", "posix/Europe/Berlin", "localtime", "posixrules", "Factory"]


@pytest.mark.parametrize("name", NOT_ZONES)
def test_a_time_zone_that_is_not_a_canonical_iana_name_is_refused_from_the_environment(workdir, name):
    with pytest.raises(ConfigError) as caught:
        load_config({}, environ={"SCHEDSERVER_TIMEZONE": name})
    assert str(caught.value).startswith(f"environment SCHEDSERVER_TIMEZONE: unknown timezone {name!r}")


@pytest.mark.parametrize("name", NOT_ZONES)
def test_a_time_zone_that_is_not_a_canonical_iana_name_is_refused_from_the_file(tmp_path, workdir, name):
    toml = write_toml(tmp_path / "etc", f'[scheduler]\ntimezone = "{name}"\n')
    with pytest.raises(ConfigError) as caught:
        load_config({"config": toml}, environ={})
    assert str(caught.value).startswith(f"{toml}: scheduler.timezone: unknown timezone {name!r}")


@pytest.mark.parametrize("name", NOT_ZONES)
def test_a_time_zone_that_is_not_a_canonical_iana_name_is_refused_by_config_built_in_python(name):
    with pytest.raises(ConfigError) as caught:
        Config(timezone=name)
    assert str(caught.value).startswith(f"scheduler.timezone: unknown timezone {name!r}")


@pytest.mark.parametrize("name", ["UTC", "Europe/Berlin", "America/Argentina/Buenos_Aires", "Asia/Kolkata"])
def test_canonical_iana_names_are_accepted(workdir, name):
    assert load_config({}, environ={"SCHEDSERVER_TIMEZONE": name}).timezone == name
    assert Config(timezone=name).timezone == name


###############################################################################
# Tokens: printable ASCII only (a client sends the header as Latin-1 at best)
###############################################################################

@pytest.mark.parametrize("name", ["SCHEDSERVER_TOKEN", "SCHEDSERVER_READ_TOKEN"])
@pytest.mark.parametrize("token", ["tök-xyzzy", "token-\u20ac-xyzzy", "emoji-\U0001f511-xyzzy"])
def test_a_non_ascii_token_in_the_environment_is_refused_in_one_line_without_showing_it(workdir, name, token):
    with pytest.raises(ConfigError) as caught:
        load_config({}, environ={name: f"fine-token,{token}"})
    message = str(caught.value)
    assert message.startswith(f"environment {name}: tokens must be printable ASCII")
    assert "\n" not in message
    assert "xyzzy" not in message and "fine-token" not in message


@pytest.mark.parametrize("key", ["tokens", "read_tokens"])
@pytest.mark.parametrize("token", ["tök-xyzzy", "tab\\txyzzy"])
def test_a_token_that_is_not_printable_ascii_in_the_file_is_refused_without_showing_it(tmp_path, workdir, key,
                                                                                         token):
    toml = write_toml(tmp_path / "etc", f'[auth]\n{key} = ["{token}"]\n')
    with pytest.raises(ConfigError) as caught:
        load_config({"config": toml}, environ={})
    message = str(caught.value)
    assert message.startswith(f"{toml}: auth.{key}: tokens must be printable ASCII")
    assert "xyzzy" not in message


@pytest.mark.parametrize("key", ["tokens", "read_tokens"])
def test_a_non_ascii_token_in_config_built_in_python_is_refused_without_showing_it(key):
    with pytest.raises(ConfigError) as caught:
        Config(**{key: ("tök-xyzzy",)})
    assert str(caught.value).startswith(f"auth.{key}: tokens must be printable ASCII")
    assert "xyzzy" not in str(caught.value)


def test_a_non_ascii_token_in_the_token_file_is_refused_without_showing_it(tmp_path):
    token_file = tmp_path / "tokens"
    token_file.write_text("fine-token\ntök-xyzzy\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        resolve_admin_tokens(Config(data_dir=str(tmp_path), token_file=str(token_file)))
    message = str(caught.value)
    assert message.startswith(f"auth.token_file {token_file}: tokens must be printable ASCII")
    assert "xyzzy" not in message and "\n" not in message


###############################################################################
# Config built directly in Python: the same rules as load_config
###############################################################################

@pytest.mark.parametrize("fields, problem", [
    ({"port": 70000}, "server.port: expected an integer from 0 to 65535, got 70000"),
    ({"port": "8080"}, "server.port: expected an integer from 0 to 65535, got '8080'"),
    ({"port": True}, "server.port: expected an integer"),
    ({"port": 2 ** 80}, "server.port: expected an integer"),
    ({"host": ""}, "server.host: expected a non-empty string"),
    ({"data_dir": None}, "server.data_dir: expected a non-empty string"),
    ({"threads": 0}, "server.threads: expected an integer from 1 to 256"),
    ({"connection_limit": 9}, "server.connection_limit: expected an integer from 10 to 100000"),
    ({"log_level": "LOUD"}, "server.log_level: expected one of DEBUG, INFO, WARNING, ERROR"),
    ({"log_format": "xml"}, "server.log_format: expected text or json"),
    ({"access_log": "yes"}, "server.access_log: expected true or false"),
    ({"timezone": "Mars/Olympus"}, "scheduler.timezone: unknown timezone 'Mars/Olympus'"),
    ({"workers": 0}, "scheduler.workers: expected an integer from 1 to 1024"),
    ({"tokens": "one-token"}, "auth.tokens: expected a list of strings"),
    ({"allow_networks": ("intranet",)}, "curl.allow_networks: 'intranet' is not a network"),
    ({"default_timeout_ms": 0}, "exec.default_timeout_ms: expected an integer"),
    ({"interpreters": {"rb": "ruby"}}, "exec.interpreters: key 'rb' must be a file extension"),
])
def test_config_built_in_python_is_validated_with_a_config_error_naming_the_key(fields, problem):
    with pytest.raises(ConfigError) as caught:
        Config(**fields)
    assert str(caught.value).startswith(problem)
    assert "\n" not in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_config_built_in_python_never_shows_an_auth_value_in_its_error():
    with pytest.raises(ConfigError) as caught:
        Config(tokens=["ok", 5, "s3cret"])
    assert str(caught.value).startswith("auth.tokens: expected a list of strings")
    assert "s3cret" not in str(caught.value)


def test_config_built_in_python_makes_paths_absolute(tmp_path, workdir, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))

    config = Config(data_dir="state/../data", scripts_dir="~/jobs", token_file="secret/token")

    assert config.data_dir == str(workdir / "data")
    assert config.scripts_dir == str(tmp_path / "home" / "jobs")
    assert config.token_file == str(workdir / "secret" / "token")
    assert Config(data_dir=str(tmp_path / "abs")).data_dir == str(tmp_path / "abs")


def test_config_built_in_python_is_normalised_like_one_read_from_a_file(workdir):
    config = Config(log_level="debug", log_format="JSON", tokens=[" a ", "", "b"], read_tokens=["r"],
                    interpreters={".RB": "ruby -W0"})

    assert (config.log_level, config.log_format) == ("DEBUG", "json")
    assert (config.tokens, config.read_tokens) == (("a", "b"), ("r",))
    assert config.interpreters == {".rb": ("ruby", "-W0")}


###############################################################################
# main(): exit status 2 and one line on stderr
###############################################################################

@pytest.fixture
def clean_env(monkeypatch, workdir):
    """main() reads the real environment: make sure no SCHEDSERVER_* setting leaks in from outside."""
    for name in list(os.environ):
        if name.startswith("SCHEDSERVER_"):
            monkeypatch.delenv(name)
    return workdir


def test_main_exits_2_with_one_line_for_a_bad_config_file(tmp_path, clean_env, capsys):
    toml = write_toml(tmp_path / "etc", "[server]\ncolour = \"blue\"\n")
    assert main(["--config", toml]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.endswith("\n")
    assert err == f"schedserver: {toml}: unknown key 'server.colour'\n"


def test_main_exits_2_with_one_line_for_unparsable_toml(tmp_path, clean_env, capsys):
    toml = write_toml(tmp_path / "etc", "this is = = not toml\n")
    assert main(["--config", toml]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    assert err.startswith(f"schedserver: {toml}: not valid TOML")
    assert "Traceback" not in err


def test_main_exits_2_with_one_line_for_a_bad_flag_value(clean_env, capsys):
    assert main(["--port", "eighty"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    assert err.startswith("schedserver: --port: expected an integer")


def test_main_exits_2_with_one_line_for_a_data_dir_it_cannot_create(tmp_path, clean_env, capsys):
    (tmp_path / "afile").write_text("a regular file, so nothing can be created under it\n")
    data_dir = tmp_path / "afile" / "data"
    assert main(["--data-dir", str(data_dir), "--scripts-dir", str(tmp_path / "scripts"), "--port", "0"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.splitlines()) == 1
    assert err.startswith(f"schedserver: data dir {data_dir}: cannot create")
    assert "Traceback" not in err


@pytest.mark.parametrize("argv, environ, start", [
    ([], {"SCHEDSERVER_PORT": HUGE}, "schedserver: environment SCHEDSERVER_PORT: expected an integer"),
    (["--port", HUGE], {}, "schedserver: --port: expected an integer"),
])
def test_main_exits_2_with_one_line_for_a_5000_digit_port(clean_env, monkeypatch, capsys, argv, environ, start):
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.splitlines()) == 1
    assert err.startswith(start)
    assert "Traceback" not in err
    assert len(err) < 300


def test_main_exits_2_with_one_line_for_a_5000_digit_number_in_the_config_file(tmp_path, clean_env, capsys):
    toml = write_toml(tmp_path / "etc", f"[server]\nport = {HUGE}\n")
    assert main(["--config", toml]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    assert err.startswith(f"schedserver: {toml}: ")
    assert "Traceback" not in err


@pytest.mark.parametrize("name", ["SCHEDSERVER_TOKEN", "SCHEDSERVER_READ_TOKEN"])
def test_main_exits_2_with_one_line_for_a_non_ascii_token_without_showing_it(clean_env, monkeypatch, capsys,
                                                                              name):
    monkeypatch.setenv(name, "tök-xyzzy")
    assert main(["--port", "0"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.splitlines()) == 1
    assert err.startswith(f"schedserver: environment {name}: tokens must be printable ASCII")
    assert "xyzzy" not in err


def test_main_exits_2_with_one_line_for_a_non_ascii_token_in_the_config_file(tmp_path, clean_env, capsys):
    toml = write_toml(tmp_path / "etc", '[auth]\ntokens = ["tök-xyzzy"]\n')
    assert main(["--config", toml]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    assert err.startswith(f"schedserver: {toml}: auth.tokens: tokens must be printable ASCII")
    assert "xyzzy" not in err


@pytest.mark.parametrize("name", ["right/Europe/Berlin", "localtime"])
def test_main_exits_2_with_one_line_for_a_time_zone_that_is_not_canonical(clean_env, monkeypatch, capsys, name):
    monkeypatch.setenv("SCHEDSERVER_TIMEZONE", name)
    assert main(["--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err == (f"schedserver: environment SCHEDSERVER_TIMEZONE: unknown timezone {name!r} (use an IANA name "
                   f"such as 'UTC' or 'Europe/Berlin'), got {name!r}\n")


def test_main_exits_2_with_one_line_for_a_data_dir_every_user_may_write(tmp_path, clean_env, capsys):
    data_dir = tmp_path / "shared"
    data_dir.mkdir()
    data_dir.chmod(0o777)
    assert main(["--data-dir", str(data_dir), "--scripts-dir", str(tmp_path / "scripts"), "--port", "0"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.splitlines()) == 1
    assert err.startswith(f"schedserver: data dir {data_dir}: writable by every user")
    assert stat.S_IMODE(os.stat(data_dir).st_mode) == 0o777         # left as it was
    assert os.listdir(data_dir) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a directory to another user")
def test_main_exits_2_with_one_line_for_a_data_dir_owned_by_another_user(tmp_path, clean_env, capsys):
    data_dir = tmp_path / "theirs"
    data_dir.mkdir(mode=0o700)
    os.chown(data_dir, 65534, 65534)
    assert main(["--data-dir", str(data_dir), "--scripts-dir", str(tmp_path / "scripts"), "--port", "0"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.splitlines()) == 1
    assert err.startswith(f"schedserver: data dir {data_dir}: owned by uid 65534, not by this user")
    assert os.listdir(data_dir) == []


###############################################################################
# Auth
###############################################################################

AUTH = Auth(("admin-token-1", "admin-token-2"), ("read-token",))


@pytest.mark.parametrize("header, role", [
    (None, None),
    ("", None),
    ("Bearer", None),
    ("Bearer ", None),
    ("Bearer wrong", None),
    ("Bearer admin-token", None),                   # a prefix of a real token
    ("Bearer admin-token-1x", None),
    ("Basic admin-token-1", None),
    ("admin-token-1", None),
    ("Bearer admin-token-1", "admin"),
    ("Bearer admin-token-2", "admin"),
    ("bearer admin-token-1", "admin"),
    ("Bearer read-token", "read"),
])
def test_a_caller_gets_the_role_of_the_token_it_presents(header, role):
    assert AUTH.role(header) == role


@pytest.mark.parametrize("header", [None, "Bearer wrong"])
def test_no_token_or_a_wrong_token_is_unauthorized_with_a_bearer_challenge(header):
    with pytest.raises(Unauthorized) as caught:
        AUTH.check(header, "GET")
    assert caught.value.status == 401
    assert caught.value.code == "UNAUTHORIZED"
    assert caught.value.headers == {"WWW-Authenticate": "Bearer"}


@pytest.mark.parametrize("method", ["POST", "PATCH", "DELETE", "PUT"])
def test_a_read_only_token_is_forbidden_to_change_anything(method):
    with pytest.raises(Forbidden) as caught:
        AUTH.check("Bearer read-token", method)
    assert caught.value.status == 403
    assert caught.value.code == "FORBIDDEN"


def test_a_read_only_token_may_read_and_an_admin_token_may_do_everything():
    assert AUTH.check("Bearer read-token", "GET") == "read"
    assert AUTH.check("Bearer read-token", "HEAD") == "read"
    for method in ("GET", "POST", "PATCH", "DELETE"):
        assert AUTH.check("Bearer admin-token-2", method) == "admin"


###############################################################################
# The admin token
###############################################################################

def test_with_no_token_configured_one_is_generated_into_the_data_dir_with_mode_0600(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="schedserver")
    config = Config(data_dir=str(tmp_path))
    (token,) = resolve_admin_tokens(config)
    path = tmp_path / "api-token"
    assert path.read_text() == token + "\n"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert len(token) >= 32
    assert resolve_admin_tokens(config) == (token,)            # the next start reuses it
    assert path.read_text() == token + "\n"
    assert str(path) in caplog.text
    assert token not in caplog.text
    assert all(token not in str(record.args) for record in caplog.records)


def test_two_data_dirs_get_different_generated_tokens(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert (resolve_admin_tokens(Config(data_dir=str(tmp_path / "a")))
            != resolve_admin_tokens(Config(data_dir=str(tmp_path / "b"))))


def test_configured_tokens_are_used_and_no_token_file_is_generated(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="schedserver")
    assert resolve_admin_tokens(Config(data_dir=str(tmp_path), tokens=("t1", "t2"))) == ("t1", "t2")
    assert not (tmp_path / "api-token").exists()


def test_tokens_from_a_token_file_are_added_to_the_configured_ones(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="schedserver")
    token_file = tmp_path / "tokens"
    token_file.write_text("file-token-1\nfile-token-2, file-token-3\n")
    tokens = resolve_admin_tokens(Config(data_dir=str(tmp_path), tokens=("t1",), token_file=str(token_file)))
    assert tokens == ("t1", "file-token-1", "file-token-2", "file-token-3")
    assert "file-token" not in caplog.text
    assert not (tmp_path / "api-token").exists()


def test_an_unreadable_token_file_is_a_config_error_naming_it(tmp_path):
    missing = str(tmp_path / "no-such-file")
    with pytest.raises(ConfigError) as caught:
        resolve_admin_tokens(Config(data_dir=str(tmp_path), token_file=missing))
    assert str(caught.value).startswith(f"auth.token_file {missing}: cannot read")

