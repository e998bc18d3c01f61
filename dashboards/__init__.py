"""Grafana dashboards as code (grafanalib); see the dashboards issue."""
