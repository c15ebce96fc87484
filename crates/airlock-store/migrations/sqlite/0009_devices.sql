-- Trusted devices: an Ed25519 key pair on a user's machine, registered by its user (who proves
-- holding the key) and approved by an administrator. Only the public key is kept.
CREATE TABLE devices (
    id              TEXT PRIMARY KEY NOT NULL,
    user            TEXT NOT NULL,
    name            TEXT NOT NULL,
    -- 64 hex digits; a key belongs to one device, ever.
    public_key      TEXT NOT NULL UNIQUE,
    enrolled_ms     INTEGER NOT NULL,
    approved_ms     INTEGER,
    approved_by     TEXT,
    disabled_ms     INTEGER,
    disabled_by     TEXT,
    disabled_reason TEXT
);
CREATE INDEX devices_user ON devices (user, enrolled_ms);

-- The trusted device a request was made from; disabling the device ends what it asked for.
ALTER TABLE requests ADD COLUMN device TEXT;
CREATE INDEX requests_device ON requests (device) WHERE device IS NOT NULL;

-- Grants with a gateway credential bound to a device; disabling the device ends them too.
CREATE TABLE device_grants (
    device   TEXT NOT NULL,
    grant_id TEXT NOT NULL,
    PRIMARY KEY (device, grant_id)
) WITHOUT ROWID;
