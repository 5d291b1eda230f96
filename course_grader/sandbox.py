"""Running a student's kernel in a sandbox: bubblewrap namespaces plus resource limits.

A submitted notebook is untrusted code. Its kernel runs as::

    prlimit <limits> -- bwrap <namespaces, read-only system, one writable scratch folder> --
        setpriv <unprivileged uid> -- python -m ipykernel_launcher -f <connection file>

- no network (its own network namespace: the kernel talks to the grader over unix sockets, ZeroMQ's
  ``ipc`` transport, in the scratch folder);
- it sees the operating system, the Python environment and ``course_lib`` read-only, and one
  private scratch folder read-write; the gradebook, the solutions, hidden tests, other students'
  submissions and the grader's own files are simply not there;
- its own process namespace and session: it cannot see or signal the grader;
- limits on memory (RLIMIT_DATA), CPU time, processes, file size and open files. RLIMIT_NPROC does
  not apply to root, so a grader running as root drops the kernel to a uid of its own (`setpriv`).

By default kernels are not started but forked, already holding torch, from a kernel factory that
runs in this same sandbox (`kernel_factory`, `warm`); the factory cleans the sandbox between two
kernels. Run the grader as root where you can: then each grading process's kernels have a uid of
their own, cannot signal their factory, and count their processes apart from the grader's. Run as
another user, every kernel has that user's uid: a kernel can end its own grading by killing its
factory, and a fork bomb in one kernel uses up the process limit of kernels graded at the same
time (grade with ``--workers 1`` there).

Where bubblewrap is missing (macOS, some Linux set-ups) the grader says so in one line and refuses
(``sandbox="required"``, the default) or, when asked (``sandbox="rlimits"``), runs the kernel with
the resource limits only. ``sandbox="off"`` runs it as a plain kernel (your own notebooks only).
"""
from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .sandboxed.kernel_factory import remove_tree
from .locations import GRADER_DIR, GRADER_INIT, SANDBOXED_DIR, course_lib_dir, import_paths
from .memory_cgroup import MemoryGroup

#: How strictly student kernels are isolated.
SANDBOX_MODES = ("required", "rlimits", "off")
DEFAULT_SANDBOX = "required"

MIB = 1024 * 1024
#: Default limits of one student kernel. torch needs an RLIMIT_DATA of at least ~1 GiB to import.
DEFAULT_MEMORY_MB = 4096
DEFAULT_CPU_SECONDS = 3600  # CPU time summed over threads; the per-cell wall-clock limits come first
DEFAULT_MAX_PROCESSES = 256  # threads count too (torch starts one per core)
DEFAULT_MAX_FILE_MB = 256
DEFAULT_MAX_OPEN_FILES = 1024
#: Size of each memory-backed folder a sandboxed kernel writes in (its work folder, home, temporary
#: folders, /dev/shm): what it writes is bounded, and gone with the sandbox.
DEFAULT_SCRATCH_MB = 512
#: Memory a kernel factory itself holds (torch and friends imported once), added to its memory group's limit.
FACTORY_MEMORY_MB = 1024
#: The kernel's own folders inside its scratch folder; in the sandbox each is a size-limited tmpfs.
PRIVATE_DIRS = ("work", "home", "tmp")
#: First uid a root grader gives its kernels; each grading process gets its own (base + pid).
SANDBOX_UID_BASE = 2_000_000
SANDBOX_UID_SPAN = 1_000_000

#: System folders the kernel sees read-only (those missing on a machine are skipped).
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/opt/conda")
#: Files and folders of /etc that Python, SSL, fonts and the dynamic linker read.
ETC_ENTRIES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "nsswitch.conf", "passwd", "group",
               "hosts", "ssl", "ca-certificates", "fonts", "alternatives", "matplotlibrc", "mime.types")
#: Environment variables passed from the grader to the kernel (everything else is cleared).
PASSED_ENV = ("LANG", "LC_ALL", "MPLBACKEND", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
              "CUDA_VISIBLE_DEVICES",
              "NVIDIA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES", "PYTHONHASHSEED")
PASSED_ENV_PREFIXES = ("COURSE_",)
#: Set in every grading kernel: failed checks keep IPython's full traceback, whose "Cell In[N], line L"
#: frames tell the feedback pages a visible test's failure from a hidden one's.
GRADING_KERNEL_ENV = {"COURSE_CHECKS_TRACEBACK": "full"}
#: Folders named by these variables (pretrained weights) are visible read-only when they exist.
READ_ONLY_ENV_DIRS = ("COURSE_WEIGHTS_DIR", "TORCH_HOME")
#: Device files of GPUs, bound into the sandbox when present.
GPU_DEVICE_GLOBS = ("/dev/nvidia*", "/dev/dri")

