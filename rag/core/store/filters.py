"""qdrant-client filters, as plain dicts (``Filter.model_dump()``), turned into Qdrant Edge ones.

The service builds its filters with qdrant-client's ``models`` on every backend; the edge store
receives them as dicts across its process boundary and rebuilds them here. Supported: ``must``,
``should``, ``must_not``, ``min_should``, nested filters, field conditions with ``match``
(``value``, ``any``, ``except``, ``text``) or a numeric ``range``, ``is_empty``, ``is_null`` and
``has_id``. Anything else raises ``UnsupportedFilter``.
"""

from __future__ import annotations

from typing import Any

import qdrant_edge as qe


class UnsupportedFilter(ValueError):
    pass


def to_edge(flt: dict[str, Any] | None) -> qe.Filter | None:
    if not flt:
        return None
    return _filter(flt)


def _filter(flt: dict[str, Any]) -> qe.Filter:
    min_should = None
    if flt.get("min_should"):
        spec = flt["min_should"]
        min_should = qe.MinShould(
            [_condition(c) for c in spec["conditions"]], int(spec["min_count"])
        )
    return qe.Filter(
        must=_conditions(flt.get("must")),
        should=_conditions(flt.get("should")),
        must_not=_conditions(flt.get("must_not")),
        min_should=min_should,
    )


def _conditions(items: Any) -> list[Any] | None:
    if items is None:
        return None
    if isinstance(items, dict):  # qdrant-client accepts one condition in place of a list
        items = [items]
    return [_condition(item) for item in items]


def _condition(cond: dict[str, Any]) -> Any:
    if {"must", "should", "must_not", "min_should"} & cond.keys():
        return _filter(cond)
    if "has_id" in cond:
        return qe.HasIdCondition(set(cond["has_id"]))
    if "is_empty" in cond and isinstance(cond["is_empty"], dict):
        return qe.IsEmptyCondition(cond["is_empty"]["key"])
    if "is_null" in cond and isinstance(cond["is_null"], dict):
        return qe.IsNullCondition(cond["is_null"]["key"])
    if "nested" in cond:
        return qe.NestedCondition(cond["nested"]["key"], _filter(cond["nested"]["filter"]))
    if "key" in cond:
        return _field(cond)
    raise UnsupportedFilter(f"unsupported filter condition: {sorted(cond)}")


def _field(cond: dict[str, Any]) -> qe.FieldCondition:
    key = cond["key"]
    if cond.get("match") is not None:
        return qe.FieldCondition(key=key, match=_match(cond["match"]))
    if cond.get("range") is not None:
        bounds = cond["range"]
        if any(isinstance(v, str) for v in bounds.values()):
            raise UnsupportedFilter("datetime ranges are not supported")
        return qe.FieldCondition(
            key=key,
            range=qe.RangeFloat(
                gte=bounds.get("gte"),
                gt=bounds.get("gt"),
                lte=bounds.get("lte"),
                lt=bounds.get("lt"),
            ),
        )
    if cond.get("is_empty") is not None:
        return qe.FieldCondition(key=key, is_empty=bool(cond["is_empty"]))
    if cond.get("is_null") is not None:
        return qe.FieldCondition(key=key, is_null=bool(cond["is_null"]))
    raise UnsupportedFilter(f"unsupported condition on {key!r}: {sorted(cond)}")


def _match(match: dict[str, Any]) -> Any:
    if "value" in match:
        return qe.MatchValue(match["value"])
    if "any" in match:
        return qe.MatchAny(list(match["any"]))
    for name in ("except_", "except"):
        if name in match:
            return qe.MatchExcept(list(match[name]))
    if "text" in match:
        return qe.MatchText(match["text"])
    raise UnsupportedFilter(f"unsupported match: {sorted(match)}")
