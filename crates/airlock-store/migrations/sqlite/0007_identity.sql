-- Bearer tokens, apart from users: a user may hold several (API tokens with scopes and expiry,
-- and one per broker session), each rotated or revoked on its own. Only SHA-256 hashes are kept.
CREATE TABLE tokens (
    id                TEXT PRIMARY KEY NOT NULL,
    user              TEXT NOT NULL,
    -- 'api': made by an administrator; 'login': a broker session begun by signing in.
    kind              TEXT NOT NULL,
    -- The hash of the bearer token that works now (for a login, its current access token).
    hash              TEXT NOT NULL UNIQUE,
    scopes_json       TEXT NOT NULL,
    created_ms        INTEGER NOT NULL,
    -- When the token (or the whole login) ends; NULL: an API token without expiry.
    expires_ms        INTEGER,
    -- A login's access token ends here; its refresh token makes the next one.
    access_expires_ms INTEGER,
    refresh_hash      TEXT UNIQUE,
    -- The refresh token the current one replaced: presenting it again ends the login.
    used_refresh_hash TEXT,
    last_used_ms      INTEGER NOT NULL,
    ended_ms          INTEGER,
    ended_reason      TEXT,
    -- When the holder last proved a second factor with this token.
    mfa_ms            INTEGER,
    -- A login's identity-provider refresh token, sealed with the broker's key.
    idp_refresh       TEXT
);
CREATE INDEX tokens_user ON tokens (user);
CREATE INDEX tokens_used_refresh ON tokens (used_refresh_hash) WHERE used_refresh_hash IS NOT NULL;

-- Every user's one token so far becomes an API token with every scope and no expiry.
INSERT INTO tokens (id, user, kind, hash, scopes_json, created_ms, last_used_ms)
SELECT lower(substr(h, 1, 8) || '-' || substr(h, 9, 4) || '-4' || substr(h, 14, 3) || '-8'
             || substr(h, 18, 3) || '-' || substr(h, 21, 12)),
       name, 'api', token_hash, '["*"]', created_ms, created_ms
FROM (SELECT hex(randomblob(16)) AS h, name, token_hash, created_ms FROM users);

-- Users lose the token column and gain the identity provider's subject for users signed in by
-- single sign-on (NULL for local users and service accounts).
CREATE TABLE users_next (
    name        TEXT PRIMARY KEY NOT NULL,
    groups_json TEXT NOT NULL,
    service     INTEGER NOT NULL,
    disabled    INTEGER NOT NULL DEFAULT 0,
    created_ms  INTEGER NOT NULL,
    subject     TEXT UNIQUE
);
INSERT INTO users_next (name, groups_json, service, disabled, created_ms)
SELECT name, groups_json, service, disabled, created_ms FROM users;
DROP TABLE users;
ALTER TABLE users_next RENAME TO users;

-- TOTP authenticators: the seed sealed with the broker's key, the last step accepted (codes are
-- single-use) and recent wrong codes (rate limit).
CREATE TABLE mfa (
    user              TEXT PRIMARY KEY NOT NULL,
    sealed_seed       TEXT NOT NULL,
    -- NULL until the first code confirms the enrollment.
    confirmed_ms      INTEGER,
    last_step         INTEGER NOT NULL DEFAULT 0,
    failures          INTEGER NOT NULL DEFAULT 0,
    failures_since_ms INTEGER
);
