"""Helpers for flowtap's end-to-end tests: a throw-away PKI, real upstream servers on loopback
(nginx, a small Python HTTP/1.1 server, a WebSocket echo server) and a handle on the real
`flowtap` binary. Everything listens on loopback only."""
