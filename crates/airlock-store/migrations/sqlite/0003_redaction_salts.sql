-- The salts that open the commitments of redacted audit values. Kept outside the chain: deleting
-- a salt makes its value unprovable for good without touching the chain.
CREATE TABLE audit_salts (
    commitment  TEXT PRIMARY KEY NOT NULL,
    salt        TEXT NOT NULL
);
