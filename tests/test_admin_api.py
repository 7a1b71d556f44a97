"""The admin API end to end: a real gRPC server on 127.0.0.1 with TLS (and mTLS) on, real
clients, the state in SQLite."""

from __future__ import annotations

import json
import os
import threading

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from synthpool.commands.admin import AdminClient, download_release
from synthpool.common import signing
from synthpool.coordinator.admin.server import AdminServer
from in_memory_runner import InMemoryRunner
from synthpool.coordinator.admin.refusals import RefusalLimiter
from synthpool.coordinator.admin.pki import certificate_ids, init_coordinator, issue_admin_certificate
from synthpool.coordinator.admin.state import State
from synthpool.protos import admin_pb2 as pb

SCHEMA = """\
name: toy
target: label
columns:
  - {name: age, kind: numeric, lower: 0, upper: 100}
  - {name: label, kind: categorical, categories: ["no", "yes"]}
"""


class Clock:
    def __init__(self) -> None:
        import time

        self.t = time.time()

    def __call__(self) -> float:
        return self.t


class Coordinator:
    """A started admin server with its state and credentials, restartable on the same dir."""

    def __init__(self, root, runner=None, refusals=None, fleet=None) -> None:
        self.state_dir = root / "state"
        self.pki = init_coordinator(self.state_dir, ["coord.test"])
        self.clock = Clock()
        self.runner = runner or InMemoryRunner(round_delay=0.02)
        self.refusals, self.fleet = refusals, fleet
        self.start()
        self.token = self.state.add_admin_token("tester")

    def start(self) -> None:
        self.state = State.open(self.state_dir, clock=self.clock)
        self.server = AdminServer(self.state_dir, listen="127.0.0.1:0",
                                  mtls_listen="127.0.0.1:0", state=self.state,
                                  runner=self.runner, max_workers=8,
                                  refusals=self.refusals, fleet=self.fleet).start()
        self.service = self.server.service

    def stop(self) -> None:
        self.server.stop(0)
        self.state.close()

    def client(self, *, token=None, cert=False, mtls=False, **kw) -> AdminClient:
        address = self.server.mtls_address if mtls else self.server.address
        return AdminClient(address, self.pki.ca_cert, token=token,
                           cert=self.pki.admin_cert if cert else None,
                           key=self.pki.admin_key if cert else None, timeout=10, **kw)

    def admin(self) -> AdminClient:
        return self.client(token=self.token)


@pytest.fixture
def coord(tmp_path):
    c = Coordinator(tmp_path)
    yield c
    c.stop()


def _site_key() -> str:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    return key.public_bytes(serialization.Encoding.OpenSSH,
                            serialization.PublicFormat.OpenSSH).decode()


def _code(excinfo) -> grpc.StatusCode:
    return excinfo.value.code()


def _enroll(admin: AdminClient, anonymous: AdminClient, name: str) -> pb.Site:
    token = admin.InviteSite(pb.InviteSiteRequest(name=name)).token
    site = anonymous.RegisterSite(pb.RegisterSiteRequest(token=token, public_key=_site_key())).site
    return admin.ApproveSite(pb.ApproveSiteRequest(
        name=name, expected_fingerprint=site.public_key_fingerprint))


# -- authentication ------------------------------------------------------------------------------

def test_calls_without_credentials_are_refused_and_logged(coord):
    with coord.client() as anonymous, coord.client(token="spa_not-a-real-token") as forged:
        for client in (anonymous, forged):
            with pytest.raises(grpc.RpcError) as e:
                client.ListSites(pb.ListSitesRequest())
            assert _code(e) == grpc.StatusCode.UNAUTHENTICATED
            assert "client certificates are accepted on port" in e.value.details()
            with pytest.raises(grpc.RpcError) as e:
                client.InviteSite(pb.InviteSiteRequest(name="intruder"))
            assert _code(e) == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as e:  # a streaming RPC too
                list(client.WatchTraining(pb.WatchTrainingRequest(study="x"), timeout=10))
            assert _code(e) == grpc.StatusCode.UNAUTHENTICATED
    assert coord.state.list_sites() == []
    refused = coord.state.audit_entries()
    assert len(refused) == 6
    assert {(e.actor, e.outcome) for e in refused} == {("anonymous", "UNAUTHENTICATED")}
    assert all(e.peer.startswith("ipv4:127.0.0.1:") for e in refused)


