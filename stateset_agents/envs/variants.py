"""Scenario variants: every train scenario expands into many distinct, consistent copies by seeded substitution.

A pack declares *what* varies as data (``variants:`` in ``pack.yaml``, and ``vary:`` in a scenario; the schema is in
:mod:`.variant_spec`). A variant replaces, everywhere in the scenario at once (the user's lines and facts, the
database and its keys, the goal conditions, expected changes, required facts, claims and the reference solution):

- every id of a declared shape (``ORD-9104``) by a fresh id of the same shape that the scenario does not use;
- every person of the declared tables (a record whose ``name`` is two or three capitalised
  words, and so the user) by a new first and
  last name: the full name, each name alone as a word, and the record's email (its lowercase name parts);
- each ``vary`` entry: text aliases by the same-position aliases of another value of the named pool, and an amount
  by another with the same cents and whole dollars drawn in the entry's range (so a declared range keeps the
  amount on the same side of a policy limit), in data (numbers equal to it) and in text (``$54``, ``$54.00``,
  ``54.00``, ``54 dollars``).

All substitutions happen in one pass over each string (a new value is never substituted again). Variant ids are
``BASE~vN`` and carry ``variant_of: BASE``. Test scenarios are never varied. Variants are drawn from
``random.Random`` seeded by (pack, scenario, seed, N), so they are the same on every machine and run. A variant that
no longer validates is a pack error naming the scenario; that each variant's reference still succeeds is checked by
``envs validate`` (a sample) and by the tests (``tests/envs/test_variants.py``).
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..errors import PackError
from .pack import EnvPack, Scenario
from .variant_spec import VariantSpec, VaryEntry

__all__ = ["expand_scenario", "variant_counts", "with_variants"]

SEP = "~v"
"""Between a base scenario's id and the variant number."""

_TRIES = 50


def _walk(obj: Any, text: Any, num: Any) -> Any:
    if isinstance(obj, dict):
        return {text(k) if isinstance(k, str) else k: _walk(v, text, num) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_walk(v, text, num) for v in obj]
    if isinstance(obj, str):
        return text(obj)
    if isinstance(obj, (int, float)) and not isinstance(obj, bool):
        return num(obj)
    return obj


def _strings(obj: Any) -> Iterable[str]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(k, str):
                yield k
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)
    elif isinstance(obj, str):
        yield obj


class _Subs:
    """Literal -> replacement, applied in one pass (longest literal first) with word-like boundaries."""

    def __init__(self) -> None:
        self.text: dict[str, tuple[str, str]] = {}  # literal -> (regex, replacement)
        self.nums: dict[float, float] = {}

    def word(self, old: str, new: str, *, any_case: bool = False) -> None:
        """``any_case``: also match ``old`` in other letter cases (ids; the replacement takes a lowercase match's
        case: ``q-317`` -> ``q-482``)."""
        flags = "(?i:" if any_case else "(?:"
        self.text[old] = (rf"(?<![\w-]){flags}{re.escape(old)})(?![\w])", new)

    def amount(self, old: float, new: float) -> None:
        self.nums[old] = new
        cents = round((old - math.floor(old)) * 100)
        forms = {f"${old:.2f}": f"${new:.2f}", f"{old:.2f}": f"{new:.2f}", f"${old:,.2f}": f"${new:,.2f}"}
        if cents == 0:
            forms[f"${old:.0f}"] = f"${new:.0f}"
            forms[f"${old:,.0f}"] = f"${new:,.0f}"
            forms[f"{old:.0f} dollars"] = f"{new:.0f} dollars"
        for o, n in forms.items():
            self.text[o] = (rf"(?<![\w.]){re.escape(o)}(?![\d]|\.\d)", n)

    def compile(self) -> tuple[Any, Any]:
        order = sorted(self.text, key=len, reverse=True)
        reps = [self.text[o][1] for o in order]
        rx = re.compile("|".join(f"(?P<g{i}>{self.text[o][0]})" for i, o in enumerate(order))) if order else None

        def text(s: str) -> str:
            if rx is None:
                return s
            def rep(m: re.Match[str]) -> str:
                new = reps[int(m.lastgroup[1:])]  # type: ignore[index]
                return new.lower() if m.group(0).islower() and not new.islower() else new
            return rx.sub(rep, s)

        def num(x: float) -> float:
            if float(x) in self.nums:
                new = self.nums[float(x)]
                return int(new) if isinstance(x, int) else new
            return x

        return text, num


def _fresh_ids(spec: VariantSpec, blob: str, rng: random.Random, subs: _Subs) -> None:
    for shape in spec.ids:
        found = sorted({m.upper() for m in re.findall(rf"(?<![\w-]){re.escape(shape.prefix)}\d{{{shape.digits}}}(?!\w)",
                                                      blob, flags=re.IGNORECASE)})
        taken = set(found)
        lo = 10 ** (shape.digits - 1)
        for old in found:
            for _ in range(_TRIES):
                new = f"{shape.prefix}{rng.randrange(lo, 10 * lo)}"
                if new not in taken:
                    break
            taken.add(new)
            subs.word(old, new, any_case=True)


