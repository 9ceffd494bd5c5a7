"""pytest plugin of ``gpu-check`` (``-p vision_kernels.gpucheck.pytest_plugin --kernel-report PATH``): writes, per
test, its outcome and the ops whose kernel it ran on the device (vision_kernels.testing.KERNEL_CALLS), as JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from .. import testing
from .._files import write_text_atomic

_records: dict[str, dict[str, Any]] = {}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--kernel-report", type=Path, help="write each test's outcome and kernels here (JSON)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    testing.KERNEL_CALLS.clear()
    yield
    _records.setdefault(item.nodeid, {"outcome": "passed", "kernels": []})["kernels"] = sorted(
        {name.split("::")[-1] for name in testing.KERNEL_CALLS}
    )


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    record = _records.setdefault(report.nodeid, {"outcome": "passed", "kernels": []})
    if report.failed:
        record["outcome"] = "failed"
        record["message"] = str(report.longrepr).splitlines()[-1][:300] if report.longrepr else ""
    elif report.skipped and record["outcome"] != "failed":
        record["outcome"] = "skipped"


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = session.config.getoption("--kernel-report")
    if path is not None:
        write_text_atomic(Path(path), json.dumps(_records, indent=1) + "\n")
