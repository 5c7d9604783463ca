"""``python -m regraft ARGS`` as a forked child of one warm process, so each CLI test stops paying
for importing torch, torchvision, timm and Accelerate (about 4 s of a 2-core machine per command,
a third of the suite).

Why by hand: pytest-forked and xdist's ``--forked`` fork the *test*, not the command under test,
and ``multiprocessing``'s forkserver has no way to hand a child its own stdout, stderr, cwd,
environment and exit status the way ``subprocess.run`` does. Every command still runs in a
process of its own, with fresh file descriptors, its own working directory, environment,
``sys.argv`` and random seeds, and exits through the same ``SystemExit`` as ``python -m regraft``
(tests/test_runner.py compares the two). One difference stays: the children share the warm
process's string-hash seed, where cold interpreters each draw their own.

The warm process only imports; it never computes, so no thread pool exists when it forks (it
checks, and the runner falls back to a real subprocess if one ever does). A command whose
environment differs from the warm process's in anything read at import time (``HF_*``, unequal
thread counts) also runs as a real subprocess; one thread count for OpenMP and MKL is applied in the
child as those libraries would have read it. ``REGRAFT_TEST_ZYGOTE=0`` turns the whole thing off.
"""

from __future__ import annotations

import atexit
import json
import locale
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path

# read when a command runs (regraft's, torch.hub's TORCH_HOME), or never (pytest's own): variables a
# forked child may differ in as they are
_CALL_TIME_ENV = ("REGRAFT_", "PYTEST_", "TORCH_HOME")
# read at import (the OpenMP, MKL and OpenBLAS thread pools): a child given one count for all of them
# sets it the way those libraries would have read it (torch.set_num_threads, threadpoolctl)
_THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")

_SERVER = r"""
import json, os, sys, time

def threads():
    return len(os.listdir("/proc/self/task"))

# numpy's and scipy's OpenBLAS start their thread pools at import; OpenBLAS rebuilds them in a
# forked child (pthread_atfork), as every fork-based multiprocessing user relies on. Any thread
# beyond those would make forking unsafe, so the warm process then declines to fork.
import numpy
try:
    import scipy.linalg
except ImportError:
    pass
BLAS = threads()
import PIL.Image, torch, torchvision, timm, accelerate, safetensors.torch, torchmetrics  # the slow imports
import regraft.cli.main, regraft.training.run, regraft.report, regraft.export, regraft.audit  # noqa: E401

def child(req):
    code = 1
    try:
        os.setpgid(0, 0)
        for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, req["stdout"], os.O_WRONLY | os.O_TRUNC),
                                (2, req["stderr"], os.O_WRONLY | os.O_TRUNC)):
            new = os.open(path, flags)
            os.dup2(new, fd)
            os.close(new)
        sys.stdin = open(os.devnull)
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        if req["threads"]:
            torch.set_num_threads(req["threads"])
            try:
                from threadpoolctl import threadpool_limits
                threadpool_limits(req["threads"])
            except ImportError:
                pass
        import random
        random.seed()
        numpy.random.seed()
        import runpy
        sys.argv = [sys.argv[0], *req["args"]]
        try:
            runpy.run_module("regraft", run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as e:
            if e.code is None:
                code = 0
            elif isinstance(e.code, int):
                code = e.code
            else:
                print(e.code, file=sys.stderr)
                code = 1
        except BaseException:
            import traceback
            traceback.print_exc()
            code = 1
        import atexit
        atexit._run_exitfuncs()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code & 0xFF)

print(json.dumps({"ready": True, "threads": threads() - BLAS}), flush=True)
for line in sys.stdin:
    req = json.loads(line)
    if threads() > BLAS:
        print(json.dumps({"id": req["id"], "rc": None, "why": f"{threads() - BLAS} threads besides BLAS"}), flush=True)
        continue
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        child(req)
    deadline = time.monotonic() + req["timeout"]
    timed_out = False
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            timed_out = True
            try:
                os.killpg(pid, 9)
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)
            break
        time.sleep(0.005)
    rc = None if timed_out else os.waitstatus_to_exitcode(status)  # -N for a signal, as subprocess says
    print(json.dumps({"id": req["id"], "rc": rc, "timed_out": timed_out}), flush=True)
"""