def _people(spec: VariantSpec, raw: dict[str, Any], rng: random.Random, subs: _Subs) -> None:
    if spec.people is None:
        return
    records = [r for t in spec.people.tables for r in (raw["database"].get(t) or {}).values() if isinstance(r, dict)]
    people = {(r["name"], r.get("email")) for r in records if isinstance(r.get("name"), str)
              and 2 <= len(r["name"].split()) <= 3 and r["name"].istitle()}
    used = {n for n, _ in people} | {raw["user"]["name"]}
    firsts = {n.split()[0] for n, _ in people}
    lasts = {n.split()[-1] for n, _ in people}
    for name, email in sorted(people, key=lambda p: p[0]):
        first, last = name.split()[0], name.split()[-1]
        for _ in range(_TRIES):
            nf, nl = rng.choice(spec.people.first), rng.choice(spec.people.last)
            if f"{nf} {nl}" not in used and nf not in firsts and nl not in lasts:
                break
        used.add(f"{nf} {nl}")
        firsts.add(nf)
        lasts.add(nl)
        subs.word(name, f"{nf} {nl}")
        subs.word(first, nf)
        subs.word(last, nl)
        if isinstance(email, str) and "@" in email:
            local, domain = email.split("@", 1)
            new_local = local.replace(first.lower(), nf.lower()).replace(last.lower(), nl.lower())
            new_domain = domain.replace(last.lower(), nl.lower())
            subs.word(email, f"{new_local}@{new_domain}")


def _vary(spec: VariantSpec, entries: list[VaryEntry], sid: str, rng: random.Random, subs: _Subs) -> None:
    for e in entries:
        if e.range is not None:
            old = float(e.value)  # type: ignore[arg-type]
            frac = old - math.floor(old)
            lo, hi = math.ceil(e.range[0] - frac), math.floor(e.range[1] - frac)
            choices = [d + frac for d in range(lo, hi + 1) if abs(d + frac - old) > 1e-9]
            if not choices:
                raise PackError(f"scenario {sid!r}, field 'vary': range {list(e.range)} holds no other amount "
                                f"with the cents of {old}; widen it", scenario=sid, field="vary")
            subs.amount(old, round(rng.choice(choices), 2))
            continue
        pool = spec.pools.get(e.pool or "")
        if pool is None:
            raise PackError(f"scenario {sid!r}, field 'vary': pool {e.pool!r} is not declared in the pack's "
                            f"variants.pools ({sorted(spec.pools)})", scenario=sid, field="vary")
        aliases = e.aliases()
        if len(aliases) != len(pool[0]):
            raise PackError(f"scenario {sid!r}, field 'vary': {aliases} has {len(aliases)} alias(es) but pool "
                            f"{e.pool!r} values have {len(pool[0])}", scenario=sid, field="vary")
        pick = rng.choice([v for v in pool if v != aliases])
        for old, new in zip(aliases, pick, strict=True):
            subs.word(old, new)


def expand_scenario(pack: EnvPack, scenario: Scenario, n: int, *, seed: int = 0) -> list[Scenario]:
    """``n`` variants of ``scenario`` (see the module docs); distinct from it and from each other."""
    from .validate import check_pack  # cross-references, as at load

    spec = pack.variants
    if spec is None:
        raise PackError(f"pack {pack.name!r} declares no variants; add a `variants:` section to its pack.yaml "
                        "(docs/environments.md, 'Scenario variants')", field="variants")
    if scenario.split != "train":
        raise PackError(f"scenario {scenario.id!r} is a test scenario; only train scenarios are varied",
                        scenario=scenario.id)
    base = scenario.model_dump(mode="json", exclude={"variant_of"})
    blob = json.dumps(base)
    seen = {blob}
    out: list[Scenario] = []
    where = Path(pack.path or pack.name) / "scenarios"
    for i in range(1, n + 1):
        for attempt in range(_TRIES):
            rng = random.Random(f"{pack.name}|{scenario.id}|{seed}|{i}|{attempt}")
            subs = _Subs()
            _fresh_ids(spec, blob, rng, subs)
            _people(spec, base, rng, subs)
            _vary(spec, scenario.vary, scenario.id, rng, subs)
            text, num = subs.compile()
            raw = _walk(base, text, num)
            key = json.dumps({**raw, "id": ""})
            if key not in seen:
                break
        seen.add(key)
        raw.update(id=f"{scenario.id}{SEP}{i}", variant_of=scenario.id)
        try:
            v = Scenario.model_validate(raw)
        except ValidationError as e:
            raise PackError(f"{where}: variant {raw['id']!r} of scenario {scenario.id!r} does not validate: "
                            f"{e.errors()[0]['msg']}; check its `vary` entries", scenario=scenario.id) from e
        check_pack(pack, v, where)
        out.append(v)
    return out


_CACHE: dict[tuple[int, int | None, int, tuple[str, ...] | None], tuple[EnvPack, EnvPack]] = {}


def with_variants(pack: EnvPack, per_scenario: int | None = None, *, only: list[str] | None = None,
                  seed: int = 0) -> EnvPack:
    """A copy of ``pack`` whose scenarios also hold ``per_scenario`` variants (default: the pack's ``count``) of each
    train scenario (or of the train scenarios in ``only``). Cached per pack object and arguments."""
    if pack.variants is None:
        raise PackError(f"pack {pack.name!r} declares no variants; add a `variants:` section to its pack.yaml "
                        "or set train_variants: 0", field="variants")
    n = pack.variants.count if per_scenario is None else per_scenario
    key = (id(pack), n, seed, tuple(only) if only is not None else None)
    hit = _CACHE.get(key)
    if hit is not None and hit[0] is pack:
        return hit[1]
    bases = [s for s in pack.scenarios if s.split == "train" and s.variant_of is None
             and (only is None or s.id in only)]
    extra = [v for s in bases for v in expand_scenario(pack, s, n, seed=seed)]
    out = pack.model_copy(update={"scenarios": [*pack.scenarios, *extra]})
    _CACHE[key] = (pack, out)
    return out


def variant_counts(pack: EnvPack) -> tuple[int, int]:
    """(variants per train scenario by default, total train variants by default); (0, 0) without a declaration."""
    if pack.variants is None:
        return 0, 0
    n_train = sum(1 for s in pack.scenarios if s.split == "train" and s.variant_of is None)
    return pack.variants.count, pack.variants.count * n_train
