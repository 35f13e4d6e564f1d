//! Metrics: Prometheus counters for every stage and the HTTP endpoint serving /metrics and /healthz.
