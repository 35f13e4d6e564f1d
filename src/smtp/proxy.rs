//! HAProxy PROXY protocol (v1 text, v2 binary) on listeners behind a load balancer.
