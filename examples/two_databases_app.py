"""The example stack's app: reports what each of its two databases holds.

It finds the databases through the variables `with_reference` injects
(`ConnectionStrings__inventory`, `ConnectionStrings__orders`).
"""

import os

import psycopg
from fastapi import FastAPI

app = FastAPI(title="catalog")


def _query(name: str, sql: str) -> list[tuple]:
    with psycopg.connect(os.environ[f"ConnectionStrings__{name}"], connect_timeout=5) as connection:
        return connection.execute(sql).fetchall()


@app.get("/health")
def health() -> dict:
    _query("inventory", "SELECT 1")
    _query("orders", "SELECT 1")
    return {"status": "healthy", "service": "catalog-app"}


@app.get("/")
def summary() -> dict:
    products = _query("inventory", "SELECT sku, name FROM product ORDER BY sku")
    orders = _query("orders", "SELECT id, sku, quantity FROM customer_order ORDER BY id")
    return {
        "products": [{"sku": sku, "name": name} for sku, name in products],
        "orders": [{"id": id_, "sku": sku, "quantity": quantity} for id_, sku, quantity in orders],
    }
