"""The kernel factory: a process inside the sandbox that forks student kernels ready to run.

Starting a kernel for each submission costs seconds, most of them ``import torch``. The factory
imports the heavy libraries once; for each submission it forks a child that becomes that
student's kernel. The child starts with torch already in memory (shared copy-on-write) and with
nothing of any other student: the factory never runs student code itself.

Between two kernels the factory kills every process left in its sandbox and empties the shared
temporary folders, so nothing a kernel leaves behind reaches the next one. (With resource limits
only, without the sandbox, those are the machine's: it then kills the kernel's process group only.) When the grader runs
as root, the factory keeps only the rights to change uid and to kill; each kernel drops to the
grading uid before it runs, so it can neither signal nor inspect the factory.

Protocol, one JSON object per line. The grader writes ``{"start": ID, "argv": [...], "env": {...},
"cwd": PATH, "output": FILE}``, with ``"module": NAME`` to run that module instead of a kernel; the
factory answers ``{"ready": SECONDS}`` once after preloading, then ``{"started": ID}`` and
``{"exited": ID, "code": CODE}`` (128 + N when signal N ended it).

    python -m course_grader.sandboxed.kernel_factory [--kernel-uid UID] [--sandboxed] [--home DIR] [--op-schemas FILE]
"""
from __future__ import annotations

import argparse
import ctypes
import importlib
import json
import os
import select
import signal
import sys
import time
import traceback

#: Imported once by the factory, so kernels start with them (and their import cost) already paid.
PRELOADED = ("numpy", "torch", "torch.nn", "torch.nn.functional", "torchvision", "matplotlib", "matplotlib.pyplot",
             "IPython", "ipykernel.kernelapp", "ipykernel.ipkernel", "matplotlib_inline.backend_inline",
             "course_lib", "course_lib.checks", "course_lib.models", "course_lib.detection")
#: Writable folders every kernel of the sandbox shares: emptied after each kernel.
SHARED_TEMP_DIRS = ("/tmp", "/dev/shm", "/run")
POLL_SECONDS = 0.02
PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS = 4, 38


def _prctl(option: int, value: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}, {value}) failed")


def preload(op_schemas: list[str] | None = None) -> None:
    """Import `PRELOADED`. ``op_schemas``: torchvision's operators to declare first, for a sandbox
    that hides torchvision's compiled operators (a verdict process's: see `verdict_harness`)."""
    # A kernel would set this before anything imports matplotlib (ipykernel's kernelapp does).
    if not os.environ.get("MPLBACKEND"):
        os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    # A forked child cannot use a CUDA context its parent created: should anything ask whether
    # CUDA is there while preloading, torch answers through NVML without creating one.
    os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"
    if op_schemas:
        from course_grader.sandboxed.verdict_harness import define_torchvision_ops

        define_torchvision_ops(op_schemas)
    for name in PRELOADED:
        try:
            importlib.import_module(name)
        except Exception as error:  # the kernel will import it (and report the error) itself
            print(f"kernel factory: could not preload {name}: {error}", file=sys.stderr)
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        raise SystemExit("kernel factory: CUDA was initialised while preloading; forked kernels could not use it")


