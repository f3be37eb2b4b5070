"""The HTTP interfaces of the control process: the admin API, the dashboard, /metrics, auth."""
