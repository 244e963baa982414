""".ci/lint: the gate CI runs before the tests fails on a format, a lint or a type error.

Each test runs the real script with the real ruff and mypy of ``.venv`` on a small
copy of the project (the repository's pyproject.toml, so the same rules and the same
strictness, and a small ``gateway`` package) in which files are made wrong on purpose.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CI_LINT = REPO / ".ci" / "lint"

CLEAN_MODULE = '''"""A module every check accepts."""


def double(value: int) -> int:
    """Twice ``value``."""
    return value * 2
'''
# One error of each kind, each in a file that is clean for the two other checks.
BAD_MODULES = {
    "format": '"""Badly formatted."""\n\n\ndef double(value: int) -> int:\n    return value*2\n',
    "lint": '"""An unused import."""\n\nimport os\n',
    "types": '"""A str where an int is declared."""\n\nCOUNT: int = "three"\n',
}


def project(tmp_path: Path, extra: dict[str, str]) -> Path:
    """A copy of the project's lint setup: .ci/lint, pyproject.toml, .venv (a link) and
    a small ``gateway`` package holding the clean module plus ``extra`` (name -> source)."""
    root = tmp_path / "checkout"
    (root / ".ci").mkdir(parents=True)
    shutil.copy2(CI_LINT, root / ".ci" / "lint")
    shutil.copy2(REPO / "pyproject.toml", root / "pyproject.toml")
    (root / ".venv").symlink_to(REPO / ".venv")
    package = root / "gateway"
    package.mkdir()
    (package / "__init__.py").write_text('"""A stand-in package for the lint gate\'s tests."""\n')
    (package / "arith.py").write_text(CLEAN_MODULE)
    for name, source in extra.items():
        (package / f"{name}.py").write_text(source)
    return root


def run_lint(root: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MYPY", "RUFF"))}
    return subprocess.run(
        [str(root / ".ci" / "lint")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        stdin=subprocess.DEVNULL,
        cwd=root,
        env=env,
    )


def test_lint_gate_is_an_executable_bash_script_shellcheck_accepts() -> None:
    """.ci/lint carries the executable bit (CI calls it directly) and shellcheck finds nothing."""
    assert os.access(CI_LINT, os.X_OK)
    shellcheck = shutil.which("shellcheck")
    assert shellcheck is not None, "shellcheck missing: ./install.sh --dev installs it"
    proc = subprocess.run(
        [shellcheck, "--shell=bash", str(CI_LINT)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_lint_gate_passes_a_clean_tree(tmp_path: Path) -> None:
    """With nothing wrong, .ci/lint exits 0 after running all three checks."""
    proc = run_lint(project(tmp_path, {}))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for check in ("format", "lint", "types"):
        assert f"[lint] {check}: ok" in proc.stdout


def test_lint_gate_fails_on_a_format_a_lint_and_a_type_error(tmp_path: Path) -> None:
    """A format error, a lint error and a type error, each in a file the other two checks
    accept: .ci/lint exits 1 and names all three checks as failed, so each one fails the
    gate on its own kind of error (one run rather than three: each run starts mypy)."""
    bad = {f"bad_{kind}": source for kind, source in BAD_MODULES.items()}
    proc = run_lint(project(tmp_path, bad))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "[lint] failed: format lint types " in proc.stderr
    # Each tool blamed the file made wrong for it.
    for kind in BAD_MODULES:
        assert f"gateway/bad_{kind}.py" in proc.stdout, kind
