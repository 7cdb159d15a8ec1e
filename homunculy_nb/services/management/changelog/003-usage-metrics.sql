--liquibase formatted sql

--changeset homunculy-nb:management-003-usage-metrics
--comment: One row per chat request; the rows of the last minute are the per-minute rate.
CREATE TABLE usage_metrics (
    id            BIGSERIAL PRIMARY KEY,
    user_id       UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    agent_id      UUID REFERENCES agents (id) ON DELETE SET NULL,
    tokens_used   INTEGER NOT NULL DEFAULT 0 CHECK (tokens_used >= 0),
    request_count INTEGER NOT NULL DEFAULT 1 CHECK (request_count >= 0),
    cost          NUMERIC(12, 6) NOT NULL DEFAULT 0,
    recorded_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX ix_usage_metrics_user_time ON usage_metrics (user_id, recorded_at);
--rollback DROP TABLE usage_metrics;
