"""docker/ without a Docker engine: everything the compose file, the Dockerfile and the Dagster
instance files name must exist, import, parse and validate with the real tools' own parsers."""

from __future__ import annotations

import importlib
import re
import shlex
import subprocess
import sys
import tomllib
from importlib.metadata import entry_points
from pathlib import Path

import click
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
DOCKER = REPO / "docker"
APP_SERVICES = {"codeserver", "webserver", "daemon", "serving_a", "serving_b"}
SERVING = ("serving_a", "serving_b")


def interpolate(value):
    """Compose's `${VAR:-default}` with nothing set (what a plain `docker compose up` sees)."""
    if isinstance(value, str):
        return re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: m.group(2), value)
    if isinstance(value, dict):
        return {k: interpolate(v) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v) for v in value]
    return value


@pytest.fixture(scope="module")
def compose() -> dict:
    return interpolate(yaml.safe_load((DOCKER / "docker-compose.yml").read_text()))


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def copies() -> list[tuple[list[str], str]]:
    """(sources, destination) of every COPY from the build context in the Dockerfile."""
    out = []
    for line in (DOCKER / "Dockerfile").read_text().splitlines():
        parts = shlex.split(line.strip()) if line.strip().startswith("COPY ") else []
        if parts and not any(p.startswith("--from=") for p in parts):
            out.append((parts[1:-1], parts[-1]))
    return out


def dockerfile_env() -> dict[str, str]:
    text = (DOCKER / "Dockerfile").read_text().replace("\\\n", " ")
    env = {}
    for line in text.splitlines():
        if line.strip().startswith("ENV "):
            for token in shlex.split(line.strip()[4:]):
                if "=" in token:
                    k, v = token.split("=", 1)
                    env[k] = v
    return env


def in_image(container_path: str) -> Path | None:
    """The repo file COPY'd to `container_path` (or the folder containing it), if any."""
    for sources, dest in copies():
        for src in sources:
            target = dest.rstrip("/") + "/" + Path(src).name if dest.endswith("/") else dest
            if container_path == target or container_path.startswith(target.rstrip("/") + "/"):
                return REPO / src / container_path[len(target) :].lstrip("/") if container_path != target else REPO / src
    return None


def test_services_and_their_wiring(services):
    assert set(services) == {"postgres", "redis", *APP_SERVICES}
    pg = services["postgres"]
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    for name in APP_SERVICES:
        svc = services[name]
        assert svc["depends_on"]["postgres"]["condition"] == "service_healthy", name
        env = svc["environment"]
        # the app talks to the postgres service with the credentials postgres was created with
        assert env["DAGSTER_PG_HOST"] == "postgres"
        assert env["DAGSTER_PG_USER"] == pg["environment"]["POSTGRES_USER"]
        assert env["DAGSTER_PG_PASSWORD"] == pg["environment"]["POSTGRES_PASSWORD"]
        assert env["DAGSTER_PG_DB"] == pg["environment"]["POSTGRES_DB"]
        mounts = {v.split(":")[1]: v.split(":")[0] for v in svc["volumes"]}
        assert mounts[env["VOICEFW_HOME"]] == "voicefw_home"  # one landing zone / warehouse / model store
        assert mounts[env["DAGSTER_HOME"]] == "dagster_home"
        assert (DOCKER / mounts[env["DAGSTER_HOME"] + "/dagster.yaml"]).resolve() == DOCKER / "dagster.yaml"
        assert (DOCKER / svc["build"]["context"]).resolve() == REPO
        assert (REPO / svc["build"]["dockerfile"]).exists()
    for name in ("webserver", "daemon"):
        assert services[name]["depends_on"]["codeserver"]["condition"] == "service_healthy"
    assert "3000:3000" in services["webserver"]["ports"]
    assert {p for name in SERVING for p in services[name]["ports"]} == {"8000:8000", "8001:8000"}


def test_two_scoring_replicas_share_one_persistent_redis(services):
    """Both replicas (2 workers each) use the same Redis, which keeps an append-only file on a
    volume; their store URL is one the service accepts."""
    from serving.history_store import open_store

    redis = services["redis"]
    assert "redis-cli" in redis["healthcheck"]["test"] and "--appendonly" in redis["command"]
    assert redis["volumes"] == ["redis_data:/data"]
    urls = set()
    for name in SERVING:
        svc = services[name]
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy"
        argv = svc["command"]
        assert int(argv[argv.index("--workers") + 1]) >= 2
        url = svc["environment"]["VOICEFW_ONLINE_STORE"]
        store = open_store(url)  # parses the URL; connects lazily
        assert store.kind == "redis" and store.url_safe == "redis://redis:6379/0"
        urls.add(url)
        assert svc["environment"]["VOICEFW_TRUSTED_PROXIES"] == ""  # no forwarded-for trusted by default
    assert len(urls) == 1


def test_every_copied_file_exists():
    assert copies()
    for sources, _ in copies():
        for src in sources:
            assert (REPO / src).exists(), f"Dockerfile copies {src}, which is not in the repo"