#: Exit codes of the sandboxed kernel (bwrap reports a signal as 128 + its number) and what they mean.
KILLED_BY = {
    128 + signal.SIGKILL: "it was killed (SIGKILL: out of memory, or a limit was hit)",
    128 + signal.SIGXCPU: "it used up its CPU time limit",
    128 + signal.SIGXFSZ: "it wrote a file larger than the file size limit",
    128 + signal.SIGSEGV: "it crashed (segmentation fault)",
    128 + signal.SIGABRT: "it aborted (often an allocation above the memory limit)",
}


class SandboxUnavailable(RuntimeError):
    """The sandbox was required but cannot run here; the message says why in one line."""


@dataclass(frozen=True)
class Limits:
    """Resource limits of one student kernel."""

    memory_mb: int = DEFAULT_MEMORY_MB
    cpu_seconds: int = DEFAULT_CPU_SECONDS
    max_processes: int = DEFAULT_MAX_PROCESSES
    max_file_mb: int = DEFAULT_MAX_FILE_MB
    max_open_files: int = DEFAULT_MAX_OPEN_FILES
    scratch_mb: int = DEFAULT_SCRATCH_MB

    def __post_init__(self) -> None:
        for name in ("memory_mb", "cpu_seconds", "max_processes", "max_file_mb", "max_open_files", "scratch_mb"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

    def prlimit_args(self, extra_processes: int = 0) -> list[str]:
        memory = self.memory_mb * MIB
        return [
            f"--data={memory}:{memory}",
            f"--cpu={self.cpu_seconds}:{self.cpu_seconds + 5}",  # SIGXCPU first, SIGKILL 5 s later
            f"--nproc={self.max_processes + extra_processes}",
            f"--fsize={self.max_file_mb * MIB}",
            f"--nofile={self.max_open_files}",
            "--core=0",
        ]


def running_as_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


@functools.lru_cache(maxsize=None)
def bwrap_problem() -> str | None:
    """None when bubblewrap can start a sandbox here, else one line saying why not."""
    if not sys.platform.startswith("linux"):
        return f"the sandbox needs Linux with bubblewrap; this is {sys.platform}"
    missing = [tool for tool in ("bwrap", "prlimit", "setpriv") if shutil.which(tool) is None]
    if missing:
        return (f"the sandbox needs {', '.join(missing)} (Debian/Ubuntu: apt-get install bubblewrap util-linux)")
    trial = [shutil.which("bwrap"), *_namespace_args(), "--ro-bind", "/", "/", "--", "true"]
    try:
        result = subprocess.run(trial, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"bubblewrap could not start: {error}"
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["no message"])[-1]
        return f"bubblewrap cannot create namespaces here ({reason})"
    return None


def check_sandbox(mode: str) -> str | None:
    """Raise `SandboxUnavailable` if ``mode`` needs bubblewrap and it cannot run; else a note or None."""
    if mode not in SANDBOX_MODES:
        raise ValueError(f"sandbox must be one of {', '.join(SANDBOX_MODES)}, got {mode!r}")
    if mode == "off":
        return "student kernels run without a sandbox (sandbox=off): grade only trusted notebooks this way"
    problem = bwrap_problem()
    if mode == "required" and problem:
        raise SandboxUnavailable(f"{problem}; refusing to run student code without it "
                                 "(use --sandbox=rlimits to grade with resource limits only)")
    if mode == "rlimits" or problem:
        return "student kernels run with resource limits only, without bubblewrap isolation"
    return None


def _namespace_args() -> list[str]:
    if running_as_root():  # privileged bwrap; the uid is dropped inside by setpriv
        return ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"]
    return ["--unshare-all", "--unshare-user", "--disable-userns"]


def sandbox_uid() -> int:
    """The uid a root grader gives its kernels: one per grading process, so RLIMIT_NPROC is per kernel."""
    return SANDBOX_UID_BASE + os.getpid() % SANDBOX_UID_SPAN


SCRATCH_PREFIX = "course-sandbox-"
#: In a kernel factory's scratch folder: where each kernel in turn works, and the factory's own home.
KERNEL_SLOT = "slot"
FACTORY_HOME = "factory-home"


def scratch_prefix() -> str:
    """Prefix of this process's scratch folders: the pid lets a later run remove what a killed one left."""
    return f"{SCRATCH_PREFIX}{os.getpid()}-"


def remove_stale_scratch() -> None:
    """Remove scratch folders of grading processes that no longer exist (killed before cleaning up)."""
    for folder in Path(tempfile.gettempdir()).glob(f"{SCRATCH_PREFIX}*-*"):
        pid = folder.name[len(SCRATCH_PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or not Path("/proc/self").exists() or Path(f"/proc/{pid}").exists():
            continue
        remove_tree(folder)  # what a kernel left there (deep folders, read-only ones) must not stop the run


def _python_dirs() -> list[str]:
    """Folders the kernel's Python needs: the environment, its base installation, the real executable's."""
    dirs = {sys.prefix, sys.base_prefix, sys.exec_prefix, str(Path(sys.executable).resolve().parent.parent)}
    return sorted(d for d in dirs if d and Path(d).exists())




def kernel_environment(scratch: Path) -> dict[str, str]:
    """The kernel's whole environment: a home in the scratch folder and a few passed variables."""
    home = scratch / "home"
    env = {
        "HOME": str(home),
        "TMPDIR": str(scratch / "tmp"),
        "USER": "student",
        "LOGNAME": "student",
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), "/usr/local/bin", "/usr/bin", "/bin"]),
        "PYTHONPATH": os.pathsep.join(import_paths()),
        "MPLCONFIGDIR": str(home / ".matplotlib"),
        "IPYTHONDIR": str(home / ".ipython"),
        "JUPYTER_CONFIG_DIR": str(home / ".jupyter"),
        "JUPYTER_DATA_DIR": str(home / ".local-jupyter"),
        "JUPYTER_RUNTIME_DIR": str(scratch / "runtime"),
        "JUPYTER_PLATFORM_DIRS": "1",
        "PYDEVD_DISABLE_FILE_VALIDATION": "1",
        "TORCH_HOME": os.environ.get("TORCH_HOME", str(home / ".torch")),
    }
    for name, value in os.environ.items():
        if name in PASSED_ENV or name.startswith(PASSED_ENV_PREFIXES):
            env[name] = value
    env.setdefault("LANG", "C.UTF-8")
    env.update(GRADING_KERNEL_ENV)
    return env


