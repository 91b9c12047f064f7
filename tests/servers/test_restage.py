"""A restage the client hears of before the activation time (here a rollback) while the new
staged version is still on its way: SPEC invariant 9, no process ever serves a version the farm
did not activate. A slow link (the counting proxy's version_delay) makes the download of the
rollback's version finish after the activation time."""

import time

import pytest

import lockstep
from servers_support import CountingProxy, Server, wait_for


def test_a_client_that_heard_of_a_rollback_never_activates_the_version_it_replaced(workdir):
    server = Server(workdir, interval="1s", min_window="500ms")
    proxy = client = None
    try:
        server.put("price", "old")
        server.wait_active("price", "old")
        old = server.admin("/v1/admin/status")["sync"]["active_version"]
        proxy = CountingProxy(server.url)
        client = lockstep.Client(proxy.url, cache_dir="", name="restaged")
        server.admin("/v1/admin/interval", {"interval": "6s", "min_window": "5s"})
        server.put("price", "new")
        assert wait_for(lambda: client.staged_version > old, timeout=30)
        new, t_us = client.staged_version, client.next_activation_us
        left = lambda: t_us / 1e6 - time.time()  # noqa: E731

        # The rollback's version cannot arrive before the time: each try waits longer than the
        # client's timeout (checkin_timeout_ms, 5 s), until the link is fast again after it.
        proxy.version_delay = 8.0
        server.admin("/v1/admin/rollback", {"version": old, "discard_edits": True})
        rolled_at = time.monotonic()
        rolled = server.admin("/v1/admin/status")["sync"]["staged_version"]
        if left() < 2.0:
            pytest.skip(f"rolled back only {left():.1f} s before the activation time")
        # The client hears of it: a check-in after the rollback, before the time.
        assert wait_for(lambda: proxy.checkins(rolled_at), timeout=left() - 0.2)
        heard = left()

        served = {}
        while left() > -5:
            with client.snapshot() as s:
                served.setdefault(s.version, round(-left(), 3))
            if left() < -0.5:
                proxy.version_delay = 0
            time.sleep(0.002)
        print(f"armed {new}, rolled back to {old} as {rolled}, heard {heard:.1f} s before the "
              f"activation time; versions served, from (s after the time): {served}")
        assert new not in served, \
            f"served version {new}, which the farm never activated, from T+{served.get(new)} s"
        history = {h["version"]: h for h in server.admin("/v1/admin/history")}
        assert not history[new].get("activated_us")
    finally:
        if client:
            client.close()
        if proxy:
            proxy.stop()
        server.stop()
