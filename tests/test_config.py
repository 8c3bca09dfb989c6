"""Settings: every row of the table, precedence, and every bad value (exit 2, one line)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bfcl_ext import cli
from bfcl_ext.config import DEFAULT_NUM_THREADS, DEFAULT_WAIT_TIMEOUT, OPTIONS, resolve
from bfcl_ext.errors import ConfigError
from bfcl_ext.retry_policy import RetryPolicy


def settings(flags=None, environ=None, env_file=None, **kwargs):
    return resolve(flags or {}, environ or {}, env_file, **kwargs)


@pytest.fixture(autouse=True)
def no_stray_env_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # ./.env is read by default: keep the developer's out


def test_defaults():
    s = settings()
    assert s.endpoint.base_url == "http://localhost:8000/v1"
    assert s.endpoint.api_key is None
    assert s.skip_vllm is False
    assert s.output_dir == Path("bfcl-results")
    assert s.wait_timeout == DEFAULT_WAIT_TIMEOUT >= 1200
    assert s.num_threads == "auto" and DEFAULT_NUM_THREADS == 64  # 64: where the server has no /metrics
    assert s.vllm_command == ("vllm", "serve")
    assert s.vllm_args == ()
    assert s.vllm_bind == "127.0.0.1"
    assert s.limit is None
    assert s.temperature == 0.001
    assert all(source == "default" for source in s.sources.values())


# one row per setting: (env name, raw value, attribute, expected)
ROWS = [
    ("VLLM_ENDPOINT", "gpu-node-17", "endpoint.base_url", "http://gpu-node-17:8000/v1"),
    ("VLLM_PORT", "8123", "endpoint.base_url", "http://localhost:8123/v1"),
    ("VLLM_BASE_URL", "https://gw.example.org/team/llm/v1", "endpoint.base_url", "https://gw.example.org/team/llm/v1"),
    ("VLLM_API_KEY", "sk-123", "endpoint.api_key", "sk-123"),
    ("BFCL_EXT_API_KEY_FILE", "", "api_key_file", None),  # empty: unset (a real file: the key-file tests below)
    ("BFCL_EXT_SKIP_VLLM", "1", "skip_vllm", True),
    ("BFCL_EXT_OUTPUT_DIR", "/tmp/out", "output_dir", Path("/tmp/out")),
    ("BFCL_EXT_WAIT_TIMEOUT", "90", "wait_timeout", 90.0),
    ("BFCL_EXT_SERVED_MODEL_NAME", "served", "served_model_name", "served"),
    ("BFCL_EXT_NUM_THREADS", "8", "num_threads", 8),
    ("BFCL_EXT_VLLM_COMMAND", "python -m vllm.entrypoints.openai.api_server", "vllm_command",
     ("python", "-m", "vllm.entrypoints.openai.api_server")),
    ("BFCL_EXT_VLLM_ARGS", "--tensor-parallel-size 2 --max-model-len '4096'", "vllm_args",
     ("--tensor-parallel-size", "2", "--max-model-len", "4096")),
    ("BFCL_EXT_LIMIT", "5", "limit", 5),
    ("BFCL_EXT_MODEL", "Qwen/Qwen3-8B", "model", "Qwen/Qwen3-8B"),
    ("BFCL_EXT_TEST_CATEGORY", "simple_python,multiple", "test_categories", ("simple_python", "multiple")),
    ("BFCL_EXT_TEMPERATURE", "0.7", "temperature", 0.7),
    ("BFCL_EXT_MAX_TOKENS", "512", "max_tokens", 512),
    ("BFCL_EXT_TOP_P", "0.9", "top_p", 0.9),
    ("BFCL_EXT_SEED", "7", "seed", 7),
    ("BFCL_EXT_EXTRA_BODY", '{"chat_template_kwargs": {"enable_thinking": false}}', "extra_body",
     {"chat_template_kwargs": {"enable_thinking": False}}),
    ("BFCL_EXT_REQUEST_TIMEOUT", "30", "request_timeout", 30.0),
    ("BFCL_EXT_MAX_RETRIES", "2", "max_retries", 2),
    ("BFCL_EXT_RETRY_ROUNDS", "1", "retry_rounds", 1),
    ("BFCL_EXT_RECOVERY_TIMEOUT", "45", "recovery_timeout", 45.0),
    ("BFCL_EXT_TOKENIZER", "/models/tok", "tokenizer", Path("/models/tok")),
    ("BFCL_EXT_STOP_GRACE", "5", "stop_grace", 5.0),
    ("BFCL_EXT_MODEL_REVISION", "a1b2c3d", "model_revision", "a1b2c3d"),
    ("BFCL_EXT_VLLM_BIND", "0.0.0.0", "vllm_bind", "0.0.0.0"),
    ("BFCL_EXT_SERVER_FACTS", "/scratch/run/server.json", "server_facts", Path("/scratch/run/server.json")),
    ("BFCL_EXT_RUNNER_IMAGE", "ghcr.io/o/runner@sha256:00", "runner_image", "ghcr.io/o/runner@sha256:00"),
    ("BFCL_EXT_SERVER_IMAGE", "/images/vllm.sif", "server_image", "/images/vllm.sif"),
    ("BFCL_EXT_EMBEDDING_MODEL", "/models/minilm", "embedding_model", Path("/models/minilm")),
    ("BFCL_EXT_SEARCH_BASE_URL", "http://cache:8080/serp/", "search_base_url", "http://cache:8080/serp"),
    ("SERPAPI_API_KEY", "serp-secret", "search_api_key", "serp-secret"),
    ("BFCL_EXT_FRESH", "1", "fresh", True),
]


def test_inside_apptainer_the_runner_image_defaults_to_its_sif():
    s = settings(environ={"APPTAINER_CONTAINER": "/images/runner.sif"})
    assert (s.runner_image, s.apptainer_image, s.sources["runner_image"]) == ("/images/runner.sif",) * 2 + ("default",)
    assert settings(environ={"APPTAINER_CONTAINER": "/a.sif", "BFCL_EXT_RUNNER_IMAGE": "r:1"}).runner_image == "r:1"
    assert settings().runner_image is None


def _get(obj, dotted):
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def test_every_option_has_a_row():
    assert {o.env for o in OPTIONS} == {row[0] for row in ROWS}


@pytest.mark.parametrize(("env", "raw", "attribute", "expected"), ROWS)
def test_each_setting_from_environment_env_file_and_flag(tmp_path, env, raw, attribute, expected):
    assert _get(settings(environ={env: raw}), attribute) == expected
    env_file = tmp_path / "settings.env"
    env_file.write_text(f"{env}='{raw}'\n" if "'" not in raw else f'{env}="{raw}"\n')
    assert _get(settings(env_file=env_file), attribute) == expected
    option = next(o for o in OPTIONS if o.env == env)
    if option.flag is None:  # a secret: never taken from argv
        assert _get(settings(flags={option.name: raw}), attribute) is None
        return
    assert _get(settings(flags={option.name: raw}), attribute) == expected


def test_the_search_key_is_never_shown():
    s = settings(environ={"SERPAPI_API_KEY": "serp-secret"})
    assert "serp-secret" not in repr(s) and "serp-secret" not in str(s.redacted())
    assert s.redacted()["search_api_key"] == "<redacted>"
    assert "--serpapi-api-key" not in cli.build_parser().format_help()


def test_precedence_flag_over_environment_over_env_file_over_default(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("VLLM_PORT=7001\nVLLM_ENDPOINT=from-file\n")
    assert settings(env_file=env_file).endpoint.base_url == "http://from-file:7001/v1"
    s = settings(environ={"VLLM_PORT": "7002"}, env_file=env_file)
    assert s.endpoint.base_url == "http://from-file:7002/v1"
    assert s.sources["vllm_port"] == "environment" and s.sources["vllm_endpoint"] == ".env"
    s = settings(flags={"vllm_port": "7003"}, environ={"VLLM_PORT": "7002"}, env_file=env_file)
    assert s.endpoint.base_url == "http://from-file:7003/v1"
    assert s.sources["vllm_port"] == "flag"


def test_default_env_file_is_read_from_the_working_directory(tmp_path):
    (tmp_path / ".env").write_text("VLLM_PORT=7100\n")
    assert settings().endpoint.port == 7100
    assert settings().env_file == Path(".env")


def test_env_file_never_overrides_environment_and_is_not_exported(tmp_path):
    import os

    (tmp_path / ".env").write_text("VLLM_API_KEY=from-file\nSOMETHING_ELSE=1\n")
    assert settings(environ={"VLLM_API_KEY": "from-env"}).endpoint.api_key == "from-env"
    assert "SOMETHING_ELSE" not in os.environ


def test_container_defaults_turn_skip_mode_on_and_flags_turn_it_off():
    assert settings(defaults={"skip_vllm": True}).skip_vllm is True
    assert settings(flags={"skip_vllm": False}, defaults={"skip_vllm": True}).skip_vllm is False
    assert settings(environ={"BFCL_EXT_SKIP_VLLM": "0"}, defaults={"skip_vllm": True}).skip_vllm is False


def test_runner_images_default_to_skip_mode():
    assert settings(environ={"BFCL_EXT_CONTAINER": "1"}).skip_vllm is True
    assert settings(environ={"BFCL_EXT_CONTAINER": "1"}, flags={"skip_vllm": False}).skip_vllm is False
    assert settings(environ={"BFCL_EXT_CONTAINER": "0"}).skip_vllm is False


def test_endpoint_forms():
    assert settings(environ={"VLLM_ENDPOINT": "http://node:9000"}).endpoint.base_url == "http://node:9000/v1"
    assert settings(environ={"VLLM_ENDPOINT": "http://node", "VLLM_PORT": "9001"}).endpoint.base_url == (
        "http://node:9001/v1"
    )
    assert settings(environ={"VLLM_ENDPOINT": "https://gw.example.org/llm"}).endpoint.base_url == (
        "https://gw.example.org/llm/v1"
    )
    assert settings(environ={"VLLM_ENDPOINT": "::1"}).endpoint.base_url == "http://[::1]:8000/v1"
    base = settings(environ={"VLLM_BASE_URL": "https://gw/v1", "VLLM_ENDPOINT": "ignored"}).endpoint
    assert base.base_url == "https://gw/v1" and base.server_root == "https://gw"
    assert settings(environ={"VLLM_ENDPOINT": "node-3"}).vllm_bind == "node-3"


def test_api_key_is_never_in_repr_or_redacted_settings():
    s = settings(environ={"VLLM_API_KEY": "sk-secret-123"})
    assert "sk-secret-123" not in repr(s)
    assert "sk-secret-123" not in str(s.redacted())
    assert s.redacted()["api_key"] == "<redacted>"


BAD = [
    ({"VLLM_PORT": "abc"}, "VLLM_PORT='abc'", "not an integer"),
    ({"VLLM_PORT": "0"}, "VLLM_PORT='0'", "between 1 and 65535"),
    ({"VLLM_PORT": "70000"}, "VLLM_PORT='70000'", "between 1 and 65535"),
    ({"VLLM_ENDPOINT": ""}, "VLLM_ENDPOINT=''", "empty host"),
    ({"VLLM_ENDPOINT": "   "}, "VLLM_ENDPOINT='   '", "empty host"),
    ({"VLLM_ENDPOINT": "host:8000"}, "VLLM_ENDPOINT='host:8000'", "VLLM_PORT"),
    ({"VLLM_ENDPOINT": "ftp://host"}, "VLLM_ENDPOINT='ftp://host'", "scheme"),
    ({"VLLM_BASE_URL": "gw.example.org/v1"}, "VLLM_BASE_URL='gw.example.org/v1'", "scheme"),
    ({"VLLM_BASE_URL": "http://"}, "VLLM_BASE_URL='http://'", "no host"),
    ({"VLLM_BASE_URL": "http://h:99999/v1"}, "VLLM_BASE_URL='http://h:99999/v1'", "bad port"),
    ({"VLLM_BASE_URL": "https://user:pw@gw/v1"}, "VLLM_BASE_URL='<url with credentials>'", "VLLM_API_KEY"),
    ({"BFCL_EXT_SKIP_VLLM": "maybe"}, "BFCL_EXT_SKIP_VLLM='maybe'", "true/false"),
    ({"BFCL_EXT_WAIT_TIMEOUT": "-1"}, "BFCL_EXT_WAIT_TIMEOUT='-1'", "at least 0"),
    ({"BFCL_EXT_NUM_THREADS": "0"}, "BFCL_EXT_NUM_THREADS='0'", "between 1 and 1024"),
    ({"BFCL_EXT_LIMIT": "-3"}, "BFCL_EXT_LIMIT='-3'", "at least 1"),
    ({"BFCL_EXT_TEMPERATURE": "hot"}, "BFCL_EXT_TEMPERATURE='hot'", "not a number"),
    ({"BFCL_EXT_VLLM_ARGS": "--x 'unclosed"}, "BFCL_EXT_VLLM_ARGS=\"--x 'unclosed\"", "cannot split"),
    ({"BFCL_EXT_VLLM_COMMAND": ""}, "BFCL_EXT_VLLM_COMMAND=''", "must name a program"),
    ({"BFCL_EXT_OUTPUT_DIR": ""}, "BFCL_EXT_OUTPUT_DIR=''", "empty path"),
    ({"BFCL_EXT_TEST_CATEGORY": " , "}, "BFCL_EXT_TEST_CATEGORY=' , '", "at least one"),
]


@pytest.mark.parametrize(("environ", "named", "reason"), BAD)
def test_bad_values_name_the_setting_and_the_value(environ, named, reason):
    with pytest.raises(ConfigError) as caught:
        settings(environ=environ)
    message = str(caught.value)
    assert message.startswith(named), message
    assert reason in message
    assert "\n" not in message


def test_env_example_documents_every_setting_and_parses(tmp_path):
    from tests.support.vllm_cpu import REPO_ROOT

    example = REPO_ROOT / ".env.example"
    text = example.read_text()
    readme = (REPO_ROOT / "README.md").read_text()
    for option in OPTIONS:
        assert f"{option.env}=" in text, f"{option.env} missing from .env.example"
        assert f"`{option.env}" in readme, f"{option.env} missing from README"
        assert option.flag is None or f"`{option.flag}`" in readme, f"{option.flag} missing from README"
    s = settings(env_file=example)
    assert s.model == "Qwen/Qwen3-8B" and s.endpoint.base_url == "http://localhost:8000/v1"  # local use


def test_missing_explicit_env_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        settings(env_file=tmp_path / "missing.env")


@pytest.mark.parametrize(
    ("argv", "environ", "fragment"),
    [
        (["run", "--skip-vllm", "--model", "m", "--test-category", "simple_python", "--vllm-port", "x"], {},
         "--vllm-port='x': not an integer"),
        (["run", "--skip-vllm", "--model", "m", "--test-category", "nope"], {}, "'nope': unknown BFCL test category"),
        (["run", "--skip-vllm", "--test-category", "simple_python"], {}, "--model"),
        (["run", "--skip-vllm", "--model", "m"], {}, "--test-category"),
        (["run", "--skip-vllm", "--model", "m", "--test-category", "simple_python", "--output-dir", "/proc/none/x"],
         {}, "--output-dir='/proc/none/x': not writable"),
        (["run", "--skip-vllm", "--model", "m", "--test-category", "memory_vector"], {}, "install.sh --full"),
        (["run", "--skip-vllm", "--model", "m", "--test-category", "web_search_base"], {},
         "SERPAPI_API_KEY='': not set"),
        (["run", "--skip-vllm", "--model", "m", "--test-category", "web_search", "--search-base-url", "ftp://x"],
         {"SERPAPI_API_KEY": "k"}, "--search-base-url='ftp://x': expected an http(s) URL"),
        (["run", "--skip-vllm", "--model", "m", "--test-category", "simple_python", "--tokenizer", "/nonexistent"],
         {}, "--tokenizer='/nonexistent': not a folder"),
        (["--env-file", "/nonexistent.env", "run"], {}, "--env-file='/nonexistent.env': file not found"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line_and_no_traceback(capsys, argv, environ, fragment):
    assert cli.main(argv, environ) == 2
    err = capsys.readouterr().err
    assert fragment in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------- issue 11 §6: every setting checked first


def _numeric_options():
    """Every option whose value is a number (it parses "1" to an int or a float)."""
    numeric = []
    for option in OPTIONS:
        try:
            value = option.parse(option.env or option.name, "1")
        except ConfigError:
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            numeric.append(option)
    return numeric


def test_every_numeric_setting_is_found():
    names = {o.name for o in _numeric_options()}
    assert {"vllm_port", "wait_timeout", "temperature", "recovery_timeout", "stop_grace", "limit"} <= names


@pytest.mark.parametrize("raw", ["nan", "NaN", "inf", "-inf", "Infinity", "1e999"])
@pytest.mark.parametrize("option", _numeric_options(), ids=lambda o: o.env)
def test_nan_and_infinity_are_rejected_for_every_number(option, raw):
    with pytest.raises(ConfigError) as caught:
        settings(environ={option.env: raw})
    assert str(caught.value).startswith(f"{option.env}={raw!r}: not a"), str(caught.value)


@pytest.mark.parametrize("raw", ["1" + "0" * 400, "-" + "9" * 400])
def test_a_huge_integer_is_a_range_error_not_a_crash(raw):
    with pytest.raises(ConfigError, match="between 1 and 1024"):
        settings(environ={"BFCL_EXT_NUM_THREADS": raw})


BAD_NAMES = [
    ("..", "BFCL would write its answers to result/../"),
    (".", "BFCL would write its answers to result/./"),
    ("a\nb", "control or invisible character ('\\n')"),
    ("a\x00b", "control or invisible character ('\\x00')"),
    ("x\x1b[31m", "control or invisible character ('\\x1b')"),
    ("evil\u202etxt", "control or invisible character ('\\u202e')"),
    ("line\u2028sep", "control or invisible character ('\\u2028')"),
    ("   ", "a blank model name"),
    ("m" * 256, "longer than the 255 bytes"),
]


@pytest.mark.parametrize(("name", "reason"), BAD_NAMES)
@pytest.mark.parametrize("env", ["BFCL_EXT_MODEL", "BFCL_EXT_SERVED_MODEL_NAME"])
def test_model_names_that_are_no_plain_folder_are_rejected(env, name, reason):
    with pytest.raises(ConfigError) as caught:
        settings(environ={env: name})
    message = str(caught.value)
    assert message.startswith(f"{env}=") and reason in message, message
    assert "\n" not in message


@pytest.mark.parametrize("name", ["Qwen/Qwen3-8B", "../x", "./m", "/models/llama-3.1-8b", "meta-llama/Llama-3.1-8B-FC",
                                  "модель", "a..b", "m" * 255])
def test_model_names_with_a_plain_folder_form_are_accepted(name):
    assert settings(environ={"BFCL_EXT_MODEL": name}).model == name


BAD_URLS = [
    ({"VLLM_BASE_URL": "http://exa mple:8000/v1"}, "VLLM_BASE_URL='http://exa mple:8000/v1'", "contains whitespace"),
    ({"VLLM_BASE_URL": "http://h\t:8000/v1"}, "VLLM_BASE_URL='http://h\\t:8000/v1'", "contains whitespace"),
    ({"VLLM_BASE_URL": "http://h/v1\n"}, "VLLM_BASE_URL='http://h/v1\\n'", "contains whitespace"),
    ({"VLLM_BASE_URL": " http://h/v1"}, "VLLM_BASE_URL=' http://h/v1'", "contains whitespace"),
    ({"VLLM_BASE_URL": "http://u:p w@h/v1"}, "VLLM_BASE_URL='<url with credentials>'", "contains whitespace"),
    ({"VLLM_ENDPOINT": "http://gpu node"}, "VLLM_ENDPOINT='http://gpu node'", "contains whitespace"),
    ({"VLLM_ENDPOINT": "gpu node"}, "VLLM_ENDPOINT='gpu node'", "contains whitespace"),
    ({"VLLM_ENDPOINT": "gpu\tnode"}, "VLLM_ENDPOINT='gpu\\tnode'", "contains whitespace"),
    ({"BFCL_EXT_SEARCH_BASE_URL": "http://cache :8080"}, "BFCL_EXT_SEARCH_BASE_URL='http://cache :8080'",
     "contains whitespace"),
    ({"VLLM_BASE_URL": "http://a..b/v1"}, "VLLM_BASE_URL='http://a..b/v1'", "'a..b' is not a valid host name"),
    ({"VLLM_BASE_URL": "http://-gw/v1"}, "VLLM_BASE_URL='http://-gw/v1'", "'-gw' is not a valid host name"),
    ({"VLLM_BASE_URL": "http://h%41/v1"}, "VLLM_BASE_URL='http://h%41/v1'", "is not a valid host name"),
    ({"VLLM_BASE_URL": "http://g*w/v1"}, "VLLM_BASE_URL='http://g*w/v1'", "'g*w' is not a valid host name"),
    ({"VLLM_BASE_URL": "http://" + "a" * 64 + "/v1"}, "VLLM_BASE_URL=", "is not a valid host name"),
    ({"VLLM_BASE_URL": "http://1234/v1"}, "VLLM_BASE_URL='http://1234/v1'", "'1234' is not a valid IP address"),
    ({"VLLM_BASE_URL": "http://10.0.0.256/v1"}, "VLLM_BASE_URL=", "'10.0.0.256' is not a valid IP address"),
    ({"VLLM_BASE_URL": "http://[::1/v1"}, "VLLM_BASE_URL='http://[::1/v1'", "not a valid URL"),
    ({"VLLM_BASE_URL": "http://[::1]x/v1"}, "VLLM_BASE_URL='http://[::1]x/v1'", "not a valid URL"),
    ({"VLLM_BASE_URL": "http://[gw]/v1"}, "VLLM_BASE_URL='http://[gw]/v1'", "not a valid URL"),
    ({"VLLM_ENDPOINT": "999.1.1.1"}, "VLLM_ENDPOINT='999.1.1.1'", "not a valid IP address"),
    ({"VLLM_ENDPOINT": "[::1]"}, "VLLM_ENDPOINT='[::1]'", "expected a host name or address"),
    ({"VLLM_ENDPOINT": "12::34::56"}, "VLLM_ENDPOINT='12::34::56'", "not a valid IP address"),
    ({"VLLM_ENDPOINT": "host_"}, None, None),  # compose service names may hold _ (accepted)
    ({"BFCL_EXT_SEARCH_BASE_URL": "http://ca%che"}, "BFCL_EXT_SEARCH_BASE_URL='http://ca%che'",
     "is not a valid host name"),
]


@pytest.mark.parametrize(("environ", "named", "reason"), BAD_URLS)
def test_urls_and_hosts_with_whitespace_or_a_bad_host_are_rejected(environ, named, reason):
    if named is None:
        settings(environ=environ)
        return
    with pytest.raises(ConfigError) as caught:
        settings(environ=environ)
    message = str(caught.value)
    assert message.startswith(named) and reason in message, message
    assert "\n" not in message and "p w" not in message


@pytest.mark.parametrize(("environ", "base_url"), [
    ({"VLLM_ENDPOINT": "vllm_server"}, "http://vllm_server:8000/v1"),
    ({"VLLM_ENDPOINT": "node-17.cluster.local."}, "http://node-17.cluster.local.:8000/v1"),
    ({"VLLM_ENDPOINT": "10.1.2.3"}, "http://10.1.2.3:8000/v1"),
    ({"VLLM_ENDPOINT": "fe80::1"}, "http://[fe80::1]:8000/v1"),
    ({"VLLM_BASE_URL": "http://[fe80::1%25eth0]:8000/v1"}, "http://[fe80::1%25eth0]:8000/v1"),
    ({"VLLM_BASE_URL": "https://bücher.example/v1"}, "https://bücher.example/v1"),
    ({"VLLM_BASE_URL": "http://Gateway.Example.ORG:443/llm/"}, "http://Gateway.Example.ORG:443/llm/v1"),
    ({"VLLM_ENDPOINT": "  gpu-node  "}, None),  # whitespace around a bare host name is an error too
])
def test_valid_hosts_are_accepted(environ, base_url):
    if base_url is None:
        with pytest.raises(ConfigError, match="contains whitespace"):
            settings(environ=environ)
        return
    assert settings(environ=environ).endpoint.base_url == base_url


BAD_ENV_LINES = [
    'VLLM_PORT = "8001\n',  # an unclosed quote: today the default port 8000 is used instead
    "VLLM_API_KEY 'sk-abc'\n",
    "foo bar=1\n",
    "=value\n",
    "K='a'b\n",
    'K="a" junk\n',
]


@pytest.mark.parametrize("line", BAD_ENV_LINES)
def test_an_env_file_line_that_cannot_be_parsed_is_an_error_naming_file_and_line(tmp_path, line):
    env_file = tmp_path / "settings.env"
    env_file.write_text("# settings\nVLLM_ENDPOINT=node\n" + line + "BFCL_EXT_LIMIT=3\n")
    with pytest.raises(ConfigError) as caught:
        settings(env_file=env_file)
    message = str(caught.value)
    assert message.startswith(f"--env-file={str(env_file)!r}: line 3 cannot be parsed"), message
    assert "sk-abc" not in message and "\n" not in message


def test_the_default_env_file_is_checked_too(tmp_path):
    (tmp_path / ".env").write_text("A=1\nB='unclosed\n")
    with pytest.raises(ConfigError, match=r"^--env-file='\.env': line 2 cannot be parsed"):
        settings()


def test_env_file_forms_python_dotenv_accepts_still_work(tmp_path):
    env_file = tmp_path / "ok.env"
    env_file.write_text('\ufeff# c\n\nexport VLLM_PORT=8002\nBFCL_EXT_MODEL="a model" # comment\n'
                        "BFCL_EXT_LIMIT='4'\nEMPTY=\nBARE\nVLLM_ENDPOINT=${HOSTNAME_FROM_FILE:-node}\r\n")
    s = settings(env_file=env_file)
    assert (s.endpoint.base_url, s.model, s.limit) == ("http://node:8002/v1", "a model", 4)


def test_an_env_file_that_is_not_utf8_is_an_error(tmp_path):
    env_file = tmp_path / "latin1.env"
    env_file.write_bytes(b"BFCL_EXT_MODEL=caf\xe9\n")
    with pytest.raises(ConfigError, match="cannot read"):
        settings(env_file=env_file)


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--temperature", "nan"], "--temperature='nan': not a finite number"),
        (["--wait-timeout", "nan"], "--wait-timeout='nan': not a finite number"),
        (["--model", ".."], "--model='..': BFCL would write its answers to result/../"),
        (["--base-url", "http://exa mple/v1"], "--base-url='http://exa mple/v1': contains whitespace"),
    ],
)
def test_cli_rejects_these_before_any_network_call(capsys, tmp_path, argv, fragment):
    base = ["run", "--skip-vllm", "--model", "m", "--test-category", "simple_python", "--output-dir",
            str(tmp_path / "out")]
    assert cli.main([*base, *argv], {}) == 2
    err = capsys.readouterr().err
    assert fragment in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_a_recovery_timeout_names_the_recovery_timeout_setting():
    from bfcl_ext import readiness
    from bfcl_ext.endpoint import Endpoint
    from tests.support.vllm_cpu import free_port

    endpoint = Endpoint(f"http://127.0.0.1:{free_port()}/v1")  # nothing listens: refused at once
    for kwargs, named, other in [({}, "--wait-timeout", "--recovery-timeout"),
                                 ({"name_may_vanish": True}, "--recovery-timeout", "--wait-timeout"),
                                 ({"timeout_setting": readiness.RECOVERY_TIMEOUT_SETTING}, "--recovery-timeout",
                                  "--wait-timeout")]:
        with pytest.raises(readiness.ReadinessTimeout) as caught:
            readiness.wait_until_ready(endpoint, "m", 0.0, progress=lambda _line: None, **kwargs)
        assert f"allow longer with {named}" in str(caught.value) and other not in str(caught.value)


def test_upstreams_local_server_variables_are_read_where_ours_are_unset(tmp_path):
    """bfcl-eval's LOCAL_SERVER_ENDPOINT / LOCAL_SERVER_PORT: accepted where VLLM_ENDPOINT / VLLM_PORT
    are unset (environment or .env), ours win where both are set, and the sources say which was used."""
    s = settings(environ={"LOCAL_SERVER_ENDPOINT": "gpu-node-3", "LOCAL_SERVER_PORT": "8123"})
    assert s.endpoint.base_url == "http://gpu-node-3:8123/v1"
    assert s.sources["vllm_endpoint"] == "environment (LOCAL_SERVER_ENDPOINT)"
    assert s.redacted()["sources"]["vllm_port"] == "environment (LOCAL_SERVER_PORT)"  # what the manifest holds
    both = settings(environ={"LOCAL_SERVER_ENDPOINT": "a", "LOCAL_SERVER_PORT": "1", "VLLM_ENDPOINT": "b",
                             "VLLM_PORT": "2"})
    assert both.endpoint.base_url == "http://b:2/v1" and both.sources["vllm_port"] == "environment"
    env_file = tmp_path / "up.env"
    env_file.write_text("LOCAL_SERVER_PORT=9001\n")
    from_file = settings(env_file=env_file)
    assert from_file.endpoint.base_url == "http://localhost:9001/v1"
    assert from_file.sources["vllm_port"] == ".env (LOCAL_SERVER_PORT)"
    with pytest.raises(ConfigError) as bad:
        settings(environ={"LOCAL_SERVER_PORT": "abc"})
    assert "LOCAL_SERVER_PORT='abc'" in str(bad.value)


def test_upstreams_skip_server_setup_flag_is_skip_vllm():
    parsed = cli.build_parser().parse_args(["run", "--skip-server-setup", "--model", "m"])
    assert parsed.skip_vllm is True
    assert cli.build_parser().parse_args(["run", "--model", "m"]).skip_vllm is None


def test_a_wandb_upload_without_wandb_is_refused_before_the_run(capsys, tmp_path):
    """bfcl-eval imports wandb after scoring when WANDB_BFCL_PROJECT is set: without the package the run
    would end with exit 1 and no records. Refused at start instead (exit 2); its placeholder is ignored."""
    argv = ["run", "--skip-vllm", "--model", "m", "--test-category", "simple_python", "--vllm-port", "9",
            "--output-dir", str(tmp_path / "out"), "--wait-timeout", "0"]
    assert cli.main(argv, {"WANDB_BFCL_PROJECT": "me:bfcl"}) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == ("bfcl-ext: error: WANDB_BFCL_PROJECT='me:bfcl': upstream's W&B upload needs the wandb package, "
                    "which is not installed: pip install wandb, or unset it")
    assert not (tmp_path / "out").exists()
    assert settings(environ={"WANDB_BFCL_PROJECT": "ENTITY:PROJECT"}).wandb_project is None


# ---------------------------------------------------------------- issue 11 F7, F8: ports and the key file


@pytest.mark.parametrize("port", [" 18099", "18099 ", "+18099", "-1", "１８０９９", "0", "018099", "00", "", "8e3"])
def test_a_port_is_plain_ascii_digits_from_1_to_65535(port):
    with pytest.raises(ConfigError, match="^VLLM_PORT="):
        settings(environ={"VLLM_PORT": port})
    with pytest.raises(ConfigError, match="URL has a bad port|contains whitespace"):
        settings(environ={"VLLM_BASE_URL": f"http://127.0.0.1:{port}/v1"})


@pytest.mark.parametrize("url", ["http://h:/v1", "http://h:80:90/v1", "http://[::1]:0/v1", "http://u:p@h:0/v1"])
def test_a_url_port_that_is_empty_doubled_or_zero_is_refused(url):
    with pytest.raises(ConfigError, match="URL has a bad port"):
        settings(environ={"VLLM_BASE_URL": url})


def test_good_ports_still_work():
    assert settings(environ={"VLLM_PORT": "65535"}).endpoint.port == 65535
    assert settings(environ={"VLLM_BASE_URL": "http://[::1]:1/v1"}).endpoint.port == 1
    assert settings(environ={"VLLM_BASE_URL": "https://h/v1"}).endpoint.port == 443


def test_the_key_file_is_read_without_its_line_end_and_its_path_recorded(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("sk-from-file\r\n")
    s = settings(flags={"api_key_file": str(key_file)})
    assert s.endpoint.api_key == "sk-from-file"
    assert s.redacted()["api_key"] == "<redacted>" and "sk-from-file" not in str(s.redacted())
    assert settings(environ={"BFCL_EXT_API_KEY_FILE": str(key_file)}).endpoint.api_key == "sk-from-file"


def test_the_key_file_and_vllm_api_key_follow_the_precedence(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("sk-from-file\n")
    (tmp_path / ".env").write_text("VLLM_API_KEY=sk-from-dotenv\n")
    assert settings(flags={"api_key_file": str(key_file)}, environ={"VLLM_API_KEY": "e"}).endpoint.api_key == (
        "sk-from-file")
    assert settings(environ={"BFCL_EXT_API_KEY_FILE": str(key_file)}).endpoint.api_key == "sk-from-file"
    assert settings(environ={"VLLM_API_KEY": "sk-env", "BFCL_EXT_API_KEY_FILE": ""}).endpoint.api_key == "sk-env"
    with pytest.raises(ConfigError, match="VLLM_API_KEY is set as well"):
        settings(environ={"VLLM_API_KEY": "sk-env", "BFCL_EXT_API_KEY_FILE": str(key_file)})


@pytest.mark.parametrize(("content", "reason"), [
    (b"", "empty"), (b"\n", "empty"), (b"  \n", "empty"), (b" sk-secret-k\n", "alone, on one line"),
    (b"sk-secret-k\nmore\n", "alone, on one line"), (b"\xff\xfe", "not UTF-8"), (b"x" * 70000, "larger than"),
])
def test_a_bad_key_file_names_its_path_never_its_content(tmp_path, content, reason):
    key_file = tmp_path / "key"
    key_file.write_bytes(content)
    with pytest.raises(ConfigError, match=reason) as caught:
        settings(flags={"api_key_file": str(key_file)})
    assert str(key_file) in str(caught.value) and "sk-secret-k" not in str(caught.value)


def test_api_key_on_the_command_line_is_refused_without_echoing_it(capsys):
    for argv in (["run", "--api-key", "sk-flag-9"], ["check", "--api-key=sk-flag-9"]):
        assert cli.main(argv, {}) == 2
        err = capsys.readouterr().err
        assert err.startswith("bfcl-ext: error: --api-key is refused") and "sk-flag-9" not in err
        assert len(err.splitlines()) == 1 and "VLLM_API_KEY" in err and "--api-key-file" in err


@pytest.mark.parametrize(("argv", "line"), [
    (["run", "--model"], "bfcl-ext: error: --model: expected a value after it"),
    (["run", "--temperature", "-inf"], "bfcl-ext: error: --temperature='-inf': a value starting with '-' must be "
     "joined to its flag: write --temperature=-inf"),
    (["run", "--temp", "-inf"], "bfcl-ext: error: --temp='-inf': a value starting with '-' must be joined"),
    (["run", "--nope=1"], "bfcl-ext: error: unknown argument '--nope=1' (bfcl-ext run --help lists them)"),
    (["run", "--password=hunter2"], "bfcl-ext: error: unknown argument --password=<redacted>"),
    (["nope"], "bfcl-ext: error: argument COMMAND: invalid choice: 'nope'"),
])
def test_argparse_errors_are_one_line_without_usage(capsys, argv, line):
    assert cli.main(argv, {}) == 2
    captured = capsys.readouterr()
    assert len(captured.err.splitlines()) == 1 and captured.err.startswith(line), captured.err
    assert "usage:" not in captured.err + captured.out and "hunter2" not in captured.err


def test_the_retry_settings_make_the_one_retry_policy():
    s = settings({"request_timeout": 7.5}, {"BFCL_EXT_MAX_RETRIES": "2", "BFCL_EXT_RETRY_ROUNDS": "1",
                                             "BFCL_EXT_RECOVERY_TIMEOUT": "9"})
    assert s.retry == RetryPolicy(request_timeout=7.5, request_retries=2, passes=1, recovery_timeout=9.0)
    defaults = settings().retry
    assert (defaults.request_retries, defaults.passes, defaults.probe_timeout) == (4, 3, 5.0)


def test_the_retry_policys_waits():
    policy = settings().retry
    assert [policy.before_pass(n) for n in (1, 2, 3, 4, 5, 9)] == [2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert [policy.before_search_retry(n) for n in (1, 5)] == [2.0, 30.0]
    for attempt, ceiling in ((1, 0.5), (2, 1.0), (3, 2.0), (5, 8.0), (9, 8.0)):  # the OpenAI SDK's, less 0-25%
        waits = [policy.before_request_retry(attempt) for _ in range(50)]
        assert all(0.75 * ceiling <= wait <= ceiling for wait in waits), (attempt, waits)