def test_token_and_client_certificate_are_accepted(coord):
    with coord.admin() as by_token:
        by_token.ListSites(pb.ListSitesRequest())
    with coord.client(cert=True, mtls=True) as by_cert:
        by_cert.ListSites(pb.ListSitesRequest())
    assert [(e.actor, e.outcome) for e in coord.state.audit_entries()] == [
        ("token:tester", "OK"), ("cert:admin", "OK")]
    coord.state.revoke_admin_token("tester")
    with coord.admin() as revoked, pytest.raises(grpc.RpcError) as e:
        revoked.ListSites(pb.ListSitesRequest())
    assert _code(e) == grpc.StatusCode.UNAUTHENTICATED


def test_mtls_port_refuses_missing_or_foreign_certificates(coord, tmp_path):
    with coord.client(mtls=True, token=coord.token) as no_cert, pytest.raises(grpc.RpcError) as e:
        no_cert.ListSites(pb.ListSitesRequest(), timeout=5)
    assert _code(e) == grpc.StatusCode.UNAVAILABLE  # refused in the TLS handshake
    other = init_coordinator(tmp_path / "other")
    foreign = AdminClient(coord.server.mtls_address, coord.pki.ca_cert, cert=other.admin_cert,
                          key=other.admin_key, timeout=5)
    with foreign, pytest.raises(grpc.RpcError) as e:
        foreign.ListSites(pb.ListSitesRequest())
    assert _code(e) == grpc.StatusCode.UNAVAILABLE


def test_clients_pin_the_coordinator_ca(coord, tmp_path):
    other = init_coordinator(tmp_path / "other")
    impostor_check = AdminClient(coord.server.address, other.ca_cert, token=coord.token, timeout=5)
    with impostor_check, pytest.raises(grpc.RpcError) as e:
        impostor_check.ListSites(pb.ListSitesRequest())
    assert _code(e) == grpc.StatusCode.UNAVAILABLE
    # The server certificate names coord.test as well as localhost/127.0.0.1.
    with coord.client(token=coord.token, server_name="coord.test") as by_name:
        by_name.ListSites(pb.ListSitesRequest())


def _db_bytes(state_dir) -> int:
    return sum(p.stat().st_size for p in state_dir.glob("coordinator.db*"))


def test_anonymous_calls_cannot_fill_the_disk_through_the_audit_log(coord):
    # Six such calls once wrote 28 MB: the refused request was stored whole.
    big = "x" * 3_500_000
    before = _db_bytes(coord.state_dir)
    with coord.client() as anonymous:
        for _ in range(3):
            with pytest.raises(grpc.RpcError) as e:
                anonymous.InviteSite(pb.InviteSiteRequest(name=big))
            assert _code(e) == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as e:  # the public RPC, refused inside the action
                anonymous.RegisterSite(pb.RegisterSiteRequest(token="spi_guess", public_key=big))
            assert _code(e) == grpc.StatusCode.INVALID_ARGUMENT
    entries = coord.state.audit_entries()
    assert [(e.action, e.actor) for e in entries] == [("InviteSite", "anonymous"),
                                                      ("RegisterSite", "anonymous")] * 3
    for e in entries:
        assert set(e.arguments) == {"request_sha256", "request_bytes"}
        assert e.arguments["request_bytes"] > 3_500_000 and len(e.detail) < 1000
    assert _db_bytes(coord.state_dir) - before < 1_000_000
    # An administrator's refused call keeps its arguments, within the cap of one entry.
    with coord.admin() as admin, pytest.raises(grpc.RpcError) as e:
        admin.InviteSite(pb.InviteSiteRequest(name=big))
    assert _code(e) == grpc.StatusCode.INVALID_ARGUMENT
    refused = coord.state.audit_entries()[-1]
    assert (refused.actor, set(refused.arguments)) == ("token:tester", {"truncated"})
    assert _db_bytes(coord.state_dir) - before < 1_000_000


class Monotonic:
    t = 0.0

    def __call__(self) -> float:
        return self.t


def test_refusals_over_the_rate_are_answered_resource_exhausted_and_counted(tmp_path):
    clock = Monotonic()
    coord = Coordinator(tmp_path, refusals=RefusalLimiter(burst=3, per_second=0.5, clock=clock))
    try:
        codes = []
        for token in (None, "spa_guess") * 3:  # a new connection (source port) each time
            with coord.client(token=token) as client, pytest.raises(grpc.RpcError) as e:
                client.ListSites(pb.ListSitesRequest())
            codes.append(_code(e))
        assert codes == [grpc.StatusCode.UNAUTHENTICATED] * 3 + \
            [grpc.StatusCode.RESOURCE_EXHAUSTED] * 3
        assert "too many refused calls from ipv4:127.0.0.1" in e.value.details()
        with coord.admin() as admin:  # an administrator at the same address is still served
            admin.ListSites(pb.ListSitesRequest())
        clock.t += 2  # one refusal's worth
        for expected in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.RESOURCE_EXHAUSTED):
            with coord.client() as client, pytest.raises(grpc.RpcError) as e:
                client.ListSites(pb.ListSitesRequest())
            assert _code(e) == expected
    finally:
        coord.stop()  # logs the count still pending
    with State.open(coord.state_dir) as state:
        logged = [(e.action, e.outcome, e.arguments.get("refused_calls")) for e in
                  state.audit_entries()]
    assert logged == [("ListSites", "UNAUTHENTICATED", None)] * 3 + [
        ("ListSites", "OK", None), ("RefusalsSuppressed", "RESOURCE_EXHAUSTED", 3),
        ("ListSites", "UNAUTHENTICATED", None), ("RefusalsSuppressed", "RESOURCE_EXHAUSTED", 1)]


