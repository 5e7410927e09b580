"""`calculate`: arithmetic the model would otherwise guess at, evaluated safely by walking the `ast`.

Only numbers, the arithmetic operators, parentheses and a short list of functions and constants are
understood; any other syntax (names, attributes, calls of anything else, strings) is refused. Every
intermediate result is bounded, and a power is refused before it is computed if its result would be huge.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, Field

from backend.tools.base import Tool, ToolContext

Number = int | float

MAX_EXPRESSION_CHARS = 200
MAX_MAGNITUDE = 1e300
"""Largest absolute value of any intermediate result."""
_MAX_LOG10 = math.log10(MAX_MAGNITUDE)
_MAX_ROUND_DIGITS = 100


class CalculatorArgs(BaseModel):
    expression: str = Field(
        min_length=1,
        max_length=MAX_EXPRESSION_CHARS,
        description=(
            "Arithmetic expression: numbers, + - * / // % ** and parentheses, the functions sqrt, abs, round, "
            "min, max, log (natural, or log(x, base)), sin, cos (radians) and the constants pi, e. "
            "Example: 'sqrt(2) * (3 + 4) ** 2'."
        ),
    )


class Calculate(Tool[CalculatorArgs]):
    name = "calculate"
    description = "Evaluate an arithmetic expression exactly instead of estimating it."
    args_model = CalculatorArgs
    timeout_seconds = 5.0

    async def execute(self, args: CalculatorArgs, ctx: ToolContext) -> dict[str, Any]:
        return {"expression": args.expression, "result": evaluate(args.expression)}


def evaluate(expression: str) -> Number:
    """The value of `expression`. Raises `ValueError` with a message fit for the model on any problem."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ValueError(f"Expression is longer than {MAX_EXPRESSION_CHARS} characters.")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"Invalid expression: {exc.msg}.") from None
    try:
        return _eval(tree.body)
    except ZeroDivisionError:
        raise ValueError("Division by zero.") from None
    except OverflowError:
        raise ValueError(f"Result too large (limit {MAX_MAGNITUDE:g}).") from None


_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}

_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}

_CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e}


def _log(x: Number, base: Number | None = None) -> float:
    return math.log(x) if base is None else math.log(x, base)


def _round(x: Number, ndigits: Number | None = None) -> Number:
    if ndigits is None:
        return round(x)
    if not isinstance(ndigits, int) or abs(ndigits) > _MAX_ROUND_DIGITS:
        raise ValueError(f"round() digits must be a whole number between -{_MAX_ROUND_DIGITS} and {_MAX_ROUND_DIGITS}.")
    return round(x, ndigits)


# name -> (function, min args, max args or None for any)
_FUNCTIONS: dict[str, tuple[Callable[..., Number], int, int | None]] = {
    "sqrt": (math.sqrt, 1, 1),
    "abs": (abs, 1, 1),
    "round": (_round, 1, 2),
    "min": (lambda *xs: min(xs), 1, None),
    "max": (lambda *xs: max(xs), 1, None),
    "log": (_log, 1, 2),
    "sin": (math.sin, 1, 1),
    "cos": (math.cos, 1, 1),
}


def _eval(node: ast.expr) -> Number:
    match node:
        case ast.Constant(value=value):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"Only numbers are allowed, not {value!r}.")
            return _checked(value)
        case ast.Name(id=name):
            if name in _CONSTANTS:
                return _CONSTANTS[name]
            if name in _FUNCTIONS:
                raise ValueError(f"{name} is a function: call it as {name}(...).")
            raise ValueError(f"Unknown name {name!r}; known constants: {', '.join(_CONSTANTS)}.")
        case ast.UnaryOp(op=op, operand=operand) if type(op) in _UNARY:
            return _checked(_UNARY[type(op)](_eval(operand)))
        case ast.BinOp(left=left, op=op, right=right) if type(op) in _BINARY:
            a, b = _eval(left), _eval(right)
            if isinstance(op, ast.Pow):
                _check_power(a, b)
            return _checked(_BINARY[type(op)](a, b))
        case ast.BinOp(op=op) | ast.UnaryOp(op=op):
            raise ValueError(f"Unsupported operator: {type(op).__name__}.")
        case ast.Call(func=ast.Name(id=name), args=args, keywords=[]) if name in _FUNCTIONS:
            return _call(name, [_eval(arg) for arg in args])
        case ast.Call(func=ast.Name(id=name)):
            if name in _FUNCTIONS:
                raise ValueError(f"{name}() takes no keyword arguments.")
            raise ValueError(f"Unknown function {name!r}; available: {', '.join(_FUNCTIONS)}.")
        case ast.Call():
            raise ValueError(f"Only these functions can be called, by name: {', '.join(_FUNCTIONS)}.")
        case _:
            raise ValueError(f"Unsupported syntax: {type(node).__name__}.")


def _call(name: str, args: list[Number]) -> Number:
    function, least, most = _FUNCTIONS[name]
    if len(args) < least or (most is not None and len(args) > most):
        expected = str(least) if least == most else f"{least} to {most}" if most else f"at least {least}"
        raise ValueError(f"{name}() takes {expected} argument(s), got {len(args)}.")
    try:
        result = function(*args)
    except ValueError as exc:
        if "math domain error" in str(exc):
            raise ValueError(f"{name}() is not defined for {', '.join(map(repr, args))}.") from None
        raise
    return _checked(result)


def _check_power(base: Number, exponent: Number) -> None:
    """Refuse a power whose result would exceed the limit, before computing it."""
    if base == 0 and exponent < 0:
        raise ZeroDivisionError
    if abs(base) > 1 and exponent > 0 and exponent * math.log10(abs(base)) > _MAX_LOG10:
        raise OverflowError
    if 0 < abs(base) < 1 and exponent < 0 and -exponent * -math.log10(abs(base)) > _MAX_LOG10:
        raise OverflowError


def _checked(value: Any) -> Number:
    if isinstance(value, complex):  # e.g. (-8) ** (1/3)
        raise ValueError("The result is a complex number, which is not supported.")
    if isinstance(value, float) and math.isnan(value):
        raise ValueError("The result is not a number.")
    if abs(value) > MAX_MAGNITUDE:
        raise OverflowError
    number: Number = value
    return number