def test_image_env_paths_come_from_the_repo(services):
    env = dockerfile_env()
    assert in_image(env["VOICEFW_OPERATOR_CONFIGS"]) == REPO / "operator_configs"
    assert in_image(env["DAGSTER_HOME"] + "/dagster.yaml") == DOCKER / "dagster.yaml"
    for name in APP_SERVICES:  # compose and the image agree on where things are
        for key in ("DAGSTER_HOME", "VOICEFW_HOME", "VOICEFW_OPERATOR_CONFIGS"):
            assert services[name]["environment"][key] == env[key]


def test_constraints_pin_every_dependency(pyproject):
    pins = {}
    for line in (DOCKER / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version.strip()
    assert "voicefw" not in pins  # --exclude-editable: the project itself is built from source
    for dep in pyproject["project"]["dependencies"]:
        name = re.sub(r"[-_.]+", "-", re.split(r"[<>=!~\[; ]", dep)[0]).lower()
        assert name in pins, f"{dep} is not pinned in docker/constraints.txt"


def _console_script(name: str, pyproject: dict) -> str:
    declared = pyproject["project"]["scripts"]
    if name in declared:
        return declared[name]
    found = [ep.value for ep in entry_points(group="console_scripts") if ep.name == name]
    assert found, f"{name} is neither in [project.scripts] nor a console script of an installed dependency"
    return found[0]


def _click_command(target: str, args: list[str]) -> tuple[click.Command, list[str]]:
    module, attr = target.split(":")
    mod = importlib.import_module(module)
    cmd = getattr(mod, attr)
    if not isinstance(cmd, click.Command):  # dagster's `main()` wrappers call the module's click `cli`
        cmd = mod.cli
    while isinstance(cmd, click.Group) and args and args[0] in cmd.commands:
        cmd, args = cmd.commands[args[0]], args[1:]
    return cmd, args


@pytest.mark.parametrize("service", ["codeserver", "webserver", "daemon", "healthcheck"])
def test_dagster_commands_parse_with_dagsters_own_cli(service, services, pyproject):
    """Each command resolves to a click command of the installed Dagster, and its arguments parse."""
    argv = services["codeserver"]["healthcheck"]["test"][1:] if service == "healthcheck" else services[service]["command"]
    cmd, args = _click_command(_console_script(argv[0], pyproject), list(argv[1:]))
    assert not isinstance(cmd, click.Group), f"{argv}: no such subcommand"
    # paths inside the image are checked as the repo files the Dockerfile copies there
    local = [str(in_image(a)) if a.startswith("/") and in_image(a) else a for a in args]
    ctx = cmd.make_context(argv[0], local)  # raises on unknown options, bad values, missing files
    for flag, value in zip(args, args[1:]):
        if flag == "-m":
            assert ctx.params["module_name"] in (value, (value,))
            defs = importlib.import_module(value).defs
            assert defs.resolve_job_def("ingest_cdrs") is not None
        if flag == "-w":
            assert in_image(value) == DOCKER / "workspace.yaml"


def test_serving_command_is_the_declared_voicefw_script(services, pyproject):
    argv = services["serving_a"]["command"]
    assert _console_script(argv[0], pyproject) == "voicefw_assets.cli:main"
    script = Path(sys.executable).parent / "voicefw"
    out = subprocess.run([str(script), *argv[1:2], "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for flag in argv[2::2]:
        assert flag in out.stdout
    assert argv[argv.index("--host") + 1] == "0.0.0.0"


def test_dagster_yaml_validates_with_dagsters_instance_schema(services, monkeypatch, tmp_path):
    from dagster._config import process_config
    from dagster._core.instance.config import dagster_instance_config
    from dagster._core.storage.config import pg_config

    env = services["daemon"]["environment"]
    referenced = set(re.findall(r"\{env: (\w+)\}", (DOCKER / "dagster.yaml").read_text()))
    assert referenced <= set(env), f"dagster.yaml reads {referenced - set(env)}, which compose does not set"
    for name in referenced:
        monkeypatch.setenv(name, env[name])
    config, custom_class = dagster_instance_config(str(DOCKER))  # raises DagsterInvalidConfigError
    assert custom_class is None
    pg = process_config(pg_config(), config["storage"]["postgres"])
    assert pg.success, pg.errors
    db = pg.value["postgres_db"]
    assert (db["hostname"], db["port"]) == ("postgres", 5432)
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert config["concurrency"]["pools"]["default_limit"] == 1  # the duckdb_warehouse pool: one writer


def test_workspace_points_at_the_code_server(services, pyproject):
    from dagster._core.workspace.config_schema import ensure_workspace_config

    path = DOCKER / "workspace.yaml"
    workspace = yaml.safe_load(path.read_text())
    ensure_workspace_config(workspace, str(path))  # dagster's own schema check
    (entry,) = workspace["load_from"]
    grpc = entry["grpc_server"]
    cmd = services["codeserver"]["command"]
    assert grpc["host"] == "codeserver"
    assert str(grpc["port"]) == cmd[cmd.index("-p") + 1] == services["codeserver"]["healthcheck"]["test"][-1]
    assert grpc["location_name"] == pyproject["tool"]["dagster"]["code_location_name"]
