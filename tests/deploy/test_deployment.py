"""The deployment files say what the service needs: checked by parsing them, no Docker engine needed.

Dockerfile, docker-compose.yml (+ the CPU override), the load-balanced compose example and the
Kubernetes manifest are read as data and held against the package itself: the Settings class (field
names, shutdown timeout), pyproject (TensorFlow range, console script) and the committed weights.
The healthcheck one-liner is also run against a local HTTP server answering 200 and 503.
"""

from __future__ import annotations

import http.server
import json
import re
import subprocess
import sys
import threading
import tomllib
from pathlib import Path, PurePosixPath

import pytest
from helpers import REPO_ROOT

yaml = pytest.importorskip("yaml")

from packaging.specifiers import SpecifierSet  # noqa: E402
from packaging.version import Version  # noqa: E402

from enhancer.config import Settings  # noqa: E402

ROOT = REPO_ROOT
READY_URL = "http://127.0.0.1:8000/readyz"


# ---------------------------------------------------------------------------------------- parsing
class Reset:
    """Compose's `!reset` tag: the override removes the inherited value."""

    def __init__(self, value):
        self.value = value


class ComposeLoader(yaml.SafeLoader):
    pass


def _reset(loader, node):
    if isinstance(node, yaml.SequenceNode):
        return Reset(loader.construct_sequence(node))
    if isinstance(node, yaml.MappingNode):
        return Reset(loader.construct_mapping(node))
    return Reset(loader.construct_scalar(node))


ComposeLoader.add_constructor("!reset", _reset)


def load_yaml(relpath: str):
    return yaml.load((ROOT / relpath).read_text(), Loader=ComposeLoader)


def parse_dockerfile(path: Path) -> list[list[tuple[str, str]]]:
    """Instructions per build stage as (INSTRUCTION, arguments); continuations joined."""
    stages: list[list[tuple[str, str]]] = [[]]  # stages[0]: global ARGs before the first FROM
    logical = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not logical and (not line or line.startswith("#")):
            continue
        if logical and line.startswith("#"):
            continue  # comment lines inside a continuation are dropped by Docker too
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        logical += line
        instruction, _, args = logical.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            stages.append([])
        stages[-1].append((instruction, args.strip()))
        logical = ""
    assert not logical, "Dockerfile ends inside a line continuation"
    return stages


def duration_s(value) -> float:
    """Compose durations ('45s', '1m30s', '500ms') in seconds."""
    total, rest = 0.0, str(value)
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", rest):
        total += float(number) * {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}[unit]
    assert total > 0, f"not a duration: {value!r}"
    return total


def default_with_env(field: str, environment: dict | None) -> float:
    """A setting's effective value: the deployment's override, else the Settings default."""
    env_name = f"ENHANCER_{field.upper()}"
    if environment and env_name in environment:
        return float(environment[env_name])
    return float(Settings.model_fields[field].default)


def interpolate_default(value: str) -> str:
    """Resolve compose `${VAR:-default}` to its default (nothing set in the test's environment)."""
    return re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", value)


@pytest.fixture(scope="module")
def dockerfile():
    return parse_dockerfile(ROOT / "Dockerfile")


@pytest.fixture(scope="module")
def runtime_stage(dockerfile):
    return dockerfile[-1]


@pytest.fixture(scope="module")
def compose():
    return load_yaml("docker-compose.yml")


@pytest.fixture(scope="module")
def service(compose):
    return compose["services"]["enhancer"]


@pytest.fixture(scope="module")
def pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _one(stage, instruction):
    found = [args for name, args in stage if name == instruction]
    assert len(found) == 1, f"expected one {instruction} in the runtime stage, found {found}"
    return found[0]


def _last(stage, instruction):
    found = [args for name, args in stage if name == instruction]
    assert found, f"no {instruction} in the runtime stage"
    return found[-1]


def _env(stage) -> dict[str, str]:
    env = {}
    for name, args in stage:
        if name == "ENV":
            for key, value in re.findall(r"(\w+)=(\S+)", args):
                env[key] = value
    return env


