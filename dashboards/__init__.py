"""hookscope dashboard: hook health, drains and GPU metrics per job."""


class DashboardError(Exception):
    """Base of every error raised by the dashboards package."""
