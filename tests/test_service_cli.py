"""`exo service`: the systemd user unit and the launchd agent it writes (checked by
`systemd-analyze verify` where it exists, and by plistlib), the commands it runs to start
and stop them, and uninstall removing what install wrote."""

from __future__ import annotations

import argparse
import plistlib
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from exo import cli, service_cli


@pytest.fixture
def config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("EXO_HOME", str(tmp_path / "exo home"))
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    return tmp_path


def test_the_unit_runs_this_interpreter_with_the_node_flags() -> None:
    unit = service_cli.systemd_unit(
        [sys.executable, "-m", "exo.cli", "node", "--cluster-key", "a b$c%d"],
        {"EXO_HOME": "/srv/exo home"},
    )
    assert f'ExecStart={sys.executable} -m exo.cli node --cluster-key "a b$$c%%d"' in unit
    assert 'Environment="EXO_HOME=/srv/exo home"' in unit
    assert "Restart=on-failure" in unit and "WantedBy=default.target" in unit
    assert "KillSignal=SIGINT" in unit


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    unit = tmp_path / service_cli.UNIT
    unit.write_text(
        service_cli.systemd_unit([sys.executable, "-m", "exo.cli", "node", "--peers", "x:1"], {})
    )
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True
    )
    complaints = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if str(unit) in line or "exo.service" in line
    ]
    assert not complaints and result.returncode == 0, complaints or result.stderr


def test_install_writes_and_starts_and_uninstall_stops_and_removes(
    config_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ran: list[list[str]] = []

    def record(command: Sequence[str]) -> None:
        ran.append(list(command))

    parser_args = cli_args(["service", "install", "--", "--peers", "10.0.0.2:52416", "--"])
    assert service_cli.run(parser_args, "linux", record) == 0
    path = config_home / "config" / "systemd" / "user" / "exo.service"
    unit = path.read_text()
    assert "node --peers 10.0.0.2:52416 --\n" in unit  # only the separator is dropped
    assert f'Environment="EXO_HOME={config_home / "exo home"}"' in unit
    assert "hf_secret" not in unit  # a secret never goes into a file others may read
    assert ran == [
        ["systemctl", "--user", "daemon-reload"],
        ["systemctl", "--user", "enable", "--now", "exo.service"],
    ]
    assert "journalctl --user -u exo.service" in capsys.readouterr().out
    ran.clear()
    assert service_cli.run(cli_args(["service", "uninstall"]), "linux", record) == 0
    assert not path.exists()
    assert ran == [
        ["systemctl", "--user", "disable", "--now", "exo.service"],
        ["systemctl", "--user", "daemon-reload"],
    ]
    assert service_cli.run(cli_args(["service", "uninstall"]), "linux", record) == 1


def test_the_launchd_agent_keeps_the_node_alive(config_home: Path) -> None:
    ran: list[list[str]] = []
    args = cli_args(["service", "install", "--", "--cluster-key", "k"])
    assert service_cli.run(args, "darwin", lambda c: ran.append(list(c))) == 0
    path = config_home / "home" / "Library" / "LaunchAgents" / "io.exo.node.plist"
    agent = plistlib.loads(path.read_bytes())
    assert agent["ProgramArguments"] == [
        sys.executable,
        "-m",
        "exo.cli",
        "node",
        "--cluster-key",
        "k",
    ]
    assert agent["RunAtLoad"] is True and agent["KeepAlive"] == {"SuccessfulExit": False}
    assert agent["EnvironmentVariables"]["EXO_HOME"] == str(config_home / "exo home")
    assert ran[0][:2] == ["launchctl", "bootstrap"] and ran[0][-1] == str(path)


def test_no_start_writes_only_and_other_systems_are_refused(config_home: Path) -> None:
    assert cli.main(["service", "install", "--no-start"]) == 0
    assert (config_home / "config" / "systemd" / "user" / "exo.service").is_file()
    assert service_cli.run(cli_args(["service", "install"]), "win32", lambda c: None) == 1


def cli_args(argv: list[str]) -> argparse.Namespace:
    """What `exo` parses `argv` into."""
    return cli.build_parser().parse_args(argv)
