"""A phase timer for one in-process ``regraft train``: where the wall time goes, measured from outside.

:class:`PhaseTimer` wraps named functions of regraft's public steps (the hook table ``HOOKS``) so
that, on the main thread, every second between the timer's start and its end is charged to
exactly one phase: the innermost hooked call running at that moment, or ``other`` outside any.
The phases therefore add up to the wall time, and a nested call (a decode inside the feature
extraction, an evaluation inside fine-tuning) is taken out of its caller's share. Imports are a
phase too: ``builtins.__import__`` and ``importlib.import_module`` are hooked, and an import that
finds its module already loaded costs nothing.

Calls on other threads (the decode cache's decoding threads) are not wall time of the main
thread; they are summed apart as thread-seconds per phase. Each phase also gets the process's CPU
seconds (every thread, ``time.process_time``) spent while it was running: on a machine shared
with other jobs wall time stretches with the load, CPU seconds much less.

The hooks are looked up by name and patched in every loaded ``regraft`` module that holds the
same function (``from x import f`` copies included), so the timer follows regraft's code without
editing it. A hook that no longer exists is listed in ``missing`` and printed with the table: the
recipe is being rewritten, and a silently empty phase would mislead. The same class could back a
``regraft train --profile`` flag in the CLI layer; it needs nothing from regraft but these names.
"""

from __future__ import annotations

import builtins
import functools
import importlib
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

# (module, attribute or Class.method, phase); the first matching phase on the stack wins
HOOKS: tuple[tuple[str, str, str], ...] = (
    ("regraft.data.discovery", "discover", "discovery"),
    ("regraft.data.dataset", "check_readable", "discovery"),
    ("regraft.zoo", "build", "model build"),
    ("regraft.weights", "load_weights", "weights load"),
    ("regraft.surgery", "replace_head", "head graft + model checks"),
    ("regraft.surgery", "check_output_width", "head graft + model checks"),
    ("regraft.training.processes", "processes", "accelerator"),
    ("regraft.data.cache", "DecodeCache.fill", "decode"),
    ("regraft.data.imageio", "decode_resized", "decode"),
    ("regraft.data.imageio", "decode_image", "decode"),
    ("regraft.data.views", "read_eval_pixels", "decode"),
    ("regraft.features", "cache_features", "feature extraction"),
    ("regraft.training.probe", "fit_probe_stage", "probe"),
    ("regraft.training.loop", "fit", "fine-tuning"),
    ("regraft.training.loop", "evaluate", "evaluation passes"),
    ("regraft.training.wise", "choose_mix", "fine-tuning"),
    ("regraft.training.checkpoint", "write", "checkpoints + weights files"),
    ("regraft.runs", "RunDir.save_weights", "checkpoints + weights files"),
    ("regraft.report", "draw_run", "report drawing"),
)
PHASES = ("python start", "imports", "discovery", "decode", "model build", "weights load", "head graft + model checks",
          "accelerator", "feature extraction", "probe", "fine-tuning", "evaluation passes", "checkpoints + weights files",
          "report drawing", "other")


