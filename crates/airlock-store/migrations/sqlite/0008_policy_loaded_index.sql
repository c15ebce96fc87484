-- The last `policy.loaded` record, read at every start and reload to tell whether the policies
-- changed: found at once rather than by reading the chain backwards from its head.
CREATE INDEX audit_events_policy_loaded ON audit_events (chain_id, seq) WHERE kind = 'policy.loaded';
