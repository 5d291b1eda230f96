"""Warm kernels: the grader's side of `kernel_factory`.

A grading process keeps one kernel factory per sandbox configuration: a sandboxed process that has
imported torch and friends once and forks each student's kernel from there. The factory starts as
soon as it is first asked for, in the background, and is reused for every later submission; when
a kernel must be killed (a time limit, a stuck kernel) the whole factory goes with it, and the
next submission gets a fresh one.

`FactoryKernel` stands where jupyter_client expects a `subprocess.Popen`, so nbclient and nbgrader
drive a forked kernel exactly like a started one.
"""
from __future__ import annotations

import atexit
import itertools
import json
import os
import signal
import stat
import subprocess
import tempfile
import threading
from pathlib import Path

from .sandboxed.kernel_factory import remove_entries, remove_tree
from .memory_cgroup import memory_group, remove_stale_groups
from .sandbox import (FACTORY_HOME, FACTORY_MEMORY_MB, KERNEL_SLOT, MIB, PRIVATE_DIRS, Limits, Overlay,
                      factory_command, kernel_environment, prepare_scratch, read_only_dirs, remove_stale_scratch,
                      running_as_root, sandbox_uid, scratch_prefix)

#: Seconds a factory may take to import its libraries (a loaded machine, a slow disk).
READY_TIMEOUT = 600
#: In a factory's folder: torchvision's operator schemas, for a factory whose sandbox hides its kernels.
OP_SCHEMAS_FILE = "op-schemas.json"


def kernel_output_path(scratch: Path) -> Path:
    """Where a forked kernel's stdout and stderr go (a started kernel writes to the grader's own)."""
    return scratch / "kernel-output.log"


def pass_on_kernel_output(scratch: Path, limit: int = 64 * 1024) -> None:
    """Copy the end of a forked kernel's output to this process's stderr, as a started kernel's would be."""
    path = kernel_output_path(scratch)
    try:  # the kernel owns the folder: no symlink, no pipe, only a plain file it wrote
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return
    with open(descriptor, "rb") as handle:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            return
        size = handle.seek(0, os.SEEK_END)
        handle.seek(max(0, size - limit))
        tail = handle.read()
    if size > limit:
        tail = f"[... {size - limit} bytes of kernel output cut ...]\n".encode() + tail
    if tail:
        os.write(2, tail)


class FactoryUnavailable(RuntimeError):
    """The factory could not start or died before it was ready."""


def _signal_code(returncode: int | None) -> int | None:
    """Popen's -N for "signal N" as a shell (and bwrap) says it: 128 + N."""
    if returncode is None:
        return None
    return 128 - returncode if returncode < 0 else returncode


class FactoryKernel:
    """One forked kernel, as jupyter_client sees it (the part of `subprocess.Popen` it uses)."""

    stdin = stdout = stderr = None
    pid = None  # its pid lives in the sandbox's namespace: meaningless (and dangerous to signal) out here

    def __init__(self, factory: KernelFactory, ident: str) -> None:
        self.factory = factory
        self.ident = ident
        self.returncode: int | None = None
        self._exited = threading.Event()

    def _set_exit(self, code: int | None) -> None:
        if not self._exited.is_set():
            self.returncode = code
            self._exited.set()

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int | None:
        if not self._exited.wait(timeout):
            raise subprocess.TimeoutExpired("kernel", timeout)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        """A kernel is only ever signalled to end it (interrupts go by message): end its factory."""
        if self.returncode is None:
            self.factory.destroy()

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)


