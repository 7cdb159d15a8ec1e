INSERT INTO customer_order (sku, quantity) VALUES ('A-1', 2);
