"""One task of the site's SuperNode: check the run's Flower app, then run the site's OWN
ClientApp, or refuse.

This replaces Flower's `flwr-clientapp` at a site (flwr/supernode/runtime/run_clientapp.py,
which agent/host/trusted_exec.py would otherwise start per message). Flower's version pulls the task
(message, context, run, FAB) from the SuperNode's Runtime API, installs the FAB under FLWR_HOME,
puts that folder first on sys.path and imports the component the FAB's pyproject.toml names: the
coordinator decides what code runs. Here the same Runtime API calls are made, then:

1. the FAB's bytes are checked (agent/host/fab_policy.py, the policy from site.toml's [trust]); nothing
   of the FAB is written to disk or put on sys.path, before or after the check;
2. refused: the refusal (run id, FAB sha256, reason) goes to the site's log and to
   `STATE_DIR/refused-apps.jsonl`, and the message is answered with an error reply (code REFUSED,
   "site NAME refuses: ..."), so the coordinator sees the refusal instead of waiting;
3. accepted: the PINNED component is imported from the site's own installation (never from the
   FAB; the process runs with `python -P`, so not even the working directory is on sys.path)
   and called exactly as Flower calls a ClientApp.

A task of any other type than a ClientApp (an AgentApp run, ...) is refused the same way.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .fab_policy import FabVerdict, TrustPolicy, inspect_fab

TOKEN_ENV = "SYNTHPOOL_TASK_TOKEN"  # the task's token travels in the environment, not in argv
CLIENT_APP_TASK = "flwr-clientapp"  # flwr.supercore.constant.TaskType.CLIENT_APP
REFUSALS_FILE = "refused-apps.jsonl"
EXIT_REFUSED = 3


@dataclass(frozen=True)
class SiteTrust:
    """What the task needs from site.toml, re-read for every task like everything else there."""

    site: str
    policy: TrustPolicy
    state_dir: Path | None
    problem: str = ""  # the site config could not be read: refuse everything

    @classmethod
    def load(cls, config_path: Path) -> "SiteTrust":
        from ..config import ConfigError, load_site_config

        try:
            cfg = load_site_config(config_path)
        except ConfigError as e:
            return cls("", TrustPolicy(), None, problem=f"the site config is invalid: {e}")
        return cls(cfg.name, cfg.trust.policy(), cfg.state_dir)


def decide(task_type: str, fab_content: bytes, trust: SiteTrust) -> FabVerdict:
    """The whole trust decision for one task, free of Flower types (tests call it directly)."""
    verdict = inspect_fab(fab_content, trust.policy)
    if trust.problem:
        return FabVerdict(False, trust.problem, verdict.sha256, verdict.files, verdict.clientapp)
    if task_type != CLIENT_APP_TASK:
        return FabVerdict(False, f"task type {task_type!r}: this site runs ClientApps only",
                          verdict.sha256, verdict.files, verdict.clientapp)
    return verdict


def refusal_reason(trust: SiteTrust, run_id: int, verdict: FabVerdict) -> str:
    # "site NAME refuses: ..." is how the coordinator reads a site's refusal (coordinator/serverapp/transport.py).
    who = f"site {trust.site} refuses" if trust.site else "this site refuses"
    return f"{who}: run {run_id}: untrusted app: {verdict.reason}"


def record_refusal(trust: SiteTrust, run_id: int, task_id: int, verdict: FabVerdict) -> None:
    """The site's own record: one line in its log (the agent's journal), one JSON line in the
    state dir for whoever audits what the coordinator tried to run here."""
    print(f"[synthpool-agent] site {trust.site or '?'}: REFUSED run {run_id} (task {task_id}, "
          f"FAB sha256 {verdict.sha256}): {verdict.reason}", file=sys.stderr, flush=True)
    if trust.state_dir is None:
        return
    entry = {"time": time.time(), "site": trust.site, "run_id": run_id, "task_id": task_id,
             **verdict.summary()}
    trust.state_dir.mkdir(parents=True, exist_ok=True)
    with open(trust.state_dir / REFUSALS_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry, sort_keys=True) + "\n")


def load_pinned_clientapp(ref: str):
    """Import `module:attr` from this site's installation. The FAB is never on sys.path, so the
    module can only come from what the site installed."""
    from flwr.clientapp.client_app import ClientApp, LoadClientAppError

    module_name, _, attrs = ref.partition(":")
    try:
        obj = importlib.import_module(module_name)
        for attr in attrs.split("."):
            obj = getattr(obj, attr)
    except (ImportError, AttributeError) as e:
        raise LoadClientAppError(f"cannot load the pinned ClientApp {ref!r}: "
                                 f"{type(e).__name__}") from e
    if not isinstance(obj, ClientApp):
        raise LoadClientAppError(f"the pinned {ref!r} is not a flwr ClientApp")
    return obj


def run_task(runtime_api_address: str, token: str, task_type: str, config_path: Path) -> int:
    """Run one task against the SuperNode's Runtime API; returns the process' exit status."""
    from flwr.app import Error, Message
    from flwr.clientapp.client_app import LoadClientAppError
    from flwr.common.constant import ErrorCode, SubStatus
    from flwr.supercore.exit import register_signal_handlers
    from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
    from flwr.supercore.interceptors import (
        RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor,
    )
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient
    from flwr.supercore.telemetry import EventType
    # The Runtime API calls of Flower's own ClientApp process: they move protobuf and records
    # only, and none of them touches the FAB's files.
    from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

    from ...common import flower_backoff
    from ...common.wire import REFUSED
    from ..clientapp import after_reply

    _log_to_site()
    after_reply.enable()
    flower_backoff.shorten()  # the round's weights pulled without Flower's 1-8 s retry waits
    retry = make_simple_http_retry_invoker()
    client = RuntimeHttpClient.from_server_address(
        server_address=runtime_api_address, insecure=True, root_certificates=None,
        interceptors=[RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
                      RuntimeTokenHttpInterceptor(token)],
        retry_invoker=retry)
    state = {"context": None, "sub_status": SubStatus.FAILED,
             "details": "ClientApp task failed", "finished": False}
    heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))

    def finish() -> None:
        """Report the task's end once (also on SIGTERM, through Flower's exit handlers)."""
        if state["finished"]:
            return
        state["finished"] = True
        retry.max_tries = 1
        push_task_output(client=client, context=state["context"],
                         sub_status=state["sub_status"], details=state["details"])
        if heartbeat.is_running:
            heartbeat.stop()
        client.close()

    register_signal_handlers(event_type=EventType.FLWR_CLIENTAPP_RUN_LEAVE,
                             exit_message="Task stopped.", exit_handlers=[finish])
    message = reply = None
    code = 1
    try:
        heartbeat.start()
        message, context, run, fab = pull_task_input(client)
        state["context"] = context
        trust = SiteTrust.load(config_path)
        verdict = decide(task_type, fab.content, trust)
        if not verdict.trusted:
            record_refusal(trust, run.run_id, _task_id(), verdict)
            reason = refusal_reason(trust, run.run_id, verdict)
            reply = Message(Error(code=REFUSED, reason=reason), reply_to=message)
            state["details"] = reason
            code = EXIT_REFUSED
        else:
            client_app = load_pinned_clientapp(trust.policy.clientapp)
            reply = client_app(message=message, context=context)
            state["sub_status"], state["details"] = SubStatus.COMPLETED, ""
            code = 0
    except Exception as ex:  # noqa: BLE001 - every failure must still answer the message
        # The exception TYPE only leaves the site (its text may quote a data value); the
        # traceback stays in the site's log.
        import traceback

        traceback.print_exc()
        load_error = isinstance(ex, LoadClientAppError)
        reason = "the site could not load its ClientApp" if load_error else \
            f"ClientApp raised {type(ex).__name__}"
        state["details"] = reason
        if message is not None:
            err = ErrorCode.LOAD_CLIENT_APP_EXCEPTION if load_error else \
                ErrorCode.CLIENT_APP_RAISED_EXCEPTION
            reply = Message(Error(code=err, reason=reason), reply_to=message)
        code = 1
    try:
        if reply is not None and state["context"] is not None:
            push_message(client, reply, state["context"])
    finally:
        finish()
    # The SuperNode has the reply and the task's end: it takes its next message while this
    # process does what the app left for after the reply (a SecAgg+ round's DP-SGD job).
    after_reply.run_pending()
    return code


def _log_to_site() -> None:
    """The task's own lines (a big table's parse, a job's DP-SGD steps and seconds) into the
    site's log, beside Flower's: its stderr is the agent's, which the owner keeps. They never
    leave the site; nothing in a reply carries a timing."""
    import logging

    logger = logging.getLogger("synthpool")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[synthpool-agent] %(asctime)s %(message)s",
                                               "%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def _task_id() -> int:
    from flwr.supercore.task_identity import TaskIdentity

    return int(TaskIdentity.task_id or 0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runtime-api-address", required=True)
    parser.add_argument("--task-type", required=True)
    parser.add_argument("--config", required=True, type=Path, help="the site's site.toml")
    args = parser.parse_args(argv)
    token = os.environ.pop(TOKEN_ENV, "").strip()
    if not token:
        sys.exit(f"{TOKEN_ENV} is not set: this process is started by agent/host/trusted_exec.py")
    sys.exit(run_task(args.runtime_api_address, token, args.task_type, args.config))


if __name__ == "__main__":
    main()
