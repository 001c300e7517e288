"""The console script without its extra, and `up`/`demo` without the services' extras:
one line saying what to install, no traceback, nothing started."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_cli(tmp_path: Path, blocked: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    """`contentembed ARGS` (the console script's module) with ``blocked`` modules made
    unimportable by a sitecustomize, as if their extra were not installed."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(
        "import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in blocked)
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "contentembed.cli.entry", *args],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
    )


def test_the_console_script_points_at_the_entry_wrapper() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["contentembed"] == "contentembed.cli.entry:main"
    base = " ".join(project["dependencies"])
    assert not any(name in base for name in ("typer", "rich", "tqdm"))
    assert {d.split(">")[0] for d in project["optional-dependencies"]["cli"]} == {"typer", "rich", "tqdm"}
    assert "cli" in project["optional-dependencies"]["all"][0]
    # PEP 561 marker, inside a directory the wheel includes.
    assert (ROOT / "clients/python/contentembed/py.typed").is_file()


def test_without_the_cli_extra_one_line_says_what_to_install(tmp_path) -> None:
    result = run_cli(tmp_path, ["typer", "rich"], "--help")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "pip install 'contentembed[cli]'" in lines[0] and "typer, rich" in lines[0]
    assert "Traceback" not in result.stderr


def test_with_the_cli_extra_the_app_runs(tmp_path) -> None:
    result = run_cli(tmp_path, [], "--help")
    assert result.returncode == 0 and "demo" in result.stdout


def test_up_and_demo_name_the_missing_service_extras(tmp_path) -> None:
    for command in ("up", "demo"):
        result = run_cli(tmp_path, ["hnswlib", "torch"], command, "--run-dir", str(tmp_path / command))
        assert result.returncode == 1, result.stderr
        message = " ".join(result.stderr.split())
        assert "contentembed[index] (hnswlib)" in message
        assert "contentembed[text-encoder] (torch)" in message
        assert "pip install 'contentembed[all]'" in message and "Traceback" not in message
        assert not (tmp_path / command).exists()  # nothing was started
