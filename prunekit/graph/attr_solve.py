"""Solve the sizes read from attributes (`graph.attrs`) for the attributes' values after pruning.

Each recorded equation says ``polynomial(attributes) == kept positions among some channel ids``. Once groups are
built, the right side is a linear form in the units each group loses: every unit of a group must hold the same number
of those positions (else the size would depend on *which* units go, and the group is refused). The equations are then
solved for the attributes, one unknown at a time (``head_dim == 16`` first, then ``num_attention_heads * head_dim ==
32 * kept``), falling back to linear elimination for attributes only used together. The outcome:

* an attribute whose new value is an integer linear form in the removed counts is rewritten by `apply`
  (`AttrRewrite`);
* an equation that is left over couples groups: when its terms cancel if those groups lose equally many units (one
  config value read by every layer), they form a class that moves together (``tags["tied"]``); otherwise, and when
  an attribute is frozen (used where a new value would not follow) or cannot be solved, the groups are refused with
  the attribute, its use and the operation named.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from fractions import Fraction
from typing import Dict, List, Optional, Sequence, Set, Tuple

from .attrs import Equation, Poly
from .types import ChannelGroup

Form = Dict[str, Fraction]  # group id -> coefficient of its removed count; "" -> constant


@dataclass
class AttrRewrite:
    """An attribute whose value after pruning is ``form[""] + sum(form[g] * removed units of g)``.

    Attributes:
        owner: module name, or ``"<module>.<attr>"`` for a config object held by that module.
        name: attribute name.
        old: value before pruning.
        form: the linear form (see above).
    """

    owner: str
    name: str
    old: int
    form: Form

    def value(self, removed_counts: Dict[str, int]) -> int:
        v = self.form.get("", Fraction(0)) + sum(c * removed_counts.get(g, 0) for g, c in self.form.items() if g)
        if v.denominator != 1 or v <= 0:
            raise ValueError(f"attribute '{self.key}' would become {v}")
        return int(v)

    @property
    def key(self) -> str:
        return f"{self.owner}.{self.name}" if self.owner else self.name


def _add(a: Form, b: Form, scale: Fraction = Fraction(1)) -> Form:
    out = dict(a)
    for k, v in b.items():
        out[k] = out.get(k, Fraction(0)) + scale * v
        if out[k] == 0 and k:
            del out[k]
    return out


def _is_const(f: Form) -> bool:
    return all(not k or v == 0 for k, v in f.items())


def _mul(a: Form, b: Form) -> Optional[Form]:
    if _is_const(a):
        return {k: v * a.get("", Fraction(0)) for k, v in b.items()}
    if _is_const(b):
        return _mul(b, a)
    return None  # a product of two changing sizes: not linear in the removed counts


def poly_text(poly: Poly) -> str:
    terms = []
    for mono, c in sorted(poly.items()):
        factors = ([str(c)] if c != 1 or not mono else []) + list(mono)
        terms.append(" * ".join(factors))
    return " + ".join(terms) or "0"


class _Solver:
    def __init__(self, state, by_id: Dict[str, ChannelGroup]):
        self.state, self.by_id = state, by_id
        self.owners = state.attrs.owners
        self.refusals: Dict[str, str] = {}
        self.ties: List[Tuple[Set[str], str]] = []
        self.known: Dict[str, Form] = {}

    def refuse(self, gids, reason: str) -> None:
        for g in gids:
            self.refusals.setdefault(g, reason)

    def form_of(self, eq: Equation) -> Optional[Form]:
        """Kept positions among eq.ids as a linear form in the removed counts (None: refused)."""
        roots = self.state.uf.roots(eq.ids).tolist()
        const, per = 0, defaultdict(Counter)
        for r in roots:
            hit = self.state.unit_of.get(r) if r >= 0 else None
            if hit is None or not self.by_id[hit[0]].prunable:
                const += 1
            else:
                per[hit[0]][hit[1]] += 1
        form: Form = {"": Fraction(const)}
        bad = []
        for gid, counter in per.items():
            g = self.by_id[gid]
            counts = set(counter.values()) | ({0} if len(counter) < g.size else set())
            if len(counts) > 1:
                bad.append(gid)
                continue
            c = counts.pop()
            form[""] += c * g.size
            form[gid] = Fraction(-c)
        if bad:
            self.refuse(bad, f"the size {poly_text(eq.poly)} read from attributes at {eq.where} counts positions "
                             f"that only some of the units hold (its value would depend on which units are removed)")
            return None
        return form

    def solve(self, equations: Sequence[Equation]) -> None:
        for key, why in self.state.attrs.frozen.items():
            self.known[key] = {"": Fraction(self.owners[key][2])} if key in self.owners else {"": Fraction(0)}
        pending = []
        for eq in equations:
            form = self.form_of(eq)
            if form is not None:
                pending.append((eq, form))
        progress = True
        while progress and pending:
            progress = False
            left = []
            for eq, form in pending:
                done = self.step(eq, form)
                progress |= done
                if not done:
                    left.append((eq, form))
            pending = left
            if not progress and pending:
                progress = self.eliminate(pending)
                pending = [(eq, f) for eq, f in pending if not self.closed(eq)]
        for eq, form in pending:
            unknown = sorted({k for mono in eq.poly for k in mono if k not in self.known})
            gids = [g for g in form if g]
            if not gids:  # nothing this equation counts can be removed: its attributes keep their values
                for k in unknown:
                    self.known[k] = {"": Fraction(self.owners[k][2])}
                continue
            self.refuse(gids, f"the size {poly_text(eq.poly)} read from attributes at {eq.where} cannot be "
                              f"solved for {', '.join(unknown)} (used only together, or multiplied by another "
                              f"changing size)")

    def closed(self, eq: Equation) -> bool:
        return all(k in self.known for mono in eq.poly for k in mono)

    def terms(self, eq: Equation):
        out = []
        for mono, c in eq.poly.items():
            f: Optional[Form] = {"": Fraction(c)}
            unknown = []
            for k in mono:
                if k in self.known:
                    f = _mul(f, self.known[k]) if f is not None else None
                else:
                    unknown.append(k)
            if f is None:
                return None
            out.append((tuple(unknown), f))
        return out

    def step(self, eq: Equation, form: Form) -> bool:
        terms = self.terms(eq)
        if terms is None:
            return False
        unknown = {k for unk, _ in terms for k in unk}
        rest: Form = {}
        for unk, f in terms:
            if not unk:
                rest = _add(rest, f)
        if not unknown:
            self.residual(eq, _add(rest, form, Fraction(-1)))
            return True
        if len(unknown) != 1 or any(len(unk) > 1 or (unk and not _is_const(f)) for unk, f in terms):
            return False
        (u,) = unknown
        coef = sum((f.get("", Fraction(0)) for unk, f in terms if unk), Fraction(0))
        if coef == 0:
            return False
        solution = {k: v / coef for k, v in _add(form, rest, Fraction(-1)).items()}
        if any(v.denominator != 1 for v in solution.values()):
            self.refuse([g for g in solution if g], f"attribute '{u}' would not stay a whole number when units "
                                                    f"are removed (size {poly_text(eq.poly)} at {eq.where})")
        self.known[u] = solution
        return True

    def eliminate(self, pending) -> bool:
        """Attributes used only together in linear sizes: Gaussian elimination; True when it solved some."""
        rows, unknowns = [], set()
        for eq, form in pending:
            terms = self.terms(eq)
            if terms is None or any(len(unk) > 1 or (unk and not _is_const(f)) for unk, f in terms):
                continue
            coefs: Dict[str, Fraction] = defaultdict(Fraction)
            rest: Form = {}
            for unk, f in terms:
                if unk:
                    coefs[unk[0]] += f.get("", Fraction(0))
                else:
                    rest = _add(rest, f)
            rows.append(({k: v for k, v in coefs.items() if v}, _add(form, rest, Fraction(-1)), eq))
            unknowns |= set(coefs)
        order = sorted(unknowns)
        solved: Dict[str, Tuple[Dict[str, Fraction], Form]] = {}
        work = [(dict(c), dict(r), eq) for c, r, eq in rows]
        for u in order:
            pivot = next((i for i, (c, _, _) in enumerate(work) if c.get(u)), None)
            if pivot is None:
                return False  # not determined by these sizes: refused by the caller
            c, r, eq = work.pop(pivot)
            p = c[u]
            c = {k: v / p for k, v in c.items()}
            r = {k: v / p for k, v in r.items()}
            for i, (c2, r2, eq2) in enumerate(work):
                f = c2.get(u)
                if f:
                    c2 = {k: c2.get(k, Fraction(0)) - f * c.get(k, Fraction(0)) for k in set(c2) | set(c)}
                    work[i] = ({k: v for k, v in c2.items() if v}, _add(r2, r, -f), eq2)
            for k, (c3, r3) in list(solved.items()):
                f = c3.get(u)
                if f:
                    c3 = {kk: c3.get(kk, Fraction(0)) - f * c.get(kk, Fraction(0)) for kk in set(c3) | set(c)}
                    solved[k] = ({kk: v for kk, v in c3.items() if v}, _add(r3, r, -f))
            solved[u] = (c, r)
        for u, (c, r) in solved.items():
            if any(v.denominator != 1 for v in r.values()):
                return False
            self.known[u] = r
        for c, r, eq in work:  # rows left over: 0 == r
            self.residual(eq, {k: -v for k, v in r.items()})
        return bool(solved)

    def residual(self, eq: Equation, r: Form) -> None:
        """An equation whose attributes are all known: `r` (its two sides' difference) must vanish."""
        gids = {g: v for g, v in r.items() if g and v}
        if not gids:
            return
        names = sorted({k for mono in eq.poly for k in mono})
        frozen = [f"'{k}' is fixed: {self.state.attrs.frozen[k]}" for k in names if k in self.state.attrs.frozen]
        if len(gids) > 1 and sum(gids.values()) == 0 and r.get("", 0) == 0:
            self.ties.append((set(gids), ", ".join(names)))
            return
        why = "; ".join(frozen) if frozen else "the attribute cannot take the value every use needs"
        self.refuse(gids, f"the size {poly_text(eq.poly)} read from attributes at {eq.where} must equal the kept "
                          f"positions, but {why}")


def solve_attributes(state, groups: List[ChannelGroup]) -> List[AttrRewrite]:
    """Solve the trace's attribute equations; refuse or tie `groups` (in place) where needed.

    Returns:
        the attributes that change with the removed counts (the others keep their values).
    """
    equations = getattr(state.attrs, "equations", [])
    if not equations or not hasattr(state, "unit_of"):
        return []
    by_id = {g.id: g for g in groups}
    solver = None
    for _ in range(len(groups) + 1):  # a refusal makes a group's positions constant: solve again
        solver = _Solver(state, by_id)
        solver.solve(equations)
        fresh = {g: r for g, r in solver.refusals.items() if by_id[g].prunable}
        if not fresh:
            break
        for gid, reason in fresh.items():
            by_id[gid].prunable = False
            by_id[gid].reasons.append(reason)
    _tie(by_id, solver.ties)
    rewrites = []
    for key, form in solver.known.items():
        if _is_const(form) or key not in state.attrs.owners:
            continue
        owner, name, old = state.attrs.owners[key]
        rewrites.append(AttrRewrite(owner, name, old, form))
    return rewrites


def _tie(by_id: Dict[str, ChannelGroup], ties: List[Tuple[Set[str], str]]) -> None:
    """Groups that must lose equally many units share ``tags["tied"]`` (the class's first group id)."""
    parent: Dict[str, str] = {}

    def find(x):
        while parent.get(x, x) != x:
            x = parent[x]
        return x

    why: Dict[str, Set[str]] = defaultdict(set)
    for gids, names in ties:
        gids = sorted(gids)
        for g in gids[1:]:
            a, b = find(gids[0]), find(g)
            if a != b:
                parent[max(a, b)] = min(a, b)
        for g in gids:
            why[g].add(names)
    classes: Dict[str, List[str]] = defaultdict(list)
    for g in why:
        classes[find(g)].append(g)
    for members in classes.values():
        label = sorted(members)[0]
        attrs = sorted({n for g in members for n in why[g]})
        for g in members:
            by_id[g].tags["tied"] = label
            by_id[g].tags["tied_by"] = "; ".join(attrs)