def _arg_defaults(dockerfile) -> dict[str, str]:
    defaults = {}
    for stage in dockerfile:
        for name, args in stage:
            if name == "ARG" and "=" in args:
                key, _, value = args.partition("=")
                defaults[key] = value
    return defaults


# ------------------------------------------------------------------------------------- Dockerfile
def test_dockerfile_runs_as_a_non_root_numeric_user(runtime_stage):
    user = _one(runtime_stage, "USER")
    uid = user.split(":")[0]
    assert uid.isdigit(), f"USER {user}: numeric, so Kubernetes runAsNonRoot can verify it"
    assert int(uid) != 0


def test_dockerfile_cmd_is_exec_form_and_starts_the_server(runtime_stage, pyproject):
    cmd = _one(runtime_stage, "CMD")
    argv = json.loads(cmd)  # shell form would not be JSON: /bin/sh would swallow SIGTERM
    assert isinstance(argv, list) and all(isinstance(a, str) for a in argv)
    assert argv[:2] == ["enhancer", "serve"]
    assert "enhancer" in pyproject["project"]["scripts"]
    assert not any(name == "ENTRYPOINT" for name, _ in runtime_stage)


def test_dockerfile_serves_on_all_interfaces_port_8000_with_the_committed_weights(runtime_stage):
    env = _env(runtime_stage)
    assert _one(runtime_stage, "EXPOSE") == "8000"
    assert env["ENHANCER_PORT"] == "8000"
    assert env["ENHANCER_HOST"] == "0.0.0.0"
    workdir = PurePosixPath(_last(runtime_stage, "WORKDIR"))  # the one the server starts in
    copies = [args.split() for name, args in runtime_stage if name == "COPY" and "--from" not in args]
    assert ["weights", str(workdir / "weights")] in copies
    model_dir = PurePosixPath(env["ENHANCER_MODEL_DIR"])
    # the image's model dir is the committed default model, at the same place relative to WORKDIR
    # as in the checkout, so a relative ENHANCER_MODEL_DIR from .env.example means the same thing
    from enhancer.config import DEFAULT_MODEL_DIR

    assert model_dir == workdir / PurePosixPath(DEFAULT_MODEL_DIR.as_posix())
    assert (ROOT / DEFAULT_MODEL_DIR / "saved_model.pb").is_file()


def test_dockerfile_env_names_are_real_settings(runtime_stage):
    for name in _env(runtime_stage):
        if name.startswith("ENHANCER_"):
            field = name.removeprefix("ENHANCER_").lower()
            assert field in Settings.model_fields, f"{name} is not a setting"


def test_dockerfile_healthcheck_probes_readyz(runtime_stage):
    healthcheck = _one(runtime_stage, "HEALTHCHECK")
    options, _, command = healthcheck.partition("CMD ")
    argv = json.loads(command)
    assert argv[:2] == ["python", "-c"]
    assert READY_URL in argv[2]
    assert duration_s(re.search(r"--start-period=(\S+)", options).group(1)) >= 60


def test_dockerfile_pins_tensorflow_inside_the_project_range(dockerfile, pyproject):
    args = _arg_defaults(dockerfile)
    pinned = Version(args["TF_VERSION"])
    (tf_requirement,) = [d for d in pyproject["project"]["dependencies"] if d.startswith("tensorflow")]
    assert pinned in SpecifierSet(tf_requirement.removeprefix("tensorflow"))
    assert args["TF_EXTRAS"] == "and-cuda"  # the default image is the GPU one
    base = args["PYTHON_IMAGE"]
    assert not base.endswith(":latest") and ":" in base
    python = Version(re.match(r"python:(\d+\.\d+)", base).group(1))
    assert python in SpecifierSet(pyproject["project"]["requires-python"])


