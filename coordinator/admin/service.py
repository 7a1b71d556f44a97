"""The admin gRPC service (protos/admin.proto) over the coordinator's state.

Who may call: an administrator, recognised by a client certificate from the coordinator's CA
(OU=admin, see pki.admin_identity) or by a bearer token (`authorization: Bearer <token>` metadata)
whose hash is in the admin_tokens table. RegisterSite is the one exception: a site agent calls it
at enrollment with nothing but its one-time invitation token. Anything else without a credential
is refused with UNAUTHENTICATED, and the refusal is logged too.

What is recorded: every call, accepted or refused, appends one audit entry (who, which RPC, when,
the request minus secrets, the outcome). For actions that change state, the entry commits in the
same transaction as the change (state.State.audited), so the log and the state cannot disagree.
A call refused to someone without an admin credential is recorded by its size and SHA-256 only,
and at most `RefusalLimiter`'s rate per caller address: beyond it the call is answered
RESOURCE_EXHAUSTED and only counted (one `RefusalsSuppressed` entry per burst), so anyone who can
reach the port cannot fill the coordinator's disk through the log.

Administrators' credentials are revocable: tokens (admin_tokens.revoked_at) and client
certificates (a deny list by serial or fingerprint, state.admin_certificates), both checked on
every call, so a revocation takes effect at the next call without a restart.

Training is delegated to a `TrainingRunner` (coordinator/admin/supervisor.py); releases are
listed, streamed in chunks and verified with the coordinator's key (release_store.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import fields
from pathlib import Path
from typing import Protocol, runtime_checkable

import grpc
import yaml
from google.protobuf import json_format

from ...common import signing
from ...protos import admin_pb2 as pb
from ...protos import admin_pb2_grpc
from . import state as st
from .proto_mapping import (
    POPULATION_ENUM, POPULATION_NAME, STUDY_STATUS, certificate_message, event_message, message,
    run_message, site_message, timestamp, token_message,
)
from .refusals import RefusalLimiter, peer_host
from .release_store import ReleaseStore
from .supervisor import TERMINAL, SiteInfo, TrainingOrder, TrainingRunner, TrainingSupervisor
from .pki import (admin_identity, certificate_ids, normalize_fingerprint, normalize_serial,
                  site_public_key)

log = logging.getLogger(__name__)

MAX_INVITE_TTL = 30 * 24 * 3600
# Request fields never written to the audit log (secrets) and fields logged as a digest only
# (large public text).
SECRET_FIELDS = frozenset({"token"})
DIGEST_FIELDS = frozenset({"schema_yaml"})
ANONYMOUS = "anonymous"


# -- the servicer --------------------------------------------------------------------------------

@runtime_checkable
class FleetAccess(Protocol):
    """Who the SuperLink lets in (coordinator/admin/flower_processes.py:SuperLinkAccess): approving
    a site admits its key, revoking shuts its SuperNode out."""

    def admit(self, site_name: str, public_key: str) -> int: ...

    def shut_out(self, node_id: int) -> None: ...


class AdminService(admin_pb2_grpc.AdminServicer):
    def __init__(self, state: st.State, *, ca_pem: bytes, signing_public_key: Path,
                 releases_dir: Path, runner: TrainingRunner | None = None,
                 fleet: FleetAccess | None = None, clock=time.time, mtls_hint: str = "",
                 refusals: RefusalLimiter | None = None) -> None:
        self.state = state
        self.refusals = refusals or RefusalLimiter()
        self.fleet = fleet
        self.ca_pem = ca_pem
        self.signing_public_key = Path(signing_public_key)
        self.releases = ReleaseStore(releases_dir, state)
        self.training = TrainingSupervisor(state, runner)
        self.runner = runner
        self.clock = clock
        self.mtls_hint = mtls_hint

    # -- authentication and audit ---------------------------------------------------------------
    def authenticate(self, context: grpc.ServicerContext) -> str | None:
        """'cert:<CN>' or 'token:<name>' for an administrator, None for anyone else. A revoked
        certificate raises a StateError saying so (its holder knows it already)."""
        pems = (context.auth_context() or {}).get("x509_pem_cert")
        if pems:
            name = admin_identity(pems[0], self.ca_pem)
            if name:
                ids = certificate_ids(pems[0])
                if self.state.revoked_admin_certificate(ids.serial, ids.fingerprint):
                    raise st.StateError(f"admin certificate {name!r} (serial {ids.serial}) is "
                                        "revoked", code="UNAUTHENTICATED")
                return f"cert:{name}"
        for key, value in context.invocation_metadata() or ():
            if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
                name = self.state.admin_for_token(value[len("Bearer "):].strip())
                if name:
                    return f"token:{name}"
        return None

    def _call(self, context: grpc.ServicerContext, action: str, request,
              public: bool = False) -> "_Call":
        return _Call(self, context, action, request, public)

    def record_refusal(self, context: grpc.ServicerContext, action: str, request, outcome: str,
                       reason: str) -> bool:
        """Log a call refused to someone without an admin credential: its size and SHA-256
        instead of its fields, which are the caller's to fill. False, and nothing logged, when
        the caller's address is over the refusal rate."""
        peer = context.peer() or ""
        host = peer_host(peer)
        admitted, suppressed = self.refusals.admit(host)
        if not admitted:
            return False
        if suppressed:
            self._record_suppressed(host, suppressed)
        body = request.SerializeToString()
        self.state.record_audit(ANONYMOUS, action, {"request_sha256": hashlib.sha256(body).hexdigest(),
                                                    "request_bytes": len(body)},
                                outcome, reason, peer)
        return True

    def flush_refusals(self) -> None:
        """Log the refusals still only counted (the server is stopping)."""
        for host, count in self.refusals.drain().items():
            self._record_suppressed(host, count)

    def _record_suppressed(self, host: str, count: int) -> None:
        self.state.record_audit(ANONYMOUS, "RefusalsSuppressed", {"refused_calls": count},
                                "RESOURCE_EXHAUSTED",
                                f"{count} refused calls from {host} were answered "
                                "RESOURCE_EXHAUSTED and not logged one by one (refusal rate "
                                f"{self.refusals.describe()})", host)

    def over_limit_message(self, context: grpc.ServicerContext) -> str:
        return (f"too many refused calls from {peer_host(context.peer() or '')}: at most "
                f"{self.refusals.describe()} are answered; wait, and check the credential")

    # -- sites ----------------------------------------------------------------------------------
    def InviteSite(self, request, context):
        with self._call(context, "InviteSite", request) as call:
            _check_name(request.name, "site")
            ttl = request.ttl_seconds or st.DEFAULT_INVITE_TTL
            if ttl > MAX_INVITE_TTL:
                raise st.Invalid(f"ttl_seconds may be at most {MAX_INVITE_TTL} (30 days)")
            site, token = self.state.invite_site(request.name, call.actor, ttl)
            call.detail = f"token expires {_iso(site.token_expires_at)}"
        return pb.InviteSiteResponse(site=site_message(site), token=token)

    def ListSites(self, request, context):
        with self._call(context, "ListSites", request):
            sites = self.state.list_sites()
        return pb.ListSitesResponse(sites=[site_message(s) for s in sites])

    def ApproveSite(self, request, context):
        # The SuperLink admits the key first, outside the audited transaction (seconds of
        # Flower CLI); a failure there is raised inside it, so it is audited like any refusal.
        admitted, failure = None, None
        try:
            if not request.expected_fingerprint.strip():
                # Approving whatever key arrived under a name admits whoever used its invitation.
                raise st.Invalid(f"approving site {request.name!r} needs the fingerprint of "
                                 "the key the site sent (expected_fingerprint; `synthpool sites "
                                 "approve NAME --fingerprint SHA256:...`), confirmed with the "
                                 "site out of band")
            admitted = self._admit(request, context)
        except Exception as e:  # noqa: BLE001
            failure = e
        with self._call(context, "ApproveSite", request) as call:
            if failure is not None:
                raise failure
            site = self.state.approve_site(request.name, call.actor, request.expected_fingerprint,
                                           admitted=admitted,
                                           undo=self.fleet.shut_out if self.fleet else None)
            call.detail = f"key {site.public_key_fingerprint}" + (
                f", SuperNode {site.flower_node_id}" if site.flower_node_id is not None else "")
        return site_message(site)

    def _admit(self, request, context) -> tuple[int, str] | None:
        """(the SuperNode id the SuperLink gives the site's key, that key's fingerprint), for an
        administrator's approval of a site that may be approved; None otherwise (`_call` then
        refuses or reports)."""
        try:
            if self.fleet is None or self.authenticate(context) is None:
                return None
            site = self.state.get_site(request.name)
            st.check_approvable(site, request.expected_fingerprint)
        except st.StateError:
            return None
        if site.status != st.SITE_REGISTERED:
            return None
        return self.fleet.admit(site.name, site.public_key), site.public_key_fingerprint

    def RevokeSite(self, request, context):
        with self._call(context, "RevokeSite", request) as call:
            site = self.state.revoke_site(request.name, call.actor, request.reason)
            actor = call.actor
        if site.flower_node_id is None or self.fleet is None:
            return site_message(site)
        # After the revocation has committed (it holds whatever happens next), and outside the
        # database's lock: the SuperLink may be slow, or down.
        try:
            self.fleet.shut_out(int(site.flower_node_id))
        except Exception as e:  # noqa: BLE001
            message = (f"site {site.name!r} is revoked and takes part in no further run, but its "
                       f"SuperNode {site.flower_node_id} could not be shut out of the SuperLink "
                       f"({type(e).__name__}: {e}); once the SuperLink is up, run `synthpool "
                       f"sites revoke {site.name}` again")
            self.state.record_audit(actor, "RevokeSite", audit_arguments(request), "UNAVAILABLE",
                                    message, context.peer())
            context.abort(grpc.StatusCode.UNAVAILABLE, st.bounded(message))
        return site_message(self.state.shut_out_done(site.name))

    def RegisterSite(self, request, context):
        with self._call(context, "RegisterSite", request, public=True) as call:
            try:
                key, fingerprint = site_public_key(request.public_key)
            except ValueError as e:
                raise st.Invalid(str(e)) from None
            call.arguments["public_key_fingerprint"] = fingerprint
            site = self.state.consume_invitation(request.token, key, fingerprint)
            call.actor = f"site:{site.name}"
            call.detail = f"registered key {fingerprint}; awaiting approval"
        return pb.RegisterSiteResponse(site=site_message(site))

    # -- studies --------------------------------------------------------------------------------
    def CreateStudy(self, request, context):
        with self._call(context, "CreateStudy", request) as call:
            _check_name(request.name, "study")
            fingerprint = _schema_fingerprint(request.schema_yaml)
            p = request.privacy
            if not (math.isfinite(p.epsilon) and p.epsilon > 0):
                raise st.Invalid("privacy.epsilon must be a positive number")
            if not 0 < p.delta < 1:
                raise st.Invalid("privacy.delta must be in (0, 1)")
            if p.rounds < 1:
                raise st.Invalid("privacy.rounds must be at least 1")
            if p.rows < 1:
                raise st.Invalid("privacy.rows must be at least 1")
            for s in request.sites:
                _check_name(s, "site")
            study = self.state.create_study(
                name=request.name, schema_yaml=request.schema_yaml,
                schema_fingerprint=fingerprint, epsilon=p.epsilon, delta=p.delta,
                population=POPULATION_NAME.get(p.population, "overlapping"), rounds=p.rounds,
                rows=p.rows, sites_=list(request.sites), by=call.actor)
            call.detail = f"schema {fingerprint}"
            return self._study(study)

    def GetStudy(self, request, context):
        with self._call(context, "GetStudy", request):
            return self._study(self.state.get_study(request.name))

    def ListStudies(self, request, context):
        with self._call(context, "ListStudies", request):
            return pb.ListStudiesResponse(studies=[self._study(s, with_schema=False)
                                                  for s in self.state.list_studies()])

    def _study(self, study: st.StudyRecord, with_schema: bool = True) -> pb.Study:
        n = len(self.state.participants(study))
        # The release guarantee (docs/ARCHITECTURE.md): max over sites if each person is at one site only,
        # the sum otherwise. Every site has the same per-study budget here.
        factor = 1 if study.population == "disjoint" else n
        latest = self.state.latest_run(study.name)
        return message(
            pb.Study, name=study.name, schema_yaml=study.schema_yaml if with_schema else "",
            schema_fingerprint=study.schema_fingerprint,
            privacy=pb.PrivacySettings(epsilon=study.epsilon, delta=study.delta,
                                       population=POPULATION_ENUM[study.population],
                                       rounds=study.rounds, rows=study.rows),
            sites=list(study.sites), status=STUDY_STATUS[study.status],
            created_at=timestamp(study.created_at), created_by=study.created_by,
            release_epsilon=study.epsilon * factor if n else 0.0,
            release_delta=min(study.delta * factor, 1.0) if n else 0.0,
            latest_run=run_message(latest) if latest else None)

    # -- training -------------------------------------------------------------------------------
    def StartTraining(self, request, context):
        with self._call(context, "StartTraining", request) as call:
            if self.runner is None:
                raise st.Precondition("no training backend is configured on this coordinator")
            study = self.state.get_study(request.study)
            sites = self.state.participants(study)
            if not sites:
                raise st.Precondition(f"study {study.name!r} has no approved site to train with")
            pending = [s.name for s in sites if s.status != st.SITE_APPROVED]
            if pending:
                raise st.Precondition(f"sites not approved: {', '.join(pending)}")
            run = self.state.start_run(study.name, call.actor)
            call.detail = f"run {run.id}"
        terms = {f.name: getattr(study, f.name) for f in fields(st.StudyTerms)}
        info = TrainingOrder(
            **terms, run_id=run.id,
            sites=tuple(SiteInfo(s.name, s.public_key or "", s.public_key_fingerprint or "",
                                  s.flower_node_id)
                        for s in sites))
        # Outside the audited transaction: launching a federation may take a while, and the
        # database must not stay locked meanwhile. A failure to launch ends the run as failed
        # and is logged as a refusal of its own.
        try:
            self.runner.start(info)
        except Exception as e:  # noqa: BLE001
            log.exception("runner failed to start run %s", run.id)
            message = f"the runner failed to start: {type(e).__name__}: {e}"
            self.state.add_event(run.id, "failed", message=message)
            self.state.end_run(run.id, st.RUN_FAILED, message)
            self.state.record_audit(call.actor, "StartTraining", call.arguments, "INTERNAL",
                                    f"run {run.id}: {message}", context.peer())
            context.abort(grpc.StatusCode.INTERNAL, message)
        self.training.follow(run)
        return run_message(self.state.get_run(run.id))

    def StopTraining(self, request, context):
        with self._call(context, "StopTraining", request) as call:
            self.state.get_study(request.study)
            run = self.state.latest_run(request.study)
            if run is None or run.status != st.RUN_RUNNING:
                raise st.Precondition(f"study {request.study!r} has no running run")
            call.detail = f"run {run.id}"
        return run_message(self.training.stop(run))

    def WatchTraining(self, request, context):
        with self._call(context, "WatchTraining", request) as call:
            if request.run_id:
                run = self.state.get_run(request.run_id)
                if request.study and run.study != request.study:
                    raise st.Invalid(f"run {run.id} belongs to study {run.study!r}")
            else:
                self.state.get_study(request.study)
                run = self.state.latest_run(request.study)
                if run is None:
                    raise st.Precondition(f"study {request.study!r} has not been trained yet")
            call.detail = f"run {run.id}"
        after = request.after_seq
        while context.is_active():
            events = self.state.events(run.id, after)
            for event in events:
                yield event_message(event)
                after = event.seq
                if event.kind in TERMINAL:
                    return
            if not events:
                if self.state.get_run(run.id).status != st.RUN_RUNNING:
                    for event in self.state.events(run.id, after):  # written just before the end
                        yield event_message(event)
                    return
                self.training.wait(0.5)

    # -- releases -------------------------------------------------------------------------------
    def ListReleases(self, request, context):
        with self._call(context, "ListReleases", request):
            self.releases.scan()
            # The table indexes every release ever seen; list those still on disk.
            present = self.releases.present()
            return pb.ListReleasesResponse(releases=[
                pb.Release(name=r.name, study=r.study or "", created_at=timestamp(r.created_at),
                           files=r.files, bytes=r.bytes, manifest_sha256=r.manifest_sha256)
                for r in self.state.list_releases(request.study) if r.name in present])

    def DownloadRelease(self, request, context):
        with self._call(context, "DownloadRelease", request) as call:
            files = self.releases.files(request.name)
            call.detail = f"{len(files)} files, {sum(p.stat().st_size for _, p in files)} bytes"
        yield from self.releases.chunks(request.name)

    def VerifyRelease(self, request, context):
        with self._call(context, "VerifyRelease", request) as call:
            folder = self.releases.folder(request.name)
            key = signing.load_public_key(self.signing_public_key)
            result = signing.verify(folder, key)
            call.detail = "valid" if result.ok else f"{len(result.problems)} problems"
        return pb.VerifyReleaseResponse(ok=result.ok, problems=result.problems,
                                        files_checked=result.files_checked,
                                        public_key_pem=signing.public_pem(key).decode())

    # -- administrators -------------------------------------------------------------------------
    def ListAdminTokens(self, request, context):
        with self._call(context, "ListAdminTokens", request):
            tokens = self.state.list_admin_tokens()
        return pb.ListAdminTokensResponse(tokens=[token_message(t) for t in tokens])

    def RevokeAdminToken(self, request, context):
        with self._call(context, "RevokeAdminToken", request) as call:
            token = self.state.revoke_admin_token(request.name)
            call.detail = "refused from its next call on"
        return token_message(token)

    def ListAdminCertificates(self, request, context):
        with self._call(context, "ListAdminCertificates", request):
            certificates = self.state.list_admin_certificates()
        return pb.ListAdminCertificatesResponse(certificates=[certificate_message(c)
                                                              for c in certificates])

    def RevokeAdminCertificate(self, request, context):
        with self._call(context, "RevokeAdminCertificate", request) as call:
            try:
                serial = normalize_serial(request.serial) if request.serial else ""
                fingerprint = (normalize_fingerprint(request.fingerprint)
                               if request.fingerprint else "")
            except ValueError as e:
                raise st.Invalid(str(e)) from None
            certificate = self.state.revoke_admin_certificate(call.actor, serial, fingerprint,
                                                              request.reason)
            call.detail = (f"denied {certificate.name or 'a certificate'} (serial "
                           f"{certificate.serial or '?'}, fingerprint "
                           f"{certificate.fingerprint or '?'})")
        return certificate_message(certificate)

    # -- audit ----------------------------------------------------------------------------------
    def ListAudit(self, request, context):
        with self._call(context, "ListAudit", request):
            entries = self.state.audit_entries(request.after_id, min(request.limit or 1000, 10000))
        return pb.ListAuditResponse(entries=[
            pb.AuditEntry(id=e.id, at=timestamp(e.at), actor=e.actor, action=e.action,
                          arguments_json=json.dumps(e.arguments, sort_keys=True),
                          outcome=e.outcome, detail=e.detail, peer=e.peer) for e in entries])


