"""Slowing down and locking out password guessing (``idm_facade.access.throttle``), with the
clock injected: counts, delays, lockout and expiry, and what a flood of names or addresses
costs. The lockout as clients see it over LDAP is pinned in tests/test_person_binds.py."""

from __future__ import annotations

import pytest

from idm_facade.access.throttle import MAX_KEY, Throttle, ThrottleSettings, address_key

SETTINGS = ThrottleSettings(delay_after=3, first_delay=0.5, max_delay=4.0, lockout_after=10,
                            lockout_seconds=900.0)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_delays_double_then_lock_out_and_expire() -> None:
    clock = Clock()
    throttle = Throttle(SETTINGS, clock)
    delays = []
    for _ in range(10):
        delays.append(throttle.delay("anna"))
        assert not throttle.locked("anna")
        throttle.failed("anna")
    assert delays == [0, 0, 0, 0.5, 1, 2, 4, 4, 4, 4]
    assert throttle.locked("anna") and not throttle.locked("bo")
    clock.now += 899
    assert throttle.locked("anna")
    clock.now += 1  # lockout_seconds after the last failure
    assert not throttle.locked("anna") and throttle.delay("anna") == 0


def test_a_success_clears_the_count() -> None:
    throttle = Throttle(SETTINGS, Clock())
    for _ in range(5):
        throttle.failed("anna")
    throttle.succeeded("anna")
    assert throttle.delay("anna") == 0 and len(throttle) == 0


def test_a_flood_of_names_is_bounded_and_keeps_the_latest() -> None:
    """Anyone who reaches the port can make keys: past the limit, the keys whose last
    failure is oldest go first, and a key failing all along stays locked."""
    clock = Clock()
    throttle = Throttle(SETTINGS, clock, max_keys=1000)
    for i in range(5000):
        clock.now += 0.01
        throttle.failed(f"guess-{i}")
        if i % 100 == 0:
            for _ in range(10):
                throttle.failed("anna")
        assert len(throttle) <= 1000
    assert throttle.locked("anna")
    assert throttle.delay("guess-4999") == 0 and len(throttle) == 1000
    assert "guess-0" not in throttle._counts and "guess-4999" in throttle._counts


def test_expired_keys_are_pruned_as_failures_come() -> None:
    clock = Clock()
    throttle = Throttle(SETTINGS, clock)
    for i in range(100):
        throttle.failed(f"old-{i}")
    clock.now += 900
    throttle.failed("new")
    assert len(throttle) == 1


def test_long_names_are_kept_short() -> None:
    throttle = Throttle(SETTINGS, Clock())
    long = "x" * 1_000_000
    for _ in range(10):
        throttle.failed(long)
    assert throttle.locked(long) and not throttle.locked(long + "y")
    assert max(len(key) for key in throttle._counts) <= MAX_KEY


@pytest.mark.parametrize(("host", "key"), [
    ("192.0.2.7", "192.0.2.7"),
    ("::ffff:192.0.2.7", "192.0.2.7"),
    ("2001:db8:1:2::1", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:dead:beef:0:1", "2001:db8:1:2::/64"),
    ("[2001:db8:1:3::1]", "2001:db8:1:3::/64"),
    ("::1", "::/64"),
    ("unknown", "unknown"),
])
def test_addresses_are_counted_per_host_or_ipv6_64(host: str, key: str) -> None:
    assert address_key(host) == key


def test_an_ipv6_client_cannot_escape_by_changing_its_interface_id() -> None:
    throttle = Throttle(ThrottleSettings(lockout_after=50), Clock())
    for i in range(50):
        throttle.failed(address_key(f"2001:db8:1:2::{i:x}"))
    assert throttle.locked(address_key("2001:db8:1:2:ffff::1"))
    assert not throttle.locked(address_key("2001:db8:1:3::1"))