# -- administrators' credentials -----------------------------------------------------------------

def test_admin_tokens_are_listed_and_revoked_through_the_api(coord):
    ops = coord.state.add_admin_token("ops")
    with coord.client(token=ops) as by_ops:
        by_ops.ListSites(pb.ListSitesRequest())
        with coord.admin() as admin:
            tokens = admin.ListAdminTokens(pb.ListAdminTokensRequest()).tokens
            assert sorted((t.name, t.HasField("revoked_at")) for t in tokens) == [
                ("ops", False), ("tester", False)]
            revoked = admin.RevokeAdminToken(pb.RevokeAdminTokenRequest(name="ops",
                                                                        reason="left"))
            assert revoked.name == "ops" and revoked.HasField("revoked_at")
            for name, code in (("ops", grpc.StatusCode.FAILED_PRECONDITION),
                               ("nobody", grpc.StatusCode.NOT_FOUND)):
                with pytest.raises(grpc.RpcError) as e:
                    admin.RevokeAdminToken(pb.RevokeAdminTokenRequest(name=name))
                assert _code(e) == code
        with pytest.raises(grpc.RpcError) as e:  # the same channel, its next call
            by_ops.ListSites(pb.ListSitesRequest())
        assert _code(e) == grpc.StatusCode.UNAUTHENTICATED
    revocation = next(e for e in coord.state.audit_entries() if e.action == "RevokeAdminToken")
    assert (revocation.actor, revocation.outcome, revocation.arguments) == (
        "token:tester", "OK", {"name": "ops", "reason": "left"})


def test_a_revoked_admin_certificate_is_refused_on_every_call(coord, tmp_path):
    issue_admin_certificate(coord.pki, "alice", tmp_path / "alice.pem", tmp_path / "alice.key")
    ids = certificate_ids((tmp_path / "alice.pem").read_bytes())
    alice = AdminClient(coord.server.mtls_address, coord.pki.ca_cert, cert=tmp_path / "alice.pem",
                        key=tmp_path / "alice.key", timeout=10)
    with alice:
        alice.ListSites(pb.ListSitesRequest())
        with coord.admin() as admin:
            # As `openssl x509 -noout -fingerprint -sha256` prints it.
            printed = ":".join(ids.fingerprint[i:i + 2] for i in range(0, 64, 2)).upper()
            denied = admin.RevokeAdminCertificate(pb.RevokeAdminCertificateRequest(
                fingerprint=f"sha256 Fingerprint={printed}", reason="laptop lost"))
            assert (denied.fingerprint, denied.revoke_reason) == (ids.fingerprint, "laptop lost")
            assert denied.HasField("revoked_at") and denied.revoked_by == "token:tester"
        for call in (lambda: alice.ListSites(pb.ListSitesRequest()),
                     lambda: list(alice.WatchTraining(pb.WatchTrainingRequest(study="s")))):
            with pytest.raises(grpc.RpcError) as e:
                call()
            assert _code(e) == grpc.StatusCode.UNAUTHENTICATED
            assert e.value.details().startswith(f"admin certificate 'alice' (serial {ids.serial}) "
                                                "is revoked")
    with coord.client(cert=True, mtls=True) as first:  # other certificates are unaffected
        certificates = first.ListAdminCertificates(pb.ListAdminCertificatesRequest()).certificates
        assert [(c.fingerprint, c.HasField("revoked_at")) for c in certificates] == [
            (ids.fingerprint, True)]
        for bad, expected in ((pb.RevokeAdminCertificateRequest(serial="xyz"), "serial 'xyz': "
                               "expected the certificate's serial number in hex"),
                              (pb.RevokeAdminCertificateRequest(fingerprint="ab"), "fingerprint "
                               "'ab': expected the certificate's SHA-256 fingerprint"),
                              (pb.RevokeAdminCertificateRequest(), "give the certificate's "
                               "serial or its SHA-256 fingerprint")):
            with pytest.raises(grpc.RpcError) as e:
                first.RevokeAdminCertificate(bad)
            assert _code(e) == grpc.StatusCode.INVALID_ARGUMENT
            assert e.value.details().startswith(expected)
    refused = [e for e in coord.state.audit_entries() if e.outcome == "UNAUTHENTICATED"]
    assert [(e.action, e.actor) for e in refused] == [("ListSites", "anonymous"),
                                                      ("WatchTraining", "anonymous")]
    assert "'alice'" in refused[0].detail