class _Zygote:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.env = dict(os.environ)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True, env=self.env,
        )
        hello = json.loads(self.proc.stdout.readline() or "{}")
        self.usable = bool(hello.get("ready")) and hello.get("threads") == 0
        if not self.usable:  # correct but slow: say so in pytest's warnings summary rather than silently
            why = f"{hello['threads']} threads besides OpenBLAS's after its imports" if hello.get("ready") else "it failed to start"
            warnings.warn(f"tests/zygote.py: the warm runner is off ({why}); every CLI command runs cold", stacklevel=2)
        self.dir = Path(tempfile.mkdtemp(prefix="regraft-zygote-"))
        self.sent = 0
        atexit.register(self.close)

    def accepts(self, env: dict[str, str]) -> int | None:
        """The thread count a child of the warm process must set under ``env`` (0: as it is), or None
        where it cannot run under ``env``."""
        if not self.usable or self.proc.poll() is not None:
            return None
        differ = {k for k in set(env) | set(self.env) if env.get(k) != self.env.get(k)}
        if not all(k.startswith(_CALL_TIME_ENV) for k in differ - set(_THREAD_ENV)):
            return None
        if not differ & set(_THREAD_ENV):
            return 0
        counts = {env.get(k) for k in _THREAD_ENV if k in env or k in differ}  # None: one was taken away
        count = counts.pop() if len(counts) == 1 else None
        return int(count) if count and count.isdigit() and int(count) > 0 else None

    def run(self, args: list[str], *, cwd: Path | None, env: dict[str, str], timeout: float, threads: int = 0):
        with self.lock:
            self.sent += 1
            out, err = self.dir / f"{self.sent}.out", self.dir / f"{self.sent}.err"
            out.write_bytes(b"")
            err.write_bytes(b"")
            req = {"id": self.sent, "args": args, "cwd": str(cwd or os.getcwd()), "env": env, "threads": threads, "timeout": timeout,
                   "stdout": str(out), "stderr": str(err)}
            self.proc.stdin.write(json.dumps(req) + "\n")
            self.proc.stdin.flush()
            while True:  # skip the answer to a command whose test was stopped while waiting (pytest-timeout)
                reply = json.loads(self.proc.stdout.readline() or '{"rc": null}')
                if reply.get("id", self.sent) == self.sent:
                    break
            encoding = locale.getpreferredencoding(False)
            stdout, stderr = out.read_text(encoding=encoding), err.read_text(encoding=encoding)
            out.unlink()
            err.unlink()
        if reply.get("timed_out"):
            raise subprocess.TimeoutExpired([sys.executable, "-m", "regraft", *args], timeout, stdout, stderr)
        if reply.get("rc") is None:  # the warm process could not fork safely: go cold
            self.usable = False
            warnings.warn(f"tests/zygote.py: the warm runner is off ({reply.get('why', 'it stopped')}); CLI commands run cold", stacklevel=2)
            return None
        return subprocess.CompletedProcess([sys.executable, "-m", "regraft", *args], reply["rc"], stdout, stderr)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
        shutil.rmtree(self.dir, ignore_errors=True)


_zygote: _Zygote | None = None


def run_warm(args: list[str], *, cwd: Path | None, env: dict[str, str], timeout: float):
    """The CompletedProcess of ``python -m regraft ARGS`` from the warm process, or None where it cannot run it."""
    global _zygote
    if os.environ.get("REGRAFT_TEST_ZYGOTE", "1") == "0" or not hasattr(os, "fork") or not os.path.isdir("/proc/self/task"):
        return None
    if _zygote is None:
        _zygote = _Zygote()
    threads = _zygote.accepts(env)
    if threads is None:
        return None
    return _zygote.run(args, cwd=cwd, env=env, timeout=timeout, threads=threads)
