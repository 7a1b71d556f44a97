"""The site's SuperExec: takes each task from the site's SuperNode and starts one
agent/trusted_app.py process for it, which checks the run's app before anything of it runs.

Why not Flower's own: in its default `--isolation subprocess` a SuperNode starts
`flower-superexec`, whose plugin starts `flwr-clientapp` per task, which installs the FAB and
imports whatever ClientApp component the coordinator's FAB names. The agent instead starts the
SuperNode with `--isolation process` (then the SuperNode starts no executor at all and only
serves its Runtime API on 127.0.0.1) and runs this loop in its place. It does what
flwr/supercore/superexec/run_superexec.py does with the subprocess executor (poll AcquireTask,
start one process per task with the task's token), except that the process started is ours.

Tasks of every type are taken, not only ClientApps: a task nobody takes would leave the
SuperNode waiting for its reply for ever; trusted_app refuses what is not a ClientApp.

Every child is started with PR_SET_PDEATHSIG, as the agent starts this loop: a task process
does not outlive the agent.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from .lifeline import die_with_parent
from .trusted_app import TOKEN_ENV

POLL_ENV = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"  # the knob Flower's SuperExec reads


def poll_interval() -> float:
    try:
        value = float(os.environ.get(POLL_ENV, "1.0"))
    except ValueError:
        return 1.0
    return min(max(value, 0.01), 60.0)


def task_argv(runtime_api_address: str, task_type: str, config: Path) -> list[str]:
    """`python -P`: the working directory is not put on sys.path, so nothing lying in it can
    shadow the site's installed modules."""
    return [sys.executable, "-P", "-m", "synthpool.agent.trusted_app",
            "--runtime-api-address", runtime_api_address, f"--task-type={task_type}",
            "--config", str(config)]


def serve(runtime_api_address: str, config: Path) -> None:
    from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=no-name-in-module
    from flwr.supercore.constant import TaskType
    from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient

    client = RuntimeHttpClient.from_server_address(
        server_address=runtime_api_address, insecure=True, root_certificates=None,
        interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec")],
        # Retries connection errors for ever: the SuperNode's API comes up after this loop.
        retry_invoker=make_simple_http_retry_invoker())
    request = AcquireTaskRequest(supported_task_types=[t.value for t in TaskType])
    interval = poll_interval()
    children: list[subprocess.Popen] = []
    print(f"[synthpool-agent] trusted executor: tasks from {runtime_api_address}, each checked "
          f"against {config} before it runs", flush=True)
    while True:
        children = [c for c in children if c.poll() is None]  # reap finished tasks
        try:
            res = client.AcquireTask(request)
        except Exception as e:  # noqa: BLE001 - keep serving; the agent watches the SuperNode
            print(f"[synthpool-agent] trusted executor: AcquireTask failed: {e!r}",
                  file=sys.stderr, flush=True)
            time.sleep(1.0)
            continue
        if res.HasField("task") and res.token:
            env = dict(os.environ)
            env[TOKEN_ENV] = res.token
            children.append(subprocess.Popen(
                task_argv(runtime_api_address, res.task.type, config), env=env,
                preexec_fn=die_with_parent if sys.platform == "linux" else None))
        time.sleep(interval)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runtime-api-address", required=True)
    parser.add_argument("--config", required=True, type=Path, help="the site's site.toml")
    args = parser.parse_args(argv)
    try:
        serve(args.runtime_api_address, args.config.resolve())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
