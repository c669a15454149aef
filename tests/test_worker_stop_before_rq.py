"""A worker is in the registry from its first heartbeat, but RQ installs its own SIGTERM handler
only after its bootstrap (registering RQ's worker hash), which Redis can refuse and the worker then
retries. In that window a SIGTERM, or the heartbeat giving up, must still leave through the code
that unregisters (a fresh-clone CI run once saw the default action kill a worker there and leave it
listed). The window is held open for real: the worker's Redis user may write this stack's keys but
not RQ's worker keys (an ACL), so RQ's bootstrap is refused until the worker is stopped."""

from __future__ import annotations

import uuid

import pytest
import redis

from app.core import worker_registry
from tests.conftest import REDIS_URL
from tests.faults import JOB_LOST_S, wait_until
from tests.stack import LOG_DIR, make_stack

pytestmark = pytest.mark.e2e

REFUSED_BOOTSTRAP = "worker loop: Redis unavailable"


def worker_log(prefix: str) -> str:
    return "".join(path.read_text() for path in LOG_DIR.glob(f"{prefix}-worker-*.log"))


@pytest.fixture
def user_without_rq_worker_keys():
    """Yields (username, password) for a Redis user allowed this stack's keys, RQ's queue and job
    keys and every channel, but not `rq:worker:*` nor `rq:workers*` (RQ's worker registrations)."""
    admin = redis.Redis.from_url(REDIS_URL)
    name, password = f"w{uuid.uuid4().hex[:10]}", uuid.uuid4().hex

    def create(prefix: str) -> str:
        admin.acl_setuser(
            name,
            enabled=True,
            passwords=[f"+{password}"],
            keys=[f"{prefix}:*", f"rq:queue:{prefix}.*", "rq:job:*"],
            channels=["*"],
            commands=["+@all"],
        )
        return REDIS_URL.replace("redis://", f"redis://{name}:{password}@", 1)

    yield create
    admin.acl_deluser(name)
    admin.close()


def start_worker_in_the_window(stack, url: str):
    process = stack.start_worker("tiny", env={"REDIS_URL": url})  # returns once it is registered
    wait_until(
        lambda: REFUSED_BOOTSTRAP in worker_log(stack.prefix) or process.poll() is not None,
        60,
        "RQ's bootstrap to be refused",
    )
    assert process.poll() is None, f"the worker exited with code {process.returncode}"
    assert len(worker_registry.live_workers(stack.redis(), stack.keys)) == 1
    return process


def test_a_sigterm_before_rq_takes_over_unregisters_and_exits_0(user_without_rq_worker_keys):
    stack = make_stack()  # default heartbeat: 15 s, its beats do not give up during the test
    url = user_without_rq_worker_keys(stack.prefix)
    try:
        stack.start_api()
        process = start_worker_in_the_window(stack, url)
        process.terminate()
        assert process.wait(timeout=30) == 0, "a stop, not SIGTERM's default action (-15)"
        assert worker_registry.live_workers(stack.redis(), stack.keys) == [], "SIGTERM unregisters"
        assert not list(stack.redis().scan_iter(match=f"{stack.prefix}:worker:*")), "heartbeat key gone"
    finally:
        stack.stop()


def test_a_heartbeat_that_gives_up_before_rq_takes_over_exits_1(user_without_rq_worker_keys):
    """Once RQ's worker exists, each beat also renews its hash's TTL, which this user is refused:
    three failed beats (a 2 s heartbeat here) and the worker stops itself, to be restarted."""
    stack = make_stack(SDXL_JOB_LOST_S=str(JOB_LOST_S))
    url = user_without_rq_worker_keys(stack.prefix)
    try:
        stack.start_api()
        process = start_worker_in_the_window(stack, url)
        assert process.wait(timeout=60) == 1, "a lost heartbeat exits 1"
        assert "heartbeat failed 3 times in a row" in worker_log(stack.prefix)
        assert worker_registry.live_workers(stack.redis(), stack.keys) == []
    finally:
        stack.stop()
