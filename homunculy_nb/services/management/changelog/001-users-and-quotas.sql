--liquibase formatted sql

--changeset homunculy-nb:management-001-pgcrypto
--comment: gen_random_uuid() is built in from PostgreSQL 13; the extension keeps older servers working.
CREATE EXTENSION IF NOT EXISTS pgcrypto;
--rollback DROP EXTENSION IF EXISTS pgcrypto;

--changeset homunculy-nb:management-001-users
CREATE TABLE users (
    id                UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    email             VARCHAR(320) NOT NULL UNIQUE,
    name              VARCHAR(200) NOT NULL,
    subscription_tier VARCHAR(20) NOT NULL DEFAULT 'free'
                      CHECK (subscription_tier IN ('free', 'premium', 'enterprise')),
    is_active         BOOLEAN NOT NULL DEFAULT TRUE,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT now()
);
--rollback DROP TABLE users;

--changeset homunculy-nb:management-001-user-quotas
--comment: Limits copied from the tier when the user is created; counters reset on the first request of a new UTC day.
CREATE TABLE user_quotas (
    user_id                 UUID PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    tier                    VARCHAR(20) NOT NULL CHECK (tier IN ('free', 'premium', 'enterprise')),
    max_agents              INTEGER NOT NULL CHECK (max_agents >= 0),
    max_tokens_per_day      INTEGER NOT NULL CHECK (max_tokens_per_day >= 0),
    max_requests_per_day    INTEGER NOT NULL CHECK (max_requests_per_day >= 0),
    max_requests_per_minute INTEGER NOT NULL CHECK (max_requests_per_minute >= 0),
    used_tokens_today       INTEGER NOT NULL DEFAULT 0,
    used_requests_today     INTEGER NOT NULL DEFAULT 0,
    reset_date              DATE NOT NULL DEFAULT CURRENT_DATE,
    updated_at              TIMESTAMPTZ NOT NULL DEFAULT now()
);
--rollback DROP TABLE user_quotas;
