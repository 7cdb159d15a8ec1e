"""Reference services that speak the Homunculy services' protocols, for offline development.

Each subpackage exposes an ASGI `app` configured from environment variables:
`homunculy_nb.services.agent:app`, `homunculy_nb.services.management:app` and
`homunculy_nb.services.llm:app`. They depend on the `services` extra (OpenTelemetry instrumentation).
"""
