-- Break-glass reviews: one per emergency grant, known by the grant's id.
CREATE TABLE breakglass_reviews (
    grant_id    TEXT PRIMARY KEY NOT NULL REFERENCES grants (id),
    holder      TEXT NOT NULL,
    resource    TEXT NOT NULL,
    state       TEXT NOT NULL,
    opened_ms   INTEGER NOT NULL,
    due_ms      INTEGER NOT NULL,
    escalated   INTEGER NOT NULL DEFAULT 0,
    body        TEXT NOT NULL
);
CREATE INDEX breakglass_reviews_open ON breakglass_reviews (due_ms) WHERE state = 'open';
CREATE INDEX breakglass_reviews_opened ON breakglass_reviews (opened_ms);

-- People barred from break-glass by a rejected review, until an administrator lifts the bar.
CREATE TABLE breakglass_bars (
    user        TEXT PRIMARY KEY NOT NULL,
    grant_id    TEXT NOT NULL,
    at_ms       INTEGER NOT NULL
);
