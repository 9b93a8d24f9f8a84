"""Replay the calls a golden case records (its config.json ``calls``) on a percli model.

The convention a runner relies on (keep ../shared/golden/README.md in step with it):

* ``calls`` maps an *entry key* to a text. The key names the outputs of the entry: several names are separated
  by ``", "``, ``" + "`` or ``" / "`` and take a tuple result in order (or the dict result's keys the runner
  maps them to, ``fields``); a name with an index token (``_i`` /
  ``_i_``, or the loop/subscript variable) takes the elements of a list result (``intermediate_i`` ->
  ``intermediate_0``, ...); a name with ``*`` takes the items of a dict result (``ff_*``).
* In the text, every ``[targets =] <receiver>[.attr ...](args)[trailers]`` is a *recorded call*, the receiver
  being ``model`` (``v`` for the bare PE VisionTransformer case); everything else is prose. A recorded call is
  parsed with `ast` and never evaluated: the method of the same name (or a runner's documented alias) is called
  on the percli model, with the arguments as recorded, positional and keyword, where an argument is
  - a Python literal (`ast.literal_eval`),
  - the name of a tensor of ``inputs.safetensors``, of an output of an earlier entry, of an assignment target
    earlier in the same entry, or of a top-level number of config.json (``mask_ratio``, ``mask_t_prob``),
  - a name the runner defines for the case's prose (``H2``, ``W2``, a loop variable ``i``), or
    ``model.<attr>`` (the percli model's attribute); ``+ - * // /`` on numbers; calls only to functions the
    runner whitelists (``zeros``).
  ``model.eval()`` / ``model.train()`` switch the percli model's mode. A literal subscript applies to the
  result; a subscript by an unbound name (``[key]``, ``[i]``) spreads the result over the entry's names.
  Tuple-assignment targets that are ``_`` beyond what percli returns are dropped (``pred, _, _ = ...``).
* A runner may add keyword arguments that are the case's saved RNG draws replacing the official code's draws
  (``noise=inputs["noise"]``), or that select the official output where percli's default differs (Hiera's
  eval-mode softmax: ``return_probs=True``); they can never override a recorded argument.
* A *structured* entry (a dict, as ``voicecraft_infer_tiny_cfg`` records them) is one call: ``function``
  (``"VoiceCraft.inference_tts"``: the method after the last ``.``, or a runner's alias, is called on the percli
  model), ``positional_inputs`` (names resolved as above; a non-string is a literal), ``kwargs`` (recorded
  literals, passed as they are) and, if present, ``seed``: Python's, NumPy's and torch's global generators are
  seeded with it right before the call (the official scripts' ``seed_everything``). ``observed`` is a note; any
  other field raises, as the replay would not honour it. The outputs are ``<entry>_<name>`` for every item of a
  dict result (a runner's ``extra``, keyed by the recorded ``function``, may ask percli for that form, e.g. a
  per-step trace), or ``<entry>`` for a single tensor. A calls key beginning with ``_`` (``_outputs_per_call``)
  documents the other entries and is not an entry.
* An entry a runner cannot replay (prose only, ``...``-elided arguments, intermediates of another call) is
  *pinned*: the runner names verbatim fragments of the text it implements by hand, and a changed fragment fails.
  A structured entry has no text to pin: it is replayed, or a runner's handler implements it.
* Every entry of a case must be replayed or pinned. Anything else -- an unknown entry without a replayable
  call, an unknown name, a method or argument percli lacks, an elided argument, an unknown field of a
  structured entry -- raises `GoldenReplayError` naming the case, the entry and the call.
"""

from __future__ import annotations

import ast
import inspect
import random
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

MODE_METHODS = frozenset({"eval", "train"})
_NAME_SPLIT = re.compile(r"\s*(?:,|\+|\s/)\s*")
_BINOPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
    ast.FloorDiv: lambda a, b: a // b, ast.Div: lambda a, b: a / b,
}


class GoldenReplayError(AssertionError):
    """A recorded call that cannot be replayed as recorded (the message names the case, entry and call)."""


@dataclass(frozen=True)
class RecordedCall:
    """One ``[targets =] receiver...(args)[trailers]`` found in an entry text."""

    text: str
    targets: tuple[str, ...] = ()
    expr: ast.expr | None = None
    error: str | None = None


