--liquibase formatted sql

--changeset homunculy-nb:agent-003-emotional-states
--comment: The personality's mood over a session, one row per change.
CREATE TABLE emotional_states (
    id          BIGSERIAL PRIMARY KEY,
    session_id  UUID NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    mood        VARCHAR(50) NOT NULL,
    intensity   REAL NOT NULL DEFAULT 0.5 CHECK (intensity BETWEEN 0 AND 1),
    recorded_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
--rollback DROP TABLE emotional_states;

--changeset homunculy-nb:agent-003-session-context
--comment: The latest `context` object a client sent for a session.
CREATE TABLE session_context (
    session_id UUID PRIMARY KEY REFERENCES sessions (id) ON DELETE CASCADE,
    data       JSONB NOT NULL DEFAULT '{}'::jsonb,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
--rollback DROP TABLE session_context;
