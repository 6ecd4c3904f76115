"""What a cell or a model wrote, evaluated on the host in bounded time and memory.

Some of what a container or a model supplies is *evaluated* by the host, not just carried:
the JSON Schema a cell passes as ``output=``, the answer checked against it, any JSON a
model returns. Evaluating it with the obvious tools hands the attacker the host process:

- Python's ``re`` backtracks, and holds the GIL for the whole match: ``^(a+)+$`` against 30
  ``a`` and a ``!`` froze every thread of the host (budgets, Ctrl-C, other runs) for 74 s;
- ``jsonschema`` runs ``pattern``, ``patternProperties`` and ``additionalProperties`` with
  ``re``, fetches a remote ``$ref`` with urllib (a request from the host, on the cell's
  behalf), and multiplies work through ``anyOf`` over ``$ref``s (2^n for n definitions);
- ``int()`` of a long digit string is quadratic, and deep nesting overflows the C stack
  guard.

So here, for everything untrusted:

- JSON is parsed with a bound on its size, depth and integer digits, and without the
  non-standard ``NaN``/``Infinity`` (:func:`rlm_sandbox.untrusted_json.loads`);
- a JSON Schema is compiled once (:class:`BoundedSchema`): bounded in size and depth, every
  ``pattern`` compiled by RE2 (linear time, and it releases the GIL while it matches;
  lookaround and backreferences, which need backtracking, are refused), no reference that
  leaves the schema (nothing is ever fetched);
- validation runs on a meter: every keyword applied is a step, error messages are cut as
  they are made, and past the step or time bound the check stops with
  :class:`CheckTooCostly` rather than running on. Everything between two steps is linear
  in the size of the (bounded) value.

Refusals are typed errors a cell receives as an ``LLMQueryError`` it can catch; nothing
here kills a sandbox or ends a run by itself.
"""

from __future__ import annotations

import contextvars
import functools
import json
import reprlib
import time
from dataclasses import dataclass
from typing import Any

from rlm_sandbox.errors import ConfigError, RLMSandboxError
from rlm_sandbox.untrusted_json import check_depth

CHECK_SECONDS = 10.0
CHECK_STEPS = 2_000_000
MESSAGE_CHARS = 300
"""Each validation message is cut to this: jsonschema puts ``repr(instance)`` in messages."""
MESSAGE_BUDGET = 64 << 20
"""Characters of messages a check may produce in total before it is stopped."""


class SchemaRefused(ConfigError):
    """A JSON Schema the host will not evaluate (too large, too deep, an unsafe pattern, a
    reference out of the schema, not a valid schema)."""

    hint = (
        "use a smaller JSON Schema: local $refs only, patterns without lookaround or "
        "backreferences (the host matches them with RE2, in linear time)"
    )


class CheckTooCostly(RLMSandboxError):
    """Checking a value against a schema went past the host's step or time bound."""

    hint = "simplify the schema: fewer anyOf/oneOf branches over $refs, no uniqueItems over large arrays"


# ---------------------------------------------------------------- patterns


@functools.lru_cache(maxsize=128)
def compile_pattern(pattern: str) -> Any:
    """A pattern compiled by RE2; raises :class:`SchemaRefused` if RE2 cannot compile it."""
    import re2

    options = re2.Options()
    options.log_errors = False  # RE2 would print every refusal to the process's stderr
    try:
        return re2.compile(pattern, options)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise SchemaRefused(
            f"the schema's pattern {_short(pattern, 80)} is refused: the host matches patterns "
            f"with RE2 (linear time), which cannot compile it ({reason})",
            hint="rewrite it without lookaround (?=, ?!, ?<=), backreferences (\\1) or "
            "possessive quantifiers",
        ) from None


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = MESSAGE_CHARS
_REPR.maxlist = _REPR.maxdict = _REPR.maxtuple = _REPR.maxset = 10
_REPR.maxlevel = 4


def _short(value: Any, limit: int = MESSAGE_CHARS) -> str:
    """``repr`` whose cost does not grow with the value (it reads only the first items)."""
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---------------------------------------------------------------- the meter


@dataclass
class _Meter:
    deadline: float
    steps: int
    chars: int
    seconds: float

    def tick(self) -> None:
        self.steps -= 1
        if self.steps < 0:
            raise CheckTooCostly(
                f"checking the value against the schema took more than {CHECK_STEPS} steps; stopped"
            )
        if time.monotonic() > self.deadline:
            raise CheckTooCostly(
                f"checking the value against the schema took longer than {self.seconds:g} s; stopped"
            )


_METER: contextvars.ContextVar[_Meter | None] = contextvars.ContextVar(
    "rlm_sandbox_schema_meter", default=None
)


def _tick() -> None:
    meter = _METER.get()
    if meter is None:  # only metered code may evaluate an untrusted schema
        raise CheckTooCostly("a schema check ran outside its meter")
    meter.tick()


def _cut(error: Any) -> None:
    """Cut a validation message as soon as it exists: they embed ``repr(instance)``."""
    meter = _METER.get()
    message = error.message
    if meter is not None:
        meter.chars -= len(message)
        if meter.chars < 0:
            raise CheckTooCostly("checking the value against the schema produced too many errors; stopped")
    if len(message) > MESSAGE_CHARS:
        error.message = message[: MESSAGE_CHARS - 1] + "…"


