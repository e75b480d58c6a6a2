"""What machine a figure was measured on: every benchmark and report carries this.

Torch-free: it runs on a Jetson with only the runtime installed. Each probe
fails soft (a value of None) because a report without a GPU driver or
without /proc is still a report.
"""

from __future__ import annotations

import functools
import os
import platform
import re
import shutil
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return None


def cpu_model() -> str | None:
    info = _read("/proc/cpuinfo") or ""
    for key in ("model name", "Model", "Hardware"):
        m = re.search(rf"^{key}\s*:\s*(.+)$", info, re.M)
        if m:
            return m.group(1).strip()
    return platform.processor() or None


def cpu_flags() -> list[str]:
    """The SIMD features that decide CPU INT8/FP16 speed (AVX2, AVX-512 VNNI, NEON dot product)."""
    info = _read("/proc/cpuinfo") or ""
    m = re.search(r"^(flags|Features)\s*:\s*(.+)$", info, re.M)
    if not m:
        return []
    wanted = {
        "avx2",
        "avx512f",
        "avx512_vnni",
        "avx_vnni",
        "amx_int8",
        "asimddp",
        "fphp",
        "asimdhp",
    }
    return sorted(wanted & set(m.group(2).split()))


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=1)
def nvidia_gpus() -> list[dict[str, str]]:
    """GPUs as nvidia-smi sees them, probed once per process; empty without a driver.

    Each: ``index``, ``name``, ``compute_cap`` ("8.7"; empty on drivers too old to
    report it), ``driver``, ``memory_mb`` and ``memory`` ("16384 MiB") for reports.
    """
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    for fields in (
        "index,name,compute_cap,driver_version,memory.total",
        "index,name,driver_version,memory.total",
    ):
        try:
            out = subprocess.run(
                [exe, f"--query-gpu={fields}", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
                timeout=20,
                check=True,
            ).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        names = fields.split(",")
        gpus = []
        for line in out.strip().splitlines():
            parts = [p.strip() for p in line.split(",")]
            if len(parts) != len(names):
                continue
            row = dict(zip(names, parts, strict=True))
            gpus.append(
                {
                    "index": row["index"],
                    "name": row["name"],
                    "compute_cap": row.get("compute_cap", ""),
                    "driver": row["driver_version"],
                    "memory_mb": row["memory.total"],
                    "memory": f"{row['memory.total']} MiB",
                }
            )
        return gpus
    return []


def jetson_info() -> dict[str, Any] | None:
    """Jetson model, L4T release and power mode where readable (None elsewhere)."""
    model = _read("/proc/device-tree/model")
    if not model or "jetson" not in model.lower():
        return None
    info: dict[str, Any] = {"model": model.strip("\x00 \n"), "l4t": None, "power_mode": None}
    release = _read("/etc/nv_tegra_release")
    if release:
        info["l4t"] = release.splitlines()[0].strip()
    if shutil.which("nvpmodel"):
        try:
            out = subprocess.run(
                ["nvpmodel", "-q"], capture_output=True, text=True, timeout=10
            ).stdout
            info["power_mode"] = " ".join(out.split())
        except (OSError, subprocess.SubprocessError):
            pass
    return info


def describe_machine() -> dict[str, Any]:
    """One dict for the top of every report."""
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_flags": cpu_flags(),
        "gpus": nvidia_gpus(),
        "jetson": jetson_info(),
        "versions": {
            name: package_version(name)
            for name in (
                "leukedge",
                "numpy",
                "opencv-python-headless",
                "onnx",
                "onnxruntime",
                "onnxruntime-gpu",
                "torch",
                "timm",
                "tensorrt",
            )
        },
    }


def machine_slug(info: dict[str, Any] | None = None) -> str:
    """A folder name for results of this machine, e.g. ``cpu-amd-epyc-2c`` or ``jetson-orin``."""
    info = info or describe_machine()
    if info.get("jetson"):
        base = info["jetson"]["model"]
    elif info.get("gpus"):
        base = info["gpus"][0]["name"]
    else:
        base = f"cpu {info.get('cpu') or info.get('machine')} {info.get('cpu_cores')}c"
    slug = re.sub(r"[^a-z0-9]+", "-", base.lower()).strip("-")
    return slug[:60] or "unknown"


def markdown_machine(info: dict[str, Any]) -> str:
    """The machine as a few Markdown lines for report headers."""
    gpu = ", ".join(f"{g['name']} (driver {g['driver']})" for g in info.get("gpus") or []) or "none"
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items() if v)
    lines = [
        f"- CPU: {info.get('cpu')} ({info.get('cpu_cores')} cores; {' '.join(info.get('cpu_flags') or []) or 'no listed SIMD flags'})",
        f"- GPU: {gpu}",
        f"- Platform: {info.get('platform')}, Python {info.get('python')}",
        f"- Versions: {versions}",
    ]
    if info.get("jetson"):
        j = info["jetson"]
        lines.append(
            f"- Jetson: {j['model']}; {j.get('l4t') or 'L4T unknown'}; power mode: {j.get('power_mode') or 'unknown'}"
        )
    return "\n".join(lines)
