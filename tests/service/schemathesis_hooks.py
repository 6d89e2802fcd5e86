"""Schemathesis hooks for the schema test (``SCHEMATHESIS_HOOKS=tests.service.schemathesis_hooks``).

One rule of a spec cannot be written in JSON Schema: a search range's ``low`` must not exceed its
``high``, a missing end taking the parameter's default (the server answers 422 naming the field,
tested by hand). Generated ranges are put in order, so ``positive_data_acceptance`` judges
everything else the schema states. Likewise ``warm_start_from`` must name another *existing* study,
and each ``enqueue`` config must name searched parameters within the study's own bounds (422s
otherwise, tested in test_service_features.py): generated bodies leave both out. A webhook's URL must be on
the server's allowed hosts (REGSEARCH_WEBHOOK_ALLOWED_HOSTS, a setting; 422 otherwise, tested in
test_service_webhooks.py): a generated URL that the schema allows is replaced by the one the test server allows.
"""

from __future__ import annotations

from typing import Any

import schemathesis

from trainer import SEARCH_SPACE_BY_NAME


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


#: The webhook URL the schema test's server allows (tests/service/test_service_auth.py sets its allowed hosts).
ALLOWED_WEBHOOK_URL = "https://hooks.example.com/regsearch"


def _in_order(body: Any) -> Any:
    if isinstance(body, dict) and isinstance(body.get("url"), str) and 1 <= len(body["url"]) <= 2000:
        body["url"] = ALLOWED_WEBHOOK_URL  # a webhook (no other body has a url): which hosts are allowed is a setting
    if isinstance(body, dict):
        body.pop("warm_start_from", None)  # which studies exist is not the schema's to say
        body.pop("enqueue", None)  # checked against the body's own search_space
    space = body.get("search_space") if isinstance(body, dict) else None
    if not isinstance(space, dict):
        return body
    for name, bounds in space.items():
        spec = SEARCH_SPACE_BY_NAME.get(name)
        if spec is None or not isinstance(bounds, dict):
            continue
        low, high = bounds.get("low", spec.low), bounds.get("high", spec.high)
        if _number(low) and _number(high) and low > high:
            bounds["low"], bounds["high"] = high, low
    return body


@schemathesis.hook
def map_body(context: Any, body: Any) -> Any:  # the fuzzing and stateful phases
    return _in_order(body)


@schemathesis.hook
def map_case(context: Any, case: Any) -> Any:  # the coverage phase builds cases without map_body
    case.body = _in_order(case.body)
    return case
