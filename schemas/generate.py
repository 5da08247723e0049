"""Generate the checked-in JSON Schema files and the AsyncAPI document from the models.

    python -m schemas.generate          # write schemas/json/*.json and schemas/asyncapi.json
    python -m schemas.generate --check  # exit 1 if the files differ from the models

A test runs the check, so the files cannot drift from the models.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from schemas.events import EVENTS, DeadLetter, envelope_type
from schemas.member import MemberRegistration, PublicMember
from schemas.topics import TOPIC_LABELS_DE, TOPICS

HERE = Path(__file__).parent
JSON_DIR = HERE / "json"


def _dump(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False, sort_keys=True) + "\n"


def event_schema(topic: str) -> dict[str, Any]:
    """JSON Schema of one topic's records (envelope with typed data)."""
    spec = EVENTS[topic]
    schema: dict[str, Any] = envelope_type(topic).model_json_schema()
    schema["title"] = f"{topic} event"
    schema["description"] = f"{spec.description} Produced by: {spec.producer}."
    schema["properties"]["type"] = {"const": topic, "title": "Type", "type": "string"}
    schema["properties"]["version"] = {
        "enum": list(spec.versions),
        "title": "Version",
        "type": "integer",
    }
    return schema


def documents() -> dict[str, dict[str, Any]]:
    """Every generated file, by its path relative to ``schemas/``."""
    files: dict[str, dict[str, Any]] = {
        f"json/{topic}.schema.json": event_schema(topic) for topic in EVENTS
    }
    files["json/dlq.schema.json"] = DeadLetter.model_json_schema()
    files["json/member.schema.json"] = MemberRegistration.model_json_schema()
    files["json/public-member.schema.json"] = PublicMember.model_json_schema()
    files["json/topics.json"] = {
        "description": "The built-in topic vocabulary (operators may add topics with "
        "TANDEM_EXTRA_TOPICS).",
        "topics": [{"slug": t, "label_de": TOPIC_LABELS_DE[t]} for t in TOPICS],
    }
    files["asyncapi.json"] = asyncapi()
    return files


def asyncapi() -> dict[str, Any]:
    """The AsyncAPI 3.0 document of Tandem's topics."""
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for topic, spec in EVENTS.items():
        name = topic.replace(".", "_")
        schemas[name] = {"$ref": f"./json/{topic}.schema.json"}
        channels[name] = {
            "address": topic,
            "description": f"{spec.description} Message key: the city id.",
            "messages": {name: {"payload": {"$ref": f"#/components/schemas/{name}"}}},
        }
        dlq = f"{name}_dlq"
        channels[dlq] = {
            "address": f"{topic}.dlq",
            "description": f"Records of {topic} a consumer could not process, with the reason.",
            "messages": {dlq: {"payload": {"$ref": "#/components/schemas/dead_letter"}}},
        }
        operations[f"{spec.producer}_sends_{name}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{name}"},
        }
    schemas["dead_letter"] = {"$ref": "./json/dlq.schema.json"}
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Tandem events",
            "version": "1.0.0",
            "description": "Events of the Engagierte Stadt matching service. Every record is an "
            "envelope {id, type, version, time, source, data}; consumers are idempotent on id.",
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"schemas": schemas},
    }


def main(argv: list[str]) -> int:
    """Write the files, or with ``--check`` report the ones that differ."""
    stale = []
    for relative, document in documents().items():
        path = HERE / relative
        text = _dump(document)
        if "--check" in argv:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(relative)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    if stale:
        print("out of date (run python -m schemas.generate):", ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
