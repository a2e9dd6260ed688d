"""The anchors' virtualenvs: benchmarks/.venvs/<name>, pinned, created on first use, reused after.

Each anchor is installed from PyPI at an exact version into a virtualenv of its own (made with
the base interpreter of the harness's Python), so its dependencies never meet ledgerflow's or
another anchor's. `.venvs/<name>/bench-pins.txt` records the pins it was installed with; a
virtualenv whose pins changed is reinstalled. `pip freeze` of each is recorded in RESULTS.md.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1]
VENVS = BENCHMARKS / ".venvs"
ANCHORS = BENCHMARKS / "anchors"
INSTALL_TIMEOUT_SECONDS = 1200

# Exact pins. Only the top-level packages are pinned here; the resolved dependency set of each
# virtualenv is recorded (pip freeze) with every run.
PINS: dict[str, tuple[str, ...]] = {
    "nano_vm": ("llm-nano-vm==0.8.9",),
    "dbos": ("dbos==3.4.0",),
    "langgraph": ("langgraph==1.2.24", "langgraph-checkpoint-sqlite==3.1.2"),
    # nano-vm-mcp does not import with mcp 2.x: its own virtualenv, with mcp<2 pinned exactly
    # (its client drives it).
    "nano_vm_mcp": ("nano-vm-mcp==0.4.6", "mcp==1.30.0"),
    "report": ("matplotlib==3.11.2",),
}
SCRIPTS: dict[str, Path] = {
    "nano_vm": ANCHORS / "nano_vm_anchor.py",
    "dbos": ANCHORS / "dbos_anchor.py",
    "langgraph": ANCHORS / "langgraph_anchor.py",
    "nano_vm_mcp": ANCHORS / "nano_vm_mcp_anchor.py",
}
LEDGERFLOW_RUNNER = BENCHMARKS / "ledgerflow_runner.py"


@dataclass
class Env:
    name: str
    python: Path | None
    error: str = ""
    freeze: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.python is not None and not self.error


def venv_python(name: str) -> Path:
    return VENVS / name / "bin" / "python"


def base_python() -> str:
    """The interpreter new virtualenvs are made from (the base of the harness's virtualenv)."""
    return getattr(sys, "_base_executable", None) or sys.executable


def _run(command: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


def _tail(text: str, lines: int = 6) -> str:
    return " | ".join(text.strip().splitlines()[-lines:])


def freeze(python: Path) -> list[str]:
    done = _run([str(python), "-m", "pip", "freeze"], timeout=120)
    return [line for line in done.stdout.splitlines() if line.strip()]


def _satisfied(pins: tuple[str, ...], frozen: list[str]) -> bool:
    have = {line.split("==")[0].lower().replace("_", "-"): line.lower() for line in frozen}
    for pin in pins:
        name = pin.split("==")[0].lower().replace("_", "-")
        if have.get(name) != pin.lower():
            return False
    return True


def ensure(name: str, log: Callable[[str], None] = print) -> Env:
    """The virtualenv of `name`, created and installed if needed; never raises."""
    pins = PINS[name]
    python = venv_python(name)
    marker = VENVS / name / "bench-pins.txt"
    wanted = "\n".join(pins) + "\n"
    try:
        if python.exists() and marker.exists() and marker.read_text() == wanted:
            return Env(name, python, freeze=freeze(python))
        if python.exists():
            frozen = freeze(python)
            if _satisfied(pins, frozen):
                marker.write_text(wanted)
                return Env(name, python, freeze=frozen)
        else:
            log(f"  creating {python.parent.parent} ...")
            VENVS.mkdir(parents=True, exist_ok=True)
            done = _run([base_python(), "-m", "venv", str(VENVS / name)], timeout=300)
            if done.returncode != 0:
                return Env(name, None, error=f"python -m venv failed: {_tail(done.stderr)}")
        log(f"  installing {' '.join(pins)} into .venvs/{name} (first use; may take minutes) ...")
        done = _run(
            [str(python), "-m", "pip", "install", "--quiet", *pins],
            timeout=INSTALL_TIMEOUT_SECONDS,
        )
        if done.returncode != 0:
            return Env(name, None, error=f"pip install failed: {_tail(done.stderr)}")
        marker.write_text(wanted)
        frozen = freeze(python)
        log(f"  installed: {', '.join(line for line in frozen if '==' in line)[:200]}")
        return Env(name, python, freeze=frozen)
    except subprocess.TimeoutExpired as timeout:
        return Env(name, None, error=f"timed out after {timeout.timeout:.0f} s: {timeout.cmd}")
    except OSError as error:
        return Env(name, None, error=f"{type(error).__name__}: {error}")
