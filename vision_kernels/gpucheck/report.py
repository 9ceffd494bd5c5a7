"""The gpu-check summary: per kernel, its parity tests on the device and its benchmark; one screen and JSON."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

OTHER = "(no kernel call)"


def summarize(
    tests: Mapping[str, Mapping[str, Any]] | None,
    bench: Sequence[Mapping[str, Any]],
    steps: Mapping[str, Mapping[str, Any]],
    context: Mapping[str, Any],
) -> dict[str, Any]:
    """JSON-ready summary. ``tests``: the pytest plugin's records (nodeid -> outcome, kernels); ``bench``: the
    bench runner's lines (the first may carry the ceilings); ``steps``: status and seconds of each step."""
    kernels: dict[str, dict[str, Any]] = {}

    def entry(name: str) -> dict[str, Any]:
        return kernels.setdefault(name, {"passed": 0, "failed": 0, "skipped": 0, "failures": [], "bench": []})

    for nodeid, record in (tests or {}).items():
        outcome = record.get("outcome", "failed")
        for name in record.get("kernels") or [OTHER]:
            if name == OTHER and outcome != "failed":
                continue  # a test that called no kernel on the device (skipped, or a pure-Python check)
            item = entry(name)
            item[outcome if outcome in ("passed", "failed", "skipped") else "failed"] += 1
            if outcome == "failed":
                item["failures"].append(f"{nodeid}: {record.get('message', '')}".strip())
    ceilings: dict[str, float] = {}
    faiss_gpu = None
    for row in bench:
        if "ceilings" in row:
            ceilings, faiss_gpu = dict(row["ceilings"]), row.get("faiss_gpu")
            continue
        entry(str(row.get("kernel", OTHER)))["bench"].append(dict(row))
    tests_ran = tests is not None
    for item in kernels.values():
        if not tests_ran:
            item["status"] = "not tested"
        elif item["failed"]:
            item["status"] = "FAIL"
        elif item["passed"]:
            item["status"] = "PASS"
        else:
            item["status"] = "NO TEST RAN"
    failed_steps = [name for name, step in steps.items() if step.get("status") not in ("ok", "skipped")]
    kernel_failures = [name for name, item in kernels.items() if tests_ran and item["status"] != "PASS"]
    return {
        "context": dict(context),
        "steps": {name: dict(step) for name, step in steps.items()},
        "ceilings": ceilings,
        "faiss_gpu": faiss_gpu,
        "kernels": dict(sorted(kernels.items())),
        "passed": not failed_steps and not kernel_failures,
        "failed_steps": failed_steps,
        "failed_kernels": kernel_failures,
    }


def _speedup(row: Mapping[str, Any], other: Mapping[str, Any] | None) -> str:
    if not other or "ms" not in other or "ms" not in row.get("ours", {}):
        return "-" if not other else "err"
    return f"{other['ms'] / row['ours']['ms']:.2f}x"


def format_screen(summary: Mapping[str, Any]) -> str:
    """One screen: context, ceilings, steps, a line per kernel (and per extra benchmark), the verdict."""
    context, limits = summary["context"], summary["ceilings"]
    lines = [f"vision-kernels gpu-check: {context.get('device', '?')} (sm_{context.get('arch', '?')}), "
             f"torch {context.get('torch', '?')}, vision_kernels {context.get('version', '?')}"]  # fmt: skip
    if limits:
        lines.append(f"ceilings: fp32 GEMM {limits['fp32_gemm_tflops']:.1f} TFLOP/s, fp16 GEMM "
                     f"{limits['fp16_gemm_tflops']:.1f} TFLOP/s, copy {limits['copy_gbs']:.0f} GB/s")  # fmt: skip
    if summary.get("faiss_gpu") is False:
        lines.append("faiss-gpu anchors omitted: faiss has no GPU support here (pip uninstall faiss-cpu, then "
                     "pip install faiss-gpu-cu12)")  # fmt: skip
    lines.append("steps: " + ", ".join(f"{name} {step.get('status')} ({step.get('seconds', 0):.0f} s)"
                                       for name, step in summary["steps"].items()))  # fmt: skip
    lines.append(f"{'kernel':<26} {'parity on device':<18} {'ms':>8} {'vs ref':>7} {'ceiling':>13}  anchors (x ours)")
    for name, item in summary["kernels"].items():
        tests = f"{item['status']} {item['passed']}/{item['passed'] + item['failed']}"
        rows = item["bench"] or [{}]
        for index, row in enumerate(rows):
            ours = row.get("ours", {})
            ms = f"{ours['ms']:.3g}" if "ms" in ours else ("error" if row else "-")
            fraction = row.get("fraction_of_ceiling")
            ceiling = f"{100 * fraction:.0f}% {row.get('ceiling')}" if fraction is not None else "-"
            anchors = ", ".join(f"{anchor} {_speedup(row, value)}" for anchor, value in row.get("anchors", {}).items())
            if row.get("error"):
                anchors = row["error"]
            first = index == 0
            lines.append(f"{name if first else '':<26} {tests if first else '':<18} {ms:>8} "
                         f"{_speedup(row, row.get('reference')):>7} {ceiling:>13}  {anchors}")  # fmt: skip
    for item in summary["kernels"].values():
        for failure in item["failures"][:3]:
            lines.append(f"  FAILED {failure[:150]}")
    verdict = "PASS" if summary["passed"] else "FAIL"
    reasons = summary["failed_steps"] + summary["failed_kernels"]
    lines.append(f"gpu-check: {verdict}" + (f" ({', '.join(reasons)})" if reasons else ""))
    return "\n".join(lines)
