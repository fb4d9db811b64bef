"""The source of Axon's Grafana dashboards: one module per dashboard, on shared builders."""
