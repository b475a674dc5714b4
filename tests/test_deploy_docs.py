"""docs/deploy.md describes every deployment of prefect.yaml: its name, its flow, the flow's
parameters (each one, and no other), and its schedule as shipped."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def _rows() -> dict[str, str]:
    """The deployment table of docs/deploy.md: deployment name → its row."""
    doc = (REPO / "docs" / "deploy.md").read_text(encoding="utf-8")
    rows = {}
    for line in doc.splitlines():
        found = re.match(r"\| `([\w-]+/[\w-]+)` \|", line)
        if found:
            rows[found.group(1)] = line
    return rows


def test_every_deployment_is_documented_with_its_parameters_and_schedule() -> None:
    deployments = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
    rows = _rows()
    for deployment in deployments:
        path, func = deployment["entrypoint"].split(":")
        module = importlib.import_module("mailcast.flows." + Path(path).stem)
        flow = getattr(module, func)
        key = f"{flow.name}/{deployment['name']}"
        assert key in rows, f"docs/deploy.md has no row for {key}"
        row = rows[key]
        assert f"`{deployment['entrypoint']}`" in row, (key, row)
        # the parameters column names each parameter in backticks (values are not in backticks)
        documented = set(re.findall(r"`(\w+)`", row.split(" | ")[2]))
        parameters = set(inspect.signature(flow.fn).parameters)
        assert documented == parameters, (
            f"docs/deploy.md, {key}: parameters documented but not in the flow:"
            f" {sorted(documented - parameters)}; in the flow but not documented:"
            f" {sorted(parameters - documented)}"
        )
        for schedule in deployment.get("schedules") or []:
            if "cron" in schedule:
                assert f"`{schedule['cron']}`" in row, (key, row)
            if "interval" in schedule:
                assert f"every {schedule['interval'] // 60} minutes" in row, (key, row)
            state = "**active**" if schedule.get("active", True) else "**inactive**"
            assert state in row, (key, row)
    assert len(rows) == len(deployments), sorted(rows)
