"""The pieces of access control that need no server: the megapixel token bucket and the in-flight
count (on a fake clock: time moves only when the test says so), which peer's X-Forwarded-For is
believed, and how API keys are read from the settings."""

from __future__ import annotations

import ipaddress

import pytest
from pydantic import ValidationError

from enhancer.api.auth import MIN_KEY_LENGTH, ApiKeyConfigError, ApiKeys, configured_keys
from enhancer.api.forwarded import TrustedProxies
from enhancer.config import Settings
from enhancer.errors import TooManyRequestsError
from enhancer.limits_per_client import RECENT_WINDOW_S, ClientLimits, TokenBucket

KEY = "k3y-" + "Zq8Xv2Lm9Np4Rt6W"


class FakeClock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# --- token bucket ---------------------------------------------------------------------------------


def test_bucket_refills_at_its_rate():
    clock = FakeClock()
    bucket = TokenBucket(6.0, clock)  # 6 MP a minute = 0.1 MP/s, holding 6 MP
    assert bucket.take("a", 6.0) == 0.0  # a full minute's worth at once: a burst is allowed
    assert bucket.level("a") == 0.0
    assert bucket.take("a", 1.0) == pytest.approx(10.0)  # 1 MP more needs 10 s of refill
    assert bucket.level("a") == 0.0  # a refused image takes nothing
    clock.advance(4.0)
    assert bucket.level("a") == pytest.approx(0.4)
    assert bucket.take("a", 1.0) == pytest.approx(6.0)
    clock.advance(6.0)
    assert bucket.take("a", 1.0) == 0.0
    assert bucket.level("a") == pytest.approx(0.0, abs=1e-9)
    clock.advance(3600.0)
    assert bucket.level("a") == 6.0  # never more than one minute's worth


def test_buckets_are_per_client():
    clock = FakeClock()
    bucket = TokenBucket(1.0, clock)
    assert bucket.take("a", 1.0) == 0.0
    assert bucket.take("a", 0.5) > 0
    assert bucket.take("b", 1.0) == 0.0  # b is not slowed down by a


def test_an_image_larger_than_the_bucket_passes_when_it_is_full_and_is_then_repaid():
    clock = FakeClock()
    bucket = TokenBucket(6.0, clock)
    assert bucket.take("a", 9.0) == 0.0  # more than a minute's worth: admitted on a full bucket...
    assert bucket.level("a") == pytest.approx(-3.0)  # ...and paid for in full
    assert bucket.take("a", 1.0) == pytest.approx(40.0)  # (3 MP of debt + 1 MP) / 0.1 MP/s
    assert bucket.take("a", 9.0) == pytest.approx(90.0)  # a big one waits for a full bucket
    clock.advance(90.0)
    assert bucket.take("a", 9.0) == 0.0


def test_waits_come_out_whole_despite_float_sums():
    clock = FakeClock()
    bucket = TokenBucket(0.06, clock)  # 0.001 MP/s
    assert bucket.take("a", 0.04) == 0.0
    assert bucket.take("a", 0.04) == 20.0  # not 20.000000000000004, which would round up to 21
    clock.advance(20.0)
    assert bucket.take("a", 0.04) == 0.0


def test_refilled_buckets_are_forgotten():
    clock = FakeClock()
    bucket = TokenBucket(60.0, clock)  # 1 MP/s
    for i in range(5000):
        bucket.take(f"client-{i}", 1.0)
        clock.advance(0.01)
    # without sweeping, 5000 entries; buckets refill within a second, so only recent ones remain
    assert len(bucket._levels) < 1100


def test_bucket_rate_must_be_positive():
    with pytest.raises(ValueError):
        TokenBucket(0.0)


# --- the limits together ----------------------------------------------------------------------------


