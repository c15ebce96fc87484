-- Principals: local users and service accounts. Only a hash of each API token is kept.
CREATE TABLE users (
    name        TEXT PRIMARY KEY NOT NULL,
    groups_json TEXT NOT NULL,
    service     INTEGER NOT NULL,
    disabled    INTEGER NOT NULL DEFAULT 0,
    token_hash  TEXT NOT NULL UNIQUE,
    created_ms  INTEGER NOT NULL
);

-- Requests: queryable columns beside the whole request as JSON (approvals, decision, closure).
CREATE TABLE requests (
    id          TEXT PRIMARY KEY NOT NULL,
    requester   TEXT NOT NULL,
    resource    TEXT NOT NULL,
    role        TEXT NOT NULL,
    state       TEXT NOT NULL,
    created_ms  INTEGER NOT NULL,
    expires_ms  INTEGER NOT NULL,
    body        TEXT NOT NULL
);
CREATE INDEX requests_pending ON requests (expires_ms) WHERE state = 'pending';
CREATE INDEX requests_requester ON requests (requester, created_ms);

-- Grants. One request makes at most one grant, whatever races happen above.
CREATE TABLE grants (
    id          TEXT PRIMARY KEY NOT NULL,
    request_id  TEXT NOT NULL UNIQUE REFERENCES requests (id),
    holder      TEXT NOT NULL,
    resource    TEXT NOT NULL,
    role        TEXT NOT NULL,
    state       TEXT NOT NULL,
    starts_ms   INTEGER NOT NULL,
    ends_ms     INTEGER NOT NULL,
    body        TEXT NOT NULL
);
CREATE INDEX grants_active ON grants (ends_ms) WHERE state = 'active';
CREATE INDEX grants_holder ON grants (holder, starts_ms);

-- The audit chain: append-only, each record hashing the one before it.
CREATE TABLE audit_events (
    chain_id    TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    prev_hash   TEXT NOT NULL,
    hash        TEXT NOT NULL,
    at_ms       INTEGER NOT NULL,
    kind        TEXT NOT NULL,
    actor       TEXT NOT NULL,
    details     TEXT NOT NULL,
    PRIMARY KEY (chain_id, seq)
);
CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit events are append-only');
END;
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit events are append-only');
END;