def test_dockerfile_installs_the_package_from_the_checkout(dockerfile):
    build = dockerfile[1]
    copied = [args.split()[0] for name, args in build if name == "COPY"]
    assert "src" in copied
    assert "pyproject.toml" in " ".join(args for name, args in build if name == "COPY")
    installs = [args for name, args in build if name == "RUN" and "pip install" in args]
    assert any(re.search(r"pip install (--?[\w-]+ )*\.(\s|$)", cmd) for cmd in installs)
    assert not any(" -e " in cmd or "--editable" in cmd for cmd in installs)


@pytest.fixture(scope="module")
def image_constraints() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "deploy" / "image-constraints.txt").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and version, f"not an exact pin: {line!r}"
            pins[_canonical(name)] = version
    return pins


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_dockerfile_builds_with_the_committed_constraints(dockerfile, runtime_stage):
    env = _env(runtime_stage)
    copies = [args.split() for name, args in runtime_stage if name == "COPY"]
    # the file pip is told to use is the committed one, copied in before the first pip install
    assert ["deploy/image-constraints.txt", env["PIP_CONSTRAINT"]] in copies
    first_copy = next(i for i, (name, args) in enumerate(runtime_stage) if name == "COPY")
    first_pip = next(i for i, (name, args) in enumerate(runtime_stage) if "pip install" in args)
    assert first_copy < first_pip
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert not _dockerignored(patterns, "deploy/image-constraints.txt")


def test_image_constraints_pin_every_dependency_inside_the_project_ranges(image_constraints, pyproject):
    from packaging.requirements import Requirement

    for requirement in map(Requirement, pyproject["project"]["dependencies"]):
        name = _canonical(requirement.name)
        if name == "tensorflow":
            # pinned by the Dockerfile's TF_VERSION, so --build-arg TF_VERSION=... is not contradicted
            assert name not in image_constraints
            continue
        assert name in image_constraints, f"{name} is not pinned for the image"
        assert Version(image_constraints[name]) in requirement.specifier, (name, image_constraints[name])
    # the package's own build back-end is installed under the same constraints
    for requirement in map(Requirement, pyproject["build-system"]["requires"]):
        name = _canonical(requirement.name)
        assert name in image_constraints, f"build requirement {name} is not pinned"
        assert Version(image_constraints[name]) in requirement.specifier, (name, image_constraints[name])


def _dockerignored(patterns: list[str], path: str) -> bool:
    import fnmatch

    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        bare = pattern.removeprefix("**/")
        hit = any(fnmatch.fnmatch(p, pattern) for p in prefixes) or (
            pattern.startswith("**/") and any(fnmatch.fnmatch(part, bare) for part in parts)
        )
        if hit:
            ignored = not negate
    return ignored


def test_dockerignore_keeps_the_context_small_but_keeps_what_the_build_copies():
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    for path in [".venv/bin/python", ".git/HEAD", "runs/x/ckpt", "data/train/a.jpg", ".env",
                 "deploy/kubernetes.yaml", "deploy/container_smoke.py",
                 "src/enhancer/__pycache__/x.pyc", "src/enhancer.egg-info/PKG-INFO"]:
        assert _dockerignored(patterns, path), f"{path} should stay out of the build context"
    for path in ["pyproject.toml", "README.md", "src/enhancer/config.py", "deploy/image-constraints.txt",
                 "weights/dejpeg/saved_model.pb", "weights/dejpeg-q/saved_model.pb",
                 "weights/dejpeg-q/variables/variables.index"]:
        assert not _dockerignored(patterns, path), f"{path} is needed by the build"


# -------------------------------------------------------------------------------- docker-compose
def test_compose_reserves_an_nvidia_gpu(service):
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    (gpu,) = [d for d in devices if d.get("driver") == "nvidia"]
    assert "gpu" in gpu["capabilities"]
    assert gpu.get("count") == "all" or int(gpu["count"]) >= 1


def test_compose_publishes_port_8000(service):
    ports = [interpolate_default(str(p)) for p in service["ports"]]
    assert "8000:8000" in ports