def test_in_flight_limit_refuses_with_retry_after_from_recent_uploads():
    clock = FakeClock()
    refused: list[str] = []
    limits = ClientLimits(max_concurrent=2, clock=clock, on_refusal=refused.append)
    first = limits.start_upload("a")
    second = limits.start_upload("a")
    with pytest.raises(TooManyRequestsError) as info:
        limits.start_upload("a")
    assert info.value.status_code == 429
    assert info.value.headers["Retry-After"] == "1"  # nothing has finished yet to measure by
    assert "ENHANCER_MAX_CONCURRENT_PER_CLIENT" in info.value.detail
    other = limits.start_upload("b")  # another client is not affected
    clock.advance(7.0)
    first()
    first()  # finishing twice must not free a slot the client does not hold
    third = limits.start_upload("a")
    with pytest.raises(TooManyRequestsError) as info:
        limits.start_upload("a")
    assert info.value.headers["Retry-After"] == "7"  # what the last upload took
    assert refused == ["concurrency", "concurrency"]
    for done in (second, third, other):
        done()
    assert limits.in_flight.count("a") == limits.in_flight.count("b") == 0


def test_megapixels_are_charged_and_refused_with_the_bucket_wait():
    clock = FakeClock()
    limits = ClientLimits(mpx_per_minute=0.6, clock=clock)  # 0.01 MP/s
    limits.charge_pixels("a", 500_000)
    with pytest.raises(TooManyRequestsError) as info:
        limits.charge_pixels("a", 200_000)
    assert info.value.headers["Retry-After"] == "10"  # 0.1 MP short at 0.01 MP/s
    assert "ENHANCER_RATE_LIMIT_MPX_PER_MINUTE" in info.value.detail
    clock.advance(10.0)
    limits.charge_pixels("a", 200_000)


def test_recently_limited_counts_distinct_clients_in_the_last_minute():
    clock = FakeClock()
    limits = ClientLimits(mpx_per_minute=0.000001, clock=clock)
    limits.charge_pixels("a", 1)  # the first of each passes (a full bucket)
    limits.charge_pixels("b", 1)
    for client in ("a", "b", "a", "a"):
        with pytest.raises(TooManyRequestsError):
            limits.charge_pixels(client, 1)
    assert limits.recently_limited() == 2
    clock.advance(RECENT_WINDOW_S / 2)
    with pytest.raises(TooManyRequestsError):
        limits.charge_pixels("b", 1)
    clock.advance(RECENT_WINDOW_S / 2 + 1)
    assert limits.recently_limited() == 1  # a's refusals are over a minute old, b's is not
    clock.advance(RECENT_WINDOW_S)
    assert limits.recently_limited() == 0


def test_no_limit_set_means_inactive():
    limits = ClientLimits()
    assert not limits.active
    limits.start_upload("a")()
    limits.charge_pixels("a", 10**9)


# --- X-Forwarded-For --------------------------------------------------------------------------------


def scope(peer: str, *forwarded: str) -> dict:
    return {"client": (peer, 5000), "headers": [(b"x-forwarded-for", f.encode()) for f in forwarded]}


def test_forwarded_for_is_ignored_from_an_untrusted_peer():
    proxies = TrustedProxies("10.0.0.5")
    assert proxies.client_host(scope("192.0.2.1", "198.51.100.7")) == "192.0.2.1"


def test_forwarded_for_from_a_trusted_proxy_names_the_nearest_untrusted_hop():
    proxies = TrustedProxies("10.0.0.5, 10.1.0.0/16")
    assert proxies.client_host(scope("10.0.0.5", "198.51.100.7")) == "198.51.100.7"
    # a client cannot pose as someone else by sending its own header: the proxy appends the truth
    assert proxies.client_host(scope("10.0.0.5", "203.0.113.1, 198.51.100.7")) == "198.51.100.7"
    # a chain of trusted proxies is walked through, and several header lines are one list
    assert proxies.client_host(scope("10.0.0.5", "198.51.100.7", "10.1.2.3")) == "198.51.100.7"
    assert proxies.client_host(scope("10.0.0.5", "198.51.100.7:4711")) == "198.51.100.7"
    assert proxies.client_host(scope("10.0.0.5", "[2001:db8::1]:4711")) == "2001:db8::1"
    assert proxies.client_host(scope("10.0.0.5", "10.1.9.9")) == "10.1.9.9"  # all trusted: the first
    assert proxies.client_host(scope("10.0.0.5")) == "10.0.0.5"  # no header: the proxy itself


