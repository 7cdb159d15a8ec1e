"""The example stack's app: reports what each of its two databases holds.

It finds the databases through the variables `with_reference` injects (`ConnectionStrings__inventory`,
`ConnectionStrings__orders`). It is a plain Starlette app, which imports faster than FastAPI, so the
app's start stays a small part of the stack's start-up time.
"""

import os

import psycopg
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


def _query(name: str, sql: str) -> list[tuple]:
    with psycopg.connect(os.environ[f"ConnectionStrings__{name}"], connect_timeout=5) as connection:
        return connection.execute(sql).fetchall()


def health(request: Request) -> JSONResponse:
    _query("inventory", "SELECT 1")
    _query("orders", "SELECT 1")
    return JSONResponse({"status": "healthy", "service": "catalog-app"})


def summary(request: Request) -> JSONResponse:
    products = _query("inventory", "SELECT sku, name FROM product ORDER BY sku")
    orders = _query("orders", "SELECT id, sku, quantity FROM customer_order ORDER BY id")
    return JSONResponse({
        "products": [{"sku": sku, "name": name} for sku, name in products],
        "orders": [{"id": id_, "sku": sku, "quantity": quantity} for id_, sku, quantity in orders],
    })


app = Starlette(routes=[Route("/health", health), Route("/", summary)])
