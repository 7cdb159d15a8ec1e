CREATE TABLE customer_order (
    id serial PRIMARY KEY,
    sku text NOT NULL,
    quantity integer NOT NULL CHECK (quantity > 0)
);