def prepare_scratch(scratch: Path, uid: int | None) -> None:
    """Create the kernel's folders; a root grader hands them to the kernel's uid (nobody else can read them).

    In the bubblewrap sandbox ``work``, ``home`` and ``tmp`` are then hidden under tmpfs mounts
    (`private_mounts`): only ``runtime`` (the sockets) and the kernel's output log are shared with
    the grader.
    """
    for sub in ("work", "home/.matplotlib", "tmp", "runtime"):
        (scratch / sub).mkdir(parents=True, exist_ok=True)
    # matplotlib builds a font list on first use (seconds): give the kernel the grader's copy.
    for cache in font_caches():  # in the bubblewrap sandbox `private_mounts` binds them instead
        shutil.copyfile(cache, scratch / "home" / ".matplotlib" / cache.name)
    if uid is not None:
        for folder, _, files in os.walk(scratch):
            os.chown(folder, uid, uid)
            for name in files:
                os.chown(Path(folder) / name, uid, uid)
    # Others may pass through (bwrap, as root without capabilities, enters them) but not list them.
    for folder in (scratch, scratch / "work"):
        os.chmod(folder, 0o711)


def font_caches() -> list[Path]:
    """matplotlib's font list of the grader (building one takes seconds): the kernel gets it read-only."""
    grader_mpl = os.environ.get("MPLCONFIGDIR")
    return sorted(Path(grader_mpl).glob("fontlist-*.json")) if grader_mpl and Path(grader_mpl).is_dir() else []


