"""`exo node`'s API access flags: keys from `--api-key`, EXO_API_KEY and `--api-key-file`
reach the node's config; an API beyond loopback with no key refuses to start unless
`--insecure-api` (or EXO_INSECURE_API=1) says it is meant, which the node then warns of;
`--cors-origin` is checked at start."""

from __future__ import annotations

from pathlib import Path

import pytest

from exo import cli
from exo.api.access import AccessError, exposure_warning
from exo.node import NodeConfig


@pytest.fixture(autouse=True)
def no_access_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("EXO_API_KEY", "EXO_INSECURE_API", "EXO_API_HOST"):
        monkeypatch.delenv(name, raising=False)
    # main() would point the root logger at stderr for the rest of the session.
    monkeypatch.setattr("exo.logs.configure_logging", lambda *_: None)


def config(tmp_path: Path, *flags: str) -> NodeConfig:
    args = cli.build_parser().parse_args(["node", "--home", str(tmp_path), *flags])
    return cli.node_config(args)


def test_beyond_loopback_without_a_key_refuses_to_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(["node", "--home", str(tmp_path), "--api-host", "0.0.0.0", "--no-worker"])
    assert code == 2
    message = capsys.readouterr().err
    assert message.startswith("exo node: the HTTP API would listen on 0.0.0.0 with no API key")
    assert "--api-key" in message and "--insecure-api" in message
    assert not (tmp_path / "events.log").exists()  # nothing started
    with pytest.raises(AccessError, match="--insecure-api"):
        NodeConfig(home=tmp_path, api_host="192.168.1.5")


def test_insecure_api_a_key_or_loopback_may_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert config(tmp_path, "--api-host", "0.0.0.0", "--insecure-api").insecure_api
    assert config(tmp_path, "--api-host", "0.0.0.0", "--api-key", "k").api_keys == ("k",)
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        assert config(tmp_path, "--api-host", host).api_keys == ()
    # Not serving the API at all: nothing to refuse.
    NodeConfig(home=tmp_path, api_host="0.0.0.0", serve_api=False)
    monkeypatch.setenv("EXO_INSECURE_API", "1")
    assert config(tmp_path, "--api-host", "0.0.0.0").insecure_api
    monkeypatch.setenv("EXO_INSECURE_API", "0")
    with pytest.raises(AccessError):
        config(tmp_path, "--api-host", "0.0.0.0")


def test_the_warning_names_the_address_anyone_can_use() -> None:
    warning = exposure_warning("0.0.0.0", 52415, ())
    assert warning is not None and "anyone who can reach 0.0.0.0:52415" in warning
    assert exposure_warning("0.0.0.0", 52415, ("k",)) is None
    assert exposure_warning("127.0.0.1", 52415, ()) is None


def test_keys_from_flags_the_environment_and_a_file_reach_the_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text("# ops team\nfile-key\n")
    monkeypatch.setenv("EXO_API_KEY", "env-1,env-2")
    assert config(tmp_path).api_keys == ("env-1", "env-2")
    flagged = config(tmp_path, "--api-key", "a", "--api-key", "b", "--api-key-file", str(keys_file))
    assert flagged.api_keys == ("a", "b", "file-key")


def test_a_bad_keys_file_or_origin_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = ["node", "--home", str(tmp_path), "--no-worker"]
    assert cli.main([*home, "--api-key-file", str(tmp_path / "missing")]) == 2
    assert "cannot read the API key file" in capsys.readouterr().err
    assert cli.main([*home, "--cors-origin", "example.com"]) == 2
    assert "--cors-origin 'example.com'" in capsys.readouterr().err
    origins = config(tmp_path, "--cors-origin", "http://LOCALHOST:3000", "--cors-origin", "*")
    assert origins.cors_origins == ("http://localhost:3000", "*")