def test_compose_env_file_is_optional_dot_env(service):
    (entry,) = service["env_file"]
    assert entry == {"path": ".env", "required": False}
    gitignore = (ROOT / ".gitignore").read_text().split()
    assert ".env" in gitignore  # local settings (maybe secrets) are never committed


def test_compose_environment_makes_the_server_reachable_on_8000(service, monkeypatch):
    environment = service["environment"]
    for key, value in environment.items():
        monkeypatch.setenv(key, str(value))
    settings = Settings(_env_file=None)
    assert settings.host == "0.0.0.0"
    assert settings.port == 8000


def test_compose_healthcheck_probes_readyz(service):
    check = service["healthcheck"]
    assert check["test"][0] == "CMD"
    assert check["test"][1:3] == ["python", "-c"]
    assert READY_URL in check["test"][3]
    assert duration_s(check["start_period"]) >= 60
    assert int(check["retries"]) >= 1


def test_compose_restarts_and_outlasts_the_shutdown_timeout(service):
    assert service["restart"] in {"always", "unless-stopped", "on-failure"}
    shutdown = default_with_env("shutdown_timeout_s", service.get("environment"))
    assert shutdown > 0
    assert duration_s(service["stop_grace_period"]) > shutdown + 5


def test_compose_mounts_the_weights_read_only_where_the_image_expects_them(service, runtime_stage):
    (mount,) = [v for v in service["volumes"] if isinstance(v, dict) and v["target"].endswith("weights")]
    assert mount["type"] == "bind"
    assert (ROOT / mount["source"]).resolve() == (ROOT / "weights").resolve()
    assert mount["read_only"] is True
    model_dir = PurePosixPath(_env(runtime_stage)["ENHANCER_MODEL_DIR"])
    assert PurePosixPath(mount["target"]) in model_dir.parents


def test_compose_builds_this_checkout(service):
    assert service["build"]["context"] == "."
    assert service["build"]["args"]["TF_EXTRAS"] == "and-cuda"


def test_cpu_override_drops_the_gpu_and_the_cuda_wheels():
    override = load_yaml("docker-compose.cpu.yml")["services"]["enhancer"]
    devices = override["deploy"]["resources"]["reservations"]["devices"]
    assert isinstance(devices, Reset) and devices.value == []
    assert override["build"]["args"]["TF_EXTRAS"] == ""
    assert override["image"] != load_yaml("docker-compose.yml")["services"]["enhancer"]["image"]


# ------------------------------------------------- the compose files, read by Docker Compose itself
# The YAML checks above cannot tell whether Compose accepts the files and merges them as intended
# (`!reset`, the optional env_file form). `docker-compose config` of the stated minimum version can,
# without an engine; deploy/compose_versions.py fetches the pinned binaries (.ci/run runs it).
COMPOSE_FILES = ["docker-compose.yml", "docker-compose.cpu.yml", "deploy/compose.lb.yml"]