class KernelFactory:
    """A sandboxed `kernel_factory` process and the kernels it forks, one at a time."""

    def __init__(self, mode: str, limits: Limits, overlay: Overlay | None = None,
                 op_schemas: tuple[str, ...] = ()) -> None:
        remove_stale_scratch()
        remove_stale_groups()
        self.mode = mode
        self.root = Path(tempfile.mkdtemp(prefix=scratch_prefix()))
        self.kernel_uid = sandbox_uid() if running_as_root() and mode == "required" else None
        self.slot = self.root / KERNEL_SLOT
        self.slot.mkdir()
        prepare_scratch(self.root / FACTORY_HOME, None)
        os.chmod(self.root, 0o711)
        extra = ()
        if op_schemas:  # read by the factory before it imports torchvision (its scratch is visible to it)
            schemas = self.root / OP_SCHEMAS_FILE
            schemas.write_text(json.dumps(list(op_schemas)))
            os.chmod(schemas, 0o644)
            extra = ("--op-schemas", str(schemas))
        # One memory limit for the factory and its kernel together: shared memory and children count too.
        self.memory = memory_group((limits.memory_mb + FACTORY_MEMORY_MB) * MIB) if mode != "off" else None
        command = factory_command(self.root, mode, limits, self.kernel_uid, overlay, extra, self.memory)
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=self.root,
                                        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self._kernel: FactoryKernel | None = None
        self._ids = itertools.count(1)
        threading.Thread(target=self._listen, name="kernel-factory", daemon=True).start()

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    @property
    def busy(self) -> bool:
        return self._kernel is not None and self._kernel.returncode is None

    def new_kernel_dir(self) -> Path:
        """The folder of the next kernel (the same one for every kernel of this factory), emptied."""
        self.clear_kernel_dir()
        return self.slot

    def clear_kernel_dir(self) -> None:
        """Remove what the last kernel left in its folder (the folder stays: the sandbox has it mounted).

        In the bubblewrap sandbox the kernel's work, home and temporary folders are tmpfs mounts that
        the factory itself empties: their mount points here stay (removing one would unmount it there).
        """
        remove_entries(self.slot, keep=PRIVATE_DIRS if self.mode == "required" else ())

    def oom_kills(self) -> int:
        """Processes of this factory's sandbox ended by the out-of-memory killer so far (0 without a group)."""
        return self.memory.oom_kills() if self.memory is not None else 0

    def start_kernel(self, argv: list[str], scratch: Path, module: str | None = None) -> FactoryKernel:
        """Fork ``ipykernel_launcher`` with ``argv`` (e.g. ``["-f", connection_file]``) working in ``scratch``;
        with ``module``, fork that module (``python -m module *argv``) instead."""
        if not self._ready.wait(READY_TIMEOUT) or not self.alive:
            raise FactoryUnavailable(f"the kernel factory exited with code {_signal_code(self.process.poll())} "
                                     "before it was ready")
        with self._lock:
            if self.busy:
                raise FactoryUnavailable("the kernel factory is already running a kernel")
            kernel = self._kernel = FactoryKernel(self, str(next(self._ids)))
        request = {"start": kernel.ident, "argv": [module or "ipykernel_launcher", *argv], "cwd": str(scratch / "work"),
                   "env": kernel_environment(scratch), "output": str(kernel_output_path(scratch))}
        if module:
            request["module"] = module
        try:
            self.process.stdin.write((json.dumps(request) + "\n").encode())
            self.process.stdin.flush()
        except OSError:
            kernel._set_exit(_signal_code(self.process.wait()))
        return kernel

    def _listen(self) -> None:
        for line in self.process.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if "ready" in message:
                self._ready.set()
            elif "exited" in message:
                kernel = self._kernel
                if kernel is not None and kernel.ident == message["exited"]:
                    kernel._set_exit(int(message["code"]))
            elif "refused" in message:
                kernel = self._kernel
                if kernel is not None and kernel.ident == message["refused"]:
                    kernel._set_exit(1)
        code = _signal_code(self.process.wait())
        self._ready.set()  # wake anyone waiting: start_kernel sees the factory is gone
        if self._kernel is not None:
            self._kernel._set_exit(code)

    def destroy(self) -> None:
        """End the factory and everything in its sandbox (bubblewrap takes its namespace down with it)."""
        if self.alive:
            self.process.kill()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        remove_tree(self.root)
        if self.memory is not None:
            self.memory.remove()


_FACTORIES: dict[tuple, list[KernelFactory]] = {}
_FACTORIES_LOCK = threading.Lock()


def kernel_factory(mode: str, limits: Limits, overlay: Overlay | None = None,
                   op_schemas: tuple[str, ...] = ()) -> KernelFactory:
    """An idle, live factory for this sandbox configuration, started now if there is none."""
    key = (mode, limits, tuple(read_only_dirs()), tuple(sorted(kernel_environment(Path("/")).items())), overlay,
           tuple(op_schemas))
    with _FACTORIES_LOCK:
        factories = _FACTORIES.setdefault(key, [])
        factories[:] = [f for f in factories if f.alive]
        idle = next((f for f in factories if not f.busy), None)
        if idle is None:
            idle = KernelFactory(mode, limits, overlay, op_schemas)
            factories.append(idle)
        return idle


def prestart_kernel_factory(mode: str, limits: Limits, overlay: Overlay | None = None,
                            op_schemas: tuple[str, ...] = ()) -> None:
    """Start the factory now so its imports overlap with whatever the grader does next."""
    if mode != "off":
        kernel_factory(mode, limits, overlay, op_schemas)


@atexit.register
def _destroy_all() -> None:
    for factories in _FACTORIES.values():
        for factory in factories:
            factory.destroy()
    _FACTORIES.clear()
