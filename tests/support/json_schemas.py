"""30 JSON schemas of growing difficulty for the constrained-output tests, each with
the request the model is given. Strings and arrays are bounded so that a small model
finishes within the tests' max_tokens; objects are closed (additionalProperties:
false, added by `closed`) so it cannot invent keys forever."""
from __future__ import annotations

import copy


def closed(schema):
    """A copy where every object schema without additionalProperties gets it false."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node:
                node.setdefault("additionalProperties", False)
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(schema)
    return schema


def _obj(props, required=None):
    return {"type": "object", "properties": props, "required": list(required if required is not None else props)}


S = lambda n=20, **kw: {"type": "string", "maxLength": n, **kw}  # noqa: E731

_POINT = _obj({"x": {"type": "integer", "minimum": -100, "maximum": 100},
               "y": {"type": "integer", "minimum": -100, "maximum": 100}})

SCHEMAS = [
    ("Is water wet? Answer true or false.", {"type": "boolean"}),
    ("How many legs does a spider have?", {"type": "integer", "minimum": 0, "maximum": 1000}),
    ("Pick a primary color.", {"enum": ["red", "green", "blue"]}),
    ("Give the name of a famous scientist.", _obj({"name": S(30)})),
    ("Describe a cat: its age in years and whether it is indoor.",
     _obj({"age": {"type": "integer", "minimum": 0, "maximum": 30}, "indoor": {"type": "boolean"}})),
    ("Give a person's age.", _obj({"age": {"type": "integer", "minimum": 0, "maximum": 120}})),
    ("Give today's temperature in Paris in Celsius.",
     _obj({"temperature": {"type": "number", "minimum": -50, "maximum": 60}})),
    ("Give the probability that it rains tomorrow.",
     _obj({"probability": {"type": "number", "exclusiveMinimum": 0, "maximum": 1}})),
    ("Describe a t-shirt: color and size.",
     _obj({"color": {"enum": ["red", "green", "blue", "black"]}, "size": {"enum": ["S", "M", "L", "XL"]}})),
    ("Give a point on a grid.", _obj({"kind": {"const": "point"}, "x": {"type": "integer"},
                                      "y": {"type": "integer"}})),
    ("List a few fruits.", {"type": "array", "items": S(15), "minItems": 2, "maxItems": 4}),
    ("Give a student's test scores.",
     _obj({"scores": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 100},
                      "minItems": 1, "maxItems": 5}})),
    ("Give a US zip code.", _obj({"zip": {"type": "string", "pattern": "^[0-9]{5}$"}})),
    ("Give the date of the first moon landing.", _obj({"date": {"type": "string",
                                                                "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"}})),
    ("Give an email address for Alice at example.com.",
     _obj({"email": {"type": "string", "pattern": "^[a-z]{1,12}@[a-z]{1,12}\\.com$"}})),
    ("Describe a person.", _obj({"person": _obj({"name": S(25), "age": {"type": "integer", "minimum": 0,
                                                                        "maximum": 120}})})),
    ("Describe a person and their address.",
     _obj({"person": _obj({"name": S(25), "address": _obj({"city": S(20), "country": S(20)})})})),
    ("List items in a shopping cart with their prices.",
     _obj({"items": {"type": "array", "maxItems": 3, "minItems": 1,
                     "items": _obj({"name": S(15), "price": {"type": "number", "minimum": 0, "maximum": 1000}})}})),
    ("Describe a user account (the nickname is optional).",
     _obj({"username": S(15), "nickname": S(15), "active": {"type": "boolean"}}, required=["username", "active"])),
    ("Give a product code of 3 to 6 characters.", _obj({"code": {"type": "string", "minLength": 3, "maxLength": 6}})),
    ("Give a value that is a number or a short word.",
     _obj({"value": {"anyOf": [{"type": "integer", "minimum": -1000, "maximum": 1000}, S(10)]}})),
    ("Give a pet's nickname, or null if it has none.", _obj({"nickname": {"type": ["string", "null"],
                                                                          "maxLength": 15}})),
    ("Describe a shape: a circle or a square.",
     _obj({"shape": {"oneOf": [
         _obj({"kind": {"const": "circle"}, "radius": {"type": "number", "minimum": 0, "maximum": 100}}),
         _obj({"kind": {"const": "square"}, "side": {"type": "number", "minimum": 0, "maximum": 100}})]}})),
    ("Give a line segment from one point to another.",
     {"$defs": {"point": _POINT}, "type": "object",
      "properties": {"start": {"$ref": "#/$defs/point"}, "end": {"$ref": "#/$defs/point"}},
      "required": ["start", "end"]}),
    ("Give a city and its population as a pair.",
     {"type": "array", "prefixItems": [S(20), {"type": "integer", "minimum": 0, "maximum": 50000000}],
      "items": False, "minItems": 2}),
    ("Pick a Fibonacci number and a label.",
     _obj({"n": {"enum": [1, 2, 3, 5, 8, 13]}, "label": S(12)})),
    ("Give a small matrix of digits.",
     _obj({"matrix": {"type": "array", "minItems": 1, "maxItems": 3,
                      "items": {"type": "array", "minItems": 1, "maxItems": 3,
                                "items": {"type": "integer", "minimum": -9, "maximum": 9}}}})),
    ("Describe a book.",
     _obj({"title": S(40), "author": _obj({"first": S(15), "last": S(15)}),
           "year": {"type": "integer", "minimum": 1450, "maximum": 2025},
           "isbn": {"type": "string", "pattern": "^[0-9]{13}$"},
           "tags": {"type": "array", "maxItems": 3, "items": {"enum": ["fiction", "history", "science", "poetry"]}},
           "available": {"type": "boolean"}})),
    ("Describe a meeting with its attendees.",
     _obj({"id": {"type": "string", "pattern": "^EV-[0-9]{4}$"},
           "date": {"type": "string", "pattern": "^2[0-9]{3}-[01][0-9]-[0-3][0-9]$"},
           "attendees": {"type": "array", "minItems": 1, "maxItems": 2,
                         "items": _obj({"name": S(20), "email": {"type": "string",
                                                                 "pattern": "^[a-z]{1,10}@[a-z]{1,10}\\.org$"}})}})),
    ("Write an invoice.",
     _obj({"currency": {"enum": ["USD", "EUR", "GBP"]},
           "lines": {"type": "array", "minItems": 1, "maxItems": 2,
                     "items": _obj({"sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{3}$"},
                                    "qty": {"type": "integer", "minimum": 1, "maximum": 99},
                                    "unit_price": {"type": "number", "minimum": 0, "maximum": 1000}})},
           "total": {"type": "number", "minimum": 0, "maximum": 100000},
           "note": {"type": ["string", "null"], "maxLength": 30}}, required=["currency", "lines", "total"])),
]

SCHEMAS = [(request, closed(schema)) for request, schema in SCHEMAS]
assert len(SCHEMAS) == 30
