-- Incidents, known by the id their incident tool gave them.
CREATE TABLE incidents (
    id          TEXT PRIMARY KEY NOT NULL,
    state       TEXT NOT NULL,
    opened_ms   INTEGER NOT NULL,
    body        TEXT NOT NULL
);
CREATE INDEX incidents_opened ON incidents (opened_ms);

-- The incident a request was made for: its grant ends when the incident closes.
ALTER TABLE requests ADD COLUMN incident TEXT REFERENCES incidents (id);
CREATE INDEX requests_by_incident ON requests (incident) WHERE incident IS NOT NULL;
