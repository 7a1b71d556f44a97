"""The admin API's records (coordinator/admin/state.py) as protos/admin.proto messages."""

from __future__ import annotations

import json

from google.protobuf import timestamp_pb2

from ...protos import admin_pb2 as pb
from . import state as st


SITE_STATUS = {st.SITE_INVITED: pb.SITE_STATUS_INVITED, st.SITE_REGISTERED: pb.SITE_STATUS_REGISTERED,
                st.SITE_APPROVED: pb.SITE_STATUS_APPROVED, st.SITE_REVOKED: pb.SITE_STATUS_REVOKED}
STUDY_STATUS = {st.STUDY_CREATED: pb.STUDY_STATUS_CREATED, st.STUDY_TRAINING: pb.STUDY_STATUS_TRAINING,
                 st.STUDY_STOPPED: pb.STUDY_STATUS_STOPPED, st.STUDY_FINISHED: pb.STUDY_STATUS_FINISHED,
                 st.STUDY_FAILED: pb.STUDY_STATUS_FAILED}
RUN_STATUS = {st.RUN_RUNNING: pb.RUN_STATUS_RUNNING, st.RUN_STOPPED: pb.RUN_STATUS_STOPPED,
               st.RUN_FINISHED: pb.RUN_STATUS_FINISHED, st.RUN_FAILED: pb.RUN_STATUS_FAILED,
               st.RUN_INTERRUPTED: pb.RUN_STATUS_INTERRUPTED}
POPULATION_ENUM = {"disjoint": pb.POPULATION_DISJOINT, "overlapping": pb.POPULATION_OVERLAPPING}
# An unspecified population is overlapping: the sum is the guarantee that holds either way.
POPULATION_NAME = {pb.POPULATION_DISJOINT: "disjoint", pb.POPULATION_OVERLAPPING: "overlapping"}



def timestamp(seconds: float | None) -> timestamp_pb2.Timestamp | None:
    if seconds is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(round(seconds * 1e9)))
    return ts


def message(cls, **fields):
    """Build a message leaving out None fields (unset timestamps, absent sub-messages)."""
    return cls(**{k: v for k, v in fields.items() if v is not None})


def site_message(s: st.SiteRecord) -> pb.Site:
    return message(pb.Site, name=s.name, status=SITE_STATUS[s.status], public_key=s.public_key or "",
                public_key_fingerprint=s.public_key_fingerprint or "",
                invited_at=timestamp(s.invited_at),
                token_expires_at=timestamp(s.token_expires_at) if s.status == st.SITE_INVITED else None,
                registered_at=timestamp(s.registered_at), approved_at=timestamp(s.approved_at),
                revoked_at=timestamp(s.revoked_at))


def token_message(t: st.AdminTokenRecord) -> pb.AdminToken:
    return message(pb.AdminToken, name=t.name, created_at=timestamp(t.created_at),
                revoked_at=timestamp(t.revoked_at))


def certificate_message(c: st.AdminCertificateRecord) -> pb.AdminCertificate:
    return message(pb.AdminCertificate, name=c.name or "", serial=c.serial or "",
                fingerprint=c.fingerprint or "", issued_at=timestamp(c.issued_at),
                not_after=timestamp(c.not_after), revoked_at=timestamp(c.revoked_at),
                revoked_by=c.revoked_by or "", revoke_reason=c.revoke_reason or "")


def run_message(r: st.RunRecord) -> pb.Run:
    return message(pb.Run, id=r.id, study=r.study, status=RUN_STATUS[r.status],
                started_at=timestamp(r.started_at), ended_at=timestamp(r.ended_at), started_by=r.started_by,
                message=r.message)


def event_message(e: st.EventRecord) -> pb.TrainingEvent:
    return pb.TrainingEvent(run_id=e.run_id, seq=e.seq, at=timestamp(e.at), kind=e.kind, round=e.round,
                            message=e.message, details_json=json.dumps(e.details, sort_keys=True))