def become_kernel(request: dict, kernel_uid: int | None) -> None:
    """In the forked child: leave the factory behind and run ipykernel (or, when the request names a
    ``module``, run that module as ``python -m`` would). Never returns."""
    code = 1
    try:
        os.setsid()  # its own session: the kernel's processes can be killed as one group
        if kernel_uid is not None:
            os.setgroups([])
            os.setresgid(kernel_uid, kernel_uid, kernel_uid)
            os.setresuid(kernel_uid, kernel_uid, kernel_uid)  # from uid 0 to another: every capability goes
            _prctl(PR_SET_NO_NEW_PRIVS, 1)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        # The kernel's own output goes to a file of its folder (the grader keeps its end in the log);
        # the factory's stdout is the protocol pipe, its stderr is shared by every kernel.
        output = os.open(request["output"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(output, 1)
        os.dup2(output, 2)
        os.closerange(3, 65536)
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        sys.path[0] = os.getcwd()  # where `python -m ipykernel_launcher` started in this folder would look
        sys.path_importer_cache.clear()
        sys.argv = list(request["argv"])
        import random
        import tempfile

        import numpy

        tempfile.tempdir = None  # read TMPDIR again
        random.seed()  # every fork starts from the factory's random state: draw a fresh one
        numpy.random.seed()
        if request.get("module"):
            import runpy

            runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
        else:
            from ipykernel import kernelapp

            kernelapp.launch_new_instance()
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush() if sys.stdout else None
        sys.stderr.flush() if sys.stderr else None
        os._exit(code)


def exit_code(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def shared_temp_entries() -> dict[str, set[str]]:
    """What the shared temporary folders hold before any kernel ran (the sandbox's own mount points)."""
    entries = {}
    for folder in SHARED_TEMP_DIRS:
        try:
            entries[folder] = set(os.listdir(folder))
        except OSError:
            entries[folder] = set()
    return entries


#: How a folder is opened while it is emptied: never through a link, never left open in a child.
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _identity(fd: int) -> tuple[int, int]:
    info = os.fstat(fd)
    return info.st_dev, info.st_ino


def _retry_writable(operation, name: str, dir_fd: int) -> bool:
    """``operation(name, dir_fd=dir_fd)``, once more after making the folder writable (a kernel may
    leave it read-only). True when ``name`` is gone (also when it vanished meanwhile)."""
    for attempt in range(2):
        try:
            operation(name, dir_fd=dir_fd)
            return True
        except FileNotFoundError:
            return True
        except PermissionError:
            if attempt:
                return False
            try:
                os.fchmod(dir_fd, 0o700)
            except OSError:
                return False
        except OSError:
            return False
    return False


def _open_folder(name: str, dir_fd: int) -> int | None:
    """An fd of the folder ``name`` in ``dir_fd`` (made readable if need be); None if it is no folder now."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except PermissionError:
        pass
    except OSError:  # vanished, a file, or a link (O_NOFOLLOW): the caller unlinks what is there
        return None
    try:  # no read or search right on it: change its mode through a handle, never by name
        handle = os.open(name, getattr(os, "O_PATH", os.O_RDONLY) | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC,
                         dir_fd=dir_fd)
    except OSError:
        return None
    try:
        os.chmod(f"/proc/self/fd/{handle}", 0o700)
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError:
        return None
    finally:
        os.close(handle)


def _clear_files(dir_fd: int, stays: set[str]) -> list[str]:
    """Remove every entry of ``dir_fd`` that is no folder; the names of its folders (those not in ``stays``)."""
    try:
        with os.scandir(dir_fd) as entries:
            listed = [(entry.name, entry.is_dir(follow_symlinks=False)) for entry in entries]
    except OSError:
        return []
    folders = []
    for name, is_folder in listed:
        if name in stays:
            continue
        if is_folder:
            folders.append(name)
        elif not _retry_writable(os.unlink, name, dir_fd):
            stays.add(name)
    return folders


def _empty_folder(top_fd: int) -> bool:
    """Remove everything inside the folder open as ``top_fd`` (the folder stays); True when it is empty.

    Iterative, with one folder open at a time: down by name, back up by ``..`` checked against the
    identity noted on the way down (a folder moved meanwhile stops the walk). Neither the recursion
    limit, nor the limit on open files, nor PATH_MAX bounds the depth. Links are removed, never
    followed; file systems mounted inside are left alone.
    """
    device = os.fstat(top_fd).st_dev
    fd = top_fd
    stays: set[str] = set()
    pending = _clear_files(fd, stays)
    above: list[tuple[tuple[int, int], str, list[str], set[str]]] = []  # (identity, name of the child, ...)
    try:
        while True:
            if pending:
                name = pending.pop()
                child = _open_folder(name, fd)
                if child is None:
                    if not (_retry_writable(os.unlink, name, fd) or _retry_writable(os.rmdir, name, fd)):
                        stays.add(name)
                    continue
                if os.fstat(child).st_dev != device:  # a mount point: not ours to empty
                    os.close(child)
                    stays.add(name)
                    continue
                above.append((_identity(fd), name, pending, stays))
                if fd != top_fd:
                    os.close(fd)
                fd, stays = child, set()
                pending = _clear_files(fd, stays)
                continue
            if not above:
                return not stays
            identity, name, pending, parent_stays = above.pop()
            parent = top_fd if not above else os.open("..", _DIR_FLAGS, dir_fd=fd)
            if _identity(parent) != identity:  # moved while we walked: stop rather than go astray
                if parent != top_fd:
                    os.close(parent)
                return False
            os.close(fd)
            fd, child_stays, stays = parent, stays, parent_stays
            if child_stays or not _retry_writable(os.rmdir, name, fd):
                stays.add(name)
    except OSError:
        return False
    finally:
        if fd != top_fd:
            os.close(fd)


def _remove_entry(name: str, dir_fd: int) -> bool:
    """Remove ``name`` from the folder ``dir_fd``: a file, a link, or a folder and all it holds."""
    try:
        folder = _open_folder(name, dir_fd)
        if folder is None:
            return _retry_writable(os.unlink, name, dir_fd) or _retry_writable(os.rmdir, name, dir_fd)
        try:
            if os.fstat(folder).st_dev != os.fstat(dir_fd).st_dev:
                return False  # a mount point
            emptied = _empty_folder(folder)
        finally:
            os.close(folder)
        return emptied and _retry_writable(os.rmdir, name, dir_fd)
    except OSError:
        return False


def remove_tree(path) -> bool:
    """Remove ``path``: a file, a link (never what it points to) or a folder with everything in it.

    Whatever a kernel left (folders nested beyond PATH_MAX, read-only folders, links out of its
    folder, files that vanish meanwhile) never makes this raise; what cannot be removed stays.
    True when ``path`` is gone.
    """
    parent, name = os.path.split(os.path.abspath(os.fspath(path)))
    try:
        parent_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return not os.path.lexists(path)
    try:
        return _remove_entry(name, parent_fd)
    finally:
        os.close(parent_fd)


def remove_entries(folder, keep=frozenset()) -> None:
    """Remove what ``folder`` holds except the names in ``keep`` (see `remove_tree`); what cannot be removed stays."""
    try:
        folder_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        names = os.listdir(folder_fd)
    except OSError:
        names = []
    try:
        for name in set(names) - set(keep):
            _remove_entry(name, folder_fd)
    finally:
        os.close(folder_fd)


def _as_kernel(kernel_uid: int | None, work) -> None:
    """Run ``work()`` in a child process with the kernels' uid: what a kernel wrote is that uid's, so its
    owner can always remove it (read-only folders included), and the factory needs no right to override
    permissions. Without a kernel uid (a grader not run as root) the factory's uid is the kernels' own."""
    if kernel_uid is None:
        work()
        return
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setgroups([])
            os.setresgid(kernel_uid, kernel_uid, kernel_uid)
            os.setresuid(kernel_uid, kernel_uid, kernel_uid)
            work()
            code = 0
        finally:
            os._exit(code)
    os.waitpid(pid, 0)


def sweep(sandboxed: bool, keep: dict[str, set[str]], home: str | None, kernel_dirs: tuple[str, ...] = (),
          kernel_uid: int | None = None) -> None:
    """Kill what a kernel left running and remove what it added to the folders kernels share and to its
    own folders (``kernel_dirs``: tmpfs mounts of this sandbox, emptied, never removed).

    Only inside the sandbox: there the processes and the temporary folders are the sandbox's own.
    Outside it (limits only) they are the machine's, and nothing but the factory's home is touched.
    """
    if sandboxed:
        for _ in range(200):  # kill(-1) reaches only this sandbox's processes (never its pid 1, never us)
            try:
                os.kill(-1, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                break
            time.sleep(0.005)
        def empty_folders() -> None:
            for folder in SHARED_TEMP_DIRS:
                remove_entries(folder, keep.get(folder, set()))
            for folder in kernel_dirs:  # the font cache bound into home stays (it cannot be removed)
                remove_entries(folder)

        _as_kernel(kernel_uid, empty_folders)
    if home:
        remove_entries(home)


def say(message: dict) -> None:
    os.write(1, (json.dumps(message) + "\n").encode())


def serve(kernel_uid: int | None, sandboxed: bool, home: str | None, op_schemas: list[str] | None = None,
          kernel_dirs: tuple[str, ...] = ()) -> None:
    started = time.monotonic()
    preload(op_schemas)
    if home:  # the font cache and the like are loaded: kernels need not see them
        remove_entries(home)
    _prctl(PR_SET_DUMPABLE, 0)  # a kernel of the same uid cannot read or trace the factory's memory
    keep = shared_temp_entries() if sandboxed else {}
    say({"ready": round(time.monotonic() - started, 3)})
    pending = b""
    running: tuple[str, int] | None = None  # (id, pid) of the kernel alive now
    while True:
        if running is not None:
            done, status = os.waitpid(running[1], os.WNOHANG)
            if done:
                try:  # what it started in its own session and did not take elsewhere
                    os.killpg(running[1], signal.SIGKILL)
                except OSError:
                    pass
                sweep(sandboxed, keep, home, kernel_dirs, kernel_uid)
                say({"exited": running[0], "code": exit_code(status)})
                running = None
        readable, _, _ = select.select([0], [], [], POLL_SECONDS if running else None)
        if not readable:
            continue
        data = os.read(0, 1 << 16)
        if not data:
            return  # the grader is gone; the sandbox goes with us
        pending += data
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            request = json.loads(line)
            if running is not None:
                say({"refused": request.get("start"), "why": "a kernel is already running"})
                continue
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                become_kernel(request, kernel_uid)
            running = (request["start"], pid)
            say({"started": request["start"]})


def main() -> None:
    parser = argparse.ArgumentParser(description="Fork sandboxed student kernels with libraries preloaded.")
    parser.add_argument("--kernel-uid", type=int, default=None)
    parser.add_argument("--sandboxed", action="store_true",
                        help="running in the kernels' own sandbox: its processes and temporary folders may be cleaned")
    parser.add_argument("--home", default=None, help="the factory's own folder, emptied once it has preloaded")
    parser.add_argument("--kernel-dirs", nargs="+", default=(),
                        help="the kernels' own folders (tmpfs mounts of the sandbox), emptied after each kernel")
    parser.add_argument("--op-schemas", default=None,
                        help="a JSON list of torchvision operator schemas to declare before importing torchvision")
    args = parser.parse_args()
    op_schemas = None
    if args.op_schemas:
        with open(args.op_schemas, encoding="utf-8") as handle:
            op_schemas = json.load(handle)
    serve(args.kernel_uid, args.sandboxed, args.home, op_schemas, tuple(args.kernel_dirs))


if __name__ == "__main__":
    main()
