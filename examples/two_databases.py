"""Example stack: two PostgreSQL servers with a database each, a migration per database, and a small
uvicorn app that reads both.

    homunculy-nb up examples/two_databases.py

The database passwords are generated on first use and kept in the user secrets file.
"""

from homunculy_nb.stack import Stack

stack = Stack("two-databases")

inventory_server = stack.add_postgres("inventory-postgres").with_data_volume()
inventory = inventory_server.add_database("inventory")
inventory_migrations = stack.add_migrations(
    "inventory-migrations", "changelogs/inventory/changelog.xml", inventory)

orders_server = stack.add_postgres("orders-postgres").with_data_volume()
orders = orders_server.add_database("orders")
orders_migrations = stack.add_migrations("orders-migrations", "changelogs/orders", orders)

app = (
    stack.add_uvicorn_app("catalog-app", "two_databases_app:app")
    .with_reference(inventory)
    .with_reference(orders)
    .with_http_health_check("/health")
    .wait_for_completion(inventory_migrations)
    .wait_for_completion(orders_migrations)
)