def _compose_versions():
    import importlib.util

    spec = importlib.util.spec_from_file_location("compose_versions", ROOT / "deploy" / "compose_versions.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def compose_versions():
    module = _compose_versions()
    missing = [v for v in (module.MINIMUM, module.BEFORE_MINIMUM) if not module.binary_path(v).exists()]
    if missing:
        pytest.skip(f"docker-compose {', '.join(missing)} not fetched: run `python deploy/compose_versions.py`")
    return module


@pytest.fixture
def project(tmp_path):
    """The compose files alone in a scratch project directory: no developer's .env leaks in."""
    for name in COMPOSE_FILES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text((ROOT / name).read_text())
    return tmp_path


def compose_config(compose_versions, version, project, *files, cwd=None):
    """`docker-compose -f ... config --format json` of `version`: (exit status, model or stderr)."""
    binary = compose_versions.binary_path(version)
    args = [str(binary)]
    for name in files:
        args += ["-f", str(project / name)]
    # only PATH and HOME: the caller's ENHANCER_HOST_PORT & co. must not change the result
    env = {"PATH": "/usr/bin:/bin", "HOME": str(project)}
    result = subprocess.run([*args, "config", "--format", "json"], capture_output=True, text=True,
                            env=env, cwd=cwd or project, timeout=60)
    if result.returncode != 0:
        return result.returncode, result.stderr
    return 0, json.loads(result.stdout)


def test_minimum_compose_reads_the_gpu_file_without_a_dot_env(compose_versions, project):
    code, model = compose_config(compose_versions, compose_versions.MINIMUM, project, "docker-compose.yml")
    assert code == 0, model
    service = model["services"]["enhancer"]
    (gpu,) = service["deploy"]["resources"]["reservations"]["devices"]
    assert gpu["driver"] == "nvidia" and gpu["count"] == 1 and gpu["capabilities"] == ["gpu"]
    assert service["environment"] == {"ENHANCER_HOST": "0.0.0.0", "ENHANCER_PORT": "8000"}
    (port,) = service["ports"]
    assert (port["published"], port["target"]) == ("8000", 8000)
    assert duration_s(service["stop_grace_period"]) == duration_s(load_yaml("docker-compose.yml")
                                                                  ["services"]["enhancer"]["stop_grace_period"])
    assert service["healthcheck"]["test"][3].endswith("timeout=4)") and READY_URL in service["healthcheck"]["test"][3]
    assert service["build"]["args"] == {"TF_EXTRAS": "and-cuda"}


def test_minimum_compose_takes_settings_from_dot_env_but_keeps_host_and_port(compose_versions, project):
    (project / ".env").write_text("ENHANCER_TILE_SIZE=512\nENHANCER_HOST=127.0.0.1\nENHANCER_PORT=9\n"
                                  "ENHANCER_HOST_PORT=9000\n")
    code, model = compose_config(compose_versions, compose_versions.MINIMUM, project, "docker-compose.yml")
    assert code == 0, model
    service = model["services"]["enhancer"]
    assert service["environment"]["ENHANCER_TILE_SIZE"] == "512"
    assert service["environment"]["ENHANCER_HOST"] == "0.0.0.0"  # environment wins over .env
    assert service["environment"]["ENHANCER_PORT"] == "8000"
    (port,) = service["ports"]
    assert (port["published"], port["target"]) == ("9000", 8000)


def test_minimum_compose_cpu_override_drops_the_gpu_and_keeps_the_rest(compose_versions, project):
    version = compose_versions.MINIMUM
    code, gpu_model = compose_config(compose_versions, version, project, "docker-compose.yml")
    code_cpu, cpu_model = compose_config(compose_versions, version, project,
                                         "docker-compose.yml", "docker-compose.cpu.yml")
    assert code == 0 and code_cpu == 0, cpu_model
    gpu, cpu = gpu_model["services"]["enhancer"], cpu_model["services"]["enhancer"]
    assert "devices" not in cpu["deploy"]["resources"].get("reservations", {})  # reset, not appended to
    assert cpu["build"]["args"] == {"TF_EXTRAS": ""}
    assert cpu["image"] != gpu["image"]
    for key in ("ports", "environment", "volumes", "healthcheck", "stop_grace_period", "restart"):
        assert cpu[key] == gpu[key], key


def test_minimum_compose_reads_the_load_balanced_example(compose_versions, project):
    code, model = compose_config(compose_versions, compose_versions.MINIMUM, project, "deploy/compose.lb.yml",
                                 cwd=project / "deploy")
    assert code == 0, model
    app = model["services"]["enhancer"]
    assert Path(app["build"]["context"]) == project
    assert app["deploy"]["replicas"] >= 2
    assert "ports" not in app


def test_compose_before_the_minimum_rejects_the_files(compose_versions, project):
    """The stated minimum is needed: the release before it refuses docker-compose.yml's env_file
    form. If this starts passing, the files no longer need the minimum the documents state."""
    code, error = compose_config(compose_versions, compose_versions.BEFORE_MINIMUM, project, "docker-compose.yml")
    assert code != 0
    assert "env_file" in error


def test_documents_state_the_checked_minimum_compose_version():
    minimum = f"v{_compose_versions().MINIMUM}"
    for name in ("README.md", "docs/DEPLOYMENT.md", "docker-compose.yml", "docker-compose.cpu.yml"):
        assert f"Docker Compose {minimum}" in (ROOT / name).read_text(), name


# ------------------------------------------------------------------- the healthcheck, actually run
class _Handler(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):  # noqa: N802
        code = self.status if self.path == "/readyz" else 404
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("status, healthy", [(200, True), (503, False)])
def test_healthcheck_command_passes_only_when_ready(service, status, healthy):
    handler = type("Handler", (_Handler,), {"status": status})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        code = service["healthcheck"]["test"][3]
        code = code.replace("127.0.0.1:8000", f"127.0.0.1:{server.server_address[1]}")
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30)
    finally:
        server.shutdown()
        server.server_close()
    assert (result.returncode == 0) is healthy, result.stderr.decode()[-500:]


