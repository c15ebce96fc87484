-- What reports look up: the records about one grant (sessions, statements, credentials, its
-- database role), found by the grant id at the top of their details; and the two kinds of
-- records reports read by time alone. Records without a top-level `grant` index as NULL.
CREATE INDEX audit_events_by_grant ON audit_events (json_extract(details, '$.grant'), seq);
CREATE INDEX audit_events_refused_requests ON audit_events (at_ms) WHERE kind = 'request.refused';
CREATE INDEX audit_events_standing ON audit_events (at_ms) WHERE kind = 'target.standing';
