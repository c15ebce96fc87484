-- Signed heads of the audit chain: append-only, like the chain itself.
CREATE TABLE audit_checkpoints (
    chain_id    TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    head_hash   TEXT NOT NULL,
    at_ms       INTEGER NOT NULL,
    key_id      TEXT NOT NULL,
    signature   TEXT NOT NULL,
    PRIMARY KEY (chain_id, seq)
);
CREATE TRIGGER audit_checkpoints_no_update BEFORE UPDATE ON audit_checkpoints
BEGIN
    SELECT RAISE(ABORT, 'audit checkpoints are append-only');
END;
CREATE TRIGGER audit_checkpoints_no_delete BEFORE DELETE ON audit_checkpoints
BEGIN
    SELECT RAISE(ABORT, 'audit checkpoints are append-only');
END;