def _metered(keyword: Any) -> Any:
    def run(validator: Any, value: Any, instance: Any, schema: Any) -> Any:
        _tick()
        for error in keyword(validator, value, instance, schema) or ():
            _cut(error)
            yield error

    run.__name__ = getattr(keyword, "__name__", "keyword")
    return run


# ---------------------------------------------------------------- keywords that used `re`


def _pattern(validator: Any, pattern: Any, instance: Any, schema: Any) -> Any:
    from jsonschema.exceptions import ValidationError

    if validator.is_type(instance, "string") and not compile_pattern(pattern).search(instance):
        yield ValidationError(f"{_short(instance)} does not match {_short(pattern, 120)}")


def _pattern_properties(validator: Any, patterns: Any, instance: Any, schema: Any) -> Any:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        rx = compile_pattern(pattern)
        for key, value in instance.items():
            if rx.search(key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _additional(instance: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    properties = schema.get("properties", {})
    patterns = [compile_pattern(p) for p in schema.get("patternProperties", {})]
    return [key for key in instance if key not in properties and not any(rx.search(key) for rx in patterns)]


def _additional_properties(validator: Any, allowed: Any, instance: Any, schema: Any) -> Any:
    from jsonschema.exceptions import ValidationError

    if not validator.is_type(instance, "object"):
        return
    extras = _additional(instance, schema)
    if validator.is_type(allowed, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], allowed, path=extra)
    elif not allowed and extras:
        shown = ", ".join(repr(each) for each in sorted(extras)[:20])
        if "patternProperties" in schema:
            yield ValidationError(f"{shown} do not match any of the property patterns")
        else:
            yield ValidationError(f"Additional properties are not allowed ({shown} unexpected)")


def _canonical(value: Any) -> Any:
    """A hashable form under which JSON values are equal as JSON Schema says (1 == 1.0,
    True != 1); linear in the value's size."""
    if isinstance(value, bool) or value is None:
        return ("b", value)
    if isinstance(value, int | float):
        if isinstance(value, float) and value.is_integer():
            return ("n", int(value))
        return ("n", value)
    if isinstance(value, str):
        return ("s", value)
    if isinstance(value, list | tuple):
        return ("l", tuple(_canonical(v) for v in value))
    if isinstance(value, dict):
        return ("d", frozenset((k, _canonical(v)) for k, v in value.items()))
    return ("o", repr(value))


def _unique_items(validator: Any, unique: Any, instance: Any, schema: Any) -> Any:
    """uniqueItems in linear time (jsonschema's falls back to comparing every pair)."""
    from jsonschema.exceptions import ValidationError

    if not unique or not validator.is_type(instance, "array"):
        return
    seen: set[Any] = set()
    for item in instance:
        _tick()
        key = _canonical(item)
        if key in seen:
            yield ValidationError(f"{_short(instance)} has non-unique elements")
            return
        seen.add(key)


def _multiple_of(validator: Any, step: Any, instance: Any, schema: Any) -> Any:
    """jsonschema's multipleOf, except that a big integer over a float step
    (``10**4000`` against ``0.1``) is an answer, not an ``OverflowError`` from the check:
    the exact test with fractions is what jsonschema itself falls back to."""
    from fractions import Fraction

    from jsonschema._keywords import multipleOf
    from jsonschema.exceptions import ValidationError

    try:
        yield from multipleOf(validator, step, instance, schema)
    except OverflowError:
        if isinstance(instance, float) or (Fraction(instance) / Fraction(step)).denominator != 1:
            yield ValidationError(f"{_short(instance, 60)} is not a multiple of {step}")


_REPLACED = {
    "multipleOf": _multiple_of,
    "pattern": _pattern,
    "patternProperties": _pattern_properties,
    "additionalProperties": _additional_properties,
    "uniqueItems": _unique_items,
}


# ---------------------------------------------------------------- bounded validator classes


@functools.cache
def _families() -> dict[type, type]:
    """Stock validator class -> its bounded twin, for every dialect the host checks."""
    import jsonschema.validators as v

    stock = [
        v.Draft4Validator,
        v.Draft6Validator,
        v.Draft7Validator,
        v.Draft201909Validator,
        v.Draft202012Validator,
    ]
    out: dict[type, type] = {}
    for cls in stock:
        keywords = {name: _metered(_REPLACED.get(name, fn)) for name, fn in cls.VALIDATORS.items()}
        bounded = v.extend(cls, validators=keywords)
        bounded.evolve = _evolve  # type: ignore[method-assign]
        out[cls] = bounded
    return out


def _evolve(self: Any, **changes: Any) -> Any:
    """jsonschema picks a subschema's class by its ``$schema`` (a nested one, or a $ref to a
    meta-schema), which would leave the bounded family for the stock, ``re``-based one:
    map every choice back into the family."""
    import attrs
    import jsonschema.validators as v

    families = _families()
    schema = changes.setdefault("schema", self.schema)
    chosen = v.validator_for(schema, default=type(self))
    cls = chosen if chosen in families.values() else families.get(chosen, type(self))
    for field in attrs.fields(type(self)):
        if field.init and field.alias not in changes:
            changes[field.alias] = getattr(self, field.name)
    return cls(**changes)


@dataclass(frozen=True)
class SchemaLimits:
    max_chars: int
    max_depth: int


CELL_SCHEMA = SchemaLimits(max_chars=32 * 1024, max_depth=32)
"""A schema a cell sends with ``llm_query(..., output=)`` (the kernel caps it at 32 KB too,
but a cell can forge the frame)."""
USER_SCHEMA = SchemaLimits(max_chars=1 << 20, max_depth=64)
"""The caller's own schema (``output=``, ``--schema``): trusted to be meant, not to be cheap."""

_REF_KEYS = ("$ref", "$dynamicRef", "$recursiveRef")


class BoundedSchema:
    """A JSON Schema checked once and then evaluated only in bounded time and memory."""

    def __init__(self, schema: Any, limits: SchemaLimits = USER_SCHEMA) -> None:
        if not isinstance(schema, dict):
            raise SchemaRefused("a JSON Schema is a JSON object")
        try:
            size = len(json.dumps(schema, ensure_ascii=False, allow_nan=False))
        except (TypeError, ValueError, RecursionError) as exc:
            raise SchemaRefused(f"the schema is not JSON: {exc}") from None
        if size > limits.max_chars:
            raise SchemaRefused(
                f"the schema is {size} characters of JSON; at most {limits.max_chars} are accepted"
            )
        self._scan(schema, limits.max_depth)
        import jsonschema.validators as v

        families = _families()
        stock = v.validator_for(schema, default=v.Draft202012Validator)
        if stock not in families:
            raise SchemaRefused(f"the schema's $schema {_short(schema.get('$schema'), 100)} is not supported")
        self.schema = schema
        self._cls = families[stock]
        meta = families.get(v.validator_for(stock.META_SCHEMA, default=stock), families[stock])
        try:
            problems = self._run(meta(stock.META_SCHEMA).iter_errors(schema), CHECK_SECONDS, 1)
        except CheckTooCostly as exc:
            raise SchemaRefused(f"the schema is too costly to check: {exc.message}") from None
        if problems:
            raise SchemaRefused(f"the output schema is not a valid JSON Schema: {problems[0]}")

    @staticmethod
    def _scan(schema: dict[str, Any], max_depth: int) -> None:
        """Depth, references and patterns, before any of it is evaluated."""
        try:
            check_depth(schema, max_depth)
        except ValueError:
            raise SchemaRefused(f"the schema nests deeper than {max_depth} levels") from None
        stack: list[Any] = [schema]
        has_pattern_properties = has_unevaluated = False
        while stack:
            item = stack.pop()
            if isinstance(item, list):
                stack.extend(item)
                continue
            if not isinstance(item, dict):
                continue
            for key, value in item.items():
                if key in _REF_KEYS and isinstance(value, str) and not value.startswith("#"):
                    raise SchemaRefused(
                        f"the schema refers to {_short(value, 100)}: only references inside the "
                        "schema (#...) are followed; the host fetches nothing"
                    )
                if key == "pattern" and isinstance(value, str):
                    compile_pattern(value)
                if key == "patternProperties" and isinstance(value, dict):
                    has_pattern_properties = True
                    for pattern in value:
                        compile_pattern(pattern)
                if key == "unevaluatedProperties":
                    has_unevaluated = True
                stack.append(value)
        if has_pattern_properties and has_unevaluated:
            # jsonschema evaluates this pair with Python's backtracking `re`.
            raise SchemaRefused("unevaluatedProperties together with patternProperties is not supported")

    def problems(self, instance: Any, *, seconds: float = CHECK_SECONDS, limit: int = 8) -> list[str]:
        """What is wrong with ``instance`` (empty: it matches); at most ``limit`` messages.

        Raises :class:`CheckTooCostly` past the step or time bound, :class:`SchemaRefused`
        when the schema turns out to need what the host does not do (a reference it
        cannot resolve)."""
        from referencing import Registry

        validator = self._cls(self.schema, registry=Registry())
        return self._run(validator.iter_errors(instance), seconds, limit)

    @staticmethod
    def _run(errors: Any, seconds: float, limit: int) -> list[str]:
        import itertools

        from referencing.exceptions import Unresolvable

        seconds = max(0.05, seconds)
        meter = _Meter(time.monotonic() + seconds, CHECK_STEPS, MESSAGE_BUDGET, seconds)
        token = _METER.set(meter)
        try:
            found = list(itertools.islice(errors, max(limit, 64)))
        except RecursionError:
            raise CheckTooCostly("the schema nests or refers to itself too deeply to check") from None
        except Unresolvable as exc:
            raise SchemaRefused(f"the schema has a reference the host cannot resolve: {exc}") from None
        finally:
            _METER.reset(token)
        found.sort(key=lambda e: [str(p) for p in e.path])
        return [f"{'/'.join(map(str, e.path)) or '(root)'}: {e.message}" for e in found[:limit]]
