"""Installed as a user installs it (issue 10, acceptance 3): build the wheel, install it with its
dependencies into a new virtualenv, and from an empty folder outside the checkout run
``mailcast --version``, ``mailcast init``, ``mailcast validate`` and ``mailcast demo`` (a real
flow on a temporary local Prefect server, messages captured by a real SMTP server). The wheel
puts no generic top-level ``flows``, ``tasks`` or ``blocks`` into site-packages."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SKIP = shutil.ignore_patterns(
    ".git", ".venv", "venv", "__pycache__", "*.egg-info", "build", "dist", ".mypy_cache",
    ".ruff_cache", ".pytest_cache", "preview", "tests", "bench",
)  # fmt: skip


def run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 600) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (
        f"{' '.join(cmd)}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    )
    return proc.stdout + proc.stderr


@pytest.mark.slow
@pytest.mark.serial  # its own Prefect server on SQLite: under load it logs "database is locked"
@pytest.mark.timeout(1200)
def test_the_wheel_works_from_an_empty_folder(tmp_path: Path) -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MAILCAST_", "PREFECT_"))}
    base.pop("PYTHONPATH", None)
    base.pop("VIRTUAL_ENV", None)

    # 1. the wheel, built from a copy of the sources (the checkout stays clean)
    source = tmp_path / "src"
    shutil.copytree(REPO, source, ignore=SKIP)
    wheels = tmp_path / "wheels"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(source)],
        cwd=tmp_path, env=base)  # fmt: skip
    [wheel] = list(wheels.glob("mailcast-*.whl"))

    # 2. a new virtualenv with the wheel and its dependencies
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path, env=base)
    run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)], cwd=tmp_path,
        env=base, timeout=900)  # fmt: skip
    site = Path(
        run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            cwd=tmp_path, env=base).strip().splitlines()[-1]
    )  # fmt: skip
    for generic in ("flows", "tasks", "blocks"):
        assert not (site / generic).exists(), f"site-packages holds a top-level {generic}/"
        assert (site / "mailcast" / generic / "__init__.py").is_file()
    assert (site / "mailcast" / "example" / "campaign.yaml").is_file()

    # 3. the commands, from an empty folder outside the checkout
    work = tmp_path / "empty"
    work.mkdir()
    env = dict(
        base,
        PATH=f"{venv / 'bin'}{os.pathsep}{base.get('PATH', '')}",
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        MAILCAST_DATA_DIR=str(tmp_path / "data"),
    )
    mailcast = str(venv / "bin" / "mailcast")
    from mailcast import __version__

    assert run([mailcast, "--version"], cwd=work, env=env).strip() == f"mailcast {__version__}"
    assert run([str(venv / "bin" / "python"), "-m", "mailcast", "--version"], cwd=work,
               env=env).strip() == f"mailcast {__version__}"  # fmt: skip

    out = run([mailcast, "init", "x"], cwd=work, env=env)
    assert "wrote an example campaign" in out
    written = sorted(
        p.relative_to(work / "x").as_posix() for p in (work / "x").rglob("*") if p.is_file()
    )
    assert "campaign.yaml" in written and len(written) >= 4, written
    assert not any("__pycache__" in p or p.endswith(".py") for p in written), written

    out = run([mailcast, "validate", "x/campaign.yaml"], cwd=work, env=env)
    assert "templates ok" in out and "to send:" in out

    out = run([mailcast, "demo"], cwd=work, env=env, timeout=600)
    assert "Traceback" not in out
    accepted = next(line for line in out.splitlines() if "the SMTP server accepted" in line)
    n = int(accepted.split("accepted")[1].split()[0])
    assert n > 0, out
    captured = list((tmp_path / "data" / "demo" / "captured").rglob("*.eml"))
    assert len(captured) == n, out
