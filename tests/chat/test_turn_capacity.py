"""`TurnCapacity`: places held while turns are let in, given back on a refusal, none needed twice for one turn."""

from __future__ import annotations

import pytest

from backend.chat.local_turns import LocalTurns
from backend.chat.turn_capacity import TurnCapacity
from backend.errors import Overloaded


def test_a_seat_holds_a_place_until_let_go_and_the_next_turn_past_the_cap_is_overloaded() -> None:
    refused: list[None] = []
    local = LocalTurns()
    capacity = TurnCapacity(local, max_running=2, retry_after=3, on_overloaded=lambda: refused.append(None))
    with capacity.seat("a"), capacity.seat("b"):
        assert capacity.full and local.admitting == {"a", "b"}
        with capacity.seat("a"):  # the same turn again (a resend that raced it): no second place
            pass
        with pytest.raises(Overloaded) as caught, capacity.seat("c"):
            pass
        assert (caught.value.status_code, caught.value.code, caught.value.headers()) == (
            503,
            "overloaded",
            {"retry-after": "3"},
        )
        assert len(refused) == 1
    assert local.admitting == set() and not capacity.full


def test_a_refusal_on_the_way_gives_the_place_back() -> None:
    local = LocalTurns()
    capacity = TurnCapacity(local, max_running=1)
    with pytest.raises(RuntimeError), capacity.seat("a"):
        raise RuntimeError("the session was busy")
    assert local.count == 0
    with capacity.seat("b"):
        assert local.count == 1


def test_zero_is_no_cap() -> None:
    local = LocalTurns()
    capacity = TurnCapacity(local, max_running=0)
    local.admitting.update(str(i) for i in range(1000))
    assert not capacity.full
