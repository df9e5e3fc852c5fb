"""`GET /openapi.json`: an OpenAPI 3.1 description of every REST route.

Written by hand, next to the routes it describes, and kept honest by tests: every route the app
serves must be described here, and schemathesis (`nox -s contract`) checks a live bus against
it (no server error, no status, content type or body the document does not describe).
"""

from __future__ import annotations

import functools
from typing import Any, Final

from ipt_bus.core import schemas
from ipt_bus.core.codec import MAX_LABEL_CHARS, MAX_TYPE_CHARS
from ipt_bus.core.topics import MAX_TOPIC_CHARS

_JSON: Final = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {_JSON: {"schema": schema}}}


_ERRORS: Final = {
    400: "Bad input: the error's `field` names what is wrong",
    401: "No valid token (when tokens are required)",
    403: "The token does not grant this",
    404: "No such resource",
    413: "Body too large",
    415: "Not `Content-Type: application/json`",
    421: "A `Host` the bus does not serve",
    429: "Over the rate limit (`Retry-After`)",
    503: "Overloaded, shutting down or storage unavailable (`Retry-After`)",
    507: "Storage full",
}


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(s): {"$ref": f"#/components/responses/E{s}"} for s in statuses}


_READ_ERRORS: Final = (400, 401, 421, 503)
_WRITE_ERRORS: Final = (400, 401, 403, 413, 415, 421, 429, 503, 507)
_LIMIT: Final = {
    "name": "limit",
    "in": "query",
    "schema": {"type": "integer", "minimum": 0},
    "description": "how many (default 100, at most 1,000)",
}
_PAGE_LIMIT: Final = {**_LIMIT, "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}


def _event_schemas() -> dict[str, Any]:
    """A publisher's event: the envelope; a standard topic's payload has that topic's schema
    (`/schemas`), any other topic's payload is any object."""
    standard = sorted(schemas.json_schemas())

    def envelope(topic: dict[str, Any], payload: dict[str, Any]) -> dict[str, Any]:
        return {
            "type": "object",
            "required": ["type", "topic", "payload"],
            "additionalProperties": False,
            "properties": {
                "type": {"type": "string", "minLength": 1, "maxLength": MAX_TYPE_CHARS},
                "topic": topic,
                "payload": payload,
                "timestamp": {"type": "string", "description": "ISO-8601; no zone = UTC"},
                "source": {"type": "string", "maxLength": MAX_LABEL_CHARS},
                "correlation_id": {"type": "string", "maxLength": MAX_LABEL_CHARS},
            },
        }

    out = {
        f"Event_{topic}": envelope({"const": topic}, _ref(f"Payload_{topic}")) for topic in standard
    }
    out["Event_custom"] = envelope(
        {"allOf": [_ref("Topic"), {"not": {"enum": standard}}]}, {"type": "object"}
    )
    out["Event"] = {"anyOf": [_ref(name) for name in sorted(out)]}
    return out


@functools.cache
def document(version: str) -> dict[str, Any]:
    """The OpenAPI document, built once (`/` and `/openapi.json` serve it; do not change it)."""
    published = {
        "type": "object",
        "required": ["id", "seq"],
        "properties": {"id": {"type": "string"}, "seq": {"type": "integer"}},
    }
    paths: dict[str, Any] = {
        "/": {
            "get": {
                "summary": "Browsers: a redirect to /ui/; JSON clients: the endpoints",
                "responses": {
                    "200": _json({"type": "object"}, "An index of the endpoints"),
                    "302": {"description": "To the dashboard (/ui/), for browsers"},
                    **_errors(421),
                },
            }
        },
        "/ui/": {
            "get": {
                "summary": "The live dashboard (one static page)",
                "responses": {
                    "200": {"description": "The page", "content": {"text/html": {}}},
                    **_errors(421),
                },
            }
        },
        "/ui/app.js": {
            "get": {
                "summary": "The dashboard's script",
                "responses": {
                    "200": {"description": "JavaScript", "content": {"text/javascript": {}}},
                    **_errors(421),
                },
            }
        },
        "/events": {
            "post": {
                "summary": "Publish one event, or an array of at most 1,000 (all or nothing)",
                "parameters": [
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "schema": {"type": "string", "minLength": 1, "maxLength": 256},
                    }
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        _JSON: {
                            "schema": {
                                "oneOf": [
                                    _ref("Event"),
                                    {
                                        "type": "array",
                                        "items": _ref("Event"),
                                        "minItems": 1,
                                        "maxItems": 1000,
                                    },
                                ]
                            }
                        }
                    },
                },
                "responses": {
                    "201": _json(
                        {
                            "oneOf": [
                                published,
                                {
                                    "type": "object",
                                    "required": ["events"],
                                    "properties": {"events": {"type": "array", "items": published}},
                                },
                            ]
                        },
                        "In the log: where each event went",
                    ),
                    **_errors(*_WRITE_ERRORS),
                },
            },
            "get": {
                "summary": "Logged events: the newest, or with `since` the oldest after it",
                "parameters": [
                    {"name": "topic", "in": "query", "schema": {"type": "string"}},
                    {"name": "type", "in": "query", "schema": {"type": "string"}},
                    {"name": "correlation_id", "in": "query", "schema": {"type": "string"}},
                    {"name": "from", "in": "query", "schema": {"type": "string"}},
                    {"name": "to", "in": "query", "schema": {"type": "string"}},
                    _LIMIT,
                    {"name": "since", "in": "query", "schema": {"type": "integer", "minimum": 0}},
                    {"name": "epoch", "in": "query", "schema": {"type": "string"}},
                ],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["events", "count", "limit", "capped", "epoch"],
                            "properties": {
                                "events": {"type": "array", "items": _ref("StoredEvent")},
                                "count": {"type": "integer"},
                                "limit": {"type": "integer"},
                                "capped": {"type": "boolean"},
                                "epoch": {"type": "string"},
                                "next": {"type": "integer"},
                                "gaps": {"type": "array", "items": {"type": "object"}},
                            },
                        },
                        "The events, oldest first",
                    ),
                    **_errors(*_READ_ERRORS, 403),
                },
            },
        },
        "/broadcast": {
            "post": {
                "summary": "Legacy: publish a JSON object (or string) as legacy.broadcast",
                "requestBody": {
                    "required": True,
                    "content": {_JSON: {"schema": {"type": ["object", "string"]}}},
                },
                "responses": {
                    "201": _json(published, "In the log"),
                    **_errors(*_WRITE_ERRORS),
                },
            }
        },
        "/topics": _get(
            "The standard topics and every topic seen (count, last seen, subscribers)",
            {
                "type": "object",
                "required": ["topics", "patterns", "tracked"],
                "properties": {
                    "topics": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["topic", "standard", "count", "subscribers"],
                            "properties": {
                                "topic": {"type": "string"},
                                "standard": {"type": "boolean"},
                                "description": {"type": ["string", "null"]},
                                "count": {"type": "integer"},
                                "last_seen": {"type": ["string", "null"]},
                                "subscribers": {"type": "integer"},
                            },
                        },
                    },
                    "patterns": {"type": "array"},
                    "tracked": {"type": "object"},
                },
            },
        ),
        "/schemas": _get(
            "The payload schema of every standard topic (JSON Schema)",
            {
                "type": "object",
                "required": ["validation", "schemas"],
                "properties": {"validation": {"type": "string"}, "schemas": {"type": "object"}},
            },
        ),
        "/stats": _get(
            "Counters, rates, latency, the log, dead letters",
            {"type": "object", "required": ["total_events", "uptime_seconds"]},
        ),
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics (needs a token unless --metrics-public)",
                "responses": {
                    "200": {"description": "Text exposition", "content": {"text/plain": {}}},
                    **_errors(*_READ_ERRORS),
                },
            }
        },
        "/connections": {
            "get": {
                "summary": "WebSocket connections (admin)",
                "parameters": [
                    _PAGE_LIMIT,
                    {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0}},
                ],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["connections", "count", "total", "offset"],
                        },
                        "A page of connections",
                    ),
                    **_errors(*_READ_ERRORS, 403),
                },
            }
        },
        "/health": {
            "get": {
                "summary": "Liveness and readiness (open to all)",
                "responses": {
                    "200": _json(
                        _ref("Health"), "Up (status ok, or degraded with the log taking writes)"
                    ),
                    "503": _json(
                        _ref("Health"),
                        "Down or shutting down, or degraded: the log takes no writes",
                    ),
                    **_errors(400, 421),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "responses": {
                    "200": _json({"type": "object"}, "OpenAPI 3.1"),
                    **_errors(421),
                },
            }
        },
        "/dlq": {
            "get": {
                "summary": "Dead letters (admin)",
                "parameters": [
                    _PAGE_LIMIT,
                    {"name": "after", "in": "query", "schema": {"type": "integer", "minimum": 0}},
                ],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["dead_letters", "count", "total"],
                        },
                        "A page of dead letters",
                    ),
                    **_errors(*_READ_ERRORS, 403),
                },
            }
        },
        "/dlq/{letter_id}/retry": {
            "post": {
                "summary": "Publish a dead letter again (admin)",
                "parameters": [_LETTER],
                "responses": {
                    "201": _json({"type": "object"}, "Published: the letter is removed"),
                    **_errors(*_WRITE_ERRORS, 404),
                },
            }
        },
        "/dlq/{letter_id}": {
            "delete": {
                "summary": "Delete a dead letter (admin)",
                "parameters": [_LETTER],
                "responses": {
                    "204": {"description": "Deleted"},
                    **_errors(*_READ_ERRORS, 403, 404),
                },
            }
        },
        "/ws": {
            "get": {
                "summary": "The WebSocket endpoint (docs/protocol.md); plain HTTP gets 426",
                "responses": {
                    "101": {"description": "Switching to the WebSocket protocol"},
                    "426": _json(_ref("Error"), "Not a WebSocket upgrade"),
                    **_errors(421),
                },
            }
        },
    }
    payloads = {f"Payload_{topic}": schema for topic, schema in schemas.json_schemas().items()}
    for schema in payloads.values():
        schema.pop("$schema", None)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "ipt_bus",
            "version": version,
            "description": "Real-time pub/sub event bus: REST (this document) and WebSocket "
            "(/ws, docs/protocol.md). With tokens configured, send `Authorization: Bearer`.",
        },
        "paths": paths,
        "components": {
            "schemas": {
                "Topic": {
                    "type": "string",
                    "maxLength": MAX_TOPIC_CHARS,
                    "pattern": r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+){0,15}$",
                },
                **_event_schemas(),
                "StoredEvent": {
                    "type": "object",
                    "required": ["type", "topic", "payload", "id", "seq"],
                    "properties": {
                        "type": {"type": "string"},
                        "topic": {"type": "string"},
                        "payload": {"type": "object"},
                        "timestamp": {"type": "string"},
                        "id": {"type": "string"},
                        "seq": {"type": "integer"},
                    },
                },
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "message"],
                            "properties": {
                                "code": {"type": "string"},
                                "message": {"type": "string"},
                                "field": {"type": "string"},
                            },
                        }
                    },
                },
                "Health": {
                    "type": "object",
                    "required": ["status", "checks"],
                    "properties": {
                        "status": {"enum": ["ok", "degraded", "down"]},
                        "checks": {"type": "object"},
                    },
                },
                **payloads,
            },
            "responses": {
                f"E{status}": _json(_ref("Error"), description)
                for status, description in _ERRORS.items()
            },
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{}, {"bearer": []}],
    }


_LETTER: Final = {
    "name": "letter_id",
    "in": "path",
    "required": True,
    "schema": {"type": "integer", "minimum": 0},
}


def _get(summary: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "get": {
            "summary": summary,
            "responses": {"200": _json(schema, summary), **_errors(*_READ_ERRORS)},
        }
    }