def test_star_trusts_every_peer_and_takes_the_first_hop():
    proxies = TrustedProxies("*")
    assert proxies.client_host(scope("192.0.2.1", "198.51.100.7, 10.0.0.1")) == "198.51.100.7"


def test_ipv6_proxies_and_odd_peers():
    proxies = TrustedProxies("::1")
    assert proxies.client_host(scope("::1", "2001:db8::7")) == "2001:db8::7"
    assert "not-an-ip" not in proxies and "" not in proxies
    assert proxies.client_host({"client": None, "headers": []}) == ""


def test_forwarded_allow_ips_setting_is_checked():
    assert Settings(_env_file=None).forwarded_allow_ips == "127.0.0.1"  # uvicorn's default too
    Settings(_env_file=None, forwarded_allow_ips="10.0.0.5, 10.1.0.0/16, ::1, *")
    for bad in ("10.0.0.300", "proxy.local", "10.0.0.5/8"):
        with pytest.raises(ValidationError, match="not an IP address or network"):
            Settings(_env_file=None, forwarded_allow_ips=bad)
    ipaddress.ip_network("10.0.0.0/8")  # the strict form is accepted


# --- API keys from the settings ---------------------------------------------------------------------


def test_keys_from_the_variable_and_the_file(tmp_path):
    other = "second-key-" + "x" * 16
    third = "third-key-" + "y" * 16
    path = tmp_path / "keys"
    path.write_text(f"\ufeff# issued 2026-11\n\n  {other}  \r\n{third}\n", encoding="utf-8")
    settings = Settings(_env_file=None, api_keys=f" {KEY} , ", api_keys_file=path)
    assert configured_keys(settings) == [KEY, other, third]
    keys = ApiKeys.from_settings(settings)
    assert len(keys) == 3 and keys.required
    ids = {keys.client_of(k.encode()) for k in (KEY, other, third)}
    assert len(ids) == 3 and all(i.startswith("key:") and KEY not in i for i in ids)
    assert keys.client_of(b"x" * len(KEY)) is None


def test_no_keys_by_default_and_an_empty_file_setting_means_none(monkeypatch):
    monkeypatch.setenv("ENHANCER_API_KEYS", "")
    monkeypatch.setenv("ENHANCER_API_KEYS_FILE", "")
    settings = Settings(_env_file=None)
    assert settings.api_keys_file is None
    assert not ApiKeys.from_settings(settings).required


def test_the_key_is_hidden_in_the_settings_repr():
    settings = Settings(_env_file=None, api_keys=KEY)
    assert KEY not in repr(settings) and KEY not in str(settings.model_dump())


@pytest.mark.parametrize(
    "listed,content,message",
    [
        ("short-key", None, f"shorter than {MIN_KEY_LENGTH} characters"),
        ("with space inside the key", None, "cannot travel in an HTTP header"),
        (" , ,", None, "holds no key"),
        ("", "# only a comment\n\n", "holds no key"),
        ("", "tiny\n", "line 1: the key is shorter"),
    ],
)
def test_unusable_keys_stop_the_server_without_being_named(tmp_path, listed, content, message):
    kwargs = {"api_keys": listed}
    if content is not None:
        path = tmp_path / "keys"
        path.write_text(content)
        kwargs["api_keys_file"] = path
    with pytest.raises(ApiKeyConfigError, match=message) as info:
        configured_keys(Settings(_env_file=None, **kwargs))
    for secret in ("short-key", "with space", "tiny"):
        assert secret not in str(info.value)


def test_a_missing_keys_file_stops_the_server(tmp_path):
    with pytest.raises(ApiKeyConfigError, match="cannot read .*No such file"):
        configured_keys(Settings(_env_file=None, api_keys_file=tmp_path / "absent"))
