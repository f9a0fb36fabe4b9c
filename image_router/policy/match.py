"""Which route serves a request: the first whose conditions all hold, in file order."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from image_router.config.table import Arm, Matcher, Route, RoutingTable
from image_router.errors import UnknownModel

__all__ = ["NO_ALIAS", "RequestFacts", "matches", "select_route"]

# Names clients send when they do not mean a particular model.
NO_ALIAS = frozenset({"", "auto"})


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What routing may look at; ``headers`` keys are lower-case."""

    prompt: str
    intent: str | None = None
    model: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    fields: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        prompt: str,
        intent: str | None,
        model: str | None,
        headers: Mapping[str, str],
        extra: Mapping[str, str] | None = None,
    ) -> RequestFacts:
        """Facts as every entry point builds them: header names lower-cased, the intent
        from the request or else ``X-Intent``, and both offered to ``sticky: field:``
        with the API's own ``extra`` fields (OpenAI's ``quality`` and ``user``)."""
        lowered = {k.lower(): v for k, v in headers.items()}
        intent = intent or lowered.get("x-intent")
        return cls(prompt, intent, model, lowered, {"intent": intent or "", "model": model or "", **(extra or {})})


def matches(matcher: Matcher, facts: RequestFacts) -> bool:
    if matcher.models is not None and facts.model not in matcher.models:
        return False
    if matcher.intents is not None and facts.intent not in matcher.intents:
        return False
    if matcher.qualities is not None and facts.fields.get("quality") not in matcher.qualities:
        return False
    for rule in matcher.headers:
        value = facts.headers.get(rule.name)
        if value is None:
            return False
        if rule.equals is not None and value != rule.equals:
            return False
        if rule.regex is not None and rule.regex.search(value) is None:
            return False
    return matcher.prompt is None or matcher.prompt.search(facts.prompt) is not None


def select_route(table: RoutingTable, facts: RequestFacts) -> Route:
    """The route for ``facts``.

    Without a model alias (or with ``auto``), routes are tried in file order and the
    first whose conditions all hold wins, else the default route.

    With an alias, the client has named what it wants, so only routes that match on
    ``model`` (plus their other conditions) may redirect it — that is how an operator
    puts a canary or a budget in front of a name. Failing that, the alias is a
    logical model (served alone, with the default route's budget) or a route name.
    Anything else is a 404 rather than a silent reroute, so a typo never serves the
    wrong tier.
    """
    if facts.model is not None and facts.model in table.model_aliases:  # another name for a model, route or auto
        facts = replace(facts, model=table.model_aliases[facts.model])
    alias = None if facts.model in NO_ALIAS else facts.model
    for route in table.routes:
        if alias is not None and route.matcher.models is None:
            continue
        if matches(route.matcher, facts):
            return route
    if alias is None:
        return table.default
    if alias in table.models:
        budget = table.default.budget_ms
        return Route(name=f"model:{alias}", matcher=Matcher(), arms=(Arm(alias, 1.0),), budget_ms=budget)
    named = table.route_named(alias)
    if named is not None:
        return named
    raise UnknownModel(f"model {alias!r} is not served here", field="model", model=alias, available=table.aliases())
