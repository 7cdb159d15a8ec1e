--liquibase formatted sql

--changeset homunculy-nb:agent-001-pgcrypto
--comment: gen_random_uuid() is built in from PostgreSQL 13; the extension keeps older servers working.
CREATE EXTENSION IF NOT EXISTS pgcrypto;
--rollback DROP EXTENSION IF EXISTS pgcrypto;

--changeset homunculy-nb:agent-001-conversation-agents
--comment: Agent personalities that conversations can be held with.
CREATE TABLE conversation_agents (
    id          VARCHAR(64) PRIMARY KEY,
    name        VARCHAR(200) NOT NULL,
    provider    VARCHAR(50) NOT NULL DEFAULT 'openai',
    model_name  VARCHAR(100) NOT NULL DEFAULT 'gpt-4o-mini',
    personality JSONB NOT NULL DEFAULT '{}'::jsonb,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
INSERT INTO conversation_agents (id, name, personality)
VALUES ('default', 'Homunculy', '{"name": "Homunculy", "description": "a friendly and helpful assistant", "traits": {}, "mood": "neutral"}');
--rollback DROP TABLE conversation_agents;