def test_healthcheck_command_fails_when_nothing_listens(service):
    import socket

    with socket.socket() as probe:  # a port that was free a moment ago
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code = service["healthcheck"]["test"][3].replace("127.0.0.1:8000", f"127.0.0.1:{port}")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30)
    assert result.returncode != 0


# ---------------------------------------------------------------------- load-balanced replicas
def test_lb_example_routes_only_to_ready_replicas():
    lb_compose = load_yaml("deploy/compose.lb.yml")
    lb, app = lb_compose["services"]["lb"], lb_compose["services"]["enhancer"]
    name, _, tag = lb["image"].partition(":")
    assert name == "traefik"
    assert Version(tag.lstrip("v")) >= Version("3.6")  # Docker API negotiation (Engine 29)
    assert "8000:8000" in [interpolate_default(str(p)) for p in lb["ports"]]
    assert "ports" not in app  # replicas are reached only through the balancer
    labels = dict(label.split("=", 1) for label in app["labels"])
    assert labels["traefik.enable"] == "true"
    assert labels["traefik.http.services.enhancer.loadbalancer.healthcheck.path"] == "/readyz"
    assert labels["traefik.http.services.enhancer.loadbalancer.server.port"] == "8000"
    assert READY_URL in app["healthcheck"]["test"][3]
    assert int(app["deploy"]["replicas"]) >= 2
    shutdown = default_with_env("shutdown_timeout_s", app.get("environment"))
    assert duration_s(app["stop_grace_period"]) > shutdown + 5
    # paths are relative to deploy/: the same checkout, weights and .env as the single-host file
    assert (ROOT / "deploy" / app["build"]["context"]).resolve() == ROOT
    (mount,) = app["volumes"]
    assert (ROOT / "deploy" / mount["source"]).resolve() == (ROOT / "weights").resolve()
    assert app["env_file"] == [{"path": "../.env", "required": False}]


# ---------------------------------------------------------------------------------- Kubernetes
@pytest.fixture(scope="module")
def k8s():
    docs = [d for d in yaml.safe_load_all((ROOT / "deploy" / "kubernetes.yaml").read_text()) if d]
    return {d["kind"]: d for d in docs}


@pytest.fixture(scope="module")
def pod(k8s):
    deployment = k8s["Deployment"]
    assert deployment["apiVersion"] == "apps/v1"
    return deployment["spec"]["template"]


def _container(pod):
    (container,) = pod["spec"]["containers"]
    return container


def _port(container, ref):
    if isinstance(ref, int):
        return ref
    (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == ref]
    return port


def test_k8s_probes_liveness_healthz_and_readiness_readyz_on_8000(pod):
    container = _container(pod)
    live, ready = container["livenessProbe"]["httpGet"], container["readinessProbe"]["httpGet"]
    assert live["path"] == "/healthz"
    assert ready["path"] == "/readyz"
    assert _port(container, live["port"]) == _port(container, ready["port"]) == 8000
    env = {e["name"]: e["value"] for e in container.get("env", [])}
    assert env.get("ENHANCER_HOST") == "0.0.0.0"


