"""Operations without a Docker engine: the Prometheus config passes promtool, docker-compose.yml and the Dockerfile are
consistent with each other and with the service, every metric the Grafana dashboard queries is one a live server
exports, and a real Prometheus scraping a real server sees the requests sent to it (and evaluates every dashboard
query)."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from system_deps import missing

from service.cli import serve_parser
from service.process import ServiceProcess, free_port
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
COMPOSE = ROOT / "docker-compose.yml"
DASHBOARD = DOCKER / "grafana" / "dashboards" / "binpose.json"
POSE = "sbpn-r18"
SERVE_CMD = ["binpose", "serve", "--host", "0.0.0.0", "--port", "8000"]


def need_binary(name: str) -> str:
    """The binary's path; skip when it is missing, but fail on CI (CI=true), where it must be installed."""
    path = shutil.which(name)
    if path is None:
        missing(f"{name} is not installed (apt-get install prometheus provides prometheus and promtool)")
    return path


# -- static files --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict), "docker-compose.yml needs services"
    return data


@pytest.fixture(scope="module")
def dockerfile() -> list[str]:
    """Dockerfile instructions, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (DOCKER / "Dockerfile").read_text())
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def container_ports(service: dict[str, Any]) -> dict[int, int]:
    """{container port: host port} of a compose service's "HOST:CONTAINER" port mappings."""
    out = {}
    for item in service.get("ports", []):
        host, _, container = str(item).rpartition(":")
        out[int(container.split("/")[0])] = int(host)
    return out


def bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """{container path: repo path} of a compose service's bind mounts (./SOURCE:TARGET[:ro])."""
    out = {}
    for item in service.get("volumes", []):
        source, target = str(item).split(":")[:2]
        if source.startswith((".", "/")):
            out[target] = (COMPOSE.parent / source).resolve()
    return out


def healthcheck_urls(service: dict[str, Any]) -> list[tuple[int, str]]:
    test = service["healthcheck"]["test"]
    text = " ".join(test) if isinstance(test, list) else str(test)
    return [(int(port), path) for port, path in re.findall(r"http://(?:127\.0\.0\.1|localhost):(\d+)(/[^\s'\"]*)", text)]


