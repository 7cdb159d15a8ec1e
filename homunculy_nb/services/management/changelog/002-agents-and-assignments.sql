--liquibase formatted sql

--changeset homunculy-nb:management-002-agents
CREATE TABLE agents (
    id            UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    name          VARCHAR(200) NOT NULL,
    description   TEXT NOT NULL DEFAULT '',
    provider      VARCHAR(50) NOT NULL DEFAULT 'openai',
    model_name    VARCHAR(100) NOT NULL DEFAULT 'gpt-4o-mini',
    system_prompt TEXT,
    temperature   REAL NOT NULL DEFAULT 0.7 CHECK (temperature BETWEEN 0 AND 2),
    max_tokens    INTEGER NOT NULL DEFAULT 2000 CHECK (max_tokens > 0),
    personality   JSONB NOT NULL DEFAULT '{}'::jsonb,
    is_active     BOOLEAN NOT NULL DEFAULT TRUE,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
--rollback DROP TABLE agents;

--changeset homunculy-nb:management-002-agent-assignments
CREATE TABLE agent_assignments (
    id                      UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id                 UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    agent_id                UUID NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    allocation_strategy     VARCHAR(20) NOT NULL DEFAULT 'shared'
                            CHECK (allocation_strategy IN ('shared', 'dedicated', 'pool')),
    priority                INTEGER NOT NULL DEFAULT 0,
    max_concurrent_requests INTEGER NOT NULL DEFAULT 1 CHECK (max_concurrent_requests > 0),
    created_at              TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT uq_agent_assignments_user_agent UNIQUE (user_id, agent_id)
);
CREATE INDEX ix_agent_assignments_agent ON agent_assignments (agent_id);
--rollback DROP TABLE agent_assignments;