def test_k8s_requests_a_gpu(pod):
    limits = _container(pod)["resources"]["limits"]
    assert int(limits["nvidia.com/gpu"]) >= 1


def test_k8s_drains_before_it_is_killed(pod):
    container = _container(pod)
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop_s = float(command[1])
    assert pre_stop_s > 0
    env = {e["name"]: e["value"] for e in container.get("env", [])}
    shutdown = default_with_env("shutdown_timeout_s", env)
    assert pod["spec"]["terminationGracePeriodSeconds"] > pre_stop_s + shutdown


def test_k8s_runs_as_the_image_user(pod, runtime_stage):
    security = pod["spec"]["securityContext"]
    assert security["runAsNonRoot"] is True
    assert str(security["runAsUser"]) == _one(runtime_stage, "USER").split(":")[0]


def test_k8s_service_selects_the_pods_and_targets_the_http_port(k8s, pod):
    service = k8s["Service"]
    selector = service["spec"]["selector"]
    labels = pod["metadata"]["labels"]
    assert selector and all(labels.get(k) == v for k, v in selector.items())
    assert k8s["Deployment"]["spec"]["selector"]["matchLabels"] == selector
    (port,) = service["spec"]["ports"]
    assert _port(_container(pod), port["targetPort"]) == 8000


# ------------------------------------------------------------------------ API keys from a secret
def _env_setting(name: str) -> str:
    assert name.startswith("ENHANCER_")
    field = name.removeprefix("ENHANCER_").lower()
    assert field in Settings.model_fields, f"{name} is not a setting"
    return field


def test_keys_override_points_the_setting_at_the_compose_secret(service):
    override = load_yaml("docker-compose.keys.yml")
    keyed = override["services"]["enhancer"]
    (name,) = keyed["secrets"]
    (variable, path), *rest = keyed["environment"].items()
    assert not rest and _env_setting(variable) == "api_keys_file"
    assert path == f"/run/secrets/{name}"  # where compose mounts a secret listed by name
    source = override["secrets"][name]["file"]
    assert PurePosixPath(source).parts[0] == "secrets"  # relative to the repository root
    # the key file stays out of git and out of the image's build context
    assert "/secrets/" in (ROOT / ".gitignore").read_text().splitlines()
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert _dockerignored(patterns, "secrets/enhancer_api_keys")
    # merged over the base file: its environment (host, port) is kept, the key file added
    assert {"ENHANCER_HOST", "ENHANCER_PORT"} <= set(service["environment"])


def _deployment_doc_yaml(after_heading: str):
    text = (ROOT / "docs" / "DEPLOYMENT.md").read_text()
    section = text[text.index(after_heading):]
    block = re.search(r"```yaml\n(.*?)```", section, re.DOTALL).group(1)
    return section, yaml.safe_load(block)


def test_deployment_doc_mounts_the_kubernetes_secret_where_the_setting_looks(pod, runtime_stage):
    section, patch = _deployment_doc_yaml("### Kubernetes: a Secret mounted as a file")
    created = re.search(r"kubectl create secret generic (\S+) --from-file=(\w+)=", section)
    secret_name, file_key = created.groups()
    spec = patch["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["name"] == _container(pod)["name"]
    ((variable, path),) = [(e["name"], e["value"]) for e in container["env"]]
    assert _env_setting(variable) == "api_keys_file"
    (mount,) = container["volumeMounts"]
    assert path == f"{mount['mountPath']}/{file_key}"
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == secret_name
    # readable by the server: the files' group is fsGroup, which is the image user's group
    uid = _one(runtime_stage, "USER").split(":")[0]
    assert str(spec["securityContext"]["fsGroup"]) == uid == str(pod["spec"]["securityContext"]["runAsGroup"])
    assert volume["secret"]["defaultMode"] & 0o040