def dashboard_exprs(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every panel target and of the templating queries."""
    out = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            out.append((panel["title"], target["expr"]))
    for var in dashboard.get("templating", {}).get("list", []):
        query = var.get("query")
        out.append((f"variable {var['name']}", query["query"] if isinstance(query, dict) else str(query)))
    return out


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\bbinpose_[a-zA-Z0-9_]+", expr))


def test_promtool_accepts_the_prometheus_config() -> None:
    promtool = need_binary("promtool")
    r = subprocess.run([promtool, "check", "config", str(DOCKER / "prometheus.yml")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout + r.stderr


def test_compose_services_build_ports_and_healthchecks(compose: dict[str, Any], dockerfile: list[str]) -> None:
    services = compose["services"]
    assert {"api", "prometheus", "grafana"} <= set(services)
    for name, svc in services.items():
        assert "image" in svc or "build" in svc, f"service {name} has neither image nor build"
        assert "healthcheck" in svc and svc["healthcheck"].get("test"), f"service {name} has no healthcheck"
        assert container_ports(svc), f"service {name} publishes no port"
        for port, _ in healthcheck_urls(svc):
            assert port in container_ports(svc), f"{name}'s healthcheck probes port {port}, which it does not serve"

    api = services["api"]
    build = api["build"]
    assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == (DOCKER / "Dockerfile").resolve()
    # The API listens where the Dockerfile's CMD says, the port is exposed and published, and readiness is probed.
    cmd = next(json.loads(line.split(None, 1)[1]) for line in dockerfile if line.startswith("CMD"))
    api_port = int(cmd[cmd.index("--port") + 1])
    assert api_port in container_ports(api)
    assert any(line == f"EXPOSE {api_port}" for line in dockerfile)
    assert (api_port, "/readyz") in healthcheck_urls(api)

    prom = services["prometheus"]
    listen = next(a for a in prom["command"] if a.startswith("--web.listen-address="))
    assert int(listen.rsplit(":", 1)[1]) in container_ports(prom)
    graf = services["grafana"]
    assert int(graf["environment"].get("GF_SERVER_HTTP_PORT", 3000)) in container_ports(graf)

    host_ports = [p for svc in services.values() for p in container_ports(svc).values()]
    assert len(host_ports) == len(set(host_ports)), f"two services publish the same host port: {host_ports}"
    assert container_ports(api)[api_port] == 8000 and container_ports(prom)[9090] == 9090
    assert container_ports(graf)[3000] == 3000


def test_compose_dependencies_wait_for_health(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["prometheus"]["depends_on"]["api"]["condition"] == "service_healthy"
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"
    for name, svc in services.items():
        for dep, spec in (svc.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on an unknown service {dep}"
            if spec.get("condition") == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep} to be healthy, but it has no healthcheck"


def test_compose_volumes_exist_and_match_the_configs(compose: dict[str, Any], dashboard: dict[str, Any]) -> None:
    services = compose["services"]
    declared = set((compose.get("volumes") or {}).keys())
    for name, svc in services.items():
        for item in svc.get("volumes", []):
            source = str(item).split(":")[0]
            if source.startswith((".", "/")):
                assert (COMPOSE.parent / source).exists(), f"{name} mounts {source}, which is not in the repo"
            else:
                assert source in declared, f"{name} uses volume {source}, which is not declared under volumes:"

    # Prometheus reads the mounted config, which scrapes the api service where it listens.
    prom = services["prometheus"]
    config_arg = next(a for a in prom["command"] if a.startswith("--config.file="))
    assert bind_mounts(prom)[config_arg.split("=", 1)[1]] == (DOCKER / "prometheus.yml").resolve()
    scrape = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    job = next(j for j in scrape["scrape_configs"] if j["job_name"] == "binpose")
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == ["api:8000"]
    for target in targets:
        host, port = target.split(":")
        assert int(port) in container_ports(services[host])

    # Grafana: provisioning folders mounted where Grafana reads them, the dashboard folder where the provider looks.
    graf = services["grafana"]
    mounts = bind_mounts(graf)
    prov = DOCKER / "grafana" / "provisioning"
    assert mounts["/etc/grafana/provisioning/datasources"] == (prov / "datasources").resolve()
    assert mounts["/etc/grafana/provisioning/dashboards"] == (prov / "dashboards").resolve()
    providers = [p for f in sorted((prov / "dashboards").glob("*.yml")) for p in yaml.safe_load(f.read_text())["providers"]]
    assert providers, "no dashboard provider"
    for provider in providers:
        path = provider["options"]["path"]
        assert mounts[path] == (DOCKER / "grafana" / "dashboards").resolve(), f"nothing is mounted at {path}"
        assert list(mounts[path].glob("*.json")), f"no dashboard JSON in {mounts[path]}"
    home = graf["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    folder, _, file_name = home.rpartition("/")
    assert (mounts[folder] / file_name).exists()

    sources = [d for f in sorted((prov / "datasources").glob("*.yml")) for d in yaml.safe_load(f.read_text())["datasources"]]
    (source,) = [d for d in sources if d["type"] == "prometheus"]
    url = urllib.parse.urlparse(source["url"])
    assert url.hostname in services and url.port in container_ports(services[str(url.hostname)])
    used_uids = {p["datasource"]["uid"] for p in dashboard["panels"] if "datasource" in p}
    used_uids |= {t["datasource"]["uid"] for p in dashboard["panels"] for t in p.get("targets", [])}
    assert used_uids == {source["uid"]}, f"the dashboard uses data sources {used_uids}, provisioned: {source['uid']}"


def test_settings_in_compose_and_dockerfile_are_real_settings(
    compose: dict[str, Any], dockerfile: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    env: dict[str, str] = {k: str(v) for k, v in compose["services"]["api"]["environment"].items()}
    for line in dockerfile:
        if line.startswith("ENV "):
            env.update(dict(re.findall(r"(\w+)=(\S+)", line)))
    binpose_env = {k: v for k, v in env.items() if k.startswith("BINPOSE_")}
    fields = {f"BINPOSE_{name.upper()}" for name in Settings.model_fields}
    assert binpose_env and set(binpose_env) <= fields, f"unknown settings: {set(binpose_env) - fields}"
    for key in list(os.environ):
        if key.startswith("BINPOSE_"):
            monkeypatch.delenv(key)
    for key, value in binpose_env.items():
        monkeypatch.setenv(key, value)
    settings = Settings()  # validates every value
    assert settings.models == env["BINPOSE_MODELS"].split(",")
    assert str(settings.weights_dir) == "/app/weights"


def test_dockerfile_is_multistage_nonroot_and_starts_like_binpose_serve(dockerfile: list[str]) -> None:
    froms = [line for line in dockerfile if line.startswith("FROM ")]
    assert len(froms) >= 2 and " AS build" in froms[0]
    final = dockerfile[dockerfile.index(froms[-1]) :]
    assert any(line.startswith("COPY --from=build") for line in final), "the runtime stage copies nothing built"
    assert not any(re.search(r"\b(g\+\+|cmake|gcc)\b", line) for line in final if line.startswith("RUN")), \
        "the runtime stage installs compilers"  # fmt: skip
    users = [line.split()[1] for line in final if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    health = next(line for line in final if line.startswith("HEALTHCHECK"))
    assert "/readyz" in health and ":8000/" in health
    cmd = json.loads(next(line for line in final if line.startswith("CMD")).split(None, 1)[1])
    assert cmd == SERVE_CMD
    ns = serve_parser().parse_args(cmd[2:])  # the flags are the ones `binpose serve` takes
    assert (ns.host, ns.port) == ("0.0.0.0", 8000)
    build = "\n".join(dockerfile[: dockerfile.index(froms[-1])])
    assert "--index-url https://download.pytorch.org/whl/cpu" in build and "torch==2.13.0" in build
    assert any("weights" in line for line in final if line.startswith("COPY"))

    ignored = [line.strip().rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()]
    for required in (".venv", "build", ".git", "datasets", "runs"):
        assert required in ignored, f".dockerignore should exclude {required}"
    for line in dockerfile:
        if line.startswith("COPY") and "--from=" not in line:
            for source in line.split()[1:-1]:
                if source.startswith("--"):
                    continue
                assert (ROOT / source).exists(), f"the Dockerfile copies {source}, which is not in the repo"
                assert source not in ignored, f"the Dockerfile copies {source}, which .dockerignore excludes"


def test_dashboard_has_the_panels_operators_need(dashboard: dict[str, Any]) -> None:
    exprs = " ".join(e for _, e in dashboard_exprs(dashboard))
    for q in ("0.5", "0.95", "0.99"):
        assert re.search(rf"histogram_quantile\({q}, sum by \(le, model\) \(rate\(binpose_request_duration_seconds_bucket",
                         exprs), f"no p{q} latency per model"  # fmt: skip
    for needed in (
        "binpose_requests_total",
        'status_class="5xx"',
        "binpose_queue_wait_seconds",
        "binpose_compute_seconds",
        "binpose_batch_size",
        "binpose_requests_in_flight",
        "binpose_model_ops",
    ):
        assert needed in exprs, f"the dashboard has no query on {needed}"


# -- a live server -------------------------------------------------------------------------------------------------


def png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    # Warm-up only makes the first requests faster; the metrics are the same without it.
    env = {"BINPOSE_MODELS": POSE, "BINPOSE_BACKEND": "torch", "BINPOSE_MAX_BATCH_SIZE": "4",
           "BINPOSE_MAX_WAIT_MS": "5", "BINPOSE_WARMUP": "false"}  # fmt: skip
    with ServiceProcess(env=env, log_path=tmp_path_factory.mktemp("ops") / "server.log") as proc:
        yield proc


def send_traffic(url: str, pose_requests: int) -> None:
    """Pose requests (client boxes and whole image), a 400 and a 404: every panel gets data."""
    rgb = np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8)
    data = png(rgb)
    with httpx.Client(base_url=url, timeout=60) as client:
        for i in range(pose_requests):
            boxes = [[10, 10, 150, 230], [160, 20, 300, 220]] if i % 2 == 0 else None
            body: dict[str, Any] = {"image": base64.b64encode(data).decode(), "model": POSE}
            body.update({"boxes": boxes} if boxes else {"detector": "whole"})
            assert client.post("/v1/pose", json=body).status_code == 200
        outside = {"image": base64.b64encode(data).decode(), "model": POSE, "boxes": [[1000, 1000, 1100, 1100]]}
        assert client.post("/v1/pose", json=outside).status_code == 400
        assert client.post("/v1/pose", json={"image": base64.b64encode(data).decode(), "model": "nope"}).status_code == 404


def exported_names(text: str) -> set[str]:
    """Sample names of a /metrics page, with the names a declared family exposes once it has samples."""
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
                "summary": ("_sum", "_count", "_created"), "info": ("_info",), "gauge": ("",)}  # fmt: skip
    names = set()
    for family in text_string_to_metric_families(text):
        names |= {s.name for s in family.samples}
        names |= {family.name + suffix for suffix in suffixes.get(family.type, ("",))}
    return names


def test_every_dashboard_metric_is_exported_by_a_live_server(server: ServiceProcess, dashboard: dict[str, Any]) -> None:
    send_traffic(server.url, 2)
    status, text = server.get("/metrics")
    assert status == 200
    exported = exported_names(text)
    with_samples = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    used = set().union(*(metric_names(e) for _, e in dashboard_exprs(dashboard)))
    assert used, "the dashboard queries no binpose metric"
    assert used <= exported, f"the dashboard queries metrics the service does not export: {sorted(used - exported)}"
    # After this traffic every queried metric has samples, except the rejection counter (no overload was caused).
    missing = used - with_samples - {"binpose_rejected_requests_total"}
    assert not missing, f"metrics queried by the dashboard have no samples after traffic: {sorted(missing)}"


def prometheus_query(base: str, expr: str) -> dict[str, Any]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as r:
        return dict(json.loads(r.read()))


def test_prometheus_scrapes_the_service(server: ServiceProcess, dashboard: dict[str, Any], tmp_path: Path) -> None:
    prometheus = need_binary("prometheus")
    config = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "binpose")
    job["static_configs"] = [{"targets": [f"127.0.0.1:{server.port}"]}]  # the compose target "api:8000", on loopback
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [prometheus, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{base}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "prometheus.log").read_text()[-3000:]
            time.sleep(0.3)

        def served_by_server() -> float:
            text = server.get("/metrics")[1]
            return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
                       if s.name == "binpose_requests_total" and s.labels.get("endpoint") == "/v1/pose"
                       and s.labels.get("status_class") == "2xx")  # fmt: skip

        def seen_by_prometheus(expected: float) -> float:
            query = 'sum(binpose_requests_total{job="binpose", endpoint="/v1/pose", status_class="2xx"})'
            seen, deadline = 0.0, time.monotonic() + 30
            while time.monotonic() < deadline:
                result = prometheus_query(base, query)["data"]["result"]
                seen = float(result[0]["value"][1]) if result else 0.0
                if seen >= expected:
                    break
                time.sleep(0.5)
            return seen

        # Two rounds: series born in the first round have a sample before the second, so rate() sees the second.
        for round_requests in (2, 3):
            before = served_by_server()
            send_traffic(server.url, round_requests)
            served = served_by_server()
            assert served >= before + round_requests
            seen = seen_by_prometheus(served)
            assert seen >= served, f"Prometheus saw {seen} pose requests, the server counted {served}"
        time.sleep(2.0)  # a few more scrapes after the traffic

        # Every dashboard query is valid PromQL and the traffic panels have data.
        with_data: dict[str, bool] = {}
        for title, expr in dashboard_exprs(dashboard):
            expr = expr.replace("$__rate_interval", "1m").replace("$model", ".*")
            if expr.startswith("label_values("):
                metric, label = re.match(r"label_values\((\w+), (\w+)\)", expr).groups()  # type: ignore[union-attr]
                expr = f"count by ({label}) ({metric})"
            answer = prometheus_query(base, expr)
            assert answer["status"] == "success", f"{title}: {expr}: {answer}"
            with_data[title] = with_data.get(title, False) or bool(answer["data"]["result"])
        empty = {title for title, has in with_data.items() if not has}
        allowed_empty = {"Rejected requests / s"}  # no overload was caused
        assert not empty - allowed_empty, f"panels without data after traffic: {sorted(empty - allowed_empty)}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
