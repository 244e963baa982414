"""The real `store-gateway` command line: check-config's output contract and documented commands."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from gateway.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "gateway" / "gateway.example.toml"
README = ROOT / "README.md"
COMMANDS_REQUIRED = {"run", "check-config", "demo"}


def make_config_file(tmp_path: Path, body: str = "", name: str = "gateway.toml") -> Path:
    """A config file with a valid [store] section followed by ``body``."""
    path = tmp_path / name
    path.write_text('[store]\nid = "s1"\n' + body, encoding="utf-8")
    return path


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m gateway ARGS`` in a child process and capture its output."""
    base = {k: v for k, v in os.environ.items() if k != "STORE_GATEWAY_CONFIG"}
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**base, **(env or {})},
        cwd=cwd or ROOT,
        check=False,
    )


def subcommands() -> dict[str, argparse.ArgumentParser]:
    """The CLI's subcommands by name, read from the real parser."""
    parser = build_parser()
    for action in parser._actions:  # argparse exposes subparsers only this way
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("store-gateway has no subcommands")


def subcommand_help() -> dict[str, str | None]:
    """The one-line help of each subcommand as shown by `store-gateway --help`."""
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return {a.dest: a.help for a in action._choices_actions}
    raise AssertionError("store-gateway has no subcommands")


def test_three_mistakes_print_three_lines_and_exit_1(tmp_path: Path) -> None:
    """A file with an unknown key, a wrong type and an out-of-range value gives 3 lines, exit 1."""
    path = make_config_file(
        tmp_path,
        "[outbox]\nmax_mbb = 10\n"  # unknown key
        '[store_broker]\nport = "not a port"\n'  # wrong type
        "[hq]\nenabled = false\nkeepalive_s = 1\n",  # out of range (5..3600)
    )
    result = run_cli("check-config", "--config", str(path))
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 3, result.stderr
    assert sorted(line.split(": ", 1)[0] for line in lines) == [
        "hq.keepalive_s",
        "outbox.max_mbb",
        "store_broker.port",
    ]
    assert all(len(line.split(": ", 1)) == 2 and line.split(": ", 1)[1] for line in lines)


def test_valid_file_exits_0(tmp_path: Path) -> None:
    """check-config on a valid file exits 0 and prints nothing on stderr."""
    path = make_config_file(tmp_path)
    result = run_cli("check-config", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_example_file_passes_check_config() -> None:
    """The shipped example config passes check-config."""
    result = run_cli("check-config", "--config", str(EXAMPLE))
    assert result.returncode == 0, result.stderr


def test_config_env_var_is_honoured_without_config_flag(tmp_path: Path) -> None:
    """Without --config, check-config reads $STORE_GATEWAY_CONFIG (its mistake is reported)."""
    path = make_config_file(tmp_path, "[outbox]\nmax_mbb = 10\n")
    result = run_cli("check-config", env={"STORE_GATEWAY_CONFIG": str(path)})
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("outbox.max_mbb: ")


def test_config_env_var_pointing_to_valid_file_exits_0(tmp_path: Path) -> None:
    """$STORE_GATEWAY_CONFIG naming a valid file makes check-config exit 0."""
    path = make_config_file(tmp_path)
    result = run_cli("check-config", env={"STORE_GATEWAY_CONFIG": str(path)})
    assert result.returncode == 0, result.stderr
    assert str(path) in result.stdout


def test_missing_file_exits_1_with_one_line(tmp_path: Path) -> None:
    """check-config on a missing file prints one line naming the file and exits 1."""
    path = tmp_path / "absent.toml"
    result = run_cli("check-config", "--config", str(path))
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith(f"{path}: ")


def test_console_script_help_lists_the_commands() -> None:
    """`store-gateway --help` (the installed console script) lists run, check-config and demo."""
    script = Path(sys.executable).with_name("store-gateway")
    result = subprocess.run(
        [str(script), "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    for command in COMMANDS_REQUIRED:
        assert command in result.stdout


def test_every_subcommand_has_help_text() -> None:
    """Each subcommand carries a one-line help and a description shown by `COMMAND --help`."""
    helps = subcommand_help()
    assert set(helps) >= COMMANDS_REQUIRED
    assert all(text and text.strip() for text in helps.values()), helps


def test_every_subcommand_option_has_help_text() -> None:
    """Every option of every subcommand explains itself in --help."""
    undocumented = [
        f"{name} {'/'.join(action.option_strings)}"
        for name, parser in subcommands().items()
        for action in parser._actions
        if action.option_strings and not action.help
    ]
    assert undocumented == []


def test_every_subcommand_is_documented_in_readme() -> None:
    """README.md mentions `store-gateway COMMAND` for every subcommand of the CLI."""
    assert README.exists(), "README.md is missing"
    text = README.read_text(encoding="utf-8")
    missing = [name for name in subcommands() if f"store-gateway {name}" not in text]
    assert missing == []