@dataclass(frozen=True)
class ReplayedCall:
    """What was actually called on the percli model (for tests of the replay itself)."""

    entry: str
    method: str
    args: tuple
    kwargs: dict


@dataclass
class Executed:
    """The results of an entry's calls: the values of its expression calls, in order, and its assignments."""

    values: list
    env: dict = field(default_factory=dict)


@dataclass(frozen=True)
class _Spread:
    """A result subscripted by an unbound name: its items go to the entry's names, one set per index/key."""

    var: str
    container: Any


def _closing(text: str, start: int) -> int | None:
    """Index just after the bracket that closes ``text[start]`` (quotes respected), or None."""
    pairs, depth, quote = {"(": ")", "[": "]", "{": "}"}, [], None
    for pos in range(start, len(text)):
        ch = text[pos]
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in pairs:
            depth.append(pairs[ch])
        elif ch in ")]}":
            if not depth or depth.pop() != ch:
                return None
            if not depth:
                return pos + 1
    return None


def extract_calls(text: str, receivers: Iterable[str] = ("model",)) -> list[RecordedCall]:
    """The recorded calls of an entry text, in order (see the module docstring)."""
    alternatives = "|".join(re.escape(r) for r in receivers)
    start_re = re.compile(rf"(?<![\w.'\"])(?:{alternatives})(?:\.\w+)*\s*\(")
    target_re = re.compile(r"(?:^|(?<=[;:\s]))((?:\w+\s*,\s*)*\w+)\s*(?<![=!<>])=\s*$")
    calls, pos = [], 0
    while (match := start_re.search(text, pos)) is not None:
        start, end = match.start(), _closing(text, match.end() - 1)
        if end is None:
            calls.append(RecordedCall(text[start:], error="unbalanced brackets"))
            break
        while end < len(text) and text[end] in "[.(":
            if text[end] == ".":
                attr = re.match(r"\.\w+", text[end:])
                if attr is None:
                    break
                end += attr.end()
            else:
                close = _closing(text, end)
                if close is None:
                    break
                end = close
        snippet = text[start:end]
        targets_match = target_re.search(text[:start])
        targets = tuple(t.strip() for t in targets_match.group(1).split(",")) if targets_match else ()
        try:
            calls.append(RecordedCall(snippet, targets, ast.parse(snippet, mode="eval").body))
        except SyntaxError as err:
            calls.append(RecordedCall(snippet, targets, error=f"not Python ({err.msg})"))
        pos = end
    return calls


def output_names(key: str) -> list[str]:
    """The output names an entry key lists (``"loss, pred"`` -> ``["loss", "pred"]``)."""
    return [n for n in _NAME_SPLIT.split(key.strip()) if n]


def _index_token(var: str) -> re.Pattern:
    return re.compile(rf"(?<=_){re.escape(var)}(?=_|$)|\{{{re.escape(var)}\}}")


def substitute(name: str, var: str, value: Any) -> str:
    """``name`` with the index token ``var`` (``_i``, ``_i_``, ``{i}``) or ``*`` replaced by ``value``."""
    return _index_token(var).sub(str(value), name.replace("*", str(value)))


def _normalized(text: str) -> str:
    return " ".join(text.split())


