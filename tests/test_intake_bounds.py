"""Input decodes are bounded in memory (issue 10 item 9, CONTRACT 3 and 6).

A few KB of lossless WebP decode to hundreds of MB. The API holds each decode's estimated cost
(from the header) in a per-process budget (`SDXL_DECODE_MEMORY_MB`); a decode that finds no room
within `SDXL_DECODE_WAIT_S` is a 503 with Retry-After, charging nothing. Large images are divided
by an integer factor before their colour conversions, which changes no pixel a person would see.
"""

from __future__ import annotations

import asyncio
import base64
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from PIL import Image, ImageChops, ImageStat

from app.core.decode_budget import DecodeBudget
from app.core.errors import Overloaded
from app.core.image_decode import open_image, prepare_image
from tests import image_factory
from tests.faults import balance, report
from tests.memory_probe import PeakRss
from tests.stack import make_stack

SLUG = "sdxl-img2img"
HOSTILE_SIDE = 4000  # 16 MP of one colour: a ~700-byte WebP that decodes to ~270 MB
CONCURRENT = 10
CREDITS = 100


def test_budget_waits_then_refuses_with_retry_after():
    async def scenario() -> None:
        budget = DecodeBudget(100, wait_s=0.2)
        async with budget.hold(60):
            async with budget.hold(40):  # fits beside it
                assert budget.in_use == 100
            started = time.monotonic()
            with pytest.raises(Overloaded) as refused:
                async with budget.hold(50):
                    pass
            assert time.monotonic() - started >= 0.2
            assert refused.value.status_code == 503 and refused.value.headers["Retry-After"] == "2"
        async with budget.hold(10_000):  # larger than the budget: runs alone, not never
            assert budget.in_use == 100
        assert budget.in_use == 0

    asyncio.run(scenario())


def test_waiter_enters_when_room_is_freed():
    async def scenario() -> list[str]:
        budget = DecodeBudget(100, wait_s=5)
        order: list[str] = []

        async def first() -> None:
            async with budget.hold(80):
                order.append("first in")
                await asyncio.sleep(0.2)
            order.append("first out")

        async def second() -> None:
            await asyncio.sleep(0.05)
            async with budget.hold(80):
                order.append("second in")

        await asyncio.gather(first(), second())
        return order

    assert asyncio.run(scenario()) == ["first in", "first out", "second in"]


def test_cost_is_estimated_from_the_header_and_the_jpeg_draft(settings):
    hostile = open_image(image_factory.webp_rgba(HOSTILE_SIDE, HOSTILE_SIDE, alpha=128), settings)
    assert hostile.decode_cost_bytes >= HOSTILE_SIDE**2 * 16  # WebP keeps two RGBA canvases
    photo = open_image(image_factory.jpeg(4096, 4096), settings)
    # libjpeg decodes it at 1/2 scale (the working size is 1248x1248): a quarter of the pixels.
    assert photo.decode_cost_bytes == 2048 * 2048 * 12


def test_reduced_decode_matches_a_full_size_one(settings):
    """Big RGBA input, half transparent: the early reduction gives what compositing the full image
    on white and resizing it would, up to rounding."""
    gradient = Image.linear_gradient("L").resize((2400, 1600))
    rgba = Image.merge("RGBA", (gradient, gradient.rotate(90, expand=False), gradient, gradient))
    data = image_factory.encode(rgba, "PNG")
    small = settings.model_copy(update={"max_pixels": 256 * 256})
    prepared = prepare_image(data, small)

    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    reference = Image.alpha_composite(white, rgba).convert("RGB").resize(prepared.image.size, Image.LANCZOS)
    difference = ImageStat.Stat(ImageChops.difference(prepared.image, reference))
    assert max(difference.mean) < 1.0, difference.mean
    assert prepared.image.size == (312, 208)


@pytest.mark.e2e
def test_concurrent_hostile_images_stay_within_the_budget():
    stack = make_stack(SDXL_DECODE_MEMORY_MB="64", SDXL_DECODE_WAIT_S="1")
    stack.start_api()
    try:
        key = stack.create_key(name="hostile", credits=CREDITS)
        image = base64.b64encode(image_factory.webp_rgba(HOSTILE_SIDE, HOSTILE_SIDE, alpha=128)).decode()
        body = {"image": image, "prompt": "p", "base_model": "tiny", "num_inference_steps": 20}

        def submit(_: int) -> httpx.Response:
            return httpx.post(
                f"{stack.base_url}/v2/{SLUG}", json=body, headers={"x-api-key": key}, timeout=120
            )

        with PeakRss(stack.api.pid) as memory, ThreadPoolExecutor(CONCURRENT) as pool:
            started = time.monotonic()
            answers = list(pool.map(submit, range(CONCURRENT)))
            elapsed = time.monotonic() - started
        statuses = sorted(answer.status_code for answer in answers)
        report(f"{CONCURRENT} hostile WebPs: peak growth {memory.growth_mb:.0f} MB", statuses, elapsed)

        assert set(statuses) <= {200, 503}, [a.text[:200] for a in answers]
        assert 200 in statuses and 503 in statuses, statuses
        for answer in answers:
            if answer.status_code == 503:
                assert answer.headers["retry-after"] == "2"
                assert "retry" in answer.json()["error"]
        # One decode at a time costs ~270 MB here; unbounded, ten cost ~2.7 GB.
        assert memory.growth_mb < 900, memory.growth_mb
        # A refusal takes no credit; each accepted request holds its one.
        assert balance(stack, key) == CREDITS - statuses.count(200)
    finally:
        stack.stop()