# -- sites ---------------------------------------------------------------------------------------

def test_site_lifecycle_invite_register_approve_revoke(coord):
    with coord.admin() as admin, coord.client() as site:
        invite = admin.InviteSite(pb.InviteSiteRequest(name="hosp-a", ttl_seconds=600))
        assert invite.site.status == pb.SITE_STATUS_INVITED and invite.token.startswith("spi_")
        with pytest.raises(grpc.RpcError) as e:
            admin.ApproveSite(pb.ApproveSiteRequest(name="hosp-a", expected_fingerprint="SHA256:x"))
        assert _code(e) == grpc.StatusCode.FAILED_PRECONDITION

        registered = site.RegisterSite(pb.RegisterSiteRequest(token=invite.token,
                                                              public_key=_site_key())).site
        with pytest.raises(grpc.RpcError) as e:  # finding 15: no fingerprint, no approval
            admin.ApproveSite(pb.ApproveSiteRequest(name="hosp-a"))
        assert _code(e) == grpc.StatusCode.INVALID_ARGUMENT
        assert "needs the fingerprint" in e.value.details()
        listed = admin.ListSites(pb.ListSitesRequest()).sites
        assert [x.status for x in listed if x.name == "hosp-a"] == [pb.SITE_STATUS_REGISTERED]
        assert registered.status == pb.SITE_STATUS_REGISTERED
        assert registered.public_key.startswith("ecdsa-sha2-nistp256 ")
        with pytest.raises(grpc.RpcError) as e:  # the administrator checks the fingerprint
            admin.ApproveSite(pb.ApproveSiteRequest(name="hosp-a",
                                                    expected_fingerprint="SHA256:wrong"))
        assert _code(e) == grpc.StatusCode.FAILED_PRECONDITION
        approved = admin.ApproveSite(pb.ApproveSiteRequest(
            name="hosp-a", expected_fingerprint=registered.public_key_fingerprint))
        assert approved.status == pb.SITE_STATUS_APPROVED and approved.HasField("approved_at")

        revoked = admin.RevokeSite(pb.RevokeSiteRequest(name="hosp-a", reason="test"))
        assert revoked.status == pb.SITE_STATUS_REVOKED
        listed = admin.ListSites(pb.ListSitesRequest()).sites
        assert [(s.name, s.status) for s in listed] == [("hosp-a", pb.SITE_STATUS_REVOKED)]
        with pytest.raises(grpc.RpcError) as e:
            admin.RevokeSite(pb.RevokeSiteRequest(name="nobody"))
        assert _code(e) == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as e:
            admin.InviteSite(pb.InviteSiteRequest(name="../etc"))
        assert _code(e) == grpc.StatusCode.INVALID_ARGUMENT
    actors = [(e.action, e.actor) for e in coord.state.audit_entries()]
    assert ("RegisterSite", "site:hosp-a") in actors


class _Door:
    """The SuperLink's door for tests that need it slow (a real `flwr supernode register`
    takes seconds) or to have come back up after being down."""

    def __init__(self, admitted: threading.Event | None = None) -> None:
        self.wait_for, self.shut = admitted, []

    def admit(self, site_name: str, public_key: str) -> int:
        if self.wait_for is not None:
            self.wait_for.wait(timeout=20)
        return 4242

    def shut_out(self, node_id: int) -> None:
        self.shut.append(node_id)


def test_approval_does_not_lock_the_database_while_the_superlink_admits_the_key(tmp_path):
    """Finding 14: the admission (a Flower CLI call) ran inside the approval's write
    transaction, so every other call waited for it. Here the admission only returns once
    another administrator's write has gone through."""
    written = threading.Event()
    c = Coordinator(tmp_path, fleet=_Door(admitted=written))
    try:
        with c.admin() as admin, c.client() as anonymous:
            token = admin.InviteSite(pb.InviteSiteRequest(name="hosp-a")).token
            fp = anonymous.RegisterSite(pb.RegisterSiteRequest(
                token=token, public_key=_site_key())).site.public_key_fingerprint

            def other_write():
                with c.admin() as other:
                    other.InviteSite(pb.InviteSiteRequest(name="hosp-b"))
                written.set()

            threading.Timer(0.5, other_write).start()
            approved = admin.ApproveSite(pb.ApproveSiteRequest(name="hosp-a",
                                                               expected_fingerprint=fp))
        assert written.is_set()  # it did not wait for the approval to commit
        assert approved.status == pb.SITE_STATUS_APPROVED
        assert c.state.get_site("hosp-a").flower_node_id == "4242"
    finally:
        c.stop()


