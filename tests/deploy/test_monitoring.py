"""deploy/monitoring/: the Prometheus rules checked by the real promtool (Debian package
prometheus) and unit-tested with `promtool test rules` (an alert fires on the series that should
fire it, and not on those that should not); the Grafana dashboard plots only recording rules that
exist. That the raw series the rules read exist on a real server is checked where the served
models are (tests/serving/test_serving_bytes.py)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import MONITORING, recording_rules, rule_groups

yaml = pytest.importorskip("yaml")

PROMTOOL = shutil.which("promtool")


def _promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    if PROMTOOL is None:
        why = "promtool is not installed (apt-get install prometheus; scripts/setup.sh does it as root)"
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, cwd=cwd, timeout=60)


def test_rules_pass_promtool_check(tmp_path):
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rule_groups()))
    done = _promtool("check", "rules", "rules.yml", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout, done.stdout


def test_alerts_fire_on_what_they_watch(tmp_path):
    """promtool's rule unit tests: failures at 5% fire MmtrtRequestFailures, 0.5% does not; a mean
    probability 0.3 above its baseline fires MmtrtProbabilityDrift after 2 h, 0.05 does not; three
    container restarts in an hour fire MmtrtServerRestarts."""
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rule_groups()))
    bad, good = {"model": "multimix", "version": "1"}, {"model": "classifier", "version": "1"}

    def labels(ls: dict, **more) -> str:
        return "{" + ",".join(f'{k}="{v}"' for k, v in {**ls, **more}.items()) + "}"

    series = [
        # 100 answered requests a minute, 5 (multimix) or 0.5 (classifier) failed
        {"series": "mmtrt_requests_total" + labels(bad, outcome="answered"), "values": "0+100x200"},
        {"series": "mmtrt_requests_total" + labels(bad, outcome="failed"), "values": "0+5x200"},
        {"series": "mmtrt_requests_total" + labels(good, outcome="answered"), "values": "0+100x200"},
        {"series": "mmtrt_requests_total" + labels(good, outcome="failed"), "values": "0+0.5x200"},
        # mean P(PNEUMONIA) 0.6 (multimix) and 0.35 (classifier), both with a baseline of 0.3
        {"series": "mmtrt_pneumonia_probability_sum" + labels(bad), "values": "0+60x200"},
        {"series": "mmtrt_pneumonia_probability_count" + labels(bad), "values": "0+100x200"},
        {"series": "mmtrt_baseline_pneumonia_probability" + labels(bad), "values": "0.3x200"},
        {"series": "mmtrt_pneumonia_probability_sum" + labels(good), "values": "0+35x200"},
        {"series": "mmtrt_pneumonia_probability_count" + labels(good), "values": "0+100x200"},
        {"series": "mmtrt_baseline_pneumonia_probability" + labels(good), "values": "0.3x200"},
        {
            "series": 'kube_pod_container_status_restarts_total{namespace="mmtrt",container="tritonserver",pod="p1"}',
            "values": "0 0 1 2 3 3 3 3 3 3 3 3",
        },
    ]
    tests = {
        "rule_files": ["rules.yml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "alert_rule_test": [
                    {
                        "eval_time": "15m",
                        "alertname": "MmtrtRequestFailures",
                        "exp_alerts": [
                            _alert(
                                "MmtrtRequestFailures",
                                "multimix: 4.762% of requests failed in the server (5 min)",
                                model="multimix",
                            )
                        ],
                    },
                    {
                        "eval_time": "60m",
                        "alertname": "MmtrtProbabilityDrift",
                        "exp_alerts": [],
                    },  # not yet 2 h
                    {
                        "eval_time": "190m",
                        "alertname": "MmtrtProbabilityDrift",
                        "exp_alerts": [
                            _alert(
                                "MmtrtProbabilityDrift",
                                "multimix: mean P(PNEUMONIA) moved 0.30 from the export's validation baseline",
                                model="multimix",
                            )
                        ],
                    },
                    {
                        "eval_time": "10m",
                        "alertname": "MmtrtServerRestarts",
                        "exp_alerts": [
                            _alert(
                                "MmtrtServerRestarts",
                                "p1: the server container restarted 3 times in an hour",
                                pod="p1",
                            )
                        ],
                    },
                ],
            }
        ],
    }
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(tests))
    done = _promtool("test", "rules", "tests.yml", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


def _alert(name: str, summary: str, **labels) -> dict:
    """An expected alert of promtool's unit tests: its labels, its summary as rendered, and its
    description (from the rule file)."""
    (rule,) = [r for g in rule_groups()["groups"] for r in g["rules"] if r.get("alert") == name]
    return {
        "exp_labels": {**rule["labels"], **labels},
        "exp_annotations": {"summary": summary, "description": rule["annotations"]["description"]},
    }


def test_the_dashboard_plots_the_recording_rules():
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    recorded = recording_rules()
    plotted = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            names = set(re.findall(r"mmtrt:[a-z0-9_:]+", target["expr"]))
            assert names and names <= recorded, (panel["title"], target["expr"])
            plotted |= names
    assert plotted == recorded, f"recording rules no panel plots: {recorded - plotted}"
