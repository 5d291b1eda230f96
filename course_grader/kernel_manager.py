"""The kernel manager nbgrader and nbclient use for a student's kernel: sandboxed, limited, warm.

It starts the kernel in the sandbox `sandbox` describes (or forks it from a warm `KernelFactory`),
talks to it over unix sockets in the kernel's scratch folder, remembers how a dead kernel ended
(its exit code, and whether its memory group's out-of-memory killer ended it), and cleans up.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from jupyter_client.manager import AsyncKernelManager
from traitlets import Bool, Integer, Unicode

from .memory_cgroup import MemoryGroup, memory_group, remove_stale_groups
from .sandbox import (DEFAULT_CPU_SECONDS, DEFAULT_MAX_FILE_MB, DEFAULT_MAX_OPEN_FILES, DEFAULT_MAX_PROCESSES,
                      DEFAULT_MEMORY_MB, DEFAULT_SANDBOX, DEFAULT_SCRATCH_MB, GRADING_KERNEL_ENV, MIB, Limits,
                      check_sandbox, is_kernel_launcher, prepare_scratch, remove_stale_scratch, running_as_root,
                      sandbox_uid, sandboxed_command, scratch_prefix)
from .sandboxed.kernel_factory import remove_tree
from .warm import kernel_factory, pass_on_kernel_output


#: ipykernel option that stops it forwarding what is written to file descriptors 1 and 2 (C extensions,
#: logging handlers made before the kernel started) as cell output. A kernel out of file descriptors
#: logs each failed send there; forwarded, each log line is one more failed send, and the loop fills
#: the cell's output until its time limit, hiding the cause. Python's own prints are still output.
NO_FD_CAPTURE = "--IPKernelApp.capture_fd_output=False"


def without_fd_capture(kernel_cmd: list[str]) -> list[str]:
    """``kernel_cmd`` with `NO_FD_CAPTURE` when it starts ipykernel (another kernel is left as it is)."""
    if is_kernel_launcher(kernel_cmd) and NO_FD_CAPTURE not in kernel_cmd:
        return [*kernel_cmd, NO_FD_CAPTURE]
    return kernel_cmd


class SandboxedKernelManager(AsyncKernelManager):
    """A kernel manager whose kernels run in the sandbox (see the module's docstring).

    The kernel talks over unix sockets in its scratch folder (TCP cannot cross its network
    namespace) and is interrupted by message (it cannot receive the grader's signals).
    """

    sandbox = Unicode(DEFAULT_SANDBOX, help="required, rlimits or off").tag(config=True)
    warm = Bool(True, help="Fork kernels from a kernel factory with torch already imported").tag(config=True)
    memory_mb = Integer(DEFAULT_MEMORY_MB).tag(config=True)
    cpu_seconds = Integer(DEFAULT_CPU_SECONDS).tag(config=True)
    max_processes = Integer(DEFAULT_MAX_PROCESSES).tag(config=True)
    max_file_mb = Integer(DEFAULT_MAX_FILE_MB).tag(config=True)
    max_open_files = Integer(DEFAULT_MAX_OPEN_FILES).tag(config=True)
    scratch_mb = Integer(DEFAULT_SCRATCH_MB).tag(config=True)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._scratch: Path | None = None
        self._factory = None
        self._memory: MemoryGroup | None = None
        self._oom_kills_before = 0
        self.exit_code: int | None = None
        self.out_of_memory = False

    @property
    def limits(self) -> Limits:
        return Limits(self.memory_mb, self.cpu_seconds, self.max_processes, self.max_file_mb, self.max_open_files,
                      self.scratch_mb)

    def _oom_kills(self) -> int:
        group = self._factory if self._factory is not None else self._memory
        return group.oom_kills() if group is not None else 0

    async def _async_pre_start_kernel(self, **kw):
        check_sandbox(self.sandbox)
        if self.sandbox == "off":
            kw["env"] = {**kw.get("env", os.environ), **GRADING_KERNEL_ENV}
            kernel_cmd, kw = await super()._async_pre_start_kernel(**kw)
            return without_fd_capture(kernel_cmd), kw
        if self.warm and is_kernel_launcher(self.kernel_spec.argv):
            self._factory = kernel_factory(self.sandbox, self.limits)
            self._scratch = self._factory.new_kernel_dir()
            uid = self._factory.kernel_uid
        else:
            remove_stale_scratch()
            remove_stale_groups()
            self._scratch = Path(tempfile.mkdtemp(prefix=scratch_prefix()))
            uid = sandbox_uid() if running_as_root() and self.sandbox == "required" else None
            self._memory = memory_group(self.memory_mb * MIB)
        self._oom_kills_before = self._oom_kills()
        prepare_scratch(self._scratch, uid)
        self.transport = "ipc"
        self.ip = str(self._scratch / "kernel-ipc")
        self.connection_file = str(self._scratch / "kernel.json")
        self.kernel_spec.interrupt_mode = "message"
        kernel_cmd, kw = await super()._async_pre_start_kernel(**kw)
        kernel_cmd = without_fd_capture(kernel_cmd)
        if uid is not None:
            os.chown(self.connection_file, uid, uid)
        kw["cwd"] = str(self._scratch / "work")
        kw["env"] = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        if self._factory is not None:
            return kernel_cmd, kw
        return sandboxed_command(kernel_cmd, self._scratch, self.sandbox, self.limits, memory=self._memory), kw

    async def _async_launch_kernel(self, kernel_cmd: list[str], **kw) -> None:
        if self._factory is None:
            return await super()._async_launch_kernel(kernel_cmd, **kw)
        provisioner = self.provisioner
        provisioner.process = self._factory.start_kernel(kernel_cmd[3:], self._scratch)
        provisioner.pid = provisioner.pgid = None  # nothing to signal out here: the factory does it
        provisioner.cwd = kw.get("cwd")
        self._reconcile_connection_info(provisioner.connection_info)

    def _remember_exit_code(self) -> None:
        process = getattr(self.provisioner, "process", None)
        if process is not None and process.poll() is not None:
            self.exit_code = process.returncode
            self.out_of_memory = self._oom_kills() > self._oom_kills_before

    async def _async_is_alive(self) -> bool:
        alive = await super()._async_is_alive()
        if not alive:
            self._remember_exit_code()
        return alive

    async def _async_kill_kernel(self, restart: bool = False) -> None:
        self._remember_exit_code()
        await super()._async_kill_kernel(restart=restart)

    async def _async_cleanup_resources(self, restart: bool = False) -> None:
        self._remember_exit_code()
        await super()._async_cleanup_resources(restart=restart)
        if self._factory is not None and self._scratch is not None and not restart:
            pass_on_kernel_output(self._scratch)
        if self._factory is not None and not restart:
            self._factory.clear_kernel_dir()
        elif self._scratch is not None and not restart:
            remove_tree(self._scratch)
        if self._memory is not None and not restart:
            self._memory.remove()
            self._memory = None
        if not restart:
            self._scratch = None

    # AsyncKernelManager binds its public names to the base class's coroutines: point them at ours.
    is_alive = _async_is_alive
    _launch_kernel = _async_launch_kernel
    _kill_kernel = _async_kill_kernel
    cleanup_resources = _async_cleanup_resources
