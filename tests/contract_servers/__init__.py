"""Contract servers for the collector's network sinks, and a handle on the collector binary.

Neither Loki nor Elasticsearch can be installed from the package registries these machines reach,
so the collector's `loki:URL` and `elasticsearch:URL` sinks are tested against servers that check
every request exactly as the products' API documentation specifies it and answer with the
documented responses, including the hard ones (429, 5xx, bulk responses with per-item errors,
409 conflicts). Every deviation from the documented request format is recorded in
`server.violations` (and answered with the 400 the product would send); tests assert that list
stays empty.

- `loki.py`: `POST /loki/api/v1/push` (JSON, gzip, snappy protobuf) and a LogQL subset on
  `GET /loki/api/v1/query_range`.
- `elasticsearch.py`: `POST /_bulk` into data streams, `PUT /<index>/_mapping`, and a Query DSL
  subset on `/<index>/_search` and `/_count`.
- `collector.py`: runs `flowtap-collector` on free loopback ports and reads back its files and
  its /metrics.
"""
