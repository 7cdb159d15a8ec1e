"""homunculy-nb: declare, launch and observe the Homunculy microservices from JupyterLab."""

__version__ = "0.1.0"
