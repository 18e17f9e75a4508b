"""The bridge: wire protocol, server, client, session and spawned servers, endpoints, CurveZMQ, latency."""
