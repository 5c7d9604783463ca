"""What every benchmark script shares: the machine's description, load, timers and RESULTS.md.

The development machines are shared with other engineers' test runs, so each section written
to ``bench/RESULTS.md`` records the load average before and after, and the scripts measure CPU
seconds next to wall seconds where the comparison allows it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import shlex
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
DATA = HERE / "data"  # git-ignored: generated image folders


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            return next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), platform.machine())
    except OSError:
        return platform.processor() or platform.machine()


def cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def ram_gib() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return float("nan")


def load() -> float:
    """The 1-minute load average (NaN where the OS has none)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def machine() -> str:
    """One line: CPU, cores, RAM, GPU if any, OS and the versions that matter."""
    import torch
    import torchvision

    gpu = ""
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        gpu = f", GPU {props.name} ({props.total_memory / 2**30:.0f} GiB)"
    from regraft.training.numerics import cpu_has_fast_bf16

    amx = ", AMX bf16 units (regraft's auto precision: bf16)" if cpu_has_fast_bf16() else ", no AMX (regraft's auto precision on CPU: fp32)"
    return (
        f"{cpus()} CPUs ({cpu_model()}{amx}), {ram_gib():.0f} GiB RAM{gpu}, {platform.system()}, "
        f"Python {platform.python_version()}, torch {torch.__version__}, torchvision {torchvision.__version__}"
    )


def wait_for_quiet(max_load: float | None, *, timeout: float = 180.0) -> float:
    """Wait (up to ``timeout`` s) for the 1-minute load to drop under ``max_load``; returns the load."""
    if max_load is None:
        return load()
    deadline = time.monotonic() + timeout
    current = load()
    while current > max_load and time.monotonic() < deadline:
        print(f"load average {current:.1f} > {max_load}: waiting for the machine to quieten ...", flush=True)
        time.sleep(15)
        current = load()
    return current


def command_line(script: str, argv: Sequence[str] | None) -> str:
    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join(["python", f"bench/{script}", *map(shlex.quote, args)])


@dataclass
class Section:
    """A RESULTS.md section: a title, the run's facts and the tables, appended after the run."""

    title: str
    command: str
    load_before: float
    notes: list[str]
    body: list[str]

    def render(self) -> str:
        lines = [
            f"## {self.title}",
            "",
            f"- date: {dt.datetime.now().isoformat(timespec='minutes')}",
            f"- machine: {machine()}",
            f"- load average (1 min) {self.load_before:.1f} before and {load():.1f} after the run, on {cpus()} CPUs "
            "(a machine shared with other jobs)",
            f"- command: `{self.command}`",
            *[f"- {n}" for n in self.notes],
            "",
            *self.body,
        ]
        return "\n".join(lines).rstrip() + "\n"


def append_results(section: Section, *, write: bool = True) -> str:
    """Print ``section`` and append it to bench/RESULTS.md (never rewriting what is there)."""
    return append_text(section.render(), write=write)


def append_text(text: str, *, write: bool = True) -> str:
    """Print a rendered section and append it to bench/RESULTS.md (never rewriting what is there)."""
    print("\n" + text, flush=True)
    if write:
        if RESULTS.exists():
            prefix = "\n" if RESULTS.read_text().endswith("\n") else "\n\n"
        else:
            prefix = "# Benchmarks\n\n"
        with RESULTS.open("a") as fh:
            fh.write(prefix + text)
    return text


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    """A markdown table; floats are printed as given by the caller (format them first)."""
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


@dataclass
class Clock:
    """Wall and CPU seconds of a block (CPU: this process and its children, via psutil when present)."""

    wall: float = 0.0
    cpu: float = 0.0


def _cpu_now() -> float:
    try:
        import psutil
    except ImportError:
        return time.process_time()
    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for child in me.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            total += sum(child.cpu_times()[:2])
    return total


@contextlib.contextmanager
def clock() -> Iterator[Clock]:
    c = Clock()
    w0, c0 = time.perf_counter(), _cpu_now()
    try:
        yield c
    finally:
        c.wall, c.cpu = time.perf_counter() - w0, _cpu_now() - c0


def median(values: Sequence[float]) -> float:
    s = sorted(values)
    n = len(s)
    if n == 0:
        return float("nan")
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


def fmt(value: float | None, digits: int = 1) -> str:
    if value is None or value != value:  # NaN
        return "—"
    return f"{value:.{digits}f}"
