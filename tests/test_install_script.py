"""install.sh and .ci/run: they parse, lint clean, and behave before touching the machine.

The installs themselves change the machine (apt, users, /etc, /opt), so they are run
for real by `.ci/run` (the README's two commands), not from here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
INSTALL_SH = REPO / "install.sh"
CI_RUN = REPO / ".ci" / "run"
NOBODY_UID = 65534  # Debian's "nobody" and "nogroup"


def run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.fixture
def sandbox() -> Iterator[Path]:
    """A world-readable folder holding a copy of install.sh and a `bin/` with only cat and dirname.

    World-readable so that the script can run as an unprivileged user; `bin/` becomes
    the whole PATH, so the tests decide whether a `sudo` exists.
    """
    top = Path(tempfile.mkdtemp(prefix="sgw-install-test-"))
    try:
        top.chmod(0o755)
        shutil.copy2(INSTALL_SH, top / "install.sh")
        (top / "bin").mkdir(mode=0o755)
        for tool in ("cat", "dirname"):  # what the script needs before its root check
            found = shutil.which(tool)
            assert found is not None
            (top / "bin" / tool).symlink_to(found)
        yield top.resolve()
    finally:
        shutil.rmtree(top)


def as_unprivileged(argv: list[str]) -> list[str]:
    """The command run as a non-root user with an empty environment (via setpriv when root)."""
    if os.geteuid() != 0:
        return argv
    setpriv = shutil.which("setpriv")
    assert setpriv is not None, "setpriv (util-linux) is needed to drop root"
    return [
        setpriv,
        f"--reuid={NOBODY_UID}",
        f"--regid={NOBODY_UID}",
        "--clear-groups",
        *argv,
    ]


def run_sandboxed(sandbox: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """install.sh from the sandbox, as a non-root user whose PATH is only the sandbox's bin/."""
    bash = shutil.which("bash")
    assert bash is not None
    env_argv = ["/usr/bin/env", "-i", f"PATH={sandbox / 'bin'}"]
    return run(as_unprivileged([*env_argv, bash, str(sandbox / "install.sh"), *args]), cwd="/")


def test_install_sh_parses() -> None:
    """`bash -n install.sh` finds no syntax error."""
    proc = run(["bash", "-n", str(INSTALL_SH)])
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")


def test_ci_run_parses() -> None:
    """`bash -n .ci/run` finds no syntax error."""
    proc = run(["bash", "-n", str(CI_RUN)])
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")


def test_scripts_are_executable() -> None:
    """install.sh and .ci/run carry the executable bit, as the README and CI call them directly."""
    assert os.access(INSTALL_SH, os.X_OK)
    assert os.access(CI_RUN, os.X_OK)


def test_shellcheck_finds_nothing() -> None:
    """shellcheck reports no warning in install.sh or .ci/run."""
    shellcheck = shutil.which("shellcheck")
    assert shellcheck is not None, "shellcheck missing: ./install.sh --dev installs it"
    proc = run([shellcheck, "--shell=bash", str(INSTALL_SH), str(CI_RUN)])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_help_explains_every_option_without_root(sandbox: Path) -> None:
    """`install.sh --help` works for a non-root user, exits 0 and names every option."""
    proc = run_sandboxed(sandbox, "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    for option in ("--dev", "--no-apt", "--help"):
        assert option in proc.stdout
    for place in ("/opt/store-gateway", "/etc/store-gateway", "/var/lib/store-gateway", "storegw"):
        assert place in proc.stdout


def test_unknown_option_is_a_usage_error(sandbox: Path) -> None:
    """An unknown option exits 2 and prints the usage on stderr."""
    proc = run_sandboxed(sandbox, "--frobnicate")
    assert proc.returncode == 2
    assert "unknown option: --frobnicate" in proc.stderr
    assert "Usage: ./install.sh" in proc.stderr


def test_non_root_without_sudo_fails_with_a_clear_message(sandbox: Path) -> None:
    """Started by a non-root user on a machine without sudo, it exits 1 saying to run it as root."""
    proc = run_sandboxed(sandbox, "--dev", "--no-apt")
    assert proc.returncode == 1
    assert "must run as root and sudo is not installed" in proc.stderr


def test_non_root_without_a_terminal_reruns_through_sudo_n(sandbox: Path) -> None:
    """A non-root run with no terminal re-runs itself through `sudo -n` with the same options."""
    fake_sudo = sandbox / "bin" / "sudo"
    fake_sudo.write_text('#!/bin/sh\necho "sudo $*"\n')
    fake_sudo.chmod(0o755)
    proc = run_sandboxed(sandbox, "--dev", "--no-apt")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == (
        f"sudo -n -- bash {sandbox / 'install.sh'} --dev --no-apt"
    )
