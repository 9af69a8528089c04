"""The P-Series simulator's token rules, without I/O: the cap per application, the
IP block after repeated failures, refresh and del_token revoking what they replace."""

from __future__ import annotations

import pytest

from recfs.sim.openapi_tokens import OpenApiFailure, OpenApiTokens


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def make(clock: Clock, **kw) -> tuple[OpenApiTokens, list[str]]:
    issued: list[str] = []
    return OpenApiTokens({"id": "secret"}, clock=clock, issue=issued.append, **kw), issued


def test_cap_of_valid_access_tokens():
    tokens, issued = make(Clock(), cap=3)
    pairs = [tokens.get_token("id", "secret", "10.0.0.1") for _ in range(3)]
    with pytest.raises(OpenApiFailure) as info:
        tokens.get_token("id", "secret", "10.0.0.1")
    assert info.value.errcode == "60002"
    tokens.delete(pairs[0].access)
    tokens.get_token("id", "secret", "10.0.0.1")
    assert len(issued) == 8 and all(len(t) == 32 and t.isalnum() for t in issued)


def test_ip_block_after_five_failures_then_it_ends():
    clock = Clock()
    tokens, _ = make(clock, block_attempts=5, block_seconds=600)
    for _ in range(5):
        with pytest.raises(OpenApiFailure) as info:
            tokens.get_token("id", "wrong", "10.0.0.1")
        assert info.value.errcode == "-1"
    with pytest.raises(OpenApiFailure) as info:
        tokens.get_token("id", "secret", "10.0.0.1")  # even the right secret
    assert info.value.errcode == "70004"
    tokens.get_token("id", "secret", "10.0.0.2")  # another address is not blocked
    clock.now = 601
    tokens.get_token("id", "secret", "10.0.0.1")


def test_refresh_revokes_the_old_pair_and_tokens_expire():
    clock = Clock()
    tokens, _ = make(clock, access_ttl=100, refresh_ttl=1000)
    first = tokens.get_token("id", "secret", "ip")
    second = tokens.refresh(first.refresh)
    for dead in (lambda: tokens.check(first.access), lambda: tokens.refresh(first.refresh)):
        with pytest.raises(OpenApiFailure):
            dead()
    tokens.check(second.access)
    assert tokens.stats.max_valid == 1
    clock.now = 150  # the access token is gone, its refresh token not
    with pytest.raises(OpenApiFailure):
        tokens.check(second.access)
    third = tokens.refresh(second.refresh)
    tokens.expire_all()
    with pytest.raises(OpenApiFailure):
        tokens.check(third.access)
    assert tokens.valid_count() == 0
