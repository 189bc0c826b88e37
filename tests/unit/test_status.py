"""`streamrec status`: reading STREAMREC_STATUS_ENDPOINTS and rendering what was collected."""

from __future__ import annotations

import pytest

from streamrec.status import ServiceState, StackStatus, parse_endpoints, render


def test_endpoints_are_name_url_pairs() -> None:
    assert parse_endpoints("") == {}
    assert parse_endpoints(" ingest=http://h:1/ , api=https://h:2") == {
        "ingest": "http://h:1",
        "api": "https://h:2",
    }
    for bad in ("ingest", "ingest=h:1", "=http://h:1"):
        with pytest.raises(ValueError, match="STREAMREC_STATUS_ENDPOINTS"):
            parse_endpoints(bad)


def test_render_names_what_is_not_ready_and_what_could_not_be_read() -> None:
    status = StackStatus(
        services=[
            ServiceState("ingest", "http://h:1", True, "ok"),
            ServiceState("scorer", "http://h:2", False, "starting"),
        ],
        ingest_behind=1234,
        scorer_behind=0,
        model_version="v7",
        model_age_seconds=600,
        lists=10_000,
        problems=["trainer lag: broker unreachable"],
    )
    text = render(status)
    assert "ingest  ready  http://h:1" in text
    assert "scorer  NOT READY (starting)" in text
    assert "ingest 1,234, scorer 0, trainer unknown" in text
    assert "served model: v7, trained 10 min ago" in text
    assert "lists in Redis: 10,000" in text
    assert "could not read trainer lag: broker unreachable" in text
    assert "none yet" in render(StackStatus())