def test_revoking_with_the_superlink_down_takes_effect_and_the_shut_out_is_retried(tmp_path):
    """Finding 14: revoking needed the SuperLink up. Now the revocation is recorded at once
    (the site is in no further run) and the call says that its SuperNode is still to be shut
    out; revoking again once the SuperLink is back does it."""
    from synthpool.coordinator.admin.flower_processes import SuperLinkAccess, write_connection

    door = _Door()
    c = Coordinator(tmp_path, fleet=door)
    try:
        with c.admin() as admin, c.client() as anonymous:
            _enroll(admin, anonymous, "hosp-a")
            study = _study_request("s1")
            study.sites.append("hosp-a")
            admin.CreateStudy(study)
            # A real Flower CLI against a SuperLink that is not there.
            c.service.fleet = SuperLinkAccess(write_connection(tmp_path / "cli", "127.0.0.1:1").parent)
            with pytest.raises(grpc.RpcError) as e:
                admin.RevokeSite(pb.RevokeSiteRequest(name="hosp-a", reason="left"))
            assert _code(e) == grpc.StatusCode.UNAVAILABLE
            assert "is revoked" in e.value.details() and "revoke hosp-a` again" in e.value.details()
            site = c.state.get_site("hosp-a")
            assert site.status == "revoked" and site.flower_node_id == "4242"
            with pytest.raises(grpc.RpcError) as e:
                admin.StartTraining(pb.StartTrainingRequest(study="s1"))
            assert _code(e) == grpc.StatusCode.FAILED_PRECONDITION
            c.service.fleet = door  # the SuperLink is back
            assert admin.RevokeSite(pb.RevokeSiteRequest(name="hosp-a")).status == \
                pb.SITE_STATUS_REVOKED
        assert door.shut == [4242] and c.state.get_site("hosp-a").flower_node_id is None
    finally:
        c.stop()


def test_expired_reused_and_bad_tokens_are_refused(coord):
    with coord.admin() as admin, coord.client() as site:
        token = admin.InviteSite(pb.InviteSiteRequest(name="hosp-a", ttl_seconds=60)).token
        coord.clock.t += 61
        with pytest.raises(grpc.RpcError) as e:
            site.RegisterSite(pb.RegisterSiteRequest(token=token, public_key=_site_key()))
        assert _code(e) == grpc.StatusCode.UNAUTHENTICATED

        token = admin.InviteSite(pb.InviteSiteRequest(name="hosp-a")).token
        with pytest.raises(grpc.RpcError) as e:  # a key Flower cannot use is refused first
            site.RegisterSite(pb.RegisterSiteRequest(token=token, public_key="ssh-ed25519 AAAA"))
        assert _code(e) == grpc.StatusCode.INVALID_ARGUMENT
        site.RegisterSite(pb.RegisterSiteRequest(token=token, public_key=_site_key()))
        with pytest.raises(grpc.RpcError) as e:
            site.RegisterSite(pb.RegisterSiteRequest(token=token, public_key=_site_key()))
        assert _code(e) == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as e:  # an admin token is no invitation
            site.RegisterSite(pb.RegisterSiteRequest(token=coord.token, public_key=_site_key()))
        assert _code(e) == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as e:  # and an invitation is no admin token
            with coord.client(token=token) as fake_admin:
                fake_admin.ListSites(pb.ListSitesRequest())
        assert _code(e) == grpc.StatusCode.UNAUTHENTICATED
    outcomes = [(e.action, e.outcome) for e in coord.state.audit_entries()
                if e.action == "RegisterSite"]
    assert outcomes == [("RegisterSite", "UNAUTHENTICATED"), ("RegisterSite", "INVALID_ARGUMENT"),
                        ("RegisterSite", "OK"), ("RegisterSite", "UNAUTHENTICATED"),
                        ("RegisterSite", "UNAUTHENTICATED")]


# -- the audit log -------------------------------------------------------------------------------

