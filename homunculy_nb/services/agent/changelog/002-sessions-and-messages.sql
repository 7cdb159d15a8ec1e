--liquibase formatted sql

--changeset homunculy-nb:agent-002-sessions
--comment: One conversation thread per user and agent; its id is the `thread_id` clients see.
CREATE TABLE sessions (
    id         UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id    VARCHAR(200) NOT NULL,
    agent_id   VARCHAR(64) NOT NULL DEFAULT 'default' REFERENCES conversation_agents (id),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT uq_sessions_user_agent UNIQUE (user_id, agent_id)
);
--rollback DROP TABLE sessions;

--changeset homunculy-nb:agent-002-messages
CREATE TABLE messages (
    id         BIGSERIAL PRIMARY KEY,
    session_id UUID NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    role       VARCHAR(20) NOT NULL CHECK (role IN ('user', 'assistant', 'system')),
    content    TEXT NOT NULL,
    tokens     INTEGER NOT NULL DEFAULT 0 CHECK (tokens >= 0),
    model      VARCHAR(100),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX ix_messages_session_created ON messages (session_id, created_at, id);
--rollback DROP TABLE messages;
