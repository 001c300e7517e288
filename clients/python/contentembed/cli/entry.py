"""The ``contentembed`` console script: the typer app, imported only when its extra is there.

The base install is the SDK; the command line needs ``contentembed[cli]`` (typer, rich,
tqdm). Without it the script says so in one line instead of a traceback.
"""

from __future__ import annotations

import sys

CLI_PACKAGES = ("typer", "rich", "tqdm")
CLI_HINT = "pip install 'contentembed[cli]'"


def missing_cli_packages() -> list[str]:
    """The command line's packages that cannot be imported, in ``CLI_PACKAGES`` order."""
    missing = []
    for name in CLI_PACKAGES:
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    return missing


def main() -> None:
    """Runs the command line, or exits 1 with a one-line hint when its extra is missing."""
    missing = missing_cli_packages()
    if missing:
        print(
            f"contentembed: the command line needs {', '.join(missing)}: {CLI_HINT}",
            file=sys.stderr,
        )
        raise SystemExit(1)
    from contentembed.cli.main import app

    app()


if __name__ == "__main__":
    main()
