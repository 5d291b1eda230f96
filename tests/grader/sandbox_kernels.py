"""Run code in a sandboxed student kernel, as the grader starts one (for tests of the sandbox itself)."""
from __future__ import annotations

import asyncio
import json

from course_grader.kernel_manager import SandboxedKernelManager


async def in_kernel(work, *, now: bool = False, **manager_options):
    """Start a sandboxed kernel (``manager_options`` configure `SandboxedKernelManager`), ``await work(km,
    client)``, then shut the kernel down (politely, which keeps a warm factory, unless ``now``)."""
    km = SandboxedKernelManager(kernel_name="python3", **manager_options)
    await km.start_kernel()
    client = km.client()
    client.start_channels()
    try:
        await client.wait_for_ready(timeout=300)
        return await work(km, client)
    finally:
        client.stop_channels()
        await km.shutdown_kernel(now=now)


def run_in_kernel(code: str, *, timeout: float = 120, **manager_options) -> tuple[str, SandboxedKernelManager]:
    """Run ``code`` in a new sandboxed kernel: what it printed (errors included) and its manager, whose
    ``exit_code`` and ``out_of_memory`` say how a kernel that died ended."""
    printed: list[str] = []
    managers = []

    async def collect(client, parent: str) -> bool:
        """Read what the kernel published; True once it went idle after running ``parent``."""
        while True:
            try:
                message = await client.get_iopub_msg(timeout=0.2)
            except Exception:  # nothing more for now
                return False
            if message.get("parent_header", {}).get("msg_id") != parent:
                continue
            content = message["content"]
            printed.append(content.get("text", "") + content.get("evalue", ""))
            if message["msg_type"] == "status" and content.get("execution_state") == "idle":
                return True

    async def run(km, client) -> None:
        managers.append(km)
        parent = client.execute(code)
        deadline = asyncio.get_running_loop().time() + timeout
        while not await collect(client, parent):
            if not await km.is_alive():  # records its exit code (and an out-of-memory kill)
                printed.append("\n[the kernel died]")
                return
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"the code ran past {timeout} s")

    asyncio.run(in_kernel(run, **manager_options))
    return "".join(printed), managers[0]


def report_from_kernel(code: str, **options) -> dict:
    """Run ``code``, which sets a JSON-able ``report``, and return that report."""
    printed, _ = run_in_kernel(code + "\nimport json\nprint('REPORT', json.dumps(report))", **options)
    return json.loads(printed.split("REPORT", 1)[1])