def test_every_action_is_audited_without_secrets(coord, tmp_path):
    _make_release(coord.state_dir, coord.pki.signing_key, "rel-1")
    with coord.admin() as admin, coord.client() as site:
        invite = admin.InviteSite(pb.InviteSiteRequest(name="hosp-a"))
        fp = site.RegisterSite(pb.RegisterSiteRequest(
            token=invite.token, public_key=_site_key())).site.public_key_fingerprint
        admin.ApproveSite(pb.ApproveSiteRequest(name="hosp-a", expected_fingerprint=fp))
        admin.ListSites(pb.ListSitesRequest())
        admin.CreateStudy(_study_request("s1"))
        admin.GetStudy(pb.GetStudyRequest(name="s1"))
        admin.ListStudies(pb.ListStudiesRequest())
        admin.StartTraining(pb.StartTrainingRequest(study="s1"))
        list(admin.WatchTraining(pb.WatchTrainingRequest(study="s1")))
        admin.ListReleases(pb.ListReleasesRequest())
        list(admin.DownloadRelease(pb.DownloadReleaseRequest(name="rel-1")))
        admin.VerifyRelease(pb.VerifyReleaseRequest(name="rel-1"))
        admin.RevokeSite(pb.RevokeSiteRequest(name="hosp-a"))
        logged = admin.ListAudit(pb.ListAuditRequest()).entries
    # ListAudit's own entry commits with its response, so it is not in the listing yet.
    assert [e.action for e in logged] == [
        "InviteSite", "RegisterSite", "ApproveSite", "ListSites", "CreateStudy", "GetStudy",
        "ListStudies", "StartTraining", "WatchTraining", "ListReleases", "DownloadRelease",
        "VerifyRelease", "RevokeSite"]
    assert coord.state.audit_entries()[-1].action == "ListAudit"
    assert all(e.outcome == "OK" and e.at.seconds > 0 for e in logged)
    assert json.loads(logged[0].arguments_json) == {"name": "hosp-a"}
    assert json.loads(logged[4].arguments_json)["schema_yaml"]["chars"] == len(SCHEMA)
    dump = repr(coord.state.audit_entries())
    assert invite.token not in dump and coord.token not in dump
    assert json.loads(logged[1].arguments_json)["token"] == "<redacted>"


# -- studies and training ------------------------------------------------------------------------

def _study_request(name: str, **privacy) -> pb.CreateStudyRequest:
    settings = dict(epsilon=2.0, delta=1e-5, population=pb.POPULATION_DISJOINT, rounds=3, rows=100)
    settings.update(privacy)
    return pb.CreateStudyRequest(name=name, schema_yaml=SCHEMA,
                                 privacy=pb.PrivacySettings(**settings))


def test_studies(coord):
    with coord.admin() as admin, coord.client() as site:
        for name in ("hosp-a", "hosp-b"):
            _enroll(admin, site, name)
        created = admin.CreateStudy(_study_request("s1"))
        assert created.status == pb.STUDY_STATUS_CREATED
        assert created.schema_fingerprint.startswith("sha256:")
        assert (created.release_epsilon, created.created_by) == (2.0, "token:tester")
        overlapping = admin.CreateStudy(_study_request("s2", population=pb.POPULATION_OVERLAPPING))
        assert overlapping.release_epsilon == pytest.approx(4.0)  # summed over two sites
        assert admin.GetStudy(pb.GetStudyRequest(name="s1")).schema_yaml == SCHEMA
        assert [s.name for s in admin.ListStudies(pb.ListStudiesRequest()).studies] == ["s1", "s2"]
        for bad in (_study_request("s1"), _study_request("s3", epsilon=0),
                    _study_request("s3", delta=1.5), _study_request("s3", rows=0),
                    pb.CreateStudyRequest(name="s3", schema_yaml="columns: [",
                                          privacy=_study_request("x").privacy),
                    pb.CreateStudyRequest(name="s3", schema_yaml="name: x\ncolumns: []\ntarget: y",
                                          privacy=_study_request("x").privacy)):
            with pytest.raises(grpc.RpcError) as e:
                admin.CreateStudy(bad)
            assert _code(e) in (grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.INVALID_ARGUMENT)
        with pytest.raises(grpc.RpcError) as e:
            admin.GetStudy(pb.GetStudyRequest(name="nope"))
        assert _code(e) == grpc.StatusCode.NOT_FOUND


