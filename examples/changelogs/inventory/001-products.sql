--liquibase formatted sql

--changeset example:1
--comment: products sold by the catalog
CREATE TABLE product (
    sku text PRIMARY KEY,
    name text NOT NULL
);
--rollback DROP TABLE product;

--changeset example:2
INSERT INTO product (sku, name) VALUES ('A-1', 'Anvil'), ('B-2', 'Bucket');