class _Call:
    """Authenticate, run the action inside `State.audited`, and turn refusals into gRPC status
    codes. Used as `with service._call(context, "Rpc", request) as call:`; `call.actor`,
    `call.detail` and `call.arguments` are the audit entry's fields."""

    def __init__(self, service: AdminService, context: grpc.ServicerContext, action: str,
                 request, public: bool) -> None:
        self.service, self.context, self.action = service, context, action
        self.request, self.public = request, public
        self.peer = context.peer() or ""
        self.admin = False    # authenticated as an administrator
        self.limited = False  # refused, and over the caller's refusal rate
        self._audited = None
        self.audit: st.AuditContext | None = None

    def __enter__(self) -> st.AuditContext:
        actor = ANONYMOUS if self.public else self._administrator()
        self._audited = self.service.state.audited(actor, self.action,
                                                   audit_arguments(self.request), self.peer,
                                                   refused=self._refused)
        self.audit = self._audited.__enter__()
        return self.audit

    def _administrator(self) -> str:
        """The caller's admin identity; anyone else's call ends here, refused."""
        svc, context = self.service, self.context
        reason = "an admin credential is required (bearer token or client certificate)"
        try:
            who = svc.authenticate(context)
        except st.StateError as e:  # a revoked certificate
            who, reason = None, str(e)
        except Exception:  # noqa: BLE001 - e.g. the database is down
            log.exception("authentication failed")
            context.abort(grpc.StatusCode.UNAVAILABLE, "cannot check credentials now")
        if who is not None:
            self.admin = True
            return who
        hint = f"; client certificates are accepted on {svc.mtls_hint}" if svc.mtls_hint else ""
        try:
            self.limited = not svc.record_refusal(context, self.action, self.request,
                                                  "UNAUTHENTICATED", reason)
        finally:
            if self.limited:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, svc.over_limit_message(context))
            context.abort(grpc.StatusCode.UNAUTHENTICATED, reason + hint)

    def _refused(self, ctx: st.AuditContext, outcome: str, detail: str) -> None:
        """State.audited's refusal hook: an administrator's refusal keeps its arguments (the
        entry is bounded by the state); anyone else's is recorded as record_refusal does."""
        if self.admin:
            self.service.state.record_audit(ctx.actor, self.action, ctx.arguments, outcome,
                                            detail, self.peer)
        else:
            self.limited = not self.service.record_refusal(self.context, self.action,
                                                           self.request, outcome, detail)

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            self._audited.__exit__(exc_type, exc, tb)
        except Exception as e:  # noqa: BLE001 - the audit write itself failed
            if exc is None:
                log.exception("%s: could not write the audit entry", self.action)
                self.context.abort(grpc.StatusCode.INTERNAL,
                                   "the action could not be recorded and was rolled back")
            exc = e if exc is None else exc
        if exc is None:
            return False
        if self.limited:
            self.context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               self.service.over_limit_message(self.context))
        if isinstance(exc, st.StateError):
            self.context.abort(getattr(grpc.StatusCode, exc.code, grpc.StatusCode.UNKNOWN),
                               st.bounded(str(exc)))
        log.error("%s failed", self.action, exc_info=(type(exc), exc, exc.__traceback__))
        self.context.abort(grpc.StatusCode.INTERNAL, "internal error; see the coordinator's log")
        return False  # not reached: abort raises


def audit_arguments(request) -> dict:
    """The request as a dict for the audit log: secret fields removed, large texts as digests."""
    data = json_format.MessageToDict(request, preserving_proto_field_name=True)
    for name in SECRET_FIELDS & data.keys():
        data[name] = "<redacted>"
    for name in DIGEST_FIELDS & data.keys():
        text = data[name]
        data[name] = {"sha256": hashlib.sha256(text.encode()).hexdigest(), "chars": len(text)}
    return data



def _check_name(name: str, what: str) -> None:
    if not st.NAME.match(name or ""):
        shown = repr(name) if len(name) <= 100 else f"{name[:40]!r}... ({len(name)} chars)"
        raise st.Invalid(f"invalid {what} name {shown}: letters, digits, '.', '_', '-' "
                         "(up to 100, starting with a letter or digit)")


def _schema_fingerprint(text: str) -> str:
    from ...common.schema import Schema, SchemaError

    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise st.Invalid(f"schema: not valid YAML: {e}") from None
    try:
        return Schema.from_dict(raw, origin="schema").fingerprint()
    except SchemaError as e:
        raise st.Invalid(str(e)) from None


def _iso(seconds: float | None) -> str:
    return "" if seconds is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