@functools.lru_cache(maxsize=1)
def tmpfs_size_supported() -> bool:
    """Whether this bubblewrap can limit the size of a tmpfs (``--size``, bubblewrap 0.7 and later)."""
    try:
        help_text = subprocess.run([shutil.which("bwrap") or "bwrap", "--help"], capture_output=True, text=True,
                                   timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return "--size" in help_text


def _tmpfs(path: str | Path, size_mb: int, mode: str = "01777") -> list[str]:
    """bwrap's arguments mounting a tmpfs at ``path`` that anyone may write in (sticky, like /tmp), of at
    most ``size_mb`` where bubblewrap can say so."""
    size = ["--size", str(size_mb * MIB)] if tmpfs_size_supported() else []
    return ["--perms", mode, *size, "--tmpfs", str(path)]


def private_mounts(scratch: Path, size_mb: int) -> list[str]:
    """bwrap's arguments giving the kernel in ``scratch`` its own work, home and temporary folders in memory:
    each at most ``size_mb``, gone with the sandbox (no clean-up to attack, nothing left on disk)."""
    args = []
    for sub in PRIVATE_DIRS:
        args += _tmpfs(scratch / sub, size_mb)
    caches = font_caches()
    if caches:
        matplotlib_dir = scratch / "home" / ".matplotlib"
        args += ["--perms", "01777", "--dir", str(matplotlib_dir)]
        for cache in caches:
            args += ["--ro-bind", str(cache), str(matplotlib_dir / cache.name)]
    return args


def read_only_dirs() -> list[str]:
    """Folders the kernel sees read-only besides the system: Python, ``course_lib``, pretrained weights."""
    read_only = [*_python_dirs(), str(course_lib_dir())]
    return read_only + [os.environ[v] for v in READ_ONLY_ENV_DIRS if os.environ.get(v) and Path(os.environ[v]).is_dir()]


@dataclass(frozen=True)
class Overlay:
    """What a sandbox sees instead of some of the files it would see: ``binds`` are (path outside,
    path inside) pairs bound read-only over what is there, ``masks`` paths that read as empty."""

    binds: tuple[tuple[str, str], ...] = ()
    masks: tuple[str, ...] = ()


def _bwrap_args(env: dict[str, str], writable: list[Path], chdir: Path, read_only: list[Path] = (),
                overlay: Overlay | None = None, private: list[str] = (), scratch_mb: int = DEFAULT_SCRATCH_MB) -> list[str]:
    """bubblewrap's arguments: the system and ``read_only`` folders read-only, ``writable`` read-write,
    the ``private`` mounts (`private_mounts`) over them, then the ``overlay``'s files over what they replace.
    /tmp, /run and /dev/shm are tmpfs of at most ``scratch_mb`` each.

    Everything else the sandbox's own root holds (the folders bwrap creates as mount points) is
    read-only too: a kernel can leave nothing there for the next one.
    """
    args = [shutil.which("bwrap") or "bwrap", *_namespace_args(), "--die-with-parent", "--new-session",
            "--clearenv", "--proc", "/proc", "--dev", "/dev", *_tmpfs("/dev/shm", scratch_mb),
            *_tmpfs("/tmp", scratch_mb), *_tmpfs("/run", scratch_mb, mode="0755")]
    for folder in SYSTEM_DIRS:
        args += ["--ro-bind-try", folder, folder]
    for entry in ETC_ENTRIES:
        args += ["--ro-bind-try", f"/etc/{entry}", f"/etc/{entry}"]
    visible = [*read_only_dirs(), *map(str, read_only)]
    # bwrap would create the folders above these mount points private to root: make them passable.
    parents = {str(p) for folder in [*visible, *map(str, writable), str(GRADER_DIR)] for p in Path(folder).parents
               if str(p) != "/"}
    for parent in sorted(parents - set(SYSTEM_DIRS), key=lambda p: (p.count("/"), p)):
        args += ["--perms", "0755", "--dir", parent]
    for folder in visible:
        args += ["--ro-bind", folder, folder]
    # Of the grader, only what runs in here (the kernel factory, the verdict harness): an empty,
    # read-only folder in place of the package, wherever it is installed, and those files over it.
    args += ["--perms", "0555", "--tmpfs", str(GRADER_DIR)]
    for path in (GRADER_INIT, SANDBOXED_DIR):
        args += ["--ro-bind", str(path), str(path)]
    for folder in writable:
        args += ["--bind", str(folder), str(folder)]
    args += list(private)
    if overlay is not None:
        for outside, inside in overlay.binds:
            args += ["--ro-bind", str(outside), str(inside)]
        for path in overlay.masks:
            args += ["--ro-bind", os.devnull, str(path)]
    gpu_devices = sorted({str(p) for pattern in GPU_DEVICE_GLOBS for p in Path("/").glob(pattern.lstrip("/"))})
    for device in gpu_devices:
        args += ["--dev-bind", device, device]
    if gpu_devices:  # the CUDA driver reads its PCI topology from /sys
        args += ["--ro-bind-try", "/sys", "/sys"]
    args += ["--remount-ro", "/", "--chdir", str(chdir)]
    for name, value in sorted(env.items()):
        args += ["--setenv", name, value]
    return args


def _limited(limits: Limits) -> list[str]:
    extra = 0 if running_as_root() else processes_of_this_user()
    return [shutil.which("prlimit") or "prlimit", *limits.prlimit_args(extra), "--"]


def _with_only(env: dict[str, str]) -> list[str]:
    """Run the rest of the command with exactly ``env`` (limits only: no bwrap to clear it)."""
    return ["env", "-i", *[f"{k}={v}" for k, v in sorted(env.items())]]


def _keeping_only(*capabilities: str) -> list[str]:
    """bwrap's arguments dropping every capability but ``capabilities``."""
    return ["--cap-drop", "ALL", *[arg for cap in capabilities for arg in ("--cap-add", cap)]]


def sandboxed_command(kernel_cmd: list[str], scratch: Path, mode: str, limits: Limits,
                      overlay: Overlay | None = None, memory: MemoryGroup | None = None) -> list[str]:
    """``kernel_cmd`` wrapped in the limits (and, unless ``mode="rlimits"``, the bubblewrap sandbox,
    with ``overlay`` over the files it replaces); with ``memory``, everything it starts is in that group."""
    env = kernel_environment(scratch)
    command = (memory.enter_command() if memory is not None else []) + _limited(limits)
    if mode != "required":
        return command + _with_only(env) + kernel_cmd
    command += _bwrap_args(env, writable=[scratch], chdir=scratch / "work", overlay=overlay,
                           private=private_mounts(scratch, limits.scratch_mb), scratch_mb=limits.scratch_mb)
    if not running_as_root():
        return command + _keeping_only() + ["--", *kernel_cmd]
    # bwrap keeps only the right to change uid; setpriv uses it once and drops everything.
    uid = str(sandbox_uid())
    return command + _keeping_only("CAP_SETUID", "CAP_SETGID") + [
        "--", shutil.which("setpriv") or "setpriv", "--reuid", uid, "--regid", uid, "--clear-groups",
        "--inh-caps=-all", "--no-new-privs", "--", *kernel_cmd]


def factory_command(scratch: Path, mode: str, limits: Limits, kernel_uid: int | None,
                    overlay: Overlay | None = None, extra_args: tuple[str, ...] = (),
                    memory: MemoryGroup | None = None) -> list[str]:
    """The command of a `kernel_factory` sandbox in ``scratch`` (see `warm.KernelFactory` for its folders).

    The sandbox is the kernels' (same namespaces, system view and limits): ``scratch`` is read-only
    in it, except the kernels' folder ``slot`` and the factory's own ``factory-home``. As root, the
    factory keeps the rights to change uid (each kernel drops to ``kernel_uid``) and to kill what a
    kernel left behind. ``overlay`` replaces files in its view (a verdict process's factory);
    ``extra_args`` go to the factory. The kernels' own folders are tmpfs mounts of the factory's sandbox,
    which the factory empties after each kernel; with ``memory``, the factory and its kernels are in that group.
    """
    home = scratch / FACTORY_HOME
    env = kernel_environment(home)
    factory = [sys.executable, "-m", "course_grader.sandboxed.kernel_factory", "--home", str(home), *extra_args]
    command = (memory.enter_command() if memory is not None else []) + _limited(limits)
    if mode != "required":
        return command + _with_only(env) + factory
    slot = scratch / KERNEL_SLOT
    command += _bwrap_args(env, writable=[slot, home], chdir=home / "work", read_only=[scratch], overlay=overlay,
                           private=private_mounts(slot, limits.scratch_mb), scratch_mb=limits.scratch_mb)
    factory += ["--kernel-dirs", *(str(slot / sub) for sub in PRIVATE_DIRS)]
    if kernel_uid is None:
        return command + _keeping_only() + ["--", *factory, "--sandboxed"]
    return command + _keeping_only("CAP_SETUID", "CAP_SETGID", "CAP_KILL") + [
        "--", *factory, "--kernel-uid", str(kernel_uid), "--sandboxed"]


def processes_of_this_user() -> int:
    """How many processes (threads included) this user runs now: RLIMIT_NPROC counts them all."""
    try:
        uid = os.getuid()
        count = 0
        for status in Path("/proc").glob("[0-9]*/status"):
            try:
                text = status.read_text()
            except OSError:
                continue
            fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
            if int(fields.get("Uid", "-1").split()[0]) == uid:
                count += int(fields.get("Threads", "1").strip())
        return count
    except (OSError, ValueError):
        return 4096


def describe_exit(code: int | None) -> str:
    """What a dead kernel's exit code says, in words ("" when it says nothing special)."""
    if code is None:
        return ""
    return KILLED_BY.get(code, f"it exited with code {code}")


def was_killed_by_a_limit(code: int | None) -> bool:
    return code in KILLED_BY


def is_kernel_launcher(kernel_cmd: list[str]) -> bool:
    """Whether ``kernel_cmd`` starts ipykernel with this Python (what a kernel factory can fork instead)."""
    if len(kernel_cmd) < 3 or kernel_cmd[1:3] != ["-m", "ipykernel_launcher"]:
        return False
    python = kernel_cmd[0]
    return python in ("python", "python3") or Path(python).resolve() == Path(sys.executable).resolve()