class CallBook:
    """The recorded calls of one case, replayed on one percli model (see the module docstring).

    Args:
        case: the case's folder name (named in every error).
        config: its config.json.
        inputs: its inputs.safetensors tensors.
        model: the percli model the receiver stands for.
        receivers: the receiver names of the recorded calls.
        names: names of the case's prose the runner defines (``H2``...).
        functions: callables a recorded argument may call (``{"zeros": torch.zeros}``).
        aliases: official method name -> percli method name, where they differ.
    """

    def __init__(self, case: str, config: Mapping, inputs: Mapping[str, torch.Tensor], model: Any, *,
                 receivers: Iterable[str] = ("model",), names: Mapping[str, Any] | None = None,
                 functions: Mapping[str, Callable] | None = None, aliases: Mapping[str, str] | None = None):
        self.case, self.model, self.inputs = case, model, dict(inputs)
        self.receivers = tuple(receivers)
        self.names, self.functions, self.aliases = dict(names or {}), dict(functions or {}), dict(aliases or {})
        # keys beginning with "_" document the entries (the voicecraft inference case's "_outputs_per_call")
        self.entries: dict[str, Any] = {k: v for k, v in (config.get("calls") or {}).items() if not k.startswith("_")}
        if not self.entries:
            raise GoldenReplayError(f"golden case {case}: config.json records no calls")
        self.scalars = {k: v for k, v in config.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        self.parsed = {key: extract_calls(text, self.receivers) for key, text in self.entries.items()
                       if isinstance(text, str)}
        self.outputs: dict[str, Any] = {}
        self.handled: set[str] = set()
        self.log: list[ReplayedCall] = []

    # ----------------------------------------------------------------------- errors

    def error(self, key: str, what: str, call: RecordedCall | None = None) -> GoldenReplayError:
        where = f"`{call.text}`" if call is not None else repr(self.entries.get(key, "?"))
        return GoldenReplayError(f"golden case {self.case}: calls[{key!r}] {where}: {what}")

    def _text(self, key: str) -> str:
        if key not in self.entries:
            raise GoldenReplayError(f"golden case {self.case}: the runner expects a calls entry {key!r}, "
                                    f"the case records {sorted(self.entries)}")
        text = self.entries[key]
        if not isinstance(text, str):
            raise self.error(key, "a structured call record (function / positional_inputs / kwargs) has no text "
                                  "to pin or parse; replay it (`replay_structured`)")
        return text

    # ----------------------------------------------------------------------- pinning

    def pin(self, key: str, *fragments: str) -> None:
        """Mark `key` as implemented by the runner by hand: each fragment must be in its text verbatim."""
        if not fragments:
            raise ValueError("pin needs at least one fragment of the entry text")
        text = _normalized(self._text(key))
        missing = [f for f in fragments if _normalized(f) not in text]
        if missing:
            raise self.error(key, f"the runner implements this entry by hand as {missing!r}, which the record no "
                                  "longer says; replay the new record or update the runner")
        self.handled.add(key)

    # ----------------------------------------------------------------------- evaluation

    def _lookup(self, key: str, call: RecordedCall, name: str, env: Mapping[str, Any]) -> Any:
        if name in env:
            return env[name]
        if name in self.names:
            return self.names[name]
        found = [(src, table[name]) for src, table in (("inputs", self.inputs), ("outputs", self.outputs),
                                                       ("config", self.scalars)) if name in table]
        if not found:
            raise self.error(key, f"cannot resolve the name {name!r} (not an input, an earlier output, a "
                                  "config.json number or a name the runner defines)", call)
        if len(found) > 1 and any(v is not found[0][1] for _, v in found[1:]):
            raise self.error(key, f"the name {name!r} is ambiguous: {[src for src, _ in found]}", call)
        return found[0][1]

    def _chain(self, node: ast.expr) -> list[str] | None:
        """``model.a.b`` -> ["model", "a", "b"] when rooted at a receiver, else None."""
        parts = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if isinstance(node, ast.Name) and node.id in self.receivers:
            return [node.id, *reversed(parts)]
        return None

    def _attribute(self, key: str, call: RecordedCall, chain: list[str], method: bool) -> Any:
        obj = self.model
        for i, attr in enumerate(chain[1:], start=1):
            last = i == len(chain) - 1
            name = self.aliases.get(attr, attr) if (last and method) else attr
            if not hasattr(obj, name):
                kind = "method" if (last and method) else "attribute"
                raise self.error(key, f"percli's {type(obj).__name__} has no {kind} {name!r}", call)
            obj = getattr(obj, name)
        return obj

    def _value(self, key: str, call: RecordedCall, node: ast.expr, env: Mapping[str, Any]) -> Any:
        """An argument value: a literal, a resolvable name, a model attribute or simple arithmetic."""
        if any(isinstance(n, ast.Constant) and n.value is Ellipsis for n in ast.walk(node)):
            raise self.error(key, "an elided argument (`...`) cannot be replayed", call)
        try:
            return ast.literal_eval(node)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            pass
        if isinstance(node, ast.Name):
            return self._lookup(key, call, node.id, env)
        if isinstance(node, ast.Attribute) and (chain := self._chain(node)) is not None:
            return self._attribute(key, call, chain, method=False)
        if isinstance(node, ast.List | ast.Tuple):
            items = [self._value(key, call, item, env) for item in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            operand = self._value(key, call, node.operand, env)
            if isinstance(operand, int | float) and not isinstance(operand, bool):
                return -operand
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            left, right = self._value(key, call, node.left, env), self._value(key, call, node.right, env)
            if all(isinstance(v, int | float) and not isinstance(v, bool) for v in (left, right)):
                return _BINOPS[type(node.op)](left, right)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in self.functions:
            args, kwargs = self._arguments(key, call, node, env)
            return self.functions[node.func.id](*args, **kwargs)
        raise self.error(key, f"cannot replay the argument `{ast.unparse(node)}`", call)

    def _arguments(self, key: str, call: RecordedCall, node: ast.Call, env: Mapping[str, Any]) -> tuple[list, dict]:
        args, kwargs = [], {}
        for arg in node.args:
            if isinstance(arg, ast.Starred):
                raise self.error(key, f"cannot replay the starred argument `{ast.unparse(arg)}`", call)
            args.append(self._value(key, call, arg, env))
        for kw in node.keywords:
            if kw.arg is None:
                raise self.error(key, f"cannot replay `**{ast.unparse(kw.value)}`", call)
            kwargs[kw.arg] = self._value(key, call, kw.value, env)
        return args, kwargs

    def _call(self, key: str, call: RecordedCall, node: ast.Call, env: Mapping[str, Any],
              extra: Mapping[str, Mapping[str, Any]]) -> Any:
        chain = self._chain(node.func) if isinstance(node.func, ast.Attribute) else (
            [node.func.id] if isinstance(node.func, ast.Name) and node.func.id in self.receivers else None)
        if chain is None:
            raise self.error(key, f"cannot replay a call to `{ast.unparse(node.func)}`", call)
        target = self.model if len(chain) == 1 else self._attribute(key, call, chain, method=True)
        args, kwargs = self._arguments(key, call, node, env)
        callee = ".".join(chain)
        added = dict(extra.get(callee, {}))
        clash = sorted(set(added) & set(kwargs))
        if clash:
            raise self.error(key, f"the runner's RNG arguments {clash} would override recorded ones", call)
        kwargs.update(added)
        signature_of = target.forward if isinstance(target, torch.nn.Module) else target
        try:
            inspect.signature(signature_of).bind(*args, **kwargs)
        except TypeError as err:
            what = f"{type(self.model).__name__}.{'.'.join(chain[1:]) or 'forward'}"
            raise self.error(key, f"percli's {what} cannot take the recorded arguments: {err}", call) from None
        except ValueError:  # no signature (builtins): let the call itself decide
            pass
        self.log.append(ReplayedCall(key, ".".join(chain[1:]) or "__call__", tuple(args), dict(kwargs)))
        return target(*args, **kwargs)

    def _eval(self, key: str, call: RecordedCall, node: ast.expr, env: Mapping[str, Any],
              extra: Mapping[str, Mapping[str, Any]], outermost: bool = True) -> Any:
        if isinstance(node, ast.Call):
            return self._call(key, call, node, env, extra)
        if isinstance(node, ast.Subscript):
            value = self._eval(key, call, node.value, env, extra, outermost=False)
            index = node.slice
            if isinstance(index, ast.Name) and index.id not in env and index.id not in self.names:
                if not outermost:
                    raise self.error(key, f"only the last subscript may spread a result (`[{index.id}]`)", call)
                return _Spread(index.id, value)
            return value[self._value(key, call, index, env)]
        raise self.error(key, f"cannot replay `{ast.unparse(node)}`", call)

    # ----------------------------------------------------------------------- replay

    def calls(self, key: str) -> list[RecordedCall]:
        """The recorded calls of entry `key` (raises if it has none)."""
        self._text(key)
        found = self.parsed[key]
        if not found:
            raise self.error(key, "records no call on the model the runner could replay, and the runner does not "
                                  "implement it by hand")
        return found

    def execute(self, key: str, *, env: Mapping[str, Any] | None = None,
                extra: Mapping[str, Mapping[str, Any]] | None = None) -> Executed:
        """Run every recorded call of entry `key` in order on the percli model.

        Args:
            env: extra names for this run (loop variables).
            extra: per callee as written (``"model.forward_encoder"``, ``"model"``), keyword arguments that
                carry the case's saved RNG draws (or select the official output convention).
        """
        local: dict[str, Any] = dict(env or {})
        values = []
        for call in self.calls(key):
            if call.error is not None:
                raise self.error(key, f"cannot parse the recorded call: {call.error}", call)
            result = self._eval(key, call, call.expr, local, extra or {})
            if call.targets:
                targets = list(call.targets)
                if not isinstance(result, tuple | list):
                    result = (result,)
                while len(targets) > len(result) and targets[-1] == "_":
                    targets.pop()  # official returns more than percli, and the record throws those away
                if len(targets) != len(result):
                    raise self.error(key, f"percli returns {len(result)} values for {len(call.targets)} targets",
                                     call)
                local.update(zip(targets, result))
            elif not (isinstance(call.expr, ast.Call) and isinstance(call.expr.func, ast.Attribute)
                      and call.expr.func.attr in MODE_METHODS and not call.expr.args):
                values.append(result)
        self.handled.add(key)
        for name in env or {}:
            local.pop(name)
        return Executed(values, _Env(self, key, local))

    def _single(self, key: str, executed: Executed) -> Any:
        if len(executed.values) != 1:
            raise self.error(key, f"{len(executed.values)} calls give values; the runner must say which output "
                                  "each one is")
        return executed.values[0]

    def assign(self, key: str, names: list[str], value: Any, fields: Mapping[str, str] | None = None
               ) -> dict[str, Any]:
        """Outputs named `names` from an entry's value (see the module docstring)."""
        out: dict[str, Any] = {}
        if isinstance(value, _Spread):
            items = value.container.items() if isinstance(value.container, Mapping) else enumerate(value.container)
            if not any("*" in n or _index_token(value.var).search(n) for n in names):
                raise self.error(key, f"no output name shows where `[{value.var}]` goes")
            for index, item in items:
                if item is not None:
                    out.update(self.assign(key, [substitute(n, value.var, index) for n in names], item, fields))
            return out
        if fields is not None:
            if not isinstance(value, Mapping):
                raise self.error(key, f"the runner maps names to result keys, but the result is a {type(value)}")
            unknown = [n for n in names if n not in fields]
            if unknown:
                raise self.error(key, f"the runner does not know which result key gives {unknown}")
            for name in names:
                if fields[name] not in value:
                    raise self.error(key, f"the result has no key {fields[name]!r} (for {name}): {sorted(value)}")
                out.update(self.assign(key, [name], value[fields[name]]))
            return out
        if len(names) > 1:
            if not isinstance(value, tuple | list) or len(value) != len(names):
                got = f"{len(value)} values" if isinstance(value, tuple | list) else f"a {type(value).__name__}"
                raise self.error(key, f"{len(names)} output names {names}, but the replayed call gives {got}")
            for name, item in zip(names, value):
                out.update(self.assign(key, [name], item))
            return out
        (name,) = names
        if "*" in name:
            if not isinstance(value, Mapping):
                raise self.error(key, f"{name} needs a dict result, got a {type(value).__name__}")
            out.update({substitute(name, "*", k): v for k, v in value.items() if v is not None})
        elif _index_token("i").search(name) and isinstance(value, tuple | list):
            out.update({substitute(name, "i", i): v for i, v in enumerate(value)})
        else:
            out[name] = value
        return out

    def replay(self, key: str, *, loop: Mapping[str, Iterable] | None = None, fields: Mapping[str, str] | None = None,
               extra: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
        """Replay entry `key` and name its outputs from the key.

        Args:
            loop: ``{var: values}``: replay once per value of the free variable ``var`` of the record
                (``layer_idx=i``), naming the outputs with it.
            fields: output name -> key of a dict result, where the names are not the result's keys.
            extra: see `execute`.
        """
        names = output_names(key)
        if not loop:
            return self.assign(key, names, self._single(key, self.execute(key, extra=extra)), fields)
        ((var, values),) = loop.items()
        out = {}
        for value in values:
            executed = self.execute(key, env={var: value}, extra=extra)
            out.update(self.assign(key, [substitute(n, var, value) for n in names], self._single(key, executed),
                                   fields))
        return out

    def replay_structured(self, key: str, *, extra: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
        """Replay the structured entry `key` (see the module docstring) and name its outputs.

        Args:
            extra: per callee as recorded in ``function``, keyword arguments the runner adds (never over a recorded
                one), e.g. asking percli for the per-step trace the case saves.
        """
        entry = self.entries.get(key)
        if not isinstance(entry, Mapping):
            raise GoldenReplayError(f"golden case {self.case}: calls[{key!r}] is not a structured call record")
        record = RecordedCall(f"{entry.get('function', '?')}(*{entry.get('positional_inputs', [])}, "
                              f"**{entry.get('kwargs', {})})")
        function = entry.get("function")
        if not isinstance(function, str) or not function:
            raise self.error(key, "records no `function` to call", record)
        unknown = sorted(set(entry) - {"function", "positional_inputs", "kwargs", "seed", "observed"})
        if unknown:
            raise self.error(key, f"records fields {unknown} this replay does not know how to honour", record)
        method = function.rsplit(".", 1)[-1]
        target = self._attribute(key, record, [self.receivers[0], method], method=True)
        names = entry.get("positional_inputs") or []
        args = [self._lookup(key, record, n, {}) if isinstance(n, str) else n for n in names]
        kwargs = dict(entry.get("kwargs") or {})
        added = dict((extra or {}).get(function, {}))
        clash = sorted(set(added) & set(kwargs))
        if clash:
            raise self.error(key, f"the runner's arguments {clash} would override recorded ones", record)
        kwargs.update(added)
        try:
            inspect.signature(target).bind(*args, **kwargs)
        except TypeError as err:
            raise self.error(key, f"percli's {type(self.model).__name__}.{self.aliases.get(method, method)} cannot "
                                  f"take the recorded arguments: {err}", record) from None
        if "seed" in entry:
            seed = int(entry["seed"])
            random.seed(seed)
            np.random.seed(seed)
            torch.manual_seed(seed)
        self.log.append(ReplayedCall(key, method, tuple(args), dict(kwargs)))
        result = target(*args, **kwargs)
        self.handled.add(key)
        if isinstance(result, Mapping):
            return {f"{key}_{name}": value for name, value in result.items() if value is not None}
        if isinstance(result, torch.Tensor):
            return {key: result}
        raise self.error(key, f"percli returns a {type(result).__name__}: the runner must ask for a dict (its items "
                              f"are the outputs {key}_<name>)", record)

    def replay_all(self, *, custom: Mapping[str, tuple[tuple[str, ...], Callable[[dict], dict]]] | None = None,
                   pins: Mapping[str, tuple[str, ...]] | None = None, loops: Mapping[str, Mapping] | None = None,
                   fields: Mapping[str, Mapping[str, str]] | None = None,
                   extra: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None) -> dict[str, Any]:
        """Every entry in the recorded order; returns all outputs.

        Args:
            custom: key -> (fragments to pin, handler(outputs so far) -> outputs). With no fragments, the
                handler must `execute` the entry itself.
            pins: key -> fragments, for entries whose outputs another entry's handler produces.
            loops / fields / extra: per key, as in `replay`.
        """
        custom, pins, loops, fields, extra = custom or {}, pins or {}, loops or {}, fields or {}, extra or {}
        for key in self.entries:
            if key in custom:
                fragments, handler = custom[key]
                if fragments:
                    self.pin(key, *fragments)
                self.outputs.update(handler(self.outputs))
                if key not in self.handled:
                    raise self.error(key, "the runner's handler neither replayed nor pinned this entry")
            elif key in pins:
                self.pin(key, *pins[key])
            elif isinstance(self.entries[key], Mapping):
                if key in loops or key in fields:
                    raise self.error(key, "a structured call record takes no loop or field mapping")
                self.outputs.update(self.replay_structured(key, extra=extra.get(key)))
            else:
                self.outputs.update(self.replay(key, loop=loops.get(key), fields=fields.get(key),
                                                extra=extra.get(key)))
        return self.finish()

    def finish(self) -> dict[str, Any]:
        """The outputs, once every entry was replayed or pinned (else raises, naming the others)."""
        left = [k for k in self.entries if k not in self.handled]
        if left:
            raise GoldenReplayError(f"golden case {self.case}: the runner neither replayed nor pinned the recorded "
                                    f"calls {left}")
        return self.outputs


class _Env(dict):
    """An entry's assignments; a name the record does not assign raises, naming the case."""

    def __init__(self, book: CallBook, key: str, values: Mapping[str, Any]):
        super().__init__(values)
        self._book, self._key = book, key

    def __missing__(self, name: str) -> Any:
        raise self._book.error(self._key, f"the runner expects the record to assign {name!r}; it assigns "
                                          f"{sorted(self)}")
