"""The access log: who asked, when, what, and whose data was disclosed.

Append-only and hash-chained; queryable by subject (a person may ask who looked at them),
client and time; purged after the retention period with an anchor that keeps the chain
verifiable. "No record, no answer": a front end sends nothing it could not record.
"""

from idm_facade.access.audit.index import records_for
from idm_facade.access.audit.log import AuditLog
from idm_facade.access.audit.record import (
    GENESIS,
    AccessRecord,
    AuditUnavailable,
    StoredRecord,
    VerifyResult,
    access_log,
    decode_seqs,
    encode_seqs,
    record_hash,
)
from idm_facade.access.audit.settings import (
    DEFAULT_RETENTION,
    DEFAULT_SYNC,
    SYNC_MODES,
    cutoff_for,
    parse_age,
)

__all__ = [
    "DEFAULT_RETENTION", "DEFAULT_SYNC", "GENESIS", "SYNC_MODES", "AccessRecord", "AuditLog",
    "AuditUnavailable", "StoredRecord", "VerifyResult", "access_log", "cutoff_for", "decode_seqs",
    "encode_seqs", "parse_age", "record_hash", "records_for",
]