def test_training_runs_to_completion_and_streams_progress(coord):
    with coord.admin() as admin, coord.client() as site:
        admin.CreateStudy(_study_request("s1"))
        with pytest.raises(grpc.RpcError) as e:  # no approved site yet
            admin.StartTraining(pb.StartTrainingRequest(study="s1"))
        assert _code(e) == grpc.StatusCode.FAILED_PRECONDITION
        _enroll(admin, site, "hosp-a")
        run = admin.StartTraining(pb.StartTrainingRequest(study="s1"))
        assert run.status == pb.RUN_STATUS_RUNNING
        events = list(admin.WatchTraining(pb.WatchTrainingRequest(study="s1")))
        assert [(e.kind, e.round) for e in events] == [
            ("started", 0), ("round", 1), ("round", 2), ("round", 3), ("finished", 3)]
        assert [e.seq for e in events] == [1, 2, 3, 4, 5]
        assert json.loads(events[3].details_json)["epsilon_spent"] == pytest.approx(2.0)
        # Watching again replays the history; `after_seq` resumes.
        assert len(list(admin.WatchTraining(pb.WatchTrainingRequest(study="s1")))) == 5
        assert [e.seq for e in admin.WatchTraining(
            pb.WatchTrainingRequest(run_id=run.id, after_seq=3))] == [4, 5]
        study = admin.GetStudy(pb.GetStudyRequest(name="s1"))
        assert study.status == pb.STUDY_STATUS_FINISHED
        assert study.latest_run.status == pb.RUN_STATUS_FINISHED
        started = coord.runner.started[-1]
        assert (started.name, started.rounds, [s.name for s in started.sites]) == \
            ("s1", 3, ["hosp-a"])
        assert started.sites[0].public_key.startswith("ecdsa-sha2-nistp256 ")


def test_stop_training(tmp_path):
    coord = Coordinator(tmp_path, runner=InMemoryRunner(round_delay=30))
    try:
        with coord.admin() as admin, coord.client() as site:
            _enroll(admin, site, "hosp-a")
            admin.CreateStudy(_study_request("s1"))
            admin.StartTraining(pb.StartTrainingRequest(study="s1"))
            with pytest.raises(grpc.RpcError) as e:
                admin.StartTraining(pb.StartTrainingRequest(study="s1"))
            assert _code(e) == grpc.StatusCode.FAILED_PRECONDITION
            seen: list[str] = []
            watcher = threading.Thread(target=lambda: seen.extend(
                e.kind for e in admin.WatchTraining(pb.WatchTrainingRequest(study="s1"))))
            watcher.start()
            stopped = admin.StopTraining(pb.StopTrainingRequest(study="s1"))
            assert stopped.status == pb.RUN_STATUS_STOPPED
            watcher.join(10)
            assert seen == ["started", "stopped"]
            with pytest.raises(grpc.RpcError) as e:
                admin.StopTraining(pb.StopTrainingRequest(study="s1"))
            assert _code(e) == grpc.StatusCode.FAILED_PRECONDITION
            assert admin.GetStudy(pb.GetStudyRequest(name="s1")).status == pb.STUDY_STATUS_STOPPED
    finally:
        coord.stop()


def test_a_failing_run_is_recorded(tmp_path):
    coord = Coordinator(tmp_path, runner=InMemoryRunner(round_delay=0.01, fail_at_round=2))
    try:
        with coord.admin() as admin, coord.client() as site:
            _enroll(admin, site, "hosp-a")
            admin.CreateStudy(_study_request("s1"))
            admin.StartTraining(pb.StartTrainingRequest(study="s1"))
            kinds = [e.kind for e in admin.WatchTraining(pb.WatchTrainingRequest(study="s1"))]
            assert kinds == ["started", "round", "failed"]
            assert admin.GetStudy(pb.GetStudyRequest(name="s1")).latest_run.status == \
                pb.RUN_STATUS_FAILED
    finally:
        coord.stop()


# -- releases ------------------------------------------------------------------------------------

def _make_release(state_dir, signing_key, name: str, study: str = "s1"):
    """A sealed release folder as the federation will write it: data, a manifest naming the
    study, and its signature."""
    folder = state_dir / "releases" / name
    (folder / "extra").mkdir(parents=True)
    (folder / "synthetic.csv").write_bytes(os.urandom(200_000))  # several chunks
    (folder / "extra" / "empty.txt").write_bytes(b"")
    (folder / "manifest.json").write_text(json.dumps({"study": study, "created_unix": 1700000000}))
    signing.seal(folder, signing.load_or_create_key(signing_key))
    return folder


