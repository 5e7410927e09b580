"""`deploy/docker-compose.scale.yml` (N app containers behind HAProxy, docs/deployment.md) is wired the way its
comments and the deployment guide say: the balancer publishes what the app published alone, the app publishes
nothing, and `deploy/haproxy.cfg` is valid HAProxy with the balancer settings the guide asks for (no Docker here:
the files are parsed, and HAProxy checks its own configuration)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.test_compose import compose

ROOT = Path(__file__).resolve().parents[1]
SCALE = ROOT / "deploy" / "docker-compose.scale.yml"
HAPROXY = ROOT / "deploy" / "haproxy.cfg"


class _Reset:
    """Compose's `!reset` tag: the merged file drops the base file's value."""


def _reset(loader: yaml.SafeLoader, node: yaml.Node) -> _Reset:
    return _Reset()


class _ComposeLoader(yaml.SafeLoader):
    pass


_ComposeLoader.add_constructor("!reset", _reset)


def scale() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.load(SCALE.read_text(), Loader=_ComposeLoader)
    return loaded


def test_the_balancer_publishes_what_the_app_published_and_the_app_publishes_nothing() -> None:
    base, override = compose()["services"], scale()["services"]
    assert isinstance(override["app"]["ports"], _Reset)
    assert override["lb"]["ports"] == base["app"]["ports"]
    assert override["lb"]["depends_on"] == ["app"]
    assert override["lb"]["restart"] == "unless-stopped"
    assert set(override["app"]) == {"ports"}  # the pods are the app as docker-compose.yml runs it


def test_the_mounted_configuration_is_the_one_in_the_repository() -> None:
    [mount] = scale()["services"]["lb"]["volumes"]
    source, target, mode = mount.split(":")
    assert (ROOT / source).resolve() == HAPROXY  # relative to the project directory, the first file's
    assert target == "/usr/local/etc/haproxy/haproxy.cfg" and mode == "ro"


def test_the_balancer_has_the_settings_the_deployment_guide_asks_for() -> None:
    config = HAPROXY.read_text()
    guide = (ROOT / "docs" / "deployment.md").read_text()
    defaults = re.search(r"```\n(defaults\n(?:    .*\n)+)", guide)
    assert defaults is not None
    assert defaults.group(1) in config  # SSE-friendly timeouts, redispatch and retries, as documented
    for line in ("balance roundrobin", "option httpchk GET /health/ready", "bind :8000", "server-template app"):
        assert line in config
    assert "cookie" not in config and "stick" not in config  # no affinity: any pod serves any stream
    assert "app:8000" in config  # the app's port inside the container (Dockerfile: EXPOSE 8000)
    assert "EXPOSE 8000" in (ROOT / "Dockerfile").read_text()


def test_haproxy_accepts_the_configuration() -> None:
    haproxy = shutil.which("haproxy")
    if haproxy is None:
        pytest.skip("haproxy is not installed (CI installs it for the cluster tests)")
    checked = subprocess.run([haproxy, "-c", "-f", str(HAPROXY)], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stdout + checked.stderr