class PhaseTimer:
    """Exclusive main-thread wall time per phase, plus thread-seconds of hooked calls on other threads.

    Example:
        >>> timer = PhaseTimer()
        >>> timer.install()          # doctest: +SKIP
        >>> with timer.running():    # doctest: +SKIP
        ...     cli(["train", "data", "--model", "resnet18"])
        >>> timer.seconds["fine-tuning"]  # doctest: +SKIP
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.thread_seconds: dict[str, float] = defaultdict(float)
        self.missing: list[str] = []
        self._stack: list[str] = []
        self._last = time.perf_counter()
        self._last_cpu = time.process_time()
        self._main = threading.main_thread()
        self._active = False
        self._undo: list[tuple[Any, str, Any]] = []  # (owner, name, original) for uninstall

    # -------------------------------------------------------------- accounting

    def _charge(self) -> None:
        now, cpu = time.perf_counter(), time.process_time()
        if self._active:
            phase = self._stack[-1] if self._stack else "other"
            self.seconds[phase] += now - self._last
            self.cpu[phase] += cpu - self._last_cpu
        self._last, self._last_cpu = now, cpu

    def enter(self, phase: str) -> None:
        self._charge()
        self._stack.append(phase)
        if self._active:
            self.calls[phase] += 1

    def exit(self) -> None:
        self._charge()
        self._stack.pop()

    def start(self) -> None:
        self._last, self._last_cpu, self._active = time.perf_counter(), time.process_time(), True

    def stop(self) -> None:
        self._charge()
        self._active = False

    def wrap(self, fn: Callable, phase: str) -> Callable:
        if getattr(fn, "_phase_timer", None) is self:
            return fn

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if threading.current_thread() is not self._main:
                t0 = time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    self.thread_seconds[phase] += time.perf_counter() - t0
            self.enter(phase)
            try:
                return fn(*args, **kwargs)
            finally:
                self.exit()

        timed._phase_timer = self  # type: ignore[attr-defined]
        return timed

    # -------------------------------------------------------------- hooks

    def install(self, hooks: tuple[tuple[str, str, str], ...] = HOOKS, *, imports: bool = True) -> None:
        """Hook imports (unless ``imports=False``) and every function in ``hooks`` (importing their
        modules: call after :meth:`start` so that those imports are charged too)."""
        if imports:
            self._hook_imports()
        for module_name, attr, phase in hooks:
            try:
                module = importlib.import_module(module_name)
                owner, name = module, attr
                if "." in attr:
                    owner_name, name = attr.split(".", 1)
                    owner = getattr(module, owner_name)
                original = getattr(owner, name)
            except (ImportError, AttributeError):
                self.missing.append(f"{module_name}.{attr}")
                continue
            wrapped = self.wrap(original, phase)
            self._set(owner, name, wrapped)
            if owner is module:  # copies made by `from module import name` elsewhere
                for other in list(sys.modules.values()):
                    if getattr(other, "__name__", "").startswith("regraft") and getattr(other, name, None) is original:
                        self._set(other, name, wrapped)

    def uninstall(self) -> None:
        """Put back every patched function and the import machinery."""
        while self._undo:
            owner, name, original = self._undo.pop()
            setattr(owner, name, original)

    def _set(self, owner: Any, name: str, value: Any) -> None:
        self._undo.append((owner, name, owner.__dict__.get(name, getattr(owner, name))))
        setattr(owner, name, value)

    def _hook_imports(self) -> None:
        original_import, original_import_module = builtins.__import__, importlib.import_module

        def loaded(name: str, fromlist: Any) -> bool:
            module = sys.modules.get(name)
            return module is not None and all(f == "*" or hasattr(module, f) for f in (fromlist or ()))

        def hooked_import(name, globals=None, locals=None, fromlist=(), level=0):  # noqa: A002 - __import__'s own names
            if level == 0 and loaded(name, fromlist):
                return original_import(name, globals, locals, fromlist, level)
            self.enter("imports")
            try:
                return original_import(name, globals, locals, fromlist, level)
            finally:
                self.exit()

        def hooked_import_module(name: str, package: str | None = None):
            if name in sys.modules:
                return original_import_module(name, package)
            self.enter("imports")
            try:
                return original_import_module(name, package)
            finally:
                self.exit()

        self._set(builtins, "__import__", hooked_import)
        self._set(importlib, "import_module", hooked_import_module)

    def table(self, *, python_start: float = 0.0) -> tuple[list[str], list[list[str]]]:
        """Header and rows: each phase's wall seconds and share, CPU seconds and share, calls, thread-seconds.

        ``python_start``: seconds before the timer could start (the interpreter's own start),
        shown as a phase of its own, wall and CPU alike."""
        seconds, cpu = dict(self.seconds), dict(self.cpu)
        if python_start:
            seconds["python start"] = cpu["python start"] = python_start
        total, total_cpu = sum(seconds.values()), sum(cpu.values()) or 1.0
        order = [p for p in PHASES if p in seconds] + sorted(set(seconds) - set(PHASES))
        rows = [[p, f"{seconds[p]:.2f}", f"{100 * seconds[p] / total:.0f}%", f"{cpu.get(p, 0.0):.2f}",
                 f"{100 * cpu.get(p, 0.0) / total_cpu:.0f}%", str(self.calls.get(p, "")),
                 f"{self.thread_seconds[p]:.2f}" if self.thread_seconds.get(p) else ""] for p in order]
        rows.append(["total", f"{total:.2f}", "100%", f"{sum(cpu.values()):.2f}", "100%", "", ""])
        return ["phase", "wall s", "wall share", "CPU s", "CPU share", "calls", "thread-s on other threads"], rows