def test_download_streams_a_release_byte_identical(coord, tmp_path):
    folder = _make_release(coord.state_dir, coord.pki.signing_key, "rel-1")
    with coord.admin() as admin:
        listed = admin.ListReleases(pb.ListReleasesRequest()).releases
        assert [(r.name, r.study, r.files) for r in listed] == [("rel-1", "s1", 4)]
        assert admin.ListReleases(pb.ListReleasesRequest(study="other")).releases == []
        chunks = list(admin.DownloadRelease(pb.DownloadReleaseRequest(name="rel-1")))
        assert len(chunks) > 4 and max(len(c.data) for c in chunks) <= 64 * 1024
        got = download_release(admin, "rel-1", tmp_path / "out")
        files = sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file())
        assert sorted(p.relative_to(got) for p in got.rglob("*") if p.is_file()) == files
        for rel in files:
            assert (got / rel).read_bytes() == (folder / rel).read_bytes(), rel
        assert signing.verify(got, signing.load_public_key(coord.pki.signing_public_key)).ok

        verdict = admin.VerifyRelease(pb.VerifyReleaseRequest(name="rel-1"))
        assert verdict.ok and verdict.files_checked == 2
        assert verdict.public_key_pem == coord.pki.signing_public_key.read_text()
        (folder / "synthetic.csv").write_bytes(b"tampered")
        verdict = admin.VerifyRelease(pb.VerifyReleaseRequest(name="rel-1"))
        assert not verdict.ok and "synthetic.csv" in verdict.problems[0]

        for name, code in (("../state", grpc.StatusCode.INVALID_ARGUMENT),
                           ("missing", grpc.StatusCode.NOT_FOUND)):
            with pytest.raises(grpc.RpcError) as e:
                list(admin.DownloadRelease(pb.DownloadReleaseRequest(name=name)))
            assert _code(e) == code


def test_a_deleted_release_is_no_longer_listed(coord):
    import shutil

    folder = _make_release(coord.state_dir, coord.pki.signing_key, "rel-1")
    with coord.admin() as admin:
        assert len(admin.ListReleases(pb.ListReleasesRequest()).releases) == 1
        shutil.rmtree(folder)
        assert admin.ListReleases(pb.ListReleasesRequest()).releases == []


def test_release_symlinks_are_not_served(coord, tmp_path):
    folder = _make_release(coord.state_dir, coord.pki.signing_key, "rel-1")
    (folder / "leak").symlink_to(coord.pki.ca_key)
    with coord.admin() as admin:
        paths = {c.path for c in admin.DownloadRelease(pb.DownloadReleaseRequest(name="rel-1"))}
    assert "leak" not in paths and "synthetic.csv" in paths


def test_a_hidden_file_added_to_a_release_fails_verification_and_travels(coord, tmp_path):
    folder = _make_release(coord.state_dir, coord.pki.signing_key, "rel-1")
    (folder / ".synthetic-real.csv").write_text("age,income\n52,>50K\n")
    problem = ".synthetic-real.csv: not part of the signed release"
    with coord.admin() as admin:
        verdict = admin.VerifyRelease(pb.VerifyReleaseRequest(name="rel-1"))
        assert not verdict.ok and list(verdict.problems) == [problem]
        got = download_release(admin, "rel-1", tmp_path / "out")
    assert (got / ".synthetic-real.csv").is_file()  # served, so the recipient sees it too
    key = signing.load_public_key(coord.pki.signing_public_key)
    assert signing.verify(got, key).problems == [problem]


# -- restart -------------------------------------------------------------------------------------

def test_state_survives_a_restart_and_running_runs_are_interrupted(tmp_path):
    coord = Coordinator(tmp_path, runner=InMemoryRunner(round_delay=30))
    with coord.admin() as admin, coord.client() as site:
        _enroll(admin, site, "hosp-a")
        admin.CreateStudy(_study_request("s1"))
        run = admin.StartTraining(pb.StartTrainingRequest(study="s1"))
    coord.stop()
    coord.runner = InMemoryRunner(round_delay=0.01)
    coord.start()  # same state dir, a new process's worth of objects
    try:
        from synthpool.coordinator.admin import migrations

        assert [v for v, _ in migrations.applied(coord.state.engine)] == [1, 2, 3, 4, 5, 6]
        with coord.admin() as admin:
            assert [s.name for s in admin.ListSites(pb.ListSitesRequest()).sites] == ["hosp-a"]
            study = admin.GetStudy(pb.GetStudyRequest(name="s1"))
            assert study.latest_run.id == run.id
            assert study.latest_run.status == pb.RUN_STATUS_INTERRUPTED
            ended = list(admin.WatchTraining(pb.WatchTrainingRequest(run_id=run.id)))
            assert (ended[-1].kind, ended[-1].message) == \
                ("failed", "coordinator restarted during the run")
            rerun = admin.StartTraining(pb.StartTrainingRequest(study="s1"))
            assert rerun.id == run.id + 1
            assert list(admin.WatchTraining(pb.WatchTrainingRequest(study="s1")))[-1].kind == \
                "finished"
    finally:
        coord.stop()
